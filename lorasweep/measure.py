"""Measurements of a trained adapter (or fully fine-tuned model): the effective-rank spectra of its learned updates
ΔW, and peak memory."""

import csv
import json
import math
import resource
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from peft.tuners.adalora.layer import AdaLoraLayer
from peft.tuners.ia3.layer import IA3Layer
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.tuners.vera.layer import VeraLayer
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose

from lorasweep import targets

Factors = tuple[torch.Tensor, torch.Tensor, float]
InitFactors = dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor]  # (B0, A0) per LoRA layer, or W0 (full)

ENERGIES = (90, 95, 99)
ADALORA_EPS = 1e-5  # the constant PEFT adds to ranknum in AdaLoRA's forward
# Adapters whose update has no ΔW spectrum to measure, and why (one line: the trial's `spectra` tag).
NO_SPECTRUM = {
    IA3Layer: "not measured: IA3 scales activations by learned vectors, a diagonal update, not a low-rank ΔW"
}


# ----------------------------------------------------------------------------------------------- updates


def _lora_ab(module: LoraLayer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """lora_B (d×r) and lora_A (r×k) of a LoRA layer; Conv layers are flattened (lora_B is always 1×1)."""
    if name in module.lora_embedding_A:  # ΔW = (B·A)ᵀ in the embedding table's (vocab × dim) layout
        return module.lora_embedding_A[name].detach().T, module.lora_embedding_B[name].detach().T
    b = module.lora_B[name].weight.detach()
    a = module.lora_A[name].weight.detach()
    return b.reshape(b.shape[0], -1), a.reshape(a.shape[0], -1)


def snapshot_factors(model: nn.Module, adapter_name: str = "default") -> InitFactors:
    """Copies of every LoRA layer's initial (B0, A0), keyed by module name.

    Take it right after get_peft_model and before training, and pass it to `update_factors` / `spectra`
    as `init`: the measured update then becomes the honest s·(B·A − B0·A0) relative to the pretrained
    weight, which matters for inits that move the base weight (PiSSA, OLoRA, LoftQ, CorDA).
    """
    snap: InitFactors = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and not isinstance(mod, AdaLoraLayer) and _has_adapter(mod, adapter_name):
            b, a = _lora_ab(mod, adapter_name)
            snap[_clean(mod_name)] = (b.clone(), a.clone())
    return snap


def snapshot(model: nn.Module, names: list[str], adapter_name: str = "default") -> InitFactors:
    """What the spectra measure training against, taken before training: on a PEFT model, `snapshot_factors`; on a
    model without an adapter (full fine-tuning), a CPU copy of the weight W0 of each named module. Only the targets
    are copied: 1.8 MB for MiniLM's q and v, but most of the model for all-linear."""
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return snapshot_factors(model, adapter_name)
    return {n: model.get_submodule(n).weight.detach().to("cpu", copy=True) for n in names}


def _dora_update(module: LoraLayer, name: str) -> torch.Tensor:
    """W' − W0 with W' = m·(W0 + sBA)/‖W0 + sBA‖ row-wise (PEFT's "column" norm of Wᵀ), in float64."""
    b, a = (t.double() for t in _lora_ab(module, name))
    s = float(module.scaling[name])
    base = module.get_base_layer()
    w0 = transpose(dequantize_module_weight(base).detach(), module.fan_in_fan_out).double()
    w0 = w0.reshape(w0.shape[0], -1)
    merged = w0 + s * (b @ a)
    mag = module.lora_magnitude_vector[name].weight.detach().double().reshape(-1, 1)
    # the forward detaches the norm but uses the same value, so this is exactly what the layer applies
    return mag / torch.linalg.norm(merged, dim=1, keepdim=True) * merged - w0


def update_factors(
    module: nn.Module,
    adapter_name: str = "default",
    init: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
) -> Factors | torch.Tensor:
    """The learned update ΔW (out×in) of a PEFT tuner layer, as low-rank factors (B, A, scale) or a formed matrix.

    - LoRA / rsLoRA / PiSSA: (B, A, scaling). For PiSSA this is what the adapter adds on top of the *residual*
      base weight; pass `init=(B0, A0)` (from `snapshot_factors`) for the update relative to the pretrained
      weight, returned as rank-2r factors [B, B0]·[A; −A0].
    - VeRA: (diag(λ_b)·B_sliced, diag(λ_d)·A_sliced, 1.0), the frozen shared projections cut to this layer.
    - AdaLoRA: (B, A⊙E, scaling/(ranknum + 1e-5)).
    - DoRA: the formed float64 matrix W' − W0 (magnitude rescaling makes it full rank); with `init`, the
      initial s·B0·A0 is subtracted too.
    - Full fine-tuning: a plain Linear with `init` its weight W0 before training (from `snapshot`): the formed
      float64 matrix W − W0.
    LoRA on an Embedding gives ΔW in the table's (vocab × dim) layout. LoRA bias terms (lora_bias=True) change the
    bias, not W, and are not part of ΔW.
    """
    if isinstance(module, AdaLoraLayer):  # before LoraLayer: AdaLoraLayer subclasses it
        b = module.lora_B[adapter_name].detach()
        ae = (module.lora_A[adapter_name] * module.lora_E[adapter_name]).detach()
        scale = float(module.scaling[adapter_name]) / (float(module.ranknum[adapter_name]) + ADALORA_EPS)
        return b, ae, scale
    if isinstance(module, VeraLayer):
        lam_b = module.vera_lambda_b[adapter_name].detach()
        lam_d = module.vera_lambda_d[adapter_name].detach()
        a = module.vera_A[adapter_name][:, : module.in_features].to(lam_d)
        b = module.vera_B[adapter_name][: module.out_features, :].to(lam_b)
        return lam_b[:, None] * b, lam_d[:, None] * a, 1.0
    if isinstance(module, LoraLayer):
        if not _has_adapter(module, adapter_name):
            raise KeyError(f"adapter {adapter_name!r} is not on this layer")
        variant = getattr(module, "lora_variant", {}).get(adapter_name)
        kind = type(variant).__name__ if variant is not None else None
        s = float(module.scaling[adapter_name])
        if kind == "DoraLinearVariant":
            delta = _dora_update(module, adapter_name)
            if init is not None:
                b0, a0 = (t.to(delta) for t in init)
                delta = delta - s * (b0 @ a0)
            return delta
        if kind is not None:  # aLoRA, Arrow, KaSA, ...: their update is not s·B·A
            raise NotImplementedError(f"no spectrum for LoRA variant {kind}")
        b, a = _lora_ab(module, adapter_name)
        if init is not None:
            b0, a0 = (t.to(b) for t in init)
            return torch.cat([b, b0], dim=1), torch.cat([a, -a0], dim=0), s
        return b, a, s
    if isinstance(module, nn.Linear) and isinstance(init, torch.Tensor):
        w = module.weight.detach()
        return w.double() - init.to(w.device).double()
    raise NotImplementedError(f"no spectrum for {type(module).__name__}")


# ----------------------------------------------------------------------------------------------- spectra


def singular_values(b: torch.Tensor | Factors, a: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Singular values (descending, float64) of scale·B·A without forming the d×k matrix.

    B = Q_B R_B and Aᵀ = Q_A R_A, so scale·B·A = Q_B (scale·R_B R_Aᵀ) Q_Aᵀ with orthonormal Q's: the small
    core has the same nonzero singular values. Returns min(d, k, r) values. Also accepts the tuple from
    `update_factors`, or a formed matrix alone (a=None), which goes to a plain svdvals.
    """
    if isinstance(b, tuple):
        b, a, scale = b
    if a is None:
        return torch.linalg.svdvals(b.detach().double())
    rb = torch.linalg.qr(b.detach().double(), mode="r").R
    ra = torch.linalg.qr(a.detach().double().T, mode="r").R
    return torch.linalg.svdvals(float(scale) * (rb @ ra.T)).abs()


def rank_stats(sv: torch.Tensor, r: int | None = None) -> dict[str, float]:
    """Rank measures of a spectrum σ: energy ranks at 90/95/99 %, entropy effective rank, stable rank, σ₁.

    energy_rankP is the smallest k with Σ_{i≤k} σ_i² ≥ P% of Σσ²; effective_rank is exp(H) of p = σ/Σσ
    (Roy & Vetterli); stable_rank is Σσ²/σ₁². `r` is the nominal rank (default len(sv)). A zero
    spectrum gives zeros everywhere.
    """
    s = torch.as_tensor(sv, dtype=torch.float64).flatten().abs().sort(descending=True).values
    stats: dict[str, float] = {"r": int(r if r is not None else s.numel())}
    energy = s.square()
    total = float(energy.sum())
    if s.numel() == 0 or total <= 0.0 or not math.isfinite(total):
        stats.update({f"energy_rank{p}": 0 for p in ENERGIES})
        stats.update(effective_rank=0.0, stable_rank=0.0, sigma1=0.0)
        return stats
    frac = energy.cumsum(0) / total
    for p in ENERGIES:
        # tolerance keeps a spectrum landing exactly on p from being pushed one rank up by rounding
        stats[f"energy_rank{p}"] = int((frac < p / 100 - 1e-12).sum()) + 1
    prob = s / s.sum()
    prob = prob[prob > 0]
    stats["effective_rank"] = float(torch.exp(-(prob * prob.log()).sum()))
    stats["stable_rank"] = total / float(energy[0])
    stats["sigma1"] = float(s[0])
    return stats


def _clean(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _nominal_rank(module: nn.Module, adapter_name: str) -> int:
    r = getattr(module, "r", {})
    return int(r[adapter_name]) if adapter_name in r else 0


def _has_adapter(module: nn.Module, adapter_name: str) -> bool:
    if isinstance(module, VeraLayer):
        return adapter_name in module.vera_lambda_d
    if isinstance(module, LoraLayer):
        return adapter_name in module.lora_A or adapter_name in getattr(module, "lora_embedding_A", {})
    return False


def spectra(
    model: nn.Module, family: str | None = None, adapter_name: str = "default", init: InitFactors | None = None
) -> list[dict]:
    """One row per adapted LoRA / VeRA / AdaLoRA layer, or per fully fine-tuned Linear in `init`: name,
    module_type, d, k, r, rank stats, sv (σ/σ₁).

    `family` maps names to aliases (q, v, down, ...); None takes it from model.config.model_type.
    `init` is a `snapshot` result: for the update relative to the pretrained weight (PiSSA), and for full
    fine-tuning the weights W0 whose updates W − W0 are measured (r is then min(d, k)).
    Layers of unsupported LoRA variants are skipped with a warning rather than measured wrongly; so is IA3
    (`NO_SPECTRUM`).
    """
    if family is None:
        cfg = getattr(model, "config", None)
        family = targets.family(getattr(cfg, "model_type", "") or "")
    rows = []
    for full_name, mod in model.named_modules():
        name = _clean(full_name)
        start = (init or {}).get(name)
        whole = isinstance(start, torch.Tensor)  # full fine-tuning: the module itself was trained
        if not (_has_adapter(mod, adapter_name) or whole):  # modules_to_save wrappers are not tuner layers
            continue
        try:
            upd = update_factors(mod, adapter_name, init=start)
        except NotImplementedError as err:
            warnings.warn(f"{name}: {err}", stacklevel=2)
            continue
        if isinstance(upd, tuple):
            d, k = upd[0].shape[0], upd[1].shape[1]
        else:
            d, k = upd.shape
        sv = singular_values(upd)
        stats = rank_stats(sv, r=min(d, k) if whole else _nominal_rank(mod, adapter_name))
        top = float(sv[0]) if sv.numel() and sv[0] > 0 else 1.0
        rows.append(
            {
                "name": name,
                "module_type": targets.module_type(name, family),
                "d": int(d),
                "k": int(k),
                **stats,
                "sv": (sv / top).tolist(),
            }
        )
    for why in spectra_tags(model).values():
        warnings.warn(why, stacklevel=2)
    return rows


def spectra_tags(model: nn.Module) -> dict[str, str]:
    """`spectra`: one line on why the model's adapter has no spectrum (IA3); empty where it has one."""
    for mod in model.modules():
        for layer, why in NO_SPECTRUM.items():
            if isinstance(mod, layer):
                return {"spectra": why}
    return {}


def aggregate(rows: list[dict]) -> dict[str, float]:
    """Means over modules to log: overall rank measures and, per module type, effective and 95 % energy ranks."""
    if not rows:
        return {}

    def mean(key: str, sel: list[dict]) -> float:
        return sum(float(row[key]) for row in sel) / len(sel)

    out = {
        f"{key}_mean": mean(key, rows)
        for key in ("effective_rank", "energy_rank90", "energy_rank95", "energy_rank99", "stable_rank")
    }
    for mtype in sorted({row["module_type"] for row in rows}):
        sel = [row for row in rows if row["module_type"] == mtype]
        out[f"effective_rank_{mtype}_mean"] = mean("effective_rank", sel)
        out[f"energy_rank95_{mtype}_mean"] = mean("energy_rank95", sel)
    return out


def write_spectra(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """spectra.csv (table without σ), spectra.json (rows with σ/σ₁ lists) and spectra.png (log-scale spectra)."""
    # Figure + Agg canvas directly: no pyplot, so the process-wide backend is left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = out / "spectra.csv", out / "spectra.json", out / "spectra.png"
    cols = [c for c in (rows[0] if rows else {"name": None}) if c != "sv"]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=1))

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    types = sorted({row["module_type"] for row in rows})
    colour = {t: f"C{i % 10}" for i, t in enumerate(types)}
    seen: set[str] = set()
    for row in rows:
        pts = [(i + 1, v) for i, v in enumerate(row["sv"]) if v > 0]  # zeros have no place on a log axis
        if not pts:
            continue
        t = row["module_type"]
        ax.plot(*zip(*pts), color=colour[t], alpha=0.6, lw=1, label=None if t in seen else t)
        seen.add(t)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title(f"Spectra of learned updates ΔW ({len(rows)} modules)")
    if seen:
        ax.legend(title="module", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return [csv_path, json_path, png_path]


# ----------------------------------------------------------------------------------------------- memory


def reset_peak_memory() -> None:
    """Start a new peak window on CUDA; on CPU the OS peak RSS cannot be reset, so nothing happens."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> dict[str, float]:
    """Peak memory in MiB: CUDA allocated and reserved peaks, else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS
    return {"peak_memory_mb": rss / 2**20 if sys.platform == "darwin" else rss / 1024}
