"""Does cutting each step by length change what a trial learns? The best vs_script config (the one that won on
both sides of bench_vs_script.py), trained per seed twice: each step's 32 rows as one device batch
(train.sampling=random), and the same 32 rows a step cut into 4 device batches by length
(train.sampling=batch_rebalance, train.batch_size=8, train.grad_accum=4). The rows of each step are the same on both
sides (one permutation of the seed); only dropout masks and float rounding differ. One eval at the end, then test.

    python benchmarks/cut_answer.py [--seeds 0,1,2]

Prints one JSON line per trial: seed, side, wall and train seconds, eval and test macro-F1.
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lorasweep.config import compose  # noqa: E402
from lorasweep.trial import run_trial  # noqa: E402

BEST = ["sweep=vs_script", "adapter.r=16", "adapter.alpha_over_r=2", "train.lr=0.002789574430295683"]
SIDES = {
    "one batch": ["train.batch_size=32"],
    "4 cut by length": ["train.batch_size=8", "train.grad_accum=4", "train.sampling=batch_rebalance"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for seed in (int(s) for s in args.seeds.split(",")):
        for side, overrides in SIDES.items():
            cfg = compose([*BEST, "train.eval_every=120", "data.test_size=1000", *overrides, f"seed={seed}"])
            start = time.perf_counter()
            s = run_trial(cfg)
            line = {"seed": seed, "side": side, "wall_s": round(time.perf_counter() - start, 1)}
            line |= {"train_runtime_s": round(s["train_runtime_s"], 1)}
            line |= {k: round(s[k], 4) for k in ("eval_macro_f1", "test_macro_f1")}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
