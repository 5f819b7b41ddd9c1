"""Cost of the `spectrum:<k>%` target rule: scoring a base model cold (load in float32 + one SVD per Linear)
against resolving from the cache, and whether the resolved list repeats.

Each cold run deletes the model's cache file first; the cached time is the median of --repeats resolutions.
Writes spectrum_cost.json and spectrum_cost.md to --out (default benchmarks/results).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_spectrum.py [--models minilm gemma3_270m] [--cold 2]
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lorasweep import base, model, spectrum
from lorasweep.config import compose

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["minilm"])
    ap.add_argument("--k", default="25")
    ap.add_argument("--cold", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        over = [f"model={name}", f"adapter.targets=[spectrum:{args.k}%]"]
        if name != "minilm":
            over.append("data=tweets_sft")
        cfg = compose(over)
        labels = 3 if cfg.model.task == "seq_cls" else None
        base.folder(cfg.model)  # a GGUF model converts once to a folder: not part of the rule's cost
        lists, cold, parts = [], [], []
        for _ in range(args.cold):
            spectrum.cache_file(cfg).unlink(missing_ok=True)
            start = time.perf_counter()
            lists.append(model.targets(cfg, labels)[0])
            cold.append(time.perf_counter() - start)
            cached = json.loads(spectrum.cache_file(cfg).read_text())
            parts.append((cached["load_s"], cached["svd_s"]))
        warm = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.targets(cfg, labels)
            warm.append(time.perf_counter() - start)
        mods = cached["modules"]
        rows.append(
            {
                "model": name,
                "linear_modules": len(mods),
                "picked": len(lists[0]),
                "k": args.k,
                "cold_first_s": cold[0],
                "cold_s": min(cold),
                "load_s": min(p[0] for p in parts),
                "svd_s": min(p[1] for p in parts),
                "cached_s": statistics.median(warm),
                "same_list_every_run": all(x == lists[0] for x in lists),
                "largest_matrix": "x".join(
                    map(str, max(((r["m"], r["n"]) for r in mods.values()), key=lambda s: s[0] * s[1]))
                ),
            }
        )
        print(rows[-1], flush=True)
    env = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spectrum_cost.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    lines = [
        (
            "| model | Linear modules | picked at k % | first cold run (s) | cold: load + SVD (s) | load (s) "
            "| SVD (s) | cached (ms) | same list |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['linear_modules']} | {r['picked']} at {r['k']} % | {r['cold_first_s']:.2f} | "
        f"{r['cold_s']:.2f} | "
        f"{r['load_s']:.2f} | {r['svd_s']:.2f} | {1000 * r['cached_s']:.1f} | {r['same_list_every_run']} |"
        for r in rows
    ]
    (args.out / "spectrum_cost.md").write_text(f"Environment: {env}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
