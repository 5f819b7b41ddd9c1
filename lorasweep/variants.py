"""The method registry, as PEFT registers its methods: one entry per adapter variant (and full fine-tuning) holds
what the trial, the estimator and the analysis need to know about it.

A new method is one entry here plus its preset conf/adapter/<name>.yaml. No torch, peft or transformers at module
level: the sweep driver reads the registry and never imports torch; `build` and the hooks import what they use.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasweep.checks import f, integer, number

# The adapter fields every method reads (the resolved targets are its modules; full fine-tuning spectra only).
TARGETS = ("targets",)
LORA_FIELDS = ("r", "alpha", "alpha_over_r", "dropout", "loraplus_ratio", *TARGETS)


@dataclass(frozen=True)
class Ctx:
    """What a build needs beyond the adapter section: the PEFT task type, the run's length, its seed, and the base's
    model_type (a call: reading the architecture costs a file read, and only IA3 needs it)."""

    task_type: str  # a peft.TaskType member name
    total_steps: int
    seed: int
    model_type: Callable[[], str]


@dataclass(frozen=True)
class Method:
    help: str
    # The PEFT config the method maps to, or None when the base model itself trains (no adapter).
    build: Callable[[Any, list[str], Ctx], Any]
    applies: tuple[str, ...]  # the adapter fields it reads; the others are ignored
    # Extra adapter fields this method owns, {name: (type, checks.f(default, help, check))}: the schema adds them to
    # the adapter section, so a method with new knobs touches only its entry.
    fields: dict[str, tuple[type, dataclasses.Field]] = field(default_factory=dict)
    loraplus: bool = False  # its trained B is lora_B, so LoRA+ can give B its own LR
    quant_refused: dict[str, str] = field(default_factory=dict)  # {quant.method: why it cannot train there}
    # Unloading the adapter gives back the base exactly as loaded, so a warm worker may keep the base.
    reusable_base: bool = False
    has_rank: bool = True  # adapter.r means something (an adapter rank, or a projection rank)
    mergeable: bool = True  # an adapter PEFT can merge into the base
    trains_base: bool = False  # every base weight trains (in model.dtype), nothing is wrapped
    # Estimator terms (lorasweep/estimate.py): what the trained modules keep for backward ("adapter": each adapter's
    # input and r-wide output; "trained": every Linear's input; "vectors": what IA3's scaling vectors need), and a
    # full output copy per adapted module ("adapter": in the adapter's dtype, "base": in the output dtype).
    est_inputs: str = "adapter"
    est_output: str | None = None
    # Optimizer state bytes, when not state-bytes-per-param x trainable: f(base, names, adapter_cfg, param_bytes).
    est_optimizer: Callable[[Any, list[str], Any, int], dict] | None = None
    callbacks: tuple[str, ...] = ()  # dotted paths of TrainerCallback classes the trial adds
    # TrainingArguments the method sets, f(adapter_cfg, targets); an `optim` there means the Trainer builds the
    # optimizer (no LoRA+ grouping).
    training_args: Callable[[Any, list[str]], dict] | None = None
    # After the adapter wraps the base: f(peft_model, base_folder, adapter_cfg), e.g. an initialisation that reads
    # the float weights.
    init: Callable[[Any, str, Any], None] | None = None
    baseline: bool = False  # the arm the PEFT methods are compared with (analysis/arms.py)
    needs: dict[str, str] = field(default_factory=dict)  # {module it imports: how to install it}, checked up front


def alpha_of(a) -> float:
    return float(a.alpha_over_r * a.r) if a.get("alpha_over_r") is not None else float(a.alpha)


def _lora(**kw) -> Callable:
    """A LoraConfig with the shared fields; `kw` are the variant's own LoraConfig switches."""

    def build(a, targets: list[str], ctx: Ctx):
        from peft import LoraConfig

        return LoraConfig(
            r=a.r,
            lora_alpha=alpha_of(a),
            lora_dropout=a.dropout,
            task_type=ctx.task_type,
            target_modules=targets,
            **kw,
        )

    return build


def _vera(a, targets: list[str], ctx: Ctx):
    from peft import VeraConfig

    return VeraConfig(
        r=a.r, vera_dropout=a.dropout, projection_prng_key=ctx.seed, task_type=ctx.task_type, target_modules=targets
    )


