"""What a lorasweep trial costs over a bare PEFT + torch loop, on the CPU.

The same tiny_llama config (data=tweets_sft, 30 steps of batch 8) runs through `lorasweep.trial.run_trial`
(Trainer, LoRA+ optimizer groups, scheduler, MLflow into a tmp sqlite store, evals, spectra, adapter saved) and
through a bare loop written here: the same model folder, the same data split and tokenization (lorasweep.data),
the same PEFT config, the same steps and batch, torch AdamW; no Trainer, no MLflow, no eval. One warm-up of each,
then >= 5 alternating pairs in one process; median wall times and their ratio.

    python benchmarks/bench_trial_overhead.py [--pairs 5] [--steps 30] [--batch 8]

Writes benchmarks/results/trial_overhead.{json,md}.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from bare import batch  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from peft import get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from lorasweep import base, data, model  # noqa: E402
from lorasweep.config import compose  # noqa: E402
from lorasweep.trial import run_trial  # noqa: E402


def overrides(steps: int, batch: int, store: str) -> list[str]:
    return [
        "model=tiny_llama",
        "data=tweets_sft",
        f"train.max_steps={steps}",
        f"train.batch_size={batch}",
        f"tracking.uri=sqlite:///{store}/mlflow.db",
        "tracking.experiment=overhead",
    ]


def trial(ov: list[str]) -> dict:
    t = time.perf_counter()
    s = run_trial(compose(ov))
    return {"wall_s": time.perf_counter() - t, "train_s": float(s["train_runtime_s"]), "steps": int(s["steps"])}


def bare(ov: list[str]) -> dict:
    t0 = time.perf_counter()
    cfg = compose(ov)
    torch.manual_seed(cfg.seed)
    parts = data.splits(cfg)
    path = base.folder(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    train = data.tokenize(cfg, parts, tok, None)["train"]
    targets, _ = model.targets(cfg, None)
    steps, bs = int(cfg.train.max_steps), int(cfg.train.batch_size)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=base.DTYPES[cfg.model.dtype])
    net = get_peft_model(net, model.peft_config(cfg, targets, steps))
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(cfg.seed))).tolist()
    ids, labels = train["input_ids"], train["labels"]
    net.train()
    t1 = time.perf_counter()
    for step in range(steps):
        x, y, mask = batch(ids, labels, order, step, bs, tok.pad_token_id)
        net(input_ids=x, attention_mask=mask, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return {"wall_s": end - t0, "train_s": end - t1, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    store = tempfile.mkdtemp(prefix="lorasweep-overhead-")
    os.chdir(store)  # MLflow's default artifact root (./mlruns) lands in the tmp folder too
    ov = overrides(args.steps, args.batch, store)
    print("warm-up (not counted)", trial(ov), bare(ov), flush=True)
    runs = {"trial": [], "bare": []}
    for i in range(args.pairs):
        order = ("trial", "bare") if i % 2 == 0 else ("bare", "trial")
        for kind in order:
            r = (trial if kind == "trial" else bare)(ov)
            runs[kind].append(r)
            print(i, kind, {k: round(v, 3) for k, v in r.items()}, flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "train_s")} for k, v in runs.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/bench_trial_overhead.py " + " ".join(sys.argv[1:]),
        "overrides": ov[:4],
        "pairs": args.pairs,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "median": med,
        "ratio_wall": med["trial"]["wall_s"] / med["bare"]["wall_s"],
        "ratio_train": med["trial"]["train_s"] / med["bare"]["train_s"],
        "runs": runs,
    }
    out = REPO / "benchmarks" / "results"
    (out / "trial_overhead.json").write_text(json.dumps(result, indent=1))
    md = [
        f"# Trial overhead on the CPU ({result['date']})",
        "",
        f"`{result['command']}` on {result['cpu']}, torch {result['torch']} ({result['torch_threads']} threads). "
        f"tiny_llama (random, 2 layers, hidden 64, vocab 30522), data=tweets_sft, {args.steps} steps of batch "
        f"{args.batch}, LoRA r=8 on q,v (the trial defaults). Medians of {args.pairs} alternating pairs in one process, "
        "after one warm-up of each.",
        "",
        "- **trial**: `lorasweep.trial.run_trial` — validate, split and tokenize, load, Trainer (LoRA+ groups, linear "
        "schedule with warm-up, logging every 10 steps), MLflow run in a tmp sqlite store (params, metrics, config "
        "artifact), the final eval (200 rows) and test eval (200 rows), spectra, adapter saved as an artifact.",
        "- **bare**: the same model folder, split, tokenization, PEFT config, steps and batch; torch AdamW in a "
        "plain loop; nothing else.",
        "",
        "| | trial | bare | trial / bare |",
        "|---|---|---|---|",
        f"| wall, config to done (s) | {med['trial']['wall_s']:.2f} | {med['bare']['wall_s']:.2f} | {result['ratio_wall']:.2f} |",
        f"| training phase (s) | {med['trial']['train_s']:.2f} | {med['bare']['train_s']:.2f} | {result['ratio_train']:.2f} |",
        "",
        "Training phase: the trial's `train_runtime_s` (`trainer.train()`, which includes its end-of-training "
        "eval only when max_steps is a multiple of eval_every — not here) against the bare loop's own steps.",
        "",
    ]
    (out / "trial_overhead.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
