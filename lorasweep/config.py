"""Config: compose conf/ with Hydra overrides, then validate every field before anything loads."""

import dataclasses
import importlib.util
import os
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lorasweep import schema
from lorasweep.errors import ConfigError
from lorasweep.schema import DTYPE_NAMES, OPTIMS, QUANTS, SCHEDULERS, SPLITS, TASKS, VARIANTS  # noqa: F401
from lorasweep.tasks import GENERATED
from lorasweep.tasks import TASKS as TASKS_BY_NAME
from lorasweep.variants import METHODS

CONF_DIR = Path(os.environ.get("LORASWEEP_CONF", Path(__file__).resolve().parent.parent / "conf"))

# Logged once after training (lorasweep/after.py), the last two groups only when their tracking flag is on: a
# sweep can rank by them, though no pruner sees them (they do not exist before the end).
SERVING_METRICS = ["adapter_size_mb", "adapter_max_rank"]
AFTER_METRICS = {
    "merge_check": [
        "merge_max_abs_logit_diff",
        "merge_metric_delta",
        "merge_requant_max_abs_logit_diff",
        "merge_requant_metric_delta",
    ],
    "forgetting": ["forget_ppl_after", "forget_ppl_delta", "forget_ppl_ratio"],
}
# Scores of greedy generations against the references (lorasweep/generate.py), at each eval with train.generate_eval.
GENERATE_METRICS = [f"eval_{name}" for name in GENERATED]
# What every trial logs once about its cost: objectives of a cost/quality front (sweep.objectives) beside a metric.
COST_METRICS = [
    "trainable_params",
    "trainable_pct",
    "peak_memory_mb",
    "train_runtime_s",
    "samples_per_s",
    "tokens_per_s",
    "est_vram_mb",
]
# The costs the estimator knows before a trial trains (lorasweep.estimate.predicted): what sweep.max_cost may bound.
PREDICTED_COSTS = ["trainable_params", "trainable_pct", "est_vram_mb"]
# The metrics each task reports at every eval, then those after training (any of them can be a sweep's metric).
TASK_METRICS = {
    name: [
        *t.eval_metrics,
        *SERVING_METRICS,
        *AFTER_METRICS["merge_check"],
        *(AFTER_METRICS["forgetting"] if t.perplexity else []),
    ]
    for name, t in TASKS_BY_NAME.items()
}


