"""Pruning in Ray Tune: a scheduler that asks an Optuna pruner (or Ray's ASHA) whether a trial goes on."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from lorasweep.errors import ConfigError
from lorasweep.space import SweepSpec, make_pruner

log = logging.getLogger(__name__)
STEP_KEY = "step"  # the training step a result belongs to; training_iteration when a result has none


class OptunaPruning(FIFOScheduler):
    """Reports each result into the searcher's Optuna trial and stops the trial when the pruner says so.

    OptunaSearch builds its study with a NopPruner and reports only after the scheduler has decided, so this
    scheduler takes over reporting (keyed by training step) and tells Optuna PRUNED itself.
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, searcher: OptunaSearch, metric: str, mode: str):
        super().__init__()
        self._pruner, self._searcher = pruner, searcher
        self._metric, self._mode = metric, mode
        self._last_step: dict[str, int] = {}
        self.pruned: set[str] = set()          # Ray trial ids this scheduler stopped
        self._unknown_warned = False
        # The searcher would report again after us, keyed by training_iteration: two step scales in one trial.
        searcher.on_trial_result = _ignore_result
        _quiet_double_completion(self.pruned)
        if searcher._ot_study is not None:
            searcher._ot_study.pruner = pruner

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        value = result.get(self._metric)
        ot_trial = self._searcher._ot_trials.get(trial.trial_id)
        if value is None or ot_trial is None or trial.trial_id in self._searcher._completed_trials:
            if ot_trial is None and not self._unknown_warned:
                log.warning("trial %s has no Optuna trial in the searcher; it is not pruned", trial.trial_id)
                self._unknown_warned = True
            return TrialScheduler.CONTINUE
        step = int(result.get(STEP_KEY, result.get(TRAINING_ITERATION, 0)))
        if step <= self._last_step.get(trial.trial_id, -1):
            return TrialScheduler.CONTINUE  # a repeated step (e.g. a final report): Optuna keeps the first value
        self._last_step[trial.trial_id] = step
        study = self._searcher._ot_study
        study.pruner = self._pruner  # trial.should_prune() and TPE's Hyperband brackets read study.pruner
        ot_trial.report(float(value), step)
        if not ot_trial.should_prune():
            return TrialScheduler.CONTINUE
        # Tell Optuna now: on STOP the searcher's on_trial_complete would record COMPLETE (the metric is set).
        try:
            study.tell(ot_trial, state=TrialState.PRUNED)
        except RuntimeError:
            pass  # GridSampler.after_trial calls study.stop() outside optimize(); the state is stored first
        self._searcher._completed_trials.add(trial.trial_id)
        self.pruned.add(trial.trial_id)
        log.info("pruned trial %s (Optuna #%d) at step %d: %s=%.4g",
                 trial.trial_id, ot_trial.number, step, self._metric, value)
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._last_step.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"Optuna {type(self._pruner).__name__}: {len(self.pruned)} pruned"


def make_scheduler(spec: SweepSpec, searcher) -> TrialScheduler:
    """The scheduler for spec.pruner: ASHA for `asha`, else an Optuna pruner bridged to the searcher's study.

    metric and mode travel with the searcher and scheduler, so leave them out of tune.TuneConfig.
    """
    if spec.pruner == "asha":
        try:
            return ASHAScheduler(metric=spec.metric, mode=spec.mode, **spec.pruner_options)
        except (AssertionError, TypeError, ValueError) as e:
            raise ConfigError("sweep.pruner", {"name": "asha", **spec.pruner_options}, str(e) or "ASHA refused it") from None
    inner = searcher
    while not isinstance(inner, OptunaSearch) and hasattr(inner, "searcher"):  # ConcurrencyLimiter
        inner = inner.searcher
    if not isinstance(inner, OptunaSearch):
        raise TypeError(f"pruner {spec.pruner!r} needs ray.tune.search.optuna.OptunaSearch, got {type(inner).__name__}")
    if spec.pruner == "none":
        return FIFOScheduler()
    return OptunaPruning(make_pruner(spec), inner, spec.metric, spec.mode)


def _ignore_result(trial_id: str, result: dict) -> None:
    return None


def _quiet_double_completion(pruned: set[str]) -> None:
    """Drop OptunaSearch's 'additional completion' warning for trials this bridge already told PRUNED."""

    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Received additional completion") and any(t in msg for t in pruned))

    logging.getLogger("ray.tune.search.optuna.optuna_search").addFilter(keep)
