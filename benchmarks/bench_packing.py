"""GPU packing benchmark (issue 5, 4b): trials/hour of one `lorasweep sweep` per engine.gpus_per_trial setting.

    python benchmarks/bench_packing.py run NAME OUTDIR [lorasweep sweep overrides...]
        times `lorasweep sweep <overrides>` (samples nvidia-smi each second beside it), then reads the sweep's
        MLflow child runs (gpu_share tag, state, start/end, peak memory) and writes OUTDIR/NAME.json
    python benchmarks/bench_packing.py summary OUTDIR
        joins OUTDIR/*.json (the runs) into OUTDIR/packing.json and OUTDIR/packing.md, side by side

Environment: LORASWEEP_SWEEPS_DIR (where sweeps write), BENCH_MLFLOW_URI (the store the trials log to).
bench_packing.sh runs it on the accelerator machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lorasweep import sweepdir

SWEEPS = sweepdir.SWEEPS_DIR
URI = os.environ.get("BENCH_MLFLOW_URI", "sqlite:///mlflow.db")


def children(parent_run_id: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(URI)
    exp = client.get_run(parent_run_id).info.experiment_id
    rows = []
    for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000):
        m, t = r.data.metrics, r.data.tags
        rows.append(
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "trial_state": t.get("trial_state"),
                "gpu_share": t.get("gpu_share"),
                "overrides": t.get("overrides"),
                "start_s": r.info.start_time / 1000 if r.info.start_time else None,
                "end_s": r.info.end_time / 1000 if r.info.end_time else None,
                **{
                    k: v
                    for k, v in m.items()
                    if k in ("eval_loss", "train_runtime_s", "tokens_per_s", "samples_per_s", "steps") or "peak" in k
                },
            }
        )
    return sorted(rows, key=lambda r: r["start_s"] or 0)


def run(name: str, out: Path, overrides: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in SWEEPS.glob("*")} if SWEEPS.exists() else set()
    cmd = ["lorasweep", "sweep", *overrides]
    smi = (
        None
        if shutil.which("nvidia-smi") is None
        else subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=timestamp,utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-l",
                "1",
            ],
            stdout=open(out / f"{name}.smi.csv", "w"),
            stderr=subprocess.DEVNULL,
        )
    )
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if smi:
        smi.terminate()
        smi.wait()
    new = sorted(
        (p for p in SWEEPS.glob("*") if p.name not in before and (p / sweepdir.STATE).exists()),
        key=lambda p: p.stat().st_mtime,
    )
    res = {"name": name, "command": shlex.join(cmd), "rc": rc, "wall_s": round(wall, 1), "started": t0}
    if new:
        state = sweepdir.read_state(new[-1])
        res["sweep_id"] = state["sweep_id"]
        kids = children(state["parent_run_id"])
        res["trials"] = kids
        done = [k for k in kids if k["status"] == "FINISHED" and k["trial_state"] in (None, "COMPLETE")]
        res["completed"] = len(done)
        res["trials_per_hour"] = round(len(done) * 3600 / wall, 1)
        starts = [k["start_s"] for k in kids if k["start_s"]]
        ends = [k["end_s"] for k in kids if k["end_s"]]
        if starts and ends:  # first trial start to last trial end: the sweep's fixed start-up cost left out
            res["trials_span_s"] = round(max(ends) - min(starts), 1)
            res["trials_per_hour_span"] = round(len(done) * 3600 / res["trials_span_s"], 1)
            res["startup_s"] = round(min(starts) - t0, 1)
        res["gpu_shares"] = sorted({k["gpu_share"] for k in kids if k["gpu_share"]})
        dur = [k["end_s"] - k["start_s"] for k in kids if k["start_s"] and k["end_s"]]
        res["trial_s_mean"] = round(sum(dur) / len(dur), 1) if dur else None
    try:
        util = [line.split(", ") for line in (out / f"{name}.smi.csv").read_text().splitlines() if line.count(",") == 2]
        u = [float(x[1]) for x in util]
        mem = [float(x[2]) for x in util]
        res["gpu_util_mean_pct"] = round(sum(u) / len(u), 1) if u else None
        res["gpu_mem_max_mib"] = max(mem) if mem else None
    except (OSError, ValueError):
        pass
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "trials"}, indent=1), flush=True)
    return res


def summary(out: Path) -> None:
    order = {"gpu1": 0, "gpu025": 1, "auto": 2}
    runs = {
        p.stem: json.loads(p.read_text())
        for p in sorted(out.glob("*.json"), key=lambda p: (order.get(p.stem, 9), p.stem))
        if p.stem not in ("packing", "env")
    }
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    base = runs.get("gpu1", {}).get("trials_per_hour")
    base_span = runs.get("gpu1", {}).get("trials_per_hour_span")
    for r in runs.values():
        if base and r.get("trials_per_hour"):
            r["ratio_vs_gpu1"] = round(r["trials_per_hour"] / base, 2)
        if base_span and r.get("trials_per_hour_span"):
            r["ratio_vs_gpu1_span"] = round(r["trials_per_hour_span"] / base_span, 2)
    doc = {"date": time.strftime("%Y-%m-%d", time.gmtime()), **env, "runs": runs}
    (out / "packing.json").write_text(json.dumps(doc, indent=1))
    lines = [
        f"# GPU packing: trials/hour through `lorasweep sweep` ({doc['date']}, {env.get('gpu', '?')})",
        "",
        "| run | gpus_per_trial | GPU shares (gpu_share tags) | completed | wall s | trials/hour | ratio vs 1 GPU | "
        "trials span s | trials/hour (span) | ratio (span) | mean trial s | GPU util % | max GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in runs.items():
        gpt = next((a.split("=", 1)[1] for a in r["command"].split() if a.startswith("engine.gpus_per_trial=")), "?")
        lines.append(
            f"| {n} | {gpt} | {', '.join(r.get('gpu_shares', []))} | {r.get('completed')} | {r['wall_s']} | "
            f"{r.get('trials_per_hour')} | {r.get('ratio_vs_gpu1')} | {r.get('trials_span_s')} | "
            f"{r.get('trials_per_hour_span')} | {r.get('ratio_vs_gpu1_span')} | {r.get('trial_s_mean')} | "
            f"{r.get('gpu_util_mean_pct')} | {r.get('gpu_mem_max_mib')} |"
        )
    lines += ["", "Commands:", ""] + [f"- {n}: `{r['command']}`" for n, r in runs.items()]
    lines += [
        "",
        "Trials (start = seconds after the command started; share = the child run's gpu_share tag):",
        "",
        "| run | share | state | start s | trial s | train_runtime_s | tokens/s | peak MiB | eval_loss | overrides |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in runs.items():
        for t in r.get("trials", []):
            lines.append(
                f"| {n} | {t['gpu_share']} | {t['trial_state']} | {t['start_s'] - r['started']:.1f} | "
                f"{t['end_s'] - t['start_s']:.1f} | {t.get('train_runtime_s', float('nan')):.1f} | "
                f"{t.get('tokens_per_s', float('nan')):.0f} | {t.get('peak_memory_mb', float('nan')):.0f} | "
                f"{t.get('eval_loss', float('nan')):.4f} | `{t['overrides']}` |"
            )
    (out / "packing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
    else:
        summary(Path(sys.argv[2]))
