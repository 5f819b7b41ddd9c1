"""Sweep benchmarks: the driver's overhead over its trials, and what TPE + pruning saves against a full grid."""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import mlflow

from lorasweep import sweepdir
from lorasweep.sweep import run_sweep

RESULTS = Path(__file__).resolve().parent / "results"


def children(parent_run_id: str):
    client = mlflow.MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    return client, runs


def sweep_in(tmp: Path, argv: list[str]) -> tuple[dict, list]:
    """One sweep with its own store; returns its summary and its child runs."""
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    start = time.perf_counter()
    s = run_sweep(argv)
    s["wall_s"] = time.perf_counter() - start
    parent = sweepdir.read_state(Path(s["sweep_dir"]))["parent_run_id"]
    return s, children(parent)[1]


def driver_overhead(trials: int) -> list[dict]:
    rows = []
    for conc in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            s, runs = sweep_in(
                Path(tmp),
                [
                    "sweep=smoke",
                    f"sweep.num_trials={trials}",
                    f"sweep.max_concurrent={conc}",
                    "sweep.pruner.name=none",
                    "train.max_steps=8",
                    "train.eval_every=4",
                ],
            )
        train = sum(r.data.metrics.get("train_runtime_s", 0.0) for r in runs)
        rows.append(
            {
                "max_concurrent": conc,
                "trials": len(runs),
                "wall_s": s["wall_s"],
                "sum_train_s": train,
                "overhead": (s["wall_s"] - train) / s["wall_s"],
                "overhead_per_slot": (s["wall_s"] * conc - train) / (s["wall_s"] * conc),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def startup(repeats: int = 3) -> list[float]:
    """From the command to the first training step: `lorasweep sweep` in a fresh process, timed to the first logged
    train_loss (step 2 of the smoke sweep: two tiny steps after the first)."""
    import subprocess

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            t0 = time.time()
            subprocess.run(
                [sys.executable, "-m", "lorasweep.cli", "sweep", "sweep=smoke", "sweep.num_trials=1"],
                cwd=tmp,
                env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                check=True,
                capture_output=True,
            )
            client = mlflow.MlflowClient(uri)
            run = client.search_runs(
                [client.get_experiment_by_name("lorasweep").experiment_id], "tags.optuna_trial = '0'"
            )[0]
            first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")) / 1000
            out.append(first - t0)
            print(json.dumps({"startup_to_first_step_s": out[-1]}), flush=True)
    return out


SPACE = "{adapter:{r:{kind:%s,values:[1,4,16,64]},alpha_over_r:{kind:%s,values:[0.5,2.0]}}}"


def steps_spent(runs) -> int:
    client = mlflow.MlflowClient()
    return sum(max((m.step for m in client.get_metric_history(r.info.run_id, "train_loss")), default=0) for r in runs)


def pruning_efficiency(tpe_trials: int) -> dict:
    common = [
        "sweep=rank_alpha",
        "~sweep.space",
        "train.max_steps=40",
        "train.eval_every=10",
        "sweep.time_limit_s=3600",
    ]
    out = {}
    for name, extra in [
        (
            "grid",
            [
                "+sweep.space=" + SPACE % ("grid", "grid"),
                "sweep.num_trials=8",
                "~sweep.sampler",
                "+sweep.sampler={name:grid}",
                "sweep.pruner.name=none",
            ],
        ),
        (
            "tpe_median",
            [
                "+sweep.space=" + SPACE % ("choice", "choice"),
                f"sweep.num_trials={tpe_trials}",
                "~sweep.sampler",
                "+sweep.sampler={name:tpe,seed:0,n_startup_trials:3}",
                "sweep.pruner={name:median,n_startup_trials:2,n_warmup_steps:10}",
            ],
        ),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            s, runs = sweep_in(Path(tmp), [*common, *extra])
            out[name] = {
                "wall_s": s["wall_s"],
                "trials": len(runs),
                "counts": s["counts"],
                "train_steps": steps_spent(runs),
                "best": s.get("best_value"),
                "best_command": s.get("best_command"),
            }
        print(name, json.dumps(out[name]), flush=True)
    out["steps_ratio"] = out["tpe_median"]["train_steps"] / out["grid"]["train_steps"]
    out["best_gap"] = out["grid"]["best"] - out["tpe_median"]["best"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--tpe-trials", type=int, default=6)
    ap.add_argument("--skip-pruning", action="store_true")
    a = ap.parse_args()
    here = os.getcwd()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "startup_s": startup(),
        "driver_overhead": driver_overhead(a.trials),
    }
    if not a.skip_pruning:
        result["pruning"] = pruning_efficiency(a.tpe_trials)
    elif (RESULTS / "sweep.json").exists() and "pruning" in json.loads((RESULTS / "sweep.json").read_text()):
        old = json.loads((RESULTS / "sweep.json").read_text())  # kept, with the date it was measured
        result["pruning"] = {**old["pruning"], "measured": old.get("date")}
    os.chdir(here)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Sweep benchmarks ({result['date']}, {result['machine']})",
        "",
        f"Command: `python benchmarks/bench_sweep.py --trials {a.trials} --tpe-trials {a.tpe_trials}`",
        "",
        "## Start-up: command to the first training step (smoke sweep, fresh process, model cache warm)",
        "",
        f"{', '.join(f'{v:.1f}' for v in result['startup_s'])} s (target <= 10 s)",
        "",
        "## Driver overhead: smoke sweep (tiny_llama, 8 steps a trial), no pruning",
        "",
        "| max_concurrent | trials | wall s | Σ trial train s | (wall − Σ)/wall | per slot (c·wall − Σ)/(c·wall) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["driver_overhead"]:
        lines.append(
            f"| {r['max_concurrent']} | {r['trials']} | {r['wall_s']:.1f} | {r['sum_train_s']:.1f} | "
            f"{r['overhead']:.2f} | {r['overhead_per_slot']:.2f} |"
        )
    if "pruning" in result:
        p = result["pruning"]
        lines += [
            "",
            "## Pruning efficiency: MiniLM + tweets, r ∈ {1,4,16,64} × alpha/r ∈ {0.5,2}, 40 steps",
            "",
            *(
                [f"Measured {p['measured']} (an earlier run of this benchmark; `--skip-pruning` kept it).", ""]
                if p.get("measured")
                else []
            ),
            "| search | trials | states | train steps spent | best eval_macro_f1 | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for k in ("grid", "tpe_median"):
            v = p[k]
            lines.append(
                f"| {k} | {v['trials']} | {v['counts']} | {v['train_steps']} | {v['best']:.4f} | {v['wall_s']:.0f} |"
            )
        lines += [
            "",
            f"TPE + median pruner spent {p['steps_ratio']:.2f}× the grid's train steps; "
            f"its best is {p['best_gap']:.4f} below the grid's best (negative: above).",
        ]
    (RESULTS / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
