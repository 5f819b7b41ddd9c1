"""The LoRA paper's published numbers (Hu et al. 2021, Tables 5 and 6) and the names of weight-type rows."""

from __future__ import annotations

from lorasweep.targets import GROUPS

CITATION = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)"
MODEL = "GPT-3 175B"
DATASETS = ("WikiSQL", "MultiNLI")  # validation accuracy, %


def ref_column(dataset: str) -> str:
    """The header of a reference column: says whose number it is, so it is never read as ours."""
    return f"paper ({MODEL}) {dataset}"


# Table 5: 18M trainable parameters spread over different weight types; r per row keeps the budget equal.
# weight types -> (r, WikiSQL, MultiNLI)
TABLE5: dict[tuple[str, ...], tuple[int, float, float]] = {
    ("q",): (8, 70.4, 91.0),
    ("k",): (8, 70.0, 90.8),
    ("v",): (8, 73.0, 91.0),
    ("o",): (8, 73.2, 91.3),
    ("q", "k"): (4, 71.4, 91.3),
    ("q", "v"): (4, 73.7, 91.3),
    ("q", "k", "v", "o"): (2, 73.7, 91.7),
}

# Table 6: validation accuracy at each rank r, per set of adapted weight types.
TABLE6_RANKS = (1, 2, 4, 8, 64)
TABLE6: dict[str, dict[tuple[str, ...], tuple[float, ...]]] = {
    "WikiSQL": {
        ("q",): (68.8, 69.6, 70.5, 70.4, 70.0),
        ("q", "v"): (73.4, 73.3, 73.7, 73.8, 73.5),
        ("q", "k", "v", "o"): (74.1, 73.7, 74.0, 74.0, 73.9),
    },
    "MultiNLI": {
        ("q",): (90.7, 90.9, 91.1, 90.7, 90.7),
        ("q", "v"): (91.3, 91.4, 91.3, 91.6, 91.4),
        ("q", "k", "v", "o"): (91.2, 91.7, 91.7, 91.5, 91.4),
    },
}

_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


def canonical(targets: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Target aliases as a set in the paper's order (q, k, v, o, ...); `attn`/`mlp` expand to their members."""
    out: set[str] = set()
    for t in targets:
        out.update(GROUPS.get(t, [t]))
    return tuple(sorted(out, key=lambda t: (_ORDER.index(t) if t in _ORDER else len(_ORDER), t)))


def label(targets: tuple[str, ...]) -> str:
    """('q', 'v') -> 'Wq+Wv' in the paper's notation; names that are not q/k/v/o stay as they are."""
    return "+".join(f"W{t}" if t in ("q", "k", "v", "o") else t for t in targets)


def table5(targets: tuple[str, ...], dataset: str) -> float | None:
    row = TABLE5.get(targets)
    return None if row is None else row[1 + DATASETS.index(dataset)]


def table5_rank(targets: tuple[str, ...]) -> int | None:
    row = TABLE5.get(targets)
    return None if row is None else row[0]


def table6(targets: tuple[str, ...], r: int, dataset: str) -> float | None:
    row = TABLE6[dataset].get(targets)
    return None if row is None or r not in TABLE6_RANKS else row[TABLE6_RANKS.index(r)]
