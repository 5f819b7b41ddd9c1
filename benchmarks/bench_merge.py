"""Merge check across variants and quantizations: one short real trial per case with tracking.merge_check=true,
the logged merge_* metrics (or the one-line reason a case cannot merge) collected into a table.

tiny_llama (random weights) trains 4 steps at lr 1e-2 so every adapter moves. --minilm adds the embedded
default (MiniLM + tweets, 40 steps).
Writes merge_check.json and merge_check.md to --out (default benchmarks/results).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_merge.py [--minilm]
"""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import mlflow
import torch

from lorasweep.config import compose
from lorasweep.trial import run_trial

OUT = Path(__file__).resolve().parent / "results"
TINY = ["model=tiny_llama", "data=tweets_sft", "data.train_size=48", "data.eval_size=8", "data.test_size=8",
        "data.max_length=32", "train.max_steps=4", "train.eval_every=4", "train.batch_size=4", "train.lr=1e-2",
        "adapter.r=4", "tracking.save_adapter=false"]
CASES = [(v, "none") for v in ("lora", "rslora", "dora", "pissa", "vera", "adalora")] + [
    ("lora", "nf4"), ("dora", "nf4"), ("adalora", "nf4"), ("lora", "fp4"), ("lora", "int8"), ("vera", "int8")]
KEYS = ["merge_max_abs_logit_diff", "merge_metric_delta", "merge_requant_max_abs_logit_diff",
        "merge_requant_metric_delta"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-merge-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    os.chdir(tmp)
    plans = [("tiny_llama", v, q, [*TINY, f"adapter.variant={v}", f"quant={q}"]) for v, q in CASES]
    if args.minilm:
        plans.append(("minilm", "lora", "none", ["train.max_steps=40", "train.eval_every=40", "data.train_size=1280",
                                                 "data.eval_size=300", "data.test_size=300",
                                                 "tracking.save_adapter=false"]))
    rows = []
    for name, variant, quant, over in plans:
        summary = run_trial(compose([*over, "tracking.merge_check=true"]))
        run = mlflow.MlflowClient().get_run(summary["run_id"])
        metric = "eval_accuracy" if "eval_accuracy" in summary else "eval_perplexity"
        row = {"model": name, "variant": variant, "quant": quant, "task metric": metric,
               "unmerged": summary[metric], **{k: run.data.metrics.get(k) for k in KEYS},
               "why not": "; ".join(v for k, v in run.data.tags.items() if k.endswith("_check"))}
        rows.append(row)
        print(row, flush=True)
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
           "cuda": torch.cuda.is_available()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "merge_check.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))

    def cell(v) -> str:
        return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    head = ["model", "variant", "quant", "task metric", "unmerged", *KEYS, "why not"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[h]) for h in head) + " |" for r in rows]
    (args.out / "merge_check.md").write_text(f"Environment: {env}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
