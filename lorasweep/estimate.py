"""Memory and parameter estimator: exact trainable counts from a meta-device PEFT model (or, for full fine-tuning,
the model itself), VRAM per component, fits-on-GPU."""

import copy
import json
import math
import sys

import torch
import torch.nn as nn
from omegaconf import DictConfig
from transformers import PretrainedConfig

from lorasweep.base import arch_config, meta_model
from lorasweep.errors import ConfigError
from lorasweep.model import peft_config
from lorasweep.targets import GROUPS, HEADS, family, module_type, resolve_targets, spectrum_percent
from lorasweep.tasks import TASKS
from lorasweep.variants import METHODS

MIB, GIB = 2**20, 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTS = ["none", "nf4", "fp4", "int8"]
# Optimizer state bytes per trainable param: AdamW keeps two fp32 moments, the 8-bit ones two uint8 moments.
OPTIM_STATE = {
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "adamw_hf": 8,
    "adamw": 8,
    "paged_adamw_32bit": 8,
    "adamw_apex_fused": 8,
    "adamw_8bit": 2,
    "adamw_bnb_8bit": 2,
    "paged_adamw_8bit": 2,
    "sgd": 0,
    "adafactor": 4,
    "lion_8bit": 1,
    "paged_lion_8bit": 1,
    "lion_32bit": 4,
    "paged_lion_32bit": 4,
    "rmsprop": 4,
}
# torch's own optimizers keep their state in the parameter's dtype (zeros_like): the bytes above are for fp32
# params, as adapters are; a fully fine-tuned 16-bit model keeps 16-bit states. bitsandbytes' fixed sizes stay.
TORCH_STATE = {"adamw_torch", "adamw_torch_fused", "adamw", "rmsprop"}
GPU_SIZES_GB = (24, 48, 80)
BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes 4-bit blocksize and double-quant blocksize
WORKSPACE = 64 * MIB  # cuBLAS + cuBLASLt workspaces, allocated through PyTorch's allocator (seen on H100)
CUDA_CONTEXT = 512 * MIB  # driver context and kernels: outside the allocator, never in max_memory_allocated
SLACK = 0.10  # caching-allocator fragmentation: reserved/allocated was 1.05-1.30 on the measured rows


def block_list(model: nn.Module, layers: int) -> str | None:
    """Dotted name of the ModuleList that holds the repeated blocks."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and layers > 0 and len(mod) == layers:
            return name
    return None


def homogeneous(blocks: nn.ModuleList) -> bool:
    """Every block has the same parameter names and shapes: then one block's adapter is every block's."""

    def sig(b: nn.Module) -> list:
        return [(n, tuple(p.shape)) for n, p in b.named_parameters()]

    first = sig(blocks[0])
    return all(sig(b) == first for b in blocks[1:])


def shallow(config: PretrainedConfig, layers: int) -> PretrainedConfig:
    c = copy.deepcopy(config)
    c.num_hidden_layers = layers
    if isinstance(getattr(c, "layer_types", None), list):
        c.layer_types = c.layer_types[:layers]
    return c


def param_counts(cfg: DictConfig, config: PretrainedConfig, base: nn.Module, num_labels: int | None) -> dict:
    """Exact counts from the real PEFT model on the meta device. Stacks of identical blocks are wrapped one block
    deep and the block's share multiplied by the depth (wrapping 80 blocks takes seconds, one block milliseconds)."""
    from peft import get_peft_model

    layers = arch_sizes(config)["layers"]
    path = block_list(base, layers)
    scale = layers if path and layers > 1 and homogeneous(base.get_submodule(path)) else 1
    model = meta_model(shallow(config, 1), cfg.model.task) if scale > 1 else base
    names = resolve_targets(model, config.model_type, list(cfg.adapter.targets))
    base_params = {id(p) for p in model.parameters()}
    pc = peft_config(cfg, names)
    with torch.device("meta"):
        peft = get_peft_model(model, pc) if pc is not None else model  # full fine-tuning trains the model itself

    def in_block(n: str) -> bool:
        return path is not None and f"{path}.0." in n

    count = {"trainable": 0, "adapter": 0, "buffers": 0}
    for n, p in peft.named_parameters():
        k = scale if in_block(n) else 1
        count["trainable"] += k * p.numel() * p.requires_grad
        count["adapter"] += k * p.numel() * (id(p) not in base_params)
    for n, b in peft.named_buffers():  # VeRA's shared projections: not parameters, but on the GPU all the same
        count["buffers"] += (scale if in_block(n) else 1) * b.numel() * ("vera_" in n)
    base_total = sum(p.numel() for p in base.parameters())
    total = base_total + count["adapter"]
    return {
        "trainable": count["trainable"],
        "total": total,
        "base": base_total,
        "adapter_total": count["adapter"] + count["buffers"],
        "trainable_pct": 100.0 * count["trainable"] / total,
    }


