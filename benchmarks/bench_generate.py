"""What train.generate_eval adds to a causal-LM trial's eval, on the CPU.

A default causal-LM trial (data=tweets_sft: eval on its 200 eval rows; generation on the first
train.generate_samples=32 prompts, up to train.max_new_tokens=32 tokens) is built as lorasweep.trial builds it,
trained for a few steps (so that the model has learned where an answer ends), then evaluated alternately with and
without the generation callback. Median wall time of `trainer.evaluate()` each way, and their ratio; the issue's
limit is 2x.

    python benchmarks/bench_generate.py [--model gemma3_270m] [--steps 20] [--batch 4] [--repeats 3]

Writes benchmarks/results/generate_eval_<model>.{json,md}.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lorasweep import data, generate, model, train  # noqa: E402
from lorasweep.config import compose  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    over = [f"model={args.model}", "data=tweets_sft", "train.generate_eval=true"]
    over += [f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", f"train.batch_size={args.batch}"]
    cfg = compose(over)
    parts = data.splits(cfg)
    targets, _ = model.targets(cfg, None)
    peft_model, tok = model.load(cfg, targets, args.steps, None)
    datasets = data.tokenize(cfg, parts, tok, None)
    tables = []
    gen = generate.GenerateEval(cfg.data, cfg.train, tok, parts, tables.append)
    trainer = train.trainer(cfg, peft_model, tok, datasets, [], [gen])
    t = time.perf_counter()
    trainer.train()
    print(f"trained {args.steps} steps (with one eval): {time.perf_counter() - t:.1f} s", flush=True)
    rows = {"plain": [], "with_generation": [], "generation_s": []}
    for _ in range(args.repeats):
        for name in ("plain", "with_generation"):
            trainer.remove_callback(generate.GenerateEval)
            if name == "with_generation":
                trainer.callback_handler.callbacks.insert(0, gen)  # before Report, as in a trial
            t = time.perf_counter()
            m = trainer.evaluate()
            rows[name].append(time.perf_counter() - t)
            print(f"{name}: {rows[name][-1]:.1f} s", flush=True)
            if name == "with_generation":
                rows["generation_s"].append(m["eval_generate_runtime"])
                scores = {k: m[k] for k in ("eval_exact_match", "eval_rougeL", "eval_bleu", "eval_chrf")}
    plain, withgen = statistics.median(rows["plain"]), statistics.median(rows["with_generation"])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python benchmarks/bench_generate.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "eval_rows": len(datasets["eval"]),
        "generate_samples": int(cfg.train.generate_samples),
        "max_new_tokens": int(cfg.train.max_new_tokens),
        "train_steps": args.steps,
        "eval_s_median": plain,
        "eval_with_generation_s_median": withgen,
        "ratio": withgen / plain,
        "runs": rows,
        "scores_last": scores,
        "sample": {k: v[:4] for k, v in tables[-1].items()},
    }
    out = REPO / "benchmarks" / "results" / f"generate_eval_{args.model}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Generation eval cost: {args.model}, data=tweets_sft",
        "",
        f"{result['date']}; {result['machine']}; `{result['command']}`.",
        f"After {args.steps} training steps of batch {args.batch}: `trainer.evaluate()` on the "
        f"{result['eval_rows']} eval rows, alone and with greedy generation for the first "
        f"{result['generate_samples']} prompts (up to {result['max_new_tokens']} new tokens), "
        f"{args.repeats} alternating runs each.",
        "",
        "| eval | median wall (s) | runs (s) |",
        "|---|---|---|",
        f"| loss only | {plain:.1f} | {', '.join(f'{x:.1f}' for x in rows['plain'])} |",
        f"| loss + generation | {withgen:.1f} | {', '.join(f'{x:.1f}' for x in rows['with_generation'])} |",
        "",
        f"Ratio **{withgen / plain:.2f}x** (limit 2x). Scores of the last run: "
        + ", ".join(f"{k} {v:.3g}" for k, v in scores.items())
        + ".",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
