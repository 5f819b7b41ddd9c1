"""Warm start (`sweep.warm_start: <sweep id or name>`): a new sweep's study learns from an earlier sweep.

- Where the spaces agree (same metric and direction, and every earlier trial's params drawn from the distributions
  this sweep defines), the earlier finished trials are added to the study (Optuna's `add_trials`). The sampler and
  the pruner see them; they are not trained again and do not count against the budget.
- Where they differ, the earlier sweep's top-k configs, cut to the params this space holds, are enqueued
  (`enqueue_trial`) and run first.

Each child run's `warm_start` tag says which happened to its trial.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from lorasweep import sweepdir
from lorasweep.space import SweepSpec, distributions

SEEDED = "seeded_from"  # Optuna user attribute of an added trial: "<sweep id> t003"; not trained, not counted
ENQUEUED = "enqueued_from"  # of a trial this sweep runs first because the earlier sweep found its config good
NOTE = "warm_start"  # Optuna study user attribute: what the warm start did, in one line


def _load(folder: Path) -> optuna.Study:
    state = sweepdir.read_state(folder)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=state["study_name"], storage=state["storage"])


def seed(study: optuna.Study, spec: SweepSpec, folder: Path) -> str:
    """Seed a new sweep's study from the earlier sweep in `folder`; returns what was done, in one line."""
    earlier = _load(folder)
    name = folder.name
    finished = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    finished = [t for t in finished if SEEDED not in t.user_attrs]  # its own seeds are its ancestor's trials
    dists = distributions(spec)
    same = (
        (earlier.metric_names or [None])[0] == spec.metric
        and earlier.direction == study.direction
        and all(dists.get(k) == d for t in finished for k, d in t.distributions.items())
    )
    if same:
        study.add_trials(
            [
                optuna.trial.create_trial(
                    state=t.state,
                    value=t.value,
                    params=t.params,
                    distributions=t.distributions,
                    intermediate_values=t.intermediate_values,
                    user_attrs={**t.user_attrs, SEEDED: f"{name} t{t.number:03d}"},
                )
                for t in finished
            ]
        )
        note = f"the study was seeded with {len(finished)} finished trials of {name} (same space)"
    else:
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        best = sorted(complete, key=lambda t: t.value, reverse=earlier.direction.name == "MAXIMIZE")
        queued = []
        for t in best[: spec.warm_start_top_k]:
            params = {k: v for k, v in t.params.items() if k in dists and _fits(dists[k], v)}
            if params:
                study.enqueue_trial(params, user_attrs={ENQUEUED: f"{name} t{t.number:03d}"}, skip_if_exists=True)
                queued.append(f"t{t.number:03d}")
        note = (
            f"the spaces differ: the top {len(queued)} configs of {name} ({', '.join(queued) or 'none'}) "
            "were enqueued to run first"
        )
    study.set_user_attr(NOTE, note)
    return note


def _fits(dist: optuna.distributions.BaseDistribution, value: object) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and dist.low <= value <= dist.high


def tag(study: optuna.Study, trial: optuna.Trial) -> str | None:
    """The child run's `warm_start` tag: enqueued from which earlier trial, or how the study was seeded."""
    if ENQUEUED in trial.user_attrs:
        return f"enqueued from {trial.user_attrs[ENQUEUED]}"
    return study.user_attrs.get(NOTE)