def quantizable(base: nn.Module, task: str) -> dict[str, nn.Linear]:
    """The Linear layers bitsandbytes would quantize: all but the task heads (lm_head, classifier, pooler, score)."""
    skip = HEADS | set(TASKS[task].unquantized_heads)  # as lorasweep.model tells bitsandbytes
    return {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear) and not (set(n.split(".")) & skip)}


def nf4_bytes(n: int, double_quant: bool) -> int:
    """4-bit packed weight plus absmax: fp32 per 64-block, or (double quant) uint8 per block + fp32 per 256 blocks."""
    blocks = math.ceil(n / BLOCK)
    if not double_quant:
        return math.ceil(n / 2) + 4 * blocks + 16 * 4  # + the 16-entry NF4/FP4 code
    nested = math.ceil(blocks / NESTED_BLOCK)
    return math.ceil(n / 2) + blocks + 4 * nested + 4 + 256 * 4 + 16 * 4  # + offset, the 8-bit code, the 4-bit code


def int8_bytes(weight_shape: tuple[int, int]) -> int:
    """LLM.int8(): one int8 per weight and one fp32 scale per output row."""
    out, inp = weight_shape
    return out * inp + 4 * out


def weight_memory(base: nn.Module, task: str, quant: DictConfig, dtype: str) -> dict:
    """Base weights at the chosen quant; k-bit preparation upcasts every non-quantized param to fp32."""
    q = quantizable(base, task) if quant.method != "none" else {}
    qweights = {id(m.weight) for m in q.values()}
    quantized = sum(m.weight.numel() for m in q.values())
    others = sum(p.numel() for p in base.parameters() if id(p) not in qweights)
    if quant.method in ("nf4", "fp4"):
        qbytes = sum(nf4_bytes(m.weight.numel(), bool(quant.double_quant)) for m in q.values())
    elif quant.method == "int8":
        qbytes = sum(int8_bytes(tuple(m.weight.shape)) for m in q.values())
    else:
        qbytes = 0
    other_bytes = others * (4 if quant.method != "none" else DTYPE_BYTES[dtype])
    return {
        "bytes": qbytes + other_bytes,
        "quantized_params": quantized,
        "unquantized_params": others,
        "quantized_bytes": qbytes,
        "unquantized_bytes": other_bytes,
        "unquantized_dtype": "float32" if quant.method != "none" else dtype,
    }


