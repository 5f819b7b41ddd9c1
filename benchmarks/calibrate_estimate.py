"""Calibration of lorasweep.estimate against peak VRAM measured on an H100 (../shared/gpu/measured/*.csv)."""

import copy
import csv
import functools
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lorasweep.config import compose
from lorasweep.estimate import MIB, estimate

REPO = Path(__file__).resolve().parent.parent
MEASURED = REPO.parent / "shared" / "gpu" / "measured"
OUT = REPO / "benchmarks" / "results" / "estimate_calibration.md"
TOLERANCE = 0.15
# The random-init models of ../shared/gpu/measure-vram.py (its README gives the same sizes).
MODELS = {
    "llama_300m": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
    "llama_1b": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
    "qwen2_0p5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
}


def rows(folder: Path = MEASURED) -> list[dict]:
    """Every measured row that has a number (OOM rows carry no peak)."""
    out = []
    for f in sorted(folder.glob("*.csv")):
        with open(f, newline="") as fh:
            out += [dict(r, file=f.name) for r in csv.DictReader(fh) if r["peak_alloc_mb"].isdigit()]
    return out


def row_config(row: dict) -> DictConfig:
    """The lorasweep config that reproduces one measured row's conditions."""
    cfg = copy.deepcopy(_base("nf4" if row["quant"] == "nf4_dq" else "none"))
    OmegaConf.update(cfg, "model.name", row["model"])
    OmegaConf.update(cfg, "model.config", MODELS[row["model"]], merge=False)
    OmegaConf.update(cfg, "model.dtype", "bfloat16")
    OmegaConf.update(cfg, "quant.double_quant", row["quant"] == "nf4_dq")
    OmegaConf.update(cfg, "quant.compute_dtype", "bfloat16")
    OmegaConf.update(cfg, "adapter.r", int(row["r"]))
    OmegaConf.update(cfg, "adapter.alpha", 2 * int(row["r"]))
    OmegaConf.update(cfg, "adapter.alpha_over_r", None)
    OmegaConf.update(cfg, "adapter.dropout", 0.0)
    OmegaConf.update(cfg, "adapter.targets", [row["targets"]], merge=False)
    return cfg


@functools.cache
def _base(quant: str) -> DictConfig:
    return compose(
        [
            "model=tiny_llama",
            "data=tweets_sft",
            f"quant={quant}",
        ]
    )


def compare(row: dict) -> dict:
    """Estimate one row; error is relative to the measured peak_alloc_mb."""
    est = estimate(
        row_config(row),
        batch_size=int(row["batch"]),
        seq_len=int(row["seq"]),
        gradient_checkpointing=row["grad_ckpt"] == "True",
        optim=row["optim"],
        autocast=row["autocast_bf16"] == "True",
    )
    pred = est["memory"]["peak_allocated"]["bytes"] / MIB
    meas = int(row["peak_alloc_mb"])
    return {
        **row,
        "estimate_mb": round(pred),
        "error": (pred - meas) / meas,
        "trainable_estimate": est["params"]["trainable"],
    }


def markdown(results: list[dict]) -> str:
    ok = sum(abs(r["error"]) <= TOLERANCE for r in results)
    worst = max(results, key=lambda r: abs(r["error"]))
    lines = [
        "# Estimate vs measured peak VRAM (H100)",
        "",
        "Produced by `benchmarks/calibrate_estimate.py` from `../shared/gpu/measured/*.csv`. `estimate` is the",
        "estimator's `peak_allocated` (weights + adapter + gradients + optimizer + activations + workspace), which is",
        "what `torch.cuda.max_memory_allocated()` measures; context and allocator slack are left out of both.",
        "",
        f"**{ok} of {len(results)} rows within ±{TOLERANCE:.0%}**; worst: {worst['error']:+.1%} "
        f"({worst['model']} {worst['quant']} r{worst['r']} {worst['batch']}x{worst['seq']} ckpt={worst['grad_ckpt']} "
        f"autocast={worst['autocast_bf16']}). Mean |error| {sum(abs(r['error']) for r in results) / len(results):.1%}.",
        "",
        "| autocast | model | quant | r | batch×seq | ckpt | optim | trainable (measured = estimate) | measured MiB | estimate MiB | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = "yes" if int(r["trainable_params"]) == r["trainable_estimate"] else f"NO ({r['trainable_estimate']:,})"
        lines.append(
            f"| {r['autocast_bf16']} | {r['model']} | {r['quant']} | {r['r']} | {r['batch']}×{r['seq']} | "
            f"{r['grad_ckpt']} | {r['optim']} | {int(r['trainable_params']):,} {same} | {r['peak_alloc_mb']} | "
            f"{r['estimate_mb']} | {r['error']:+.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    if not MEASURED.is_dir():
        print(f"no measurements at {MEASURED}", file=sys.stderr)
        return 1
    results = [compare(r) for r in rows()]
    OUT.write_text(markdown(results))
    ok = sum(abs(r["error"]) <= TOLERANCE for r in results)
    print(f"{ok}/{len(results)} rows within ±{TOLERANCE:.0%}; table in {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
