"""Tokens an eval pass feeds the model, padding included, with the eval and test rows in the table's order (as
before data.by_length), longest first with each batch padded to its own bucket (data.eval_lengths=null), and as
trials take them (longest first, at most data.eval_lengths padded lengths): the same rows, the trial's own
collators and eval batch size. No clock: the count is what the sort saves on any machine.

    python benchmarks/eval_padding.py [overrides, e.g. data.eval_size=1000 train.batch_size=32]

The padding is a GPU's (data.GPU_PADDING) unless the overrides say otherwise.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from lorasweep import base, data  # noqa: E402
from lorasweep.config import compose  # noqa: E402
from lorasweep.tasks import TASKS  # noqa: E402


def counts(overrides: list[str]) -> dict[str, dict[str, int]]:
    """Per split: padded tokens of one pass in each order, the real tokens, and the distinct batch shapes."""
    cfg = compose(overrides)
    parts = data.splits(cfg)
    names = data.labels(cfg, parts)
    tok = AutoTokenizer.from_pretrained(base.folder(cfg.model))  # what model.load reads
    collate = data.collator(cfg.data, cfg.model.task, tok)
    batch = TASKS[cfg.model.task].eval_batch(int(cfg.train.batch_size))
    sorted_ = data.tokenize(cfg, parts, tok, names)
    out = {}
    for split in ("eval", "test"):
        rows, _ = data.encoded(cfg, tok, parts[split], names)
        stored = Dataset.from_dict(rows).select(range(len(sorted_[split])))  # train.eval_samples: the first rows
        bounded = data.eval_collator(cfg.data, cfg.model.task, tok, sorted_[split], batch)
        passes = {
            "stored": data.eval_shapes(stored, collate, batch),
            "sorted": data.eval_shapes(sorted_[split], collate, batch),
            "bounded": data.eval_shapes(sorted_[split], bounded, batch),
        }
        out[split] = {"rows": len(stored), "batch": batch, "real": sum(len(ids) for ids in stored["input_ids"])}
        for name, shapes in passes.items():
            out[split][name] = sum(n * length for n, length in shapes)
            out[split][f"shapes_{name}"] = len(set(shapes))
            out[split][f"lengths_{name}"] = len({length for _, length in shapes})
    return out


def main() -> None:
    overrides = ["data.pad_to_multiple_of=16", "data.eval_lengths=2", *sys.argv[1:]]  # a GPU's auto; later ones win
    print(f"eval pass, padded tokens ({' '.join(overrides)}):")
    for split, c in counts(overrides).items():
        line = [f"{split}: {c['rows']} rows in batches of {c['batch']}, real tokens {c['real']:,}"]
        for name, words in (("stored", "table order"), ("sorted", "longest first"), ("bounded", "bounded lengths")):
            line.append(
                f"{words} {c[name]:,} ({c[name] / c['stored']:.2f}x, {c['lengths_' + name]} lengths, "
                f"{c['shapes_' + name]} shapes)"
            )
        print("; ".join(line))


if __name__ == "__main__":
    main()
