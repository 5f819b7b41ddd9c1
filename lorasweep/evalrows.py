"""A trial's per-row eval outputs: every metric the tasks report is computed from them (lorasweep.stats owns each
definition), each gets its 95 % bootstrap interval, and they are saved so two trials can be compared row by row
later (a paired bootstrap on the same eval rows). No torch: the sweep driver and the reports read them too.

The outputs of one split are a dict of equal-length lists, whichever the task has:
predictions + labels (classification), losses (+ tokens: a causal LM's per-row sums of token losses and token
counts; none: a classifier's per-example loss), generations + references (greedy answers and their references).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from lorasweep import stats
from lorasweep.tasks import GENERATED

FILE = "eval_rows.json"  # the MLflow artifact: {split: outputs}

# metric -> (the output fields it needs, its Rows)
KINDS: dict[str, tuple[tuple[str, ...], Callable[[Mapping], stats.Rows]]] = {
    "accuracy": (("predictions", "labels"), lambda o: stats.accuracy(o["predictions"], o["labels"])),
    "macro_f1": (("predictions", "labels"), lambda o: stats.macro_f1(o["predictions"], o["labels"])),
    "loss": (("losses",), lambda o: stats.loss(o["losses"], o.get("tokens"))),
    "perplexity": (("losses", "tokens"), lambda o: stats.perplexity(o["losses"], o["tokens"])),
    **{
        name: (("generations", "references"), lambda o, f=f: f(o["generations"], o["references"]))
        for name, f in zip(GENERATED, (stats.exact_match, stats.rouge_l, stats.bleu, stats.chrf))
    },
}


def split_of(metric: str) -> tuple[str, str]:
    """'eval_macro_f1' -> ('eval', 'macro_f1')."""
    split, _, name = metric.partition("_")
    return split, name


def rows(outputs: Mapping, name: str) -> stats.Rows | None:
    """The Rows of metric `name` from one split's outputs; None when the metric is not one of KINDS or its outputs
    were not kept (e.g. perplexity of a classifier)."""
    fields, build = KINDS.get(name, ((), None))
    if build is None or not all(outputs.get(f) is not None and len(outputs[f]) for f in fields):
        return None
    return build(outputs)


def values(outputs: Mapping, names: Iterable[str] = KINDS) -> dict[str, float]:
    """Each metric of `names` the outputs define, on all their rows: what a trial reports."""
    return {n: r.value for n in names if (r := rows(outputs, n)) is not None}


def intervals(saved: Mapping[str, Mapping], metrics: Iterable[str]) -> dict[str, float]:
    """`<metric>_ci_low` / `<metric>_ci_high`: the 95 % bootstrap interval (stats.interval) of each metric (split
    prefixed, e.g. eval_accuracy) whose outputs were saved."""
    out = {}
    for metric in metrics:
        split, name = split_of(metric)
        r = rows(saved.get(split, {}), name)
        if r is not None:
            ci = stats.interval(r)
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = ci.low, ci.high
    return out


def load(run_id: str) -> dict[str, dict]:
    """A finished trial's saved outputs ({} for a run that saved none: older runs, failed ones)."""
    import mlflow

    if FILE not in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}:
        return {}
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{FILE}")