def _ia3(a, targets: list[str], ctx: Ctx):
    # (IA)³ learns one vector per module: it scales the outputs of attention modules and the inputs of MLP ones
    # (the paper's feed-forward scaling), which PEFT must be told by name. No rank, alpha or dropout.
    from peft import IA3Config

    from lorasweep.targets import family, feedforward

    ff = feedforward(targets, family(ctx.model_type()))
    return IA3Config(feedforward_modules=ff, task_type=ctx.task_type, target_modules=targets)


def _adalora(a, targets: list[str], ctx: Ctx):
    # The rank budget starts at r and is pruned to r/2 between 10% and 70% of training
    # (AdaLoRA needs tinit < total_step - tfinal, so very short runs start pruning at once).
    from peft import AdaLoraConfig

    steps = ctx.total_steps
    return AdaLoraConfig(
        init_r=a.r,
        target_r=max(1, a.r // 2),
        lora_alpha=alpha_of(a),
        lora_dropout=a.dropout,
        total_step=steps,
        tinit=steps // 10,
        tfinal=steps * 3 // 10,
        deltaT=max(1, steps // 20),
        task_type=ctx.task_type,
        target_modules=targets,
    )


def _no_adapter(a, targets: list[str], ctx: Ctx) -> None:
    return None


def _galore_args(a, targets: list[str]) -> dict:
    """transformers' GaLore optimizer: every weight trains, the targets' gradients are projected to rank r, their
    Adam moments kept at that rank, the projection renewed every galore_update_gap steps."""
    return {
        "optim": "galore_adamw",
        "optim_target_modules": "|".join(map(re.escape, targets)),  # a full match: exactly these modules
        "optim_args": f"rank={a.r},update_proj_gap={a.galore_update_gap},scale={a.galore_scale}",
    }


def _galore_state(base, names: list[str], a, param_bytes: int) -> dict:
    """GaLoreAdamW's state: a projected m x n weight keeps its projection (k x min(m, n)) and two moments of the
    projected gradient (k x max(m, n)), k = min(r, m, n); every other parameter two full moments. All in the
    parameter's dtype (zeros_like of the gradient)."""
    mods = dict(base.named_modules())
    projected = {id(mods[n].weight): mods[n].weight.shape for n in names}
    count = 0
    for p in base.parameters():
        if id(p) in projected:
            m, n = projected[id(p)]
            k = min(int(a.r), m, n)
            count += 2 * k * max(m, n) + k * min(m, n)
        else:
            count += 2 * p.numel()
    note = f"galore_adamw: rank-{a.r} moments and projection for {len(names)} matrices, full moments elsewhere"
    return {"bytes": count * param_bytes, "note": note}


def _loftq_init(peft_model, base_folder: str, a) -> None:
    """LoftQ (Li et al., 2023), one alternation on the loaded 4-bit base: B·A is the rank-r SVD of W - dequant(W_q),
    divided by the LoRA scaling, so that W_q + scaling·B·A is the best rank-r correction of the quantized weight.
    Written here because PEFT's loftq_init and replace_lora_weights_loftq move the weights to a hard-coded CUDA (or
    XPU) device; the same arithmetic runs here on the device the weights are on."""
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora.bnb import Linear4bit
    from safetensors import safe_open

    folder = Path(base_folder)
    if not folder.is_dir():  # a hub id: its cached snapshot (the weights were loaded from there)
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(base_folder, local_files_only=True))
    where = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as h:
            where.update(dict.fromkeys(h.keys(), file))
    prefix = peft_model.get_base_model().base_model_prefix
    name = peft_model.active_adapter
    for path, module in peft_model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        key = path.removeprefix("base_model.model.") + ".weight"
        # a checkpoint of the bare model names its weights without the task model's prefix (bert.), or the reverse
        found = next(k for k in (key, key.removeprefix(prefix + "."), f"{prefix}.{key}") if k in where)
        with safe_open(str(where[found]), "pt") as h:
            w = h.get_tensor(found).to(module.weight.device, torch.float32)
        q = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(torch.float32)
        u, sv, vh = torch.linalg.svd(w - q, full_matrices=False)
        r, lora_a, lora_b = module.r[name], module.lora_A[name].weight, module.lora_B[name].weight
        root = sv[:r].sqrt() / math.sqrt(module.scaling[name])
        lora_b.data = (u[:, :r] * root).to(lora_b.dtype)
        lora_a.data = (root[:, None] * vh[:r]).to(lora_a.dtype)


_SVD_OF_FLOATS = "PiSSA initialises from an SVD of float weights, not quantized ones"
_TRAINS_4BIT = "full-parameter training trains every weight, and 4-bit weights cannot be trained"
_TRAINS_8BIT = "full-parameter training trains every weight, and 8-bit weights cannot be trained"
_FLOAT_ONLY = {"nf4": _TRAINS_4BIT, "fp4": _TRAINS_4BIT, "int8": _TRAINS_8BIT}

METHODS: dict[str, Method] = {
    "lora": Method(
        "LoRA: a trained low-rank update B·A beside each target Linear",
        _lora(),
        LORA_FIELDS,
        loraplus=True,
        reusable_base=True,
    ),
    "rslora": Method(
        "rank-stabilised LoRA: scaling alpha/sqrt(r) instead of alpha/r",
        _lora(use_rslora=True),
        LORA_FIELDS,
        loraplus=True,
        reusable_base=True,
    ),
    "dora": Method(
        "DoRA: LoRA on the direction of each weight, plus a trained magnitude per output",
        _lora(use_dora=True),
        LORA_FIELDS,
        loraplus=True,
        quant_refused={"int8": "PEFT's DoRA cannot take the weight norm of LLM.int8() weights (use nf4 or fp4)"},
        reusable_base=True,
        est_output="base",  # DoRA recomputes the adapted output and its norm scale: about one more output
    ),
    "pissa": Method(
        "PiSSA: LoRA initialised from the top singular vectors of each weight (the residual stays frozen)",
        _lora(init_lora_weights="pissa_niter_4"),
        LORA_FIELDS,
        loraplus=True,
        quant_refused=dict.fromkeys(("nf4", "fp4", "int8"), _SVD_OF_FLOATS),
    ),
    "vera": Method(
        "VeRA: frozen shared random projections, two trained scaling vectors per module",
        _vera,
        ("r", "dropout", *TARGETS),
        est_output="adapter",  # VeRA also scales a full output
    ),
    "adalora": Method(
        "AdaLoRA: SVD-shaped LoRA whose rank budget (r, then r/2) is reallocated during training",
        _adalora,
        ("r", "alpha", "alpha_over_r", "dropout", *TARGETS),
        callbacks=("lorasweep.train.AdaLoraBudget",),
    ),
    "ia3": Method(
        "(IA)³: one trained scaling vector per target module",
        _ia3,
        TARGETS,
        has_rank=False,
        est_inputs="vectors",
    ),
    "full": Method(
        "full fine-tuning, the baseline: every weight of the base trains, no adapter (targets: spectra only)",
        _no_adapter,
        TARGETS,
        quant_refused=_FLOAT_ONLY,
        has_rank=False,
        mergeable=False,
        trains_base=True,
        est_inputs="trained",
        baseline=True,
    ),
    "galore": Method(
        "GaLore: full-parameter training whose optimizer projects the targets' gradients to rank r (galore-torch)",
        _no_adapter,
        ("r", "galore_update_gap", "galore_scale", *TARGETS),
        fields={
            "galore_update_gap": (
                int,
                f(200, "GaLore: steps between two SVDs of the gradient (new projection)", integer(1)),
            ),
            "galore_scale": (
                float,
                f(0.25, "GaLore: scale of the projected-back update (its alpha)", number(0, low_open=True)),
            ),
        },
        quant_refused=_FLOAT_ONLY,
        mergeable=False,
        trains_base=True,
        est_inputs="trained",
        est_optimizer=_galore_state,
        training_args=_galore_args,
        needs={"galore_torch": "galore-torch (pip install -e '.[galore]')"},
    ),
    "loftq": Method(
        "LoftQ: LoRA on a 4-bit base, initialised so that W_q + B·A approximates the float weight W",
        _lora(),
        LORA_FIELDS,
        loraplus=True,
        quant_refused={
            "none": "LoftQ fits B·A to a 4-bit base's quantization error: use quant=nf4 or fp4",
            "int8": "LoftQ here reads bitsandbytes 4-bit weights: use quant=nf4 or fp4",
        },
        init=_loftq_init,
    ),
}

BASELINE = next(name for name, m in METHODS.items() if m.baseline)
LORA = "lora"  # plain LoRA: the arm LoRA Without Regret relates to full fine-tuning (analysis/arms.py)