def compose(overrides: list[str] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/<config_name>.yaml over the schema with Hydra overrides, then check every field: a bad override,
    an unknown key or a value a field does not take is a ConfigError naming the field."""
    schema.store()
    _check_overrides(overrides)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="lorasweep"):
            cfg = hydra_compose(config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise _refusal(e, overrides) from None
    _check_keys(cfg)  # Hydra force-adds `+key` even into typed sections: a typo would be silently ignored
    schema.check_fields(cfg)
    return cfg


def _check_overrides(overrides) -> None:
    """A field's value as typed, before OmegaConf converts it: a typed node would take 3 or "no" for true/false."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError("override", " ".join(overrides), f"Hydra rejected it: {str(e).strip().splitlines()[0]}")
    for o in parsed:
        value = None if o.is_delete() else o.value()
        group = (CONF_DIR / o.key_or_group).is_dir()  # sweep=<name> picks a file of the group, not a value
        if o.key_or_group in schema.FIELDS and not group and not o.is_delete() and "${" not in str(value):
            schema.check_value(o.key_or_group, value)


def _refusal(e: Exception, overrides) -> ConfigError:
    """Hydra's or OmegaConf's error as the one-line ConfigError of the field it names."""
    cause = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__ or cause.__context__  # Hydra wraps OmegaConf's error, once per config it was composing
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        return _unknown(key, _given(key, overrides))
    if isinstance(cause, OmegaConfBaseException) and key in schema.FIELDS:
        return ConfigError(key, _given(key, overrides), schema.FIELDS[key].metadata["check"].allowed)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    missing = re.search(r"Could not find '(\w+)/([^']+)'", first)
    if missing and (CONF_DIR / missing[1]).is_dir():  # a preset that does not exist: list those that do
        presets = sorted(p.stem for p in (CONF_DIR / missing[1]).glob("*.yaml"))
        return ConfigError(missing[1], missing[2], f"one of {presets}")
    return ConfigError("override", " ".join(overrides), f"Hydra rejected it: {first}")


def _given(key: str, overrides):
    """The value an override gave `key`, as Hydra parses it (for the message), or None when a preset set it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.key_or_group == key and not o.is_delete():
            return o.value()
    return None


def _check_keys(cfg: DictConfig, prefix: str = "") -> None:
    for k in cfg.keys():
        path = f"{prefix}{k}"
        if path in schema.FREE_FORM:
            continue
        if schema.section(path) is not None:
            _check_keys(cfg[k], path + ".")
        elif path not in schema.FIELDS:
            raise _unknown(path, _plain(cfg[k]))


def _unknown(key: str, value) -> ConfigError:
    import difflib

    parent, _, leaf = key.rpartition(".")
    cls = schema.section(parent)
    names = [fl.name for fl in dataclasses.fields(cls)] if cls else []
    close = difflib.get_close_matches(leaf, names, n=3)
    hint = (
        f"did you mean {', '.join(f'{parent}.{c}'.lstrip('.') for c in close)}?"
        if close
        else f"one of {', '.join(f'{parent}.{c}'.lstrip('.') for c in names)}"
    )
    return ConfigError(key, value, f"not a config field; {hint}")


LORAPLUS_VARIANTS = [name for name, m in METHODS.items() if m.loraplus]  # those whose trained B is lora_B
# Combinations PEFT refuses (or that cannot train), with the reason.
UNSUPPORTED = {(name, q): why for name, m in METHODS.items() for q, why in m.quant_refused.items()}


def tracking_uri(cfg: DictConfig) -> str:
    """MLFLOW_TRACKING_URI wins over tracking.uri, as in MLflow itself."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.tracking.uri)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_capable() -> bool:
    """Whether this machine runs bf16 autocast: CUDA with bf16 support (Ampere or newer)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def check_bf16(setting: str, bf16_capable: bool) -> None:
    """train.mixed_precision=bf16 where the device has no bf16 is refused (validate and the rule itself ask)."""
    if setting == "bf16" and not bf16_capable:
        raise ConfigError(
            "train.mixed_precision", setting, "auto or no on this machine: bf16 autocast needs a CUDA GPU with bf16"
        )


def validate(cfg: DictConfig, has_cuda: bool | None = None) -> DictConfig:
    """Every field's own check (lorasweep/schema.py), then the rules between fields that need no model or data;
    raise the first ConfigError. `has_cuda` (None: ask torch) stands for a CUDA GPU with bf16 where given."""
    schema.check_fields(cfg)
    a, q, t = cfg.adapter, cfg.quant, cfg.train
    if a.loraplus_ratio != 1 and a.variant not in LORAPLUS_VARIANTS:
        raise ConfigError(
            "adapter.loraplus_ratio",
            a.loraplus_ratio,
            f"1 with variant {a.variant!r}; LoRA+ needs a trained lora_B: {LORAPLUS_VARIANTS}",
        )
    if (a.variant, q.method) in UNSUPPORTED:
        fits = [x for x in QUANTS if (a.variant, x) not in UNSUPPORTED]
        raise ConfigError(
            "quant.method", q.method, f"one of {fits} with variant {a.variant!r}: {UNSUPPORTED[a.variant, q.method]}"
        )
    for module, install in METHODS[a.variant].needs.items():  # found without importing it (the driver stays light)
        if importlib.util.find_spec(module) is None:
            raise ConfigError("adapter.variant", a.variant, f"a method whose package is installed: {install}")
    if t.max_steps == 0 and not t.epochs > 0:
        raise ConfigError("train.epochs", t.epochs, "a number > 0 when train.max_steps is 0")
    if OPTIMS[t.optim] and not (_has_cuda() if has_cuda is None else has_cuda):
        raise ConfigError(
            "train.optim", t.optim, "adamw_torch on this machine (no CUDA); 8-bit and paged optimizers need a GPU"
        )
    if t.mixed_precision == "bf16":
        check_bf16(t.mixed_precision, bf16_capable() if has_cuda is None else has_cuda)
    _data(cfg)
    _after(cfg)
    return cfg


def _data(cfg: DictConfig) -> None:
    """The data rules and the generation eval; what needs the files is checked as they are read (data.py)."""
    d, t = cfg.data, cfg.train
    for key in ("files", "splits"):
        given = d[key]
        if given is not None and (key == "files" and d.source == "hub" or key == "splits" and d.source != "hub"):
            want = "data.splits (split names)" if key == "files" else "data.files (file names)"
            raise ConfigError(f"data.{key}", _plain(given), f"null for data.source={d.source}; it takes {want}")
    if d.source != "hub" and d.files is None and d.path is None:
        raise ConfigError("data.path", None, "a file (or data.files={train: ..., test: ...})")
    task = TASKS_BY_NAME[cfg.model.task]
    if t.generate_eval and not task.generation:
        raise ConfigError(
            "train.generate_eval", True, f"false for model.task={cfg.model.task}: its models do not generate"
        )
    metric = OmegaConf.select(cfg, "sweep.metric", default=None)
    if metric in GENERATE_METRICS and task.generation and not t.generate_eval:
        raise ConfigError("sweep.metric", metric, f"a metric the trials log: {metric} needs train.generate_eval=true")


def _plain(node):
    return OmegaConf.to_container(node) if isinstance(node, DictConfig) else node


def _after(cfg: DictConfig) -> None:
    """The after-training measurements (lorasweep/after.py) and the spectrum target rule."""
    from lorasweep.targets import spectrum_percent

    for target in cfg.adapter.targets:
        spectrum_percent(target)
    tr = cfg.tracking
    metric = OmegaConf.select(cfg, "sweep.metric", default=None)  # a sweep that ranks by a metric nobody logs
    for flag, names in AFTER_METRICS.items():
        if metric in names and metric in TASK_METRICS[cfg.model.task] and not tr[flag]:
            raise ConfigError("sweep.metric", metric, f"a metric the trials log: {metric} needs tracking.{flag}=true")
    if metric in AFTER_METRICS["merge_check"] and metric.startswith("merge_requant") and cfg.quant.method == "none":
        raise ConfigError(
            "sweep.metric",
            metric,
            "a metric the trials log: merge_requant_* needs a quantized base (quant=nf4, fp4, int8)",
        )
    if not tr.forgetting:
        return
    if not TASKS_BY_NAME[cfg.model.task].perplexity:
        raise ConfigError(
            "tracking.forgetting",
            True,
            f"false for model.task={cfg.model.task}: forgetting is a causal LM's perplexity",
        )
    if tr.forgetting_tokens < tr.forgetting_window:
        raise ConfigError(
            "tracking.forgetting_tokens",
            tr.forgetting_tokens,
            f"an integer >= tracking.forgetting_window ({tr.forgetting_window})",
        )
    from lorasweep.after import text_source

    text_source(tr)
