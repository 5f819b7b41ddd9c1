"""Tokens the training steps feed the model, padding included, as the trial's own Trainer hands them out: each
optimizer step's rows as one device batch (train.sampling=random, train.grad_accum=1), and the same number of rows
a step cut by length into K device batches (train.sampling=batch_rebalance, train.grad_accum=K). No clock: the
count is what the cut saves on any machine; bench_vs_script.py --cuts K times it.

    python benchmarks/train_padding.py [--steps 120 --rows 32 --cuts 2,4] [overrides, e.g. model=tiny_llama]
"""

import argparse
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lorasweep import data, model, train  # noqa: E402
from lorasweep.config import compose  # noqa: E402
from lorasweep.trial import check  # noqa: E402


def counts(overrides: list[str], steps: int) -> dict[str, int]:
    """Over the first `steps` optimizer steps: real tokens, padded tokens, padded attention cost (rows x length^2)
    and device batches."""
    cfg = compose([*overrides, f"train.max_steps={steps}"])
    parts, labels, targets, _ = check(cfg)
    tuned, tok = model.load(cfg, targets, steps, labels)
    tr = train.trainer(cfg, tuned, tok, data.tokenize(cfg, parts, tok, labels), [])
    shutil.rmtree(tr.args.output_dir)
    out = {"real": 0, "padded": 0, "attention": 0, "batches": 0}
    for i, batch in enumerate(tr.get_train_dataloader()):
        if i == steps * cfg.train.grad_accum:
            break
        rows, length = batch["input_ids"].shape
        out["real"] += int(batch["attention_mask"].sum())
        out["padded"] += rows * length
        out["attention"] += rows * length * length
        out["batches"] += 1
    model.release(cfg, tuned, tok, labels)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rows", type=int, default=32, help="rows per optimizer step")
    ap.add_argument("--cuts", default="2,4", help="device batches per step to compare with one")
    args, overrides = ap.parse_known_args()
    whole = counts([*overrides, f"train.batch_size={args.rows}", "train.grad_accum=1"], args.steps)
    print(
        f"{args.steps} steps of {args.rows} rows ({' '.join(overrides) or 'defaults'}), real tokens {whole['real']:,}"
    )
    print(f"one batch a step: padded {whole['padded']:,} ({whole['padded'] / whole['real']:.2f}x real)")
    for k in (int(c) for c in args.cuts.split(",")):
        cut = [f"train.batch_size={args.rows // k}", f"train.grad_accum={k}", "train.sampling=batch_rebalance"]
        c = counts([*overrides, *cut], args.steps)
        print(
            f"batch_rebalance, {k} batches a step: padded {c['padded']:,} ({c['padded'] / c['real']:.2f}x real, "
            f"{c['padded'] / whole['padded']:.2f}x one batch), attention {c['attention'] / whole['attention']:.2f}x "
            f"one batch, {c['batches']} device batches"
        )


if __name__ == "__main__":
    main()
