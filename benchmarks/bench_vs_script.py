"""lorasweep sweep against the hand-written Ray Tune + OptunaSearch + ASHA script (benchmarks/handwritten_sweep.py),
same space, budget, data, recipe, evals and test eval (sweeps/vs_script.yaml; WORK below lists what each side does
per trial), at equal settings: each arm CxT runs both sides with C trials at once and T torch threads per trial.
Per repetition the order of the runs is reversed (script first, then lorasweep first), over --reps repetitions.

    python benchmarks/bench_vs_script.py --reps 2 [--trials 8 --steps 120 --arms 1x2,2x1 --cuts 4]

Writes benchmarks/results/vs_script.{json,md}: each run's wall time and best eval macro-F1, and per arm the ratio
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
SIDES = ("script", "lorasweep")

# What each side does per trial, at the default arguments; the results file repeats it under the figures.
WORK = """\
| per trial | script (`benchmarks/handwritten_sweep.py`) | lorasweep (`sweep=vs_script`) |
|---|---|---|
| data | the 8,000 train, 1,000 eval, 1,000 test rows of lorasweep's split (seed 1234), redone by hand | the same |
| training | 120 steps × 32 rows, its own seeded order | 120 steps × 32 rows, the Trainer's seeded order |
| device batches (lorasweep's own means) | one batch of 32 rows a step | with --cuts K > 1, each step's 32 random rows sorted by length and cut into K device batches whose gradients accumulate (`train.sampling=batch_rebalance`, `train.batch_size=32/K`, `train.grad_accum=K`): the same rows and mean loss a step, less padding; --cuts 1 is one batch of 32 |
| recipe | LoRA q,v, dropout 0.05, AdamW (decay 0), linear schedule, 8 warm-up steps, clipping at 1.0 | the same |
| evals | 1,000 eval rows in batches of 64 at steps 40, 80, 120 (a pruned trial stops at its rung) | the same |
| test eval | 1,000 test rows once, by the trials that ran all 120 steps | the same |
| pruning | Ray ASHA: rungs at 40 and 80, reduction factor 2 | Optuna successive halving: the same rungs |
| search | OptunaSearch, TPE seed 0 | Optuna TPE seed 0: the same first configs (`lorasweep sweep --dry-run` lists them) |
| best | the best step-120 eval macro-F1 | the same (the sweep's `best:` line) |
| padding (lorasweep's own means) | each batch to its longest row; eval and test rows in table order | each batch to its longest row (`data.pad_to_multiple_of=auto`: no bucket on a CPU); eval and test rows longest first, each batch to its own length (`data.by_length`, `data.eval_lengths=auto`: 0.56× the padded eval tokens of the table order) |
| per trial start | a new Ray actor: imports, reads and tokenizes the data, loads MiniLM | a warm worker: imports, splits and tokens kept from the last trial |
| beyond | nothing | MLflow run, params, metrics, per-row eval outputs; adapter saved to a temp folder (not uploaded), no spectra |
"""


def script(args, c: int, t: int) -> dict:
    cmd = [sys.executable, str(HERE / "handwritten_sweep.py"), "--trials", str(args.trials), "--steps", str(args.steps)]
    cmd += ["--eval-every", str(args.eval_every), "--batch", str(args.batch), "--eval-rows", str(args.eval_rows)]
    cmd += ["--test-rows", str(args.test_rows), "--concurrent", str(c), "--threads", str(t)]
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def lorasweep(args, c: int, t: int) -> dict:
    cmd = [sys.executable, "-m", "lorasweep.cli", "sweep", "sweep=vs_script", f"sweep.num_trials={args.trials}"]
    cmd += [f"train.max_steps={args.steps}", f"train.eval_every={args.eval_every}"]
    cmd += [f"train.batch_size={args.batch // args.cuts}", f"train.grad_accum={args.cuts}"]
    cmd += ["train.sampling=batch_rebalance"] if args.cuts > 1 else []
    cmd += [f"data.eval_size={args.eval_rows}", f"data.test_size={args.test_rows}"]
    cmd += [f"sweep.pruner.grace_period={args.eval_every}", f"sweep.pruner.max_t={args.steps}"]
    cmd += [f"sweep.max_concurrent={c}", f"engine.cpus_per_trial={t}", f"engine.num_cpus={c * t}"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    best = next(line for line in p.stdout.splitlines() if line.startswith("best:"))
    return {"wall_s": wall, "best_eval_macro_f1": float(best.split()[1]), "best_command": best.split("rerun: ")[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--arms", default="1x2,2x1", help="CxT: C trials at once x T threads each, for both sides")
    ap.add_argument("--cuts", type=int, default=4, help="lorasweep: device batches per step, cut by length")
    args = ap.parse_args()
    if args.batch % args.cuts:
        ap.error(f"--cuts {args.cuts} must divide --batch {args.batch}")
    arms = [tuple(int(n) for n in a.split("x")) for a in args.arms.split(",")]
    runs = {f"{c}x{t}": {side: [] for side in SIDES} for c, t in arms}
    first = [(c, t, side) for c, t in arms for side in SIDES]
    for rep in range(args.reps):
        for c, t, side in first if rep % 2 == 0 else reversed(first):
            r = (script if side == "script" else lorasweep)(args, c, t)
            runs[f"{c}x{t}"][side].append(r)
            print(
                f"rep {rep} {c}x{t} {side}: {r['wall_s']:.1f} s, best eval_macro_f1 {r['best_eval_macro_f1']:.4f}",
                flush=True,
            )
    out, md = report(args, runs)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "vs_script.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "vs_script.md").write_text(md)
    print(md.split("## Work per trial")[0].rstrip())


def report(args, runs: dict) -> tuple[dict, str]:
    """The results as JSON and as markdown: every run, then per arm the median walls, their ratio and the best
    metrics of both sides, then WORK."""
    med = {arm: {s: statistics.median(r["wall_s"] for r in rs[s]) for s in SIDES} for arm, rs in runs.items()}
    out = {
        "args": vars(args),
        "runs": runs,
        "median_wall_s": med,
        "ratio": {arm: m["lorasweep"] / m["script"] for arm, m in med.items()},
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "load_avg_after": os.getloadavg(),
    }
    lines = [
        f"# lorasweep sweep vs the hand-written Ray Tune + Optuna script ({out['date']}, {out['machine']})",
        "",
        f"`python benchmarks/bench_vs_script.py --reps {args.reps} --trials {args.trials} --steps {args.steps} "
        f"--eval-every {args.eval_every} --batch {args.batch} --eval-rows {args.eval_rows} "
        f"--test-rows {args.test_rows} --arms {args.arms} --cuts {args.cuts}`",
        "",
        "Both sides at each arm CxT: C trials at once, T torch threads each (Ray gets C × T CPUs); the runs of a",
        "repetition in reverse order of the one before. Load average after: "
        + ", ".join(f"{x:.2f}" for x in out["load_avg_after"])
        + ".",
        "",
        "| arm | script median s | lorasweep median s | lorasweep / script (target <= 0.8) | best macro-F1, script "
        "| best macro-F1, lorasweep |",
        "|---|---|---|---|---|---|",
    ]
    for arm, rs in runs.items():
        best = {s: ", ".join(f"{r['best_eval_macro_f1']:.4f}" for r in rs[s]) for s in SIDES}
        lines.append(
            f"| {arm} | {med[arm]['script']:.1f} | {med[arm]['lorasweep']:.1f} | {out['ratio'][arm]:.2f} "
            f"| {best['script']} | {best['lorasweep']} |"
        )
    lines += ["", "| arm | rep | tool | wall s | best eval macro-F1 |", "|---|---|---|---|---|"]
    for arm, rs in runs.items():
        for side in SIDES:
            lines += [
                f"| {arm} | {i} | {side} | {r['wall_s']:.1f} | {r['best_eval_macro_f1']:.4f} |"
                for i, r in enumerate(rs[side])
            ]
    return out, "\n".join([*lines, "", "## Work per trial", "", WORK])


if __name__ == "__main__":
    main()