def arch_sizes(config: PretrainedConfig) -> dict:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {
        "h": c.hidden_size,
        "i": c.intermediate_size,
        "layers": c.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(c, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab": c.vocab_size,
    }


def _input_group(name: str, fam: str | None) -> str:
    """Linears fed by the same tensor (q/k/v after the norm; gate/up) share one saved input when nothing casts it."""
    parent, kind = name.rsplit(".", 1)[0].rsplit(".", 1)[0], module_type(name, fam)
    return parent + {"q": ":qkv", "k": ":qkv", "v": ":qkv", "gate": ":gu", "up": ":gu"}.get(kind, ":" + name)


def dtypes(quant: str, model_dtype: str, autocast: bool) -> dict[str, int]:
    """Bytes per element of the residual stream (R), base Linear outputs (O) and the attention kernel's inputs (D)."""
    r = 4 if quant != "none" else DTYPE_BYTES[model_dtype]  # k-bit prep upcasts embeddings and norms to fp32
    o = r if quant != "none" else (2 if autocast else r)  # bnb casts its output back to the input dtype
    return {"R": r, "O": o, "D": 2 if autocast else o}


def adapter_inputs(
    base: nn.Module,
    fam: str | None,
    target_names: list[str],
    dt: dict,
    autocast: bool,
    dropout: float,
    output: str | None,
    r: int,
) -> float:
    """Bytes per token the adapters save over all layers: each adapted Linear keeps its (cast) input for lora_A's
    grad, lora_A's output, and (Method.est_output) a full output copy in the adapter's or the output's dtype."""
    mods = dict(base.named_modules())
    shared: dict[str, int] = {}
    total = 0.0
    for n in target_names:
        lin = mods[n]
        fin, fout = lin.in_features, lin.out_features
        in_dtype = dt["O"] if module_type(n, fam) in ("o", "down") else dt["R"]
        if dropout > 0:  # dropout makes a fresh copy per Linear and keeps a 1-byte mask
            total += fin * ((2 if autocast else 4) + 1)
        elif autocast:  # autocast casts the fp32 adapter input to bf16 per call: a fresh copy each
            total += 2 * fin
        elif in_dtype != 4:  # PEFT casts the input to the fp32 adapter dtype: a fresh copy each
            total += 4 * fin
        else:  # fp32 input used as is: one saved tensor per group
            key = _input_group(n, fam)
            shared[key] = max(shared.get(key, 0), 4 * fin)
        small = 2 if autocast else 4
        total += small * r + {"adapter": small, "base": dt["O"], None: 0}[output] * fout
    return total + sum(shared.values())


def trained_inputs(base: nn.Module, fam: str | None, names: list[str], dt: dict, autocast: bool) -> float:
    """Full fine-tuning: bytes per token each trained Linear keeps of its input for its weight's gradient; a fresh
    bf16 copy each under autocast, else the input itself, once per shared input (q/k/v, gate/up). Not calibrated
    against measurements (docs/estimate.md)."""
    mods = dict(base.named_modules())
    shared: dict[str, int] = {}
    total = 0.0
    for n in names:
        fin = mods[n].in_features
        if autocast and dt["R"] == 4:
            total += 2 * fin
        else:
            key = _input_group(n, fam)
            in_dtype = dt["O"] if module_type(n, fam) in ("o", "down") else dt["R"]
            shared[key] = max(shared.get(key, 0), in_dtype * fin)
    return total + sum(shared.values())


def ia3_inputs(base: nn.Module, fam: str | None, names: list[str], dt: dict) -> float:
    """IA3: bytes per token for its vectors' gradients. An MLP (feed-forward) module keeps its input in fp32, the
    vector's dtype (a fresh copy unless the input is fp32 already, then once per shared input); an attention module
    keeps its output cast to fp32. Not calibrated against measurements."""
    mods = dict(base.named_modules())
    shared: dict[str, int] = {}
    total = 0.0
    for n in names:
        lin = mods[n]
        if module_type(n, fam) not in GROUPS["mlp"]:
            total += 4 * lin.out_features
        elif (dt["O"] if module_type(n, fam) == "down" else dt["R"]) != 4:
            total += 4 * lin.in_features
        else:
            key = _input_group(n, fam)
            shared[key] = max(shared.get(key, 0), 4 * lin.in_features)
    return total + sum(shared.values())


def layer_bytes(s: dict, fam: str | None, dt: dict, seq: int) -> dict[str, float]:
    """Bytes per token one block saves for backward, without the adapters' own inputs (see docs/estimate.md)."""
    h, i, hq, kvd = s["h"], s["i"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    R, O, D = dt["R"], dt["O"], dt["D"]
    if fam == "bert":  # LayerNorm keeps its input; GELU its input; dropout masks on two residual branches
        return {"saved": 2 * R * h + D * 4 * hq + O * i + 2 * h, "transient": 0.0}
    norms = 2 * 4 * h  # RMSNorm keeps an fp32 copy of its input (the input itself when already fp32)
    mlp = 3 * O * i  # gate out (act input), act out, up out
    math_path = D == 4 and kvd < hq  # fp32 with GQA: SDPA falls back to the math kernel, which keeps the scores
    if math_path:
        attn = 4 * 3 * hq + 4 * s["heads"] * seq  # q, repeated k and v, softmax probabilities (s^2 per sequence)
        transient = 2 * 4 * s["heads"] * seq  # the backward's two extra score-sized buffers, one layer at a time
    else:
        attn = D * (2 * hq + 2 * kvd)  # flash/efficient kernel keeps q, k, v and its output
        transient = 0.0
    return {"saved": norms + attn + mlp, "transient": transient}


def autocast_copies(base: nn.Module, task: str, quant: str, dtype: str, layers: int) -> tuple[int, int]:
    """Bytes of the bf16 copies autocast makes of Linear weights not in bf16, which autograd keeps for the backward:
    (the heads', one block's). Those are the fp32 ones k-bit preparation leaves unquantized (the heads), or every
    Linear of a float32 or float16 model. On the H100 rows this is what autocast adds to a QLoRA peak that the loss
    sets: +63 MiB (llama_300m) and +125 MiB (llama_1b), the lm_head's bf16 copy."""
    if quant == "none" and dtype == "bfloat16":
        return 0, 0
    every = sum(m.weight.numel() for m in base.modules() if isinstance(m, nn.Linear))
    inner = sum(m.weight.numel() for m in quantizable(base, task).values())
    return 2 * (every - inner), (2 * inner // max(1, layers) if quant == "none" else 0)


def activation_bytes(
    s: dict,
    fam: str | None,
    task: str,
    dt: dict,
    lora_in: float,
    batch: int,
    seq: int,
    checkpointing: bool,
    copies: tuple[int, int] = (0, 0),
) -> dict:
    """Peak activation bytes: what the blocks keep, plus the larger of the loss peak and one block's backward.
    `copies` (autocast_copies) are alive with the loss (the heads') and with their block's backward."""
    tokens = batch * seq
    layer = layer_bytes(s, fam, dt, seq)
    per_layer = layer["saved"] + lora_in / s["layers"]
    head = TASKS[task].logit_copies * s["vocab"]
    heads_copy, block_copy = copies
    if checkpointing:  # only block inputs stay; one block is recomputed at a time during backward
        kept = s["layers"] * dt["R"] * s["h"]
        recompute = (per_layer + layer["transient"] + 2 * dt["R"] * s["h"]) * tokens + block_copy
        peak = kept * tokens + max(head * tokens + heads_copy, recompute)
    else:
        kept = s["layers"] * per_layer
        peak = kept * tokens + s["layers"] * block_copy + heads_copy + max(head, layer["transient"]) * tokens
    return {"bytes": int(peak), "per_layer_token": per_layer, "loss_peak_token": head}


def _settings(cfg: DictConfig, batch_size, seq_len, gradient_checkpointing, optim, autocast) -> dict:
    est = cfg.get("estimate") or {}

    def pick(given, key, fallback):
        return given if given is not None else (est.get(key) if est.get(key) is not None else fallback)

    out = {
        "batch_size": int(pick(batch_size, "batch_size", cfg.train.batch_size)),
        "seq_len": int(pick(seq_len, "seq_len", cfg.data.get("max_length") or 512)),
        "gradient_checkpointing": bool(
            pick(gradient_checkpointing, "gradient_checkpointing", cfg.train.gradient_checkpointing)
        ),
        "optim": str(pick(optim, "optim", cfg.train.optim)),
        "autocast": None if autocast is None else bool(autocast),  # None: train.mixed_precision decides
        "num_labels": int(est.get("num_labels") or 2),
    }
    if out["optim"] not in OPTIM_STATE:
        field = "estimate.optim" if optim is None and est.get("optim") is not None else "train.optim"
        raise ConfigError(field, out["optim"], f"one the estimator knows: {sorted(OPTIM_STATE)}")
    for key in ("batch_size", "seq_len"):
        if out[key] < 1:
            raise ConfigError(f"estimate.{key}", out[key], "an integer >= 1")
    return out


def vram_mb(cfg: DictConfig) -> dict[str, float]:
    """{"est_vram_mb": the predicted peak VRAM in MiB} (what torch.cuda.max_memory_allocated() should show): a cost
    that means the same on any machine, where a CPU's peak RSS spans every trial of a worker. Empty for a spectrum
    rule, which picks layers by their weights: the estimator counts one block and multiplies by the depth."""
    if any(spectrum_percent(t) is not None for t in cfg.adapter.targets):
        return {}
    return {"est_vram_mb": predicted(cfg)["est_vram_mb"]}


def predicted(cfg: DictConfig, est: dict | None = None) -> dict[str, float]:
    """The costs known before training (config.PREDICTED_COSTS), as the trial will log them: what sweep.max_cost
    bounds. `est` is this config's estimate() where the caller has it."""
    est = est or estimate(cfg)
    return {
        "trainable_params": float(est["params"]["trainable"]),
        "trainable_pct": float(est["params"]["trainable_pct"]),
        "est_vram_mb": est["memory"]["peak_allocated"]["bytes"] / 2**20,
    }


def over_limits(costs: dict[str, float], limits: tuple[tuple[str, float], ...]) -> str | None:
    """Why a config is not trained (`predicted est_vram_mb 9,120 > 8,000`), or None when every cost is in bounds."""

    def show(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:.4g}"

    over = [f"{c} {show(costs[c])} > {show(bound)}" for c, bound in limits if costs[c] > bound]
    return f"not trained: predicted {', '.join(over)} (sweep.max_cost)" if over else None


def bf16_autocast(setting: str, bf16_capable: bool, activations: dict[bool, int] | None = None) -> bool:
    """train.mixed_precision as the Trainer's bf16 flag: the one rule, for trials (lorasweep.train) and estimates.
    `activations`: estimated peak activation bytes without (False) and with (True) autocast, read for auto on a bf16
    device. auto takes bf16 where the estimate with autocast is no higher. The H100 pairs decide it
    (docs/performance.md): autocast raised the peak only where the loss sets a checkpointed QLoRA peak (+1.5-5.4 %,
    the lm_head's bf16 copy), lowered it 14-52 % wherever the blocks' activations set it, and tied for checkpointed
    bf16 LoRA, running 1.11-1.36x faster there; the estimate orders all 34 pairs the same way."""
    from lorasweep.config import check_bf16

    check_bf16(setting, bf16_capable)
    if setting != "auto" or not bf16_capable:
        return setting == "bf16"
    return activations[True] <= activations[False]


def trial_autocast(cfg: DictConfig, bf16_capable: bool) -> bool:
    """Whether a trial of cfg trains under bf16 autocast: bf16_autocast at the trial's own batch, length,
    checkpointing and optimizer (the estimate.* fields are for `lorasweep estimate`). A spectrum rule's layers are
    known only once the weights load; all-linear stands in for them (adapter inputs are a small share of the peak)."""
    t = cfg.train
    if t.mixed_precision != "auto" or not bf16_capable:
        return bf16_autocast(t.mixed_precision, bf16_capable)
    if any(spectrum_percent(x) is not None for x in cfg.adapter.targets):
        cfg = copy.deepcopy(cfg)
        cfg.adapter.targets = ["all-linear"]
    est = estimate(cfg, t.batch_size, cfg.data.max_length, t.gradient_checkpointing, t.optim, bf16_capable=True)
    return est["autocast"]


def estimate(
    cfg: DictConfig,
    batch_size: int | None = None,
    seq_len: int | None = None,
    gradient_checkpointing: bool | None = None,
    optim: str | None = None,
    autocast: bool | None = None,
    bf16_capable: bool = True,
) -> dict:
    """Trainable params (exact) and peak training memory by component (bytes) for one config. `autocast` None: what
    train.mixed_precision picks on a device with bf16 (`bf16_capable`, the default: sizing a GPU job) or without."""
    st = _settings(cfg, batch_size, seq_len, gradient_checkpointing, optim, autocast)
    m, q, a = cfg.model, cfg.quant, cfg.adapter
    if q.method not in QUANTS:
        raise ConfigError("quant.method", q.method, f"one of {QUANTS}")
    if m.dtype not in DTYPE_BYTES:
        raise ConfigError("model.dtype", m.dtype, f"one of {sorted(DTYPE_BYTES)}")
    num_labels = st["num_labels"] if TASKS[m.task].labels else None
    config = arch_config(m, num_labels)
    base = meta_model(config, m.task)
    fam = family(config.model_type)
    names = resolve_targets(base, config.model_type, list(a.targets))
    sizes = arch_sizes(config)
    weights = weight_memory(base, m.task, q, m.dtype)
    method = METHODS[a.variant]
    every = resolve_targets(base, config.model_type, ["all-linear"]) if method.est_inputs == "trained" else []
    copies = autocast_copies(base, m.task, q.method, m.dtype, sizes["layers"])
    acts = {}  # [autocast][checkpointing]
    for ac in (False, True):
        dt = dtypes(q.method, m.dtype, ac)
        if method.est_inputs == "trained":  # every Linear of the blocks is trained, whatever the targets
            lora_in = trained_inputs(base, fam, every, dt, ac)
        elif method.est_inputs == "vectors":
            lora_in = ia3_inputs(base, fam, names, dt)
        else:
            lora_in = adapter_inputs(base, fam, names, dt, ac, float(a.dropout), method.est_output, int(a.r))
        acts[ac] = {
            ck: activation_bytes(
                sizes, fam, m.task, dt, lora_in, st["batch_size"], st["seq_len"], ck, copies if ac else (0, 0)
            )
            for ck in (False, True)
        }
    ck = st["gradient_checkpointing"]
    if st["autocast"] is None:
        by_autocast = {ac: acts[ac][ck]["bytes"] for ac in (False, True)}
        st["autocast"] = bf16_autocast(cfg.train.mixed_precision, bf16_capable, by_autocast)
    acts = acts[bool(st["autocast"])]
    params = param_counts(cfg, config, base, num_labels)  # last: PEFT may wrap `base` in place

    trainable = params["trainable"]
    # An adapter is fp32 (PEFT upcasts 16-bit adapters); a fully fine-tuned model trains in model.dtype.
    full = method.trains_base
    grad_bytes = DTYPE_BYTES[m.dtype] if full else 4
    state = OPTIM_STATE[st["optim"]]
    if full and st["optim"] in TORCH_STATE:
        state = state * DTYPE_BYTES[m.dtype] // 4
    optim = {"bytes": state * trainable, "note": f"{st['optim']}: {state} B per trainable param"}
    if method.est_optimizer is not None:  # a method with its own optimizer state (GaLore's low-rank moments)
        optim = method.est_optimizer(base, names, a, grad_bytes)
    mem = {
        "weights": _part(
            weights["bytes"],
            True,
            f"{q.method} base: {weights['quantized_params']:,} quantized params, "
            f"{weights['unquantized_params']:,} kept in {weights['unquantized_dtype']}",
        ),
        "adapter": _part(
            4 * params["adapter_total"],
            True,
            "none: full fine-tuning trains the base weights"
            if full
            else "adapter weights in fp32 (PEFT upcasts 16-bit adapters)",
        ),
        "gradients": _part(
            grad_bytes * trainable, True, f"{'fp32' if grad_bytes == 4 else m.dtype} gradient per trainable param"
        ),
        "optimizer": _part(optim["bytes"], True, optim["note"]),
        "activations": _part(
            acts[st["gradient_checkpointing"]]["bytes"],
            False,
            "checkpointed" if st["gradient_checkpointing"] else "no checkpointing",
        ),
        "workspace": _part(WORKSPACE, False, "cuBLAS/cuBLASLt workspaces"),
    }
    allocated = sum(p["bytes"] for p in mem.values())
    mem["peak_allocated"] = _part(allocated, False, "what torch.cuda.max_memory_allocated() should show")
    mem["allocator_slack"] = _part(int(SLACK * allocated), False, "caching-allocator fragmentation")
    mem["cuda_context"] = _part(CUDA_CONTEXT, False, "CUDA context and kernels, outside PyTorch's allocator")
    total = allocated + mem["allocator_slack"]["bytes"] + CUDA_CONTEXT
    mem["total"] = _part(total, False, "peak_allocated + allocator_slack + cuda_context")
    result = {
        "model": m.name,
        "model_type": config.model_type,
        "task": m.task,
        "variant": a.variant,
        "r": int(a.r),
        "targets": list(a.targets),
        "target_modules": len(names),
        "quant": {"method": q.method, "double_quant": bool(q.double_quant)},
        "dtype": m.dtype,
        **st,
        "params": {
            **{k: params[k] for k in ("trainable", "total", "base")},
            "trainable_pct": round(params["trainable_pct"], 6),
            "exact": True,
        },
        "memory": mem,
        "activations_by_checkpointing": {"off": acts[False]["bytes"], "on": acts[True]["bytes"]},
        "mixed_precision": str(cfg.train.mixed_precision),
        "architecture": sizes,
    }
    result["fits"] = {str(g): fits(result, g) for g in GPU_SIZES_GB}
    return result


def _part(nbytes: int, exact: bool, note: str) -> dict:
    return {"bytes": int(nbytes), "gib": round(nbytes / GIB, 3), "exact": exact, "note": note}


def fits(est: dict, gpu_gb: float) -> bool:
    """Whether the estimated total (context and slack included) fits a GPU of gpu_gb GiB."""
    return est["memory"]["total"]["bytes"] <= gpu_gb * GIB


def gpu_fraction(est: dict, gpu_gb: float) -> float:
    """The share of one GPU of gpu_gb GiB that the trial needs (>1: it does not fit on one)."""
    return est["memory"]["total"]["bytes"] / (gpu_gb * GIB)


def table(est: dict) -> str:
    """The estimate as a plain-text table."""
    p = est["params"]
    dq = " dq" if est["quant"]["double_quant"] and est["quant"]["method"] in ("nf4", "fp4") else ""
    method = METHODS[est["variant"]]
    rank = f" r={est['r']}" if method.has_rank else ""
    targets = f" targets={est['targets']}"  # an adapter's modules, or those GaLore projects
    if method.trains_base:
        targets = " (no adapter: every weight)" + (targets if method.has_rank else "")
    head = (
        f"{est['model']} ({est['model_type']}, {est['task']}) {est['variant']}{rank}{targets} "
        f"quant={est['quant']['method']}{dq} "
        f"batch={est['batch_size']} seq={est['seq_len']} ckpt={est['gradient_checkpointing']} "
        f"optim={est['optim']} autocast={est['autocast']} (train.mixed_precision={est['mixed_precision']})"
    )
    rows = [
        head,
        f"trainable params  {p['trainable']:>16,}  of {p['total']:,} ({p['trainable_pct']:.4f}%)  exact",
        f"{'component':<17} {'GiB':>9}  {'kind':<8} note",
    ]
    for k, v in est["memory"].items():
        rows.append(f"{k:<17} {v['gib']:>9.3f}  {'exact' if v['exact'] else 'estimate':<8} {v['note']}")
    ab = est["activations_by_checkpointing"]
    rows.append(f"activations: {ab['off'] / GIB:.3f} GiB without checkpointing, {ab['on'] / GIB:.3f} GiB with")
    rows.append("fits: " + "  ".join(f"{g} GB {'yes' if ok else 'no'}" for g, ok in est["fits"].items()))
    return "\n".join(rows)


def cli(argv: list[str]) -> int:
    """`lorasweep estimate [hydra overrides] [--json]`: print the estimate; 2 on bad input (lorasweep.cli parses)."""
    from lorasweep.config import compose, validate

    overrides = [a for a in argv if a != "--json"]
    try:
        est = estimate(validate(compose(overrides), has_cuda=True))  # sizing a GPU job from any machine
    except ConfigError as e:
        print(f"lorasweep: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(est, indent=2) if "--json" in argv else table(est))
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
