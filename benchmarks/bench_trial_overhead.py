"""What a lorasweep trial costs over a bare PEFT + torch loop, on the CPU, on depth-matched proxies.

Each side runs in a fresh process (benchmarks/fair.py), alternating, --reps times per proxy, on the identical
prebuilt batches (the project's collator, one seeded order), the same optimizer (PEFT's LoRA+ groups), scheduler,
clipping, one eval at the last step on the same rows and one test eval. Then one counting pass per side
(benchmarks/counting.py): ops, Python calls, casts, syncs, copies and attention shapes per step, and the Python
functions the trial calls per step that the bare loop does not. Then the length buckets: distinct batch shapes
per 100 steps and per eval, and the bare loop's per-step time, for data.pad_to_multiple_of = none, 8, 16, 32.

    python benchmarks/bench_trial_overhead.py [--reps 5] [--steps 30] [--batch 8] [--threads 1] [--count-only]

Writes benchmarks/results/trial_overhead.{json,md}. Timings on a shared machine move with its load (printed
beside them); counts do not.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fair import launch  # noqa: E402

PROXIES = {
    "tiny_llama": ["model=tiny_llama"],
    "llama8_qv": ["model=tiny_llama", "model.name=llama8_qv", "model.config.num_hidden_layers=8"],
    "llama28_all_bf16": [
        "model=tiny_llama",
        "model.name=llama28_all_bf16",
        "model.config.num_hidden_layers=28",
        "model.dtype=bfloat16",
        "adapter.targets=[all-linear]",
    ],
}
BUCKETS = ("null", "8", "16", "32")
TIMES = ("step_median_s", "step_mean_s", "train_call_s", "setup_s", "teardown_s", "eval_s", "wall_s")
COUNTS = ("ops", "python_calls", "casts", "syncs", "host_scalars", "copies_blocking", "copies_non_blocking")


def common(steps: int, batch: int) -> list[str]:
    return [
        "data=tweets_sft",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        f"train.eval_every={steps}",  # one eval, at the last step, on both sides
        "train.eval_samples=32",
        "data.test_size=32",
        # The bare loop measures no spectra; what they cost is in benchmarks/results/spectrum_cost.md.
        "tracking.spectra=false",
        # The proxies stand for a GPU's host work: its padding (data.GPU_PADDING), which a CPU's auto would not use.
        "data.pad_to_multiple_of=16",
        "data.eval_lengths=2",
    ]


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def shapes(steps: int, batch: int, pad: str) -> dict:
    """Distinct (rows, padded length) of the train batches over `steps` steps and of one eval pass (200 rows)."""
    import torch
    from transformers import AutoTokenizer

    from lorasweep import base, data
    from lorasweep.config import compose

    cfg = compose(
        ["model=tiny_llama", *common(steps, batch), f"data.pad_to_multiple_of={pad}", "train.eval_samples=200"]
    )
    tok = AutoTokenizer.from_pretrained(base.folder(cfg.model))
    ds = data.tokenize(cfg, data.splits(cfg), tok, None)
    collate = data.collator(cfg.data, cfg.model.task, tok)
    order = torch.randperm(len(ds["train"]), generator=torch.Generator().manual_seed(0)).tolist()
    train = {
        tuple(collate([ds["train"][r] for r in order[i * batch : (i + 1) * batch]])["input_ids"].shape)
        for i in range(steps)
    }
    ev = ds["eval"]  # longest first, as trials take it, through the collator fitted to it (data.eval_lengths=2)
    evs = set(data.eval_shapes(ev, data.eval_collator(cfg.data, cfg.model.task, tok, ev, batch), batch))
    return {"train": len(train), "eval": len(evs), "train_lengths": sorted(s[1] for s in train)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--bucket-reps", type=int, default=3)
    ap.add_argument("--bucket-proxies", default="tiny_llama,llama8_qv")
    ap.add_argument("--count-only", action="store_true", help="the counting pass alone: trial_counts.{json,md}")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lorasweep-overhead-"))
    load = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]), "proxies": {}}
    for name in args.proxies.split(","):
        ov = [*PROXIES[name], *common(args.steps, args.batch)]
        row = {"overrides": ov, "count": {}, "runs": {"trial": [], "bare": []}}
        for side in ("trial", "bare"):
            rec = launch(side, tmp / f"{name}_{side}_count.json", ov, count=True, threads=args.threads)
            row["count"][side] = {k: rec[k] for k in ("count", "profile", "fingerprint", "padded_lengths")}
        result["proxies"][name] = row
        for i in range(0 if args.count_only else args.reps):
            for side in ("trial", "bare") if i % 2 == 0 else ("bare", "trial"):
                rec = launch(side, tmp / f"{name}_{side}_{i}.json", ov, threads=args.threads)
                row["runs"][side].append(
                    {
                        k: rec.get(k)
                        for k in (
                            *TIMES,
                            "fingerprint",
                            "train_loss",
                            "eval_loss",
                            "trainer_dir_left_after_trial",
                            "store_s",
                        )
                    }
                )
                print(name, i, side, {k: round(rec[k], 4) for k in TIMES}, flush=True)
        if args.count_only:
            row["same_batches"] = len({c["fingerprint"] for c in row["count"].values()}) == 1
            continue
        row["timing"] = {s: {k: spread([r[k] for r in v]) for k in TIMES} for s, v in row["runs"].items()}
        row["same_batches"] = len({r["fingerprint"] for v in row["runs"].values() for r in v}) == 1
        load.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    out = REPO / "benchmarks" / "results"
    if args.count_only:  # counts do not move with the load: no timing, no buckets
        result["steps"] = args.steps
        same = ", ".join(f"{n} {'yes' if p['same_batches'] else 'NO'}" for n, p in result["proxies"].items())
        head = (
            f"`{result['command']}`, {args.steps} steps of batch {args.batch}; identical batches on both sides: {same}."
        )
        md = [f"# Counting pass, trial vs bare ({result['date']})", "", head, *counting_md(result)]
        (out / "trial_counts.json").write_text(json.dumps(result, indent=1))
        (out / "trial_counts.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    buckets = {}
    for pad in BUCKETS:
        b = {"shapes_per_100_steps": shapes(100, args.batch, pad), "bare_step_median_s": {}}
        for name in args.bucket_proxies.split(","):
            ov = [*PROXIES[name], *common(args.steps, args.batch), f"data.pad_to_multiple_of={pad}"]
            runs = [
                launch("bare", tmp / f"pad{pad}_{name}_{i}.json", ov, threads=args.threads)
                for i in range(args.bucket_reps)
            ]
            b["bare_step_median_s"][name] = spread([r["step_median_s"] for r in runs])
            b.setdefault("mean_padded_length", statistics.mean(runs[0]["padded_lengths"]))
        buckets[pad] = b
        print("pad", pad, b, flush=True)
    load.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    import torch

    result.update(
        buckets=buckets,
        load=load,
        cpu=f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        torch=torch.__version__,
        threads=args.threads,
        reps=args.reps,
        bucket_reps=args.bucket_reps,
        steps=args.steps,
        batch=args.batch,
    )
    (out / "trial_overhead.json").write_text(json.dumps(result, indent=1))
    (out / "trial_overhead.md").write_text(markdown(result))
    print(markdown(result))


def extra_calls(row: dict, steps: int, top: int = 8) -> list[str]:
    """The Python functions the trial calls more often than the bare loop, per step."""
    t, b = row["count"]["trial"]["profile"], row["count"]["bare"]["profile"]
    diff = sorted(
        ((v[0] - b.get(k, [0])[0]) / steps, k) for k, v in t.items() if not k.startswith(("~", "benchmarks/"))
    )
    return [f"{n:,.0f} × `{k}`" for n, k in reversed(diff[-top:])]


def counting_md(r: dict) -> list[str]:
    """The counting pass's tables: per-step counts, the phases outside the steps, the trial's extra Python calls and
    where its syncs and casts come from."""
    md = [
        "",
        "Counting pass, per training step (median of steps 3 on; max in brackets where it differs: logging steps):",
        "",
        "| proxy | side | ops | Python calls | casts | device syncs | host scalars | blocking copies | non-blocking "
        "copies | attention shapes (train / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["proxies"].items():
        for side in ("trial", "bare"):
            c = p["count"][side]["count"]
            cells = [
                f"{c['per_step_median'][k]:,.0f}"
                + (f" [{c['per_step_max'][k]:,}]" if c["per_step_max"][k] != c["per_step_median"][k] else "")
                for k in COUNTS
            ]
            sh = c["attention_shapes"]
            md.append(f"| {name} | {side} | " + " | ".join(cells) + f" | {sh.get('step', 0)} / {sh.get('eval', 0)} |")
    md += ["", "Outside the steps (whole phase):", ""]
    for name, p in r["proxies"].items():
        for side in ("trial", "bare"):
            o = p["count"][side]["count"]["other"]
            md.append(
                f"- {name} {side}: "
                + "; ".join(f"{ph}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(c.items())) for ph, c in o.items())
            )
    md += ["", "Python functions the trial calls per step more often than the bare loop (cProfile call counts):", ""]
    for name, p in r["proxies"].items():
        md.append(f"- {name}: " + "; ".join(extra_calls(p, r["steps"])))
    md += [
        "",
        "Where the trial's device syncs and casts come from (counting pass, whole train() call, by first line outside "
        "torch), for the deepest proxy:",
        "",
    ]
    last = list(r["proxies"].values())[-1]
    for side in ("trial", "bare"):
        for what, sites in last["count"][side]["count"]["where"].items():
            if what.startswith(("sync", "cast", "host")):
                md.append(f"- {side} {what}: " + ", ".join(f"`{s}` {n}" for s, n in sites.items()))
    return md


def markdown(r: dict) -> str:
    def ms(s: dict) -> str:
        return f"{1000 * s['median']:.1f} ({1000 * s['min']:.1f}–{1000 * s['max']:.1f})"

    md = [
        f"# Trial overhead on the CPU ({r['date']})",
        "",
        f"`{r['command']}` on {r['cpu']}, torch {r['torch']}, {r['threads']} thread per process. Load "
        f"(`uptime`) before, between proxies and after: "
        + "; ".join(f"`{x.split('load average: ')[-1]}`" for x in r["load"])
        + ".",
        "",
        f"Each side in a fresh process, alternating, {r['reps']} repetitions; medians (min–max) in ms. "
        f"data=tweets_sft, {r['steps']} steps of batch {r['batch']}, one eval of 32 rows at the last step and one test "
        "eval of 32 rows on both sides, identical prebuilt batches (fingerprint equal on every run: "
        + ", ".join(f"{n} {'yes' if p['same_batches'] else 'NO'}" for n, p in r["proxies"].items())
        + "). Per-step time: from one step's start to the next's, steps 3 on (logging and callbacks included). "
        "Set-up: `train()` called to the first step's start; tear-down: the last step's end to `train()`'s "
        "return, less the eval. Wall: from the composed config to done, the trial in an MLflow store and "
        "experiment made before its clock, as a sweep's driver makes them (making them took "
        + ", ".join(
            f"{n} {1000 * statistics.median(x['store_s'] for x in p['runs']['trial']):.0f} ms"
            for n, p in r["proxies"].items()
        )
        + "), with `tracking.spectra=false` (the bare loop measures none) and the GPU's padding (16, 2 eval lengths)."
        " See docs/performance.md for what the columns mean and how they carry to a GPU.",
        "",
        "| proxy | side | per step | per step (mean) | train() | set-up | tear-down | eval | wall, config to done |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["proxies"].items():
        for side in ("trial", "bare"):
            t = p["timing"][side]
            md.append(f"| {name} | {side} | " + " | ".join(ms(t[k]) for k in TIMES) + " |")
        tt, bt = p["timing"]["trial"], p["timing"]["bare"]
        md.append(
            f"| {name} | trial / bare | "
            + " | ".join(f"{tt[k]['median'] / bt[k]['median']:.2f}" if bt[k]["median"] > 1e-4 else "-" for k in TIMES)
            + " |"
        )
    md += counting_md(r)
    md += [
        "",
        "Length buckets (`data.pad_to_multiple_of`): distinct batch shapes over 100 training steps of batch "
        f"{r['batch']} and over one eval pass of 200 rows (longest first, data.eval_lengths=2); the bare loop's "
        f"per-step time (median (min–max) of {r['bucket_reps']} fresh processes, ms); the mean padded length.",
        "",
        "| pad_to_multiple_of | train shapes / 100 steps | eval shapes | padded lengths | mean padded length | "
        + " | ".join(f"{n} per step" for n in next(iter(r["buckets"].values()))["bare_step_median_s"])
        + " |",
        "|---|---|---|---|---|" + "---|" * len(next(iter(r["buckets"].values()))["bare_step_median_s"]),
    ]
    for pad, b in r["buckets"].items():
        s = b["shapes_per_100_steps"]
        md.append(
            f"| {pad} | {s['train']} | {s['eval']} | {sorted(set(s['train_lengths']))} | {b['mean_padded_length']:.1f} | "
            + " | ".join(ms(v) for v in b["bare_step_median_s"].values())
            + " |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
