"""Config: compose conf/ with Hydra overrides, then validate every field before anything loads."""

import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lorasweep.errors import ConfigError
from lorasweep.tasks import TASKS as TASKS_BY_NAME
from lorasweep.variants import METHODS

CONF_DIR = Path(os.environ.get("LORASWEEP_CONF", Path(__file__).resolve().parent.parent / "conf"))


# Sections whose keys are the user's own: an architecture dict, a sweep file. Elsewhere `+key=` must name a field.
FREE_FORM = ("model.config", "sweep")
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
GENERATE_METRICS = ["eval_exact_match", "eval_rougeL", "eval_bleu", "eval_chrf"]
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
    """Compose conf/<config_name>.yaml with Hydra overrides; a bad override is a ConfigError."""
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="lorasweep"):
            cfg = hydra_compose(config_name, overrides=list(overrides))
            added = [o for o in overrides if o.startswith("+") and not o.lstrip("+").startswith(FREE_FORM)]
            if added:  # Hydra adds any `+key`: a typo in a field name would be silently ignored
                known = hydra_compose(config_name, overrides=[o for o in overrides if not o.startswith(("+", "~"))])
                _check_added(added, known)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("override", " ".join(overrides), f"Hydra rejected it: {first}") from None
    return cfg


def _check_added(added: list[str], known: DictConfig) -> None:
    import difflib

    for o in added:
        key, _, value = o.lstrip("+").partition("=")
        if OmegaConf.select(known, key, default=_MISSING) is not _MISSING:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(known, parent, default=None) if parent else known
        fields = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, fields, n=3)
        hint = (
            f"did you mean {', '.join(f'{parent}.{c}'.lstrip('.') for c in close)}?"
            if close
            else f"one of {', '.join(f'{parent}.{c}'.lstrip('.') for c in fields)}"
        )
        raise ConfigError(key, value, f"not a config field; {hint}")


_MISSING = object()


# The PEFT methods, then the baseline they are compared with: full fine-tuning (every weight trained, no adapter).
VARIANTS = list(METHODS)
LORAPLUS_VARIANTS = [name for name, m in METHODS.items() if m.loraplus]  # those whose trained B is lora_B
QUANTS = ["none", "nf4", "fp4", "int8"]
TASKS = list(TASKS_BY_NAME)
DTYPE_NAMES = ["float32", "bfloat16", "float16"]
OPTIMS = {
    "adamw_torch": False,
    "adamw_8bit": True,
    "paged_adamw_8bit": True,
    "paged_adamw_32bit": True,
}  # name: needs CUDA
# transformers' SchedulerType values, listed here because importing transformers.trainer_utils costs ~3.5 s (torch,
# peft) and the sweep driver never needs torch; tests/test_config.py holds the two equal.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
SPLITS = ("train", "eval", "test")
# Combinations PEFT refuses (or that cannot train), with the reason.
UNSUPPORTED = {(name, q): why for name, m in METHODS.items() for q, why in m.quant_refused.items()}


