"""Model: load the base model (base.py finds its folder), quantized or not, and wrap it in the PEFT adapter."""

import json

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer, BitsAndBytesConfig

from lorasweep.base import AUTO, DTYPES, arch_config, check_source, folder, meta_model
from lorasweep.targets import linear_names, resolve_targets, spectrum_percent
from lorasweep.tasks import TASKS
from lorasweep.variants import METHODS, Ctx


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
