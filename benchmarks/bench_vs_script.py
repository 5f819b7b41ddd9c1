"""lorasweep sweep against the hand-written Ray Tune + OptunaSearch + ASHA script (benchmarks/handwritten_sweep.py),
same space and budget (sweeps/vs_script.yaml), back to back, alternating the order, over --reps repetitions.
By default lorasweep runs twice per repetition on the 2 cores: 2 trials at a time with 1 thread each (2x1) and 1 trial
at a time with 2 threads (1x2), so the default is picked from the data; --arms 2x1 runs only the first.

    python benchmarks/bench_vs_script.py --reps 2 [--trials 8 --steps 120 --arms 2x1,1x2]

Writes benchmarks/results/vs_script.{json,md}: each run's wall time and best eval macro-F1, and the ratio
lorasweep / script of the median walls (target <= 0.8 with the same or a better best metric).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def script(args) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "handwritten_sweep.py"),
        "--trials",
        str(args.trials),
        "--steps",
        str(args.steps),
        "--eval-every",
        str(args.eval_every),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run(cmd, cwd=tmp, env={**ENV, "RAY_STORAGE": tmp}, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def lorasweep(args, concurrent: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "lorasweep.cli",
        "sweep",
        "sweep=vs_script",
        f"sweep.num_trials={args.trials}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"sweep.pruner.grace_period={args.eval_every}",
        f"sweep.pruner.max_t={args.steps}",
        f"sweep.max_concurrent={concurrent}",
        "engine.cpus_per_trial=auto",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        p = subprocess.run(
            cmd,
            cwd=tmp,
            env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"},
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
    best = next(line for line in p.stdout.splitlines() if line.startswith("best:"))
    return {"wall_s": wall, "best_eval_macro_f1": float(best.split()[1]), "best_command": best.split("rerun: ")[1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument(
        "--arms", default="2x1,1x2", help="lorasweep's trials x threads on 2 cores to run beside the script"
    )
    args = ap.parse_args()
    arms = {f"lorasweep {a}": (lambda c=int(a.split("x")[0]): lorasweep(args, c)) for a in args.arms.split(",")}
    arms["script"] = lambda: script(args)
    runs = {k: [] for k in arms}
    for rep in range(args.reps):
        order = list(arms) if rep % 2 == 0 else list(reversed(arms))
        for name in order:
            r = arms[name]()
            runs[name].append(r)
            print(
                f"rep {rep} {name}: {r['wall_s']:.1f} s, best eval_macro_f1 {r['best_eval_macro_f1']:.4f}", flush=True
            )
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    out = {
        "args": vars(args),
        "runs": runs,
        "median_wall_s": med,
        "ratio": {k: med[k] / med["script"] for k in med if k != "script"},
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_avg_after": os.getloadavg(),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "vs_script.json").write_text(json.dumps(out, indent=1))
    lines = [
        f"# lorasweep sweep vs the hand-written Ray Tune + Optuna script ({out['date']}, {out['machine']})",
        "",
        f"`python benchmarks/bench_vs_script.py --reps {args.reps} --trials {args.trials} --steps {args.steps} "
        f"--arms {args.arms}`",
        "",
        "| run | tool | wall s | best eval macro-F1 |",
        "|---|---|---|---|",
    ]
    for name, rs in runs.items():
        lines += [f"| {i} | {name} | {r['wall_s']:.1f} | {r['best_eval_macro_f1']:.4f} |" for i, r in enumerate(rs)]
    lines += ["", f"median wall: script {med['script']:.1f} s"]
    lines += [f"- {k}: {med[k]:.1f} s, ratio {r:.2f} (target <= 0.8)" for k, r in out["ratio"].items()]
    (HERE / "results" / "vs_script.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))


if __name__ == "__main__":
    main()