def tracking_uri(cfg: DictConfig) -> str:
    """MLFLOW_TRACKING_URI wins over tracking.uri, as in MLflow itself."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.tracking.uri)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _num(field: str, value, ok: bool, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        raise ConfigError(field, value, allowed)


def _one_of(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, value, f"one of {list(allowed)}")


def validate(cfg: DictConfig, has_cuda: bool | None = None) -> DictConfig:
    """Check every field that can be checked without loading a model or data; raise the first ConfigError."""
    m, a, q, t = cfg.model, cfg.adapter, cfg.quant, cfg.train
    _one_of("model.task", m.task, TASKS)
    _one_of("model.dtype", m.dtype, DTYPE_NAMES)
    _one_of("adapter.variant", a.variant, VARIANTS)
    _num("adapter.r", a.r, isinstance(a.r, int) and a.r >= 1, "an integer >= 1")
    if a.alpha_over_r is not None:
        _num("adapter.alpha_over_r", a.alpha_over_r, a.alpha_over_r > 0, "a number > 0, or null to use adapter.alpha")
    else:
        _num("adapter.alpha", a.alpha, a.alpha > 0, "a number > 0")
    _num("adapter.dropout", a.dropout, 0 <= a.dropout < 1, "a number in [0, 1)")
    if isinstance(a.targets, str) or not a.targets:
        raise ConfigError("adapter.targets", a.targets, "a non-empty list, e.g. [q,v] or [all-linear]")
    _num("adapter.loraplus_ratio", a.loraplus_ratio, a.loraplus_ratio > 0, "a number > 0 (1 = plain LoRA)")
    if a.loraplus_ratio != 1 and a.variant not in LORAPLUS_VARIANTS:
        raise ConfigError(
            "adapter.loraplus_ratio",
            a.loraplus_ratio,
            f"1 with variant {a.variant!r}; LoRA+ needs a trained lora_B: {LORAPLUS_VARIANTS}",
        )
    _one_of("quant.method", q.method, QUANTS)
    _one_of("quant.compute_dtype", q.compute_dtype, DTYPE_NAMES)
    if (a.variant, q.method) in UNSUPPORTED:
        raise ConfigError(
            "quant.method", q.method, f"none with variant {a.variant!r}: {UNSUPPORTED[a.variant, q.method]}"
        )
    _num(
        "train.max_steps",
        t.max_steps,
        isinstance(t.max_steps, int) and t.max_steps >= 0,
        "an integer >= 0 (0 = use train.epochs)",
    )
    if t.max_steps == 0:
        _num("train.epochs", t.epochs, t.epochs > 0, "a number > 0 when train.max_steps is 0")
    _num("train.batch_size", t.batch_size, isinstance(t.batch_size, int) and t.batch_size >= 1, "an integer >= 1")
    _num("train.grad_accum", t.grad_accum, isinstance(t.grad_accum, int) and t.grad_accum >= 1, "an integer >= 1")
    _num("train.lr", t.lr, t.lr > 0, "a number > 0")
    _num("train.warmup_ratio", t.warmup_ratio, 0 <= t.warmup_ratio < 1, "a number in [0, 1)")
    _num("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "a number >= 0")
    _num(
        "train.eval_every", t.eval_every, isinstance(t.eval_every, int) and t.eval_every >= 1, "an integer >= 1 (steps)"
    )
    _one_of("train.sampling", t.sampling, ("group_by_length", "random"))
    _one_of("train.optim", t.optim, OPTIMS)
    if OPTIMS[t.optim] and not (_has_cuda() if has_cuda is None else has_cuda):
        raise ConfigError(
            "train.optim", t.optim, "adamw_torch on this machine (no CUDA); 8-bit and paged optimizers need a GPU"
        )
    _one_of("train.lr_scheduler", t.lr_scheduler, SCHEDULERS)
    _data(cfg)
    _after(cfg)
    return cfg


def _data(cfg: DictConfig) -> None:
    """The data fields and the generation eval; what needs the files is checked as they are read (data.py)."""
    d, t = cfg.data, cfg.train
    _one_of("data.source", d.source, ["package", "file", "hub"])
    for key in ("files", "splits"):
        given = d[key]
        if given is None:
            continue
        if key == "files" and d.source == "hub" or key == "splits" and d.source != "hub":
            want = "data.splits (split names)" if key == "files" else "data.files (file names)"
            raise ConfigError(f"data.{key}", _plain(given), f"null for data.source={d.source}; it takes {want}")
        if not isinstance(given, DictConfig) or "train" not in given or not set(given) <= set(SPLITS):
            raise ConfigError(f"data.{key}", _plain(given), f"a mapping of {list(SPLITS)} to names, with train")
    if d.source != "hub" and d.files is None and d.path is None:
        raise ConfigError("data.path", None, "a file (or data.files={train: ..., test: ...})")
    for name in ("train_size", "eval_size", "test_size"):
        v = d[name]
        ok = v is None or isinstance(v, int) and v >= 1 or isinstance(v, float) and 0 < v < 1
        if isinstance(v, bool) or not ok:
            raise ConfigError(f"data.{name}", v, "a count >= 1, a fraction in (0, 1), or null for all the rows left")
    _num("data.max_length", d.max_length, isinstance(d.max_length, int) and d.max_length >= 2, "an integer >= 2")
    for flag in ("data.chat_template", "data.group_references", "train.generate_eval"):
        if not isinstance(OmegaConf.select(cfg, flag), bool):
            raise ConfigError(flag, OmegaConf.select(cfg, flag), "true or false")
    if t.generate_eval and cfg.model.task != "causal_lm":
        raise ConfigError(
            "train.generate_eval", True, f"false for model.task={cfg.model.task}: generation needs a causal LM"
        )
    for key in ("generate_samples", "max_new_tokens"):
        _num(f"train.{key}", t[key], isinstance(t[key], int) and t[key] >= 1, "an integer >= 1")
    metric = OmegaConf.select(cfg, "sweep.metric", default=None)
    if metric in GENERATE_METRICS and cfg.model.task == "causal_lm" and not t.generate_eval:
        raise ConfigError("sweep.metric", metric, f"a metric the trials log: {metric} needs train.generate_eval=true")


def _plain(node):
    return OmegaConf.to_container(node) if isinstance(node, DictConfig) else node


def _after(cfg: DictConfig) -> None:
    """The after-training measurements (lorasweep/after.py) and the spectrum target rule."""
    from lorasweep.targets import spectrum_percent

    for target in cfg.adapter.targets:
        spectrum_percent(target)
    tr = cfg.tracking
    for flag in ("merge_check", "forgetting"):
        if not isinstance(tr[flag], bool):
            raise ConfigError(f"tracking.{flag}", tr[flag], "true or false")
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
    rank = tr.max_serving_rank
    _num("tracking.max_serving_rank", rank, isinstance(rank, int) and rank >= 1, "an integer >= 1")
    if not tr.forgetting:
        return
    if cfg.model.task != "causal_lm":
        raise ConfigError(
            "tracking.forgetting", True, "false for model.task=seq_cls: forgetting is a causal LM's perplexity"
        )
    window = tr.forgetting_window
    _num("tracking.forgetting_window", window, isinstance(window, int) and window >= 2, "an integer >= 2 (tokens)")
    _num(
        "tracking.forgetting_tokens",
        tr.forgetting_tokens,
        isinstance(tr.forgetting_tokens, int) and tr.forgetting_tokens >= tr.forgetting_window,
        f"an integer >= tracking.forgetting_window ({tr.forgetting_window})",
    )
    from lorasweep.after import text_source

    text_source(tr)
