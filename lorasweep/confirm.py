"""Confirmation runs: `sweep.confirm: {top_k: K, seeds: S}` re-trains the K best distinct configs of the finished
search with S new seeds, as new Optuna trials tagged phase=confirm, counted apart from the search budget. Then the
confirmed configs are ranked by their mean over those seeds, and the sweep says in words which wins and whether the
runner-up is distinguishable from it (docs/statistics.md).

The search's own value of a config is left out of its mean: it was picked for being the best of many, so it is
biased up (the winner's curse); the confirmation seeds are not picked. Planning is pure: it reads the study and
enqueues what is missing, so a driver killed half-way plans again after resume and adds only what is not there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lorasweep import distinct, stats
from lorasweep.ledger import CONFIRM, KILLED, PHASE, RUN_ID
from lorasweep.schema import SEED_KEYS
from lorasweep.space import Confirm, SweepSpec

OF = "confirm_of"  # Optuna user attribute: the search trial whose config it re-trains
SEED = "confirm_seed"  # Optuna user attribute: its seed, the `seed=` override it trains with (seed_override)
ALPHA = 0.05  # "distinguishable": Welch's two-sided p below this
NAMES = {
    "eval_loss": "loss",
    "eval_perplexity": "perplexity",
    "eval_accuracy": "accuracy",
    "eval_macro_f1": "macro-F1",
    "eval_exact_match": "EM",
    "eval_rougeL": "ROUGE-L",
    "eval_bleu": "BLEU",
    "eval_chrf": "chrF",
}


@dataclass(frozen=True)
class Planned:
    params: dict  # Optuna params for enqueue_trial: the search trial's, so the space composes the same config
    attrs: dict  # PHASE, OF, SEED


@dataclass(frozen=True)
class Confirmed:
    label: str  # "r=16 alpha=32"
    source: int  # the search trial it confirms
    search_value: float  # what the search saw (one seed, picked as best: biased up)
    scores: tuple[float, ...]  # the metric over the confirmation seeds that completed
    interval: stats.Interval  # their mean and 95 % t interval
    run_ids: tuple[str, ...]  # the MLflow runs of those seeds


def is_confirm(trial: FrozenTrial) -> bool:
    """A confirmation trial: not part of the search, nor of its budget."""
    return trial.user_attrs.get(PHASE) == CONFIRM


def best(study: optuna.Study, spec: SweepSpec, k: int) -> list[FrozenTrial]:
    """The k best complete search trials whose configs differ (seed aside), best first; ties by trial number. spec
    is distinct.complete()'s: two samples that compose to one config are one config."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_confirm(t) and t.value is not None and math.isfinite(t.value)
    ]
    sign = -1.0 if spec.mode == "max" else 1.0
    picked, seen = [], set()
    for t in sorted(done, key=lambda t: (sign * t.value, t.number)):
        values = distinct.values_of(t, spec)
        key = None if values is None else distinct.config_of(values, spec, drop=SEED_KEYS)
        if key is not None and key not in seen:
            seen.add(key)
            picked.append(t)
        if len(picked) == k:
            break
    return picked


def new_seeds(base_seed: int, n: int) -> list[int]:
    """The n smallest seeds >= 0 other than the search's (parse refuses a space that searches the seed). Every
    confirmed config gets the same seeds."""
    out, s = [], 0
    while len(out) < n:
        if s != base_seed:
            out.append(s)
        s += 1
    return out


def plan(study: optuna.Study, spec: SweepSpec, c: Confirm, base_seed: int) -> list[Planned]:
    """The K×S confirmation trials of a finished search: each of the K best distinct configs at each new seed."""
    seeds = new_seeds(base_seed, c.seeds)
    return [
        Planned(dict(t.params), {PHASE: CONFIRM, OF: t.number, SEED: s})
        for t in best(study, spec, c.top_k)
        for s in seeds
    ]


def enqueue(study: optuna.Study, spec: SweepSpec, c: Confirm, base_seed: int) -> int:
    """Enqueue the planned trials that no confirmation trial holds yet (queued, running or ended, unless the sweep
    killed it): calling it again, e.g. after a kill and resume, adds only what is missing. Returns how many."""
    held = {
        (t.user_attrs.get(OF), t.user_attrs.get(SEED))
        for t in study.get_trials(deepcopy=False)
        if is_confirm(t) and not t.user_attrs.get(KILLED)
    }
    added = 0
    for p in plan(study, spec, c, base_seed):
        if (p.attrs[OF], p.attrs[SEED]) not in held:
            study.enqueue_trial(p.params, user_attrs=p.attrs)
            added += 1
    return added


def seed_override(trial: FrozenTrial | optuna.Trial) -> list[str]:
    """The override a confirmation trial adds to its sampled ones: its seed."""
    s = trial.user_attrs.get(SEED)
    return [] if s is None else [f"seed={s}"]


def label(values: Mapping[str, object], spec: SweepSpec) -> str:
    """`r=16 alpha=32`: each searched field (seed aside) by its last name."""
    return " ".join(o.rsplit(".", 1)[-1] for o in distinct.config_of(values, spec, drop=SEED_KEYS))


def ranked(study: optuna.Study, spec: SweepSpec) -> list[Confirmed]:
    """The confirmed configs, best mean first; a config none of whose seeds completed is left out."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    scores: dict[int, list[float]] = {}
    runs: dict[int, list[str]] = {}
    for t in trials.values():
        if is_confirm(t) and t.state == TrialState.COMPLETE and t.value is not None:
            scores.setdefault(t.user_attrs[OF], []).append(t.value)
            runs.setdefault(t.user_attrs[OF], []).append(t.user_attrs.get(RUN_ID, ""))
    out = [
        Confirmed(
            label(distinct.values_of(trials[n], spec) or {}, spec),
            n,
            trials[n].value,
            tuple(v),
            stats.seed_interval(v),
            tuple(runs[n]),
        )
        for n, v in scores.items()
    ]
    sign = -1.0 if spec.mode == "max" else 1.0
    return sorted(out, key=lambda c: (sign * c.interval.value, c.source))


def words(confirmed: list[Confirmed], metric: str) -> str:
    """The sweep's answer in one line: the winner's mean and seed interval, and whether the runner-up is
    distinguishable from it (Welch's t-test over their seeds)."""
    if not confirmed:
        return "no confirmed config: every confirmation trial failed"
    name = NAMES.get(metric, metric)
    top = confirmed[0]
    iv, n = top.interval, len(top.scores)
    spread = f" [{iv.low:.3g}, {iv.high:.3g}]" if math.isfinite(iv.low) else ""
    line = f"best {top.label}: {name} {iv.value:.3g}{spread} over {n} seed{'s' * (n != 1)}"
    if len(confirmed) > 1:
        second = confirmed[1]
        _, p = stats.welch(top.scores, second.scores)
        if math.isnan(p):
            verdict = "cannot tell (too few seeds, or no spread over them)"
        else:
            verdict = f"{'distinguishable' if p < ALPHA else 'not distinguishable'} (p={p:.2g})"
        line += f"; runner-up {second.label} {second.interval.value:.3g}: {verdict}"
    return line
