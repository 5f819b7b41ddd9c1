"""Singular values of ΔW = s·B·A: the QR-core method of lorasweep.measure against a full SVD of the formed matrix.

Shapes are those of MiniLM (384×384, 1536×384, 384×1536) and Llama-2-7B (4096×4096, 11008×4096) at r = 8
and 64. Both methods run side by side in one process on the same factors, in float64, on each of --devices;
each time is the median of --repeats runs (after one warm-up), and the full SVD's time includes forming
B·A. The error is the largest relative difference over the r nonzero singular values. Writes
spectra.json and spectra.md to --out (default benchmarks/results).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_spectra.py [--repeats 3] [--devices cpu cuda]
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lorasweep.measure import singular_values

SHAPES = [  # (model, module, d_out, k_in)
    ("MiniLM", "q/k/v/o", 384, 384),
    ("MiniLM", "up", 1536, 384),
    ("MiniLM", "down", 384, 1536),
    ("Llama-2-7B", "q/k/v/o", 4096, 4096),
    ("Llama-2-7B", "gate/up", 11008, 4096),
]
RANKS = [8, 64]
OUT = Path(__file__).parent / "results"


def timed(fn, repeats: int, device: str) -> tuple[float, torch.Tensor]:
    """Median wall time in seconds of fn() over repeats runs after a warm-up, and its result."""

    def run() -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        res = fn()
        if device == "cuda":  # kernels are asynchronous: wait for them inside the timed window
            torch.cuda.synchronize()
        return time.perf_counter() - t0, res

    _, res = run()  # warm-up: cuSOLVER handles and workspaces are created on first use
    return statistics.median(run()[0] for _ in range(repeats)), res


def case(d: int, k: int, r: int, repeats: int, device: str) -> dict:
    g = torch.Generator().manual_seed(d + k + r)
    b = (torch.randn(d, r, generator=g, dtype=torch.float64) / r**0.5).to(device)
    a = (torch.randn(r, k, generator=g, dtype=torch.float64) / k**0.5).to(device)
    scale = 2.0
    t_qr, sv_qr = timed(lambda: singular_values(b, a, scale), repeats, device)
    t_full, sv_full = timed(lambda: torch.linalg.svdvals(scale * (b @ a)), repeats, device)
    sv_qr, sv_full = sv_qr.cpu(), sv_full.cpu()
    top = sv_full[:r]
    rel_err = float(((sv_qr[:r] - top).abs() / top).max())
    return {
        "device": device,
        "d": d,
        "k": k,
        "r": r,
        "qr_ms": 1e3 * t_qr,
        "full_svd_ms": 1e3 * t_full,
        "speedup": t_full / t_qr,
        "max_rel_err": rel_err,
        "tail_max_over_sigma1": float(sv_full[r:].max() / sv_full[0]) if sv_full.numel() > r else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--devices", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for device in args.devices:
        for model, module, d, k in SHAPES:
            for r in RANKS:
                row = {"model": model, "module": module, **case(d, k, r, args.repeats, device)}
                rows.append(row)
                print(
                    f"{device:<4} {model:<11} {module:<8} {d:>5}x{k:<5} r={r:<3} QR {row['qr_ms']:9.2f} ms  "
                    f"full SVD {row['full_svd_ms']:10.1f} ms  speed-up {row['speedup']:9.0f}x  "
                    f"max rel err {row['max_rel_err']:.1e}",
                    flush=True,
                )

    env = {
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float64",
        "repeats": args.repeats,
        "gpu": torch.cuda.get_device_name() if "cuda" in args.devices else None,
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "spectra.json").write_text(json.dumps({"env": env, "results": rows}, indent=1))
    lines = [
        "# Singular values of ΔW = s·B·A: QR core vs full SVD",
        "",
        f"torch {env['torch']}; CPU: {env['cpu_threads']} threads of {env['cpu_count']} cores; "
        f"GPU: {env['gpu'] or 'not run'}. float64, median of {args.repeats} runs after a warm-up, "
        "both methods on the same factors in one run. Full SVD time includes forming B·A. "
        "Error: max relative difference over the r nonzero singular values.",
        "",
        "| device | model | module | d×k | r | QR (ms) | full SVD (ms) | speed-up | max rel. error |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['device']} | {row['model']} | {row['module']} | {row['d']}×{row['k']} | {row['r']} | "
            f"{row['qr_ms']:.2f} | {row['full_svd_ms']:.1f} | {row['speedup']:.0f}× | "
            f"{row['max_rel_err']:.1e} |"
        )
    (out / "spectra.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'spectra.json'} and {out / 'spectra.md'}")


if __name__ == "__main__":
    main()
