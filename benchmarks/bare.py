"""The bare-loop side of the trial benchmarks: one padded causal-LM batch, built by hand as a plain loop would."""

import torch


def batch(ids: list[list[int]], labels: list[list[int]], order: list[int], step: int, bs: int, pad_id: int):
    """Rows step*bs ... of the shuffled order, right-padded: input ids, labels (-100 on padding), attention mask."""
    rows = [order[(step * bs + i) % len(order)] for i in range(bs)]
    n = max(len(ids[r]) for r in rows)
    x = torch.full((bs, n), pad_id, dtype=torch.long)
    y = torch.full((bs, n), -100, dtype=torch.long)
    mask = torch.zeros((bs, n), dtype=torch.long)
    for j, r in enumerate(rows):
        k = len(ids[r])
        x[j, :k], y[j, :k], mask[j, :k] = torch.tensor(ids[r]), torch.tensor(labels[r]), 1
    return x, y, mask
