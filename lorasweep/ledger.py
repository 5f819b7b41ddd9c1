"""Ledger: one trial, one identity. The Optuna trial number keys its MLflow child run; end states go to both stores.

The driver creates the child run before any work starts and writes the run id onto the Optuna trial, so each store
can name the other's record of the trial before anything can fail. Every end state (COMPLETE, PRUNED, FAILED,
KILLED, SKIPPED) is written here, once, to both. A sampled config some trial already holds never gets this far: it
is told to Optuna as a DUPLICATE (distinct.py) and has no child run.
"""

from __future__ import annotations

import os
import shlex

import mlflow
import optuna
from mlflow.entities import Param, RunTag
from optuna.trial import TrialState

from lorasweep import compare, warmstart

# Imported by a sweep's driver and workers only. MLflow prints "View run ... at <server>" for each run it ends on a
# tracking server; a sweep's server is gone when the sweep ends, so these are dead links. The sweep's last lines say
# once how to open it afterwards (tracking.how_to_open).
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

RUN_ID = "mlflow_run_id"  # Optuna user attribute: the trial's MLflow child run
KILLED = "killed"  # Optuna user attribute: FAIL because the sweep stopped it, not because of its config
DUPLICATE = "duplicate_of"  # Optuna user attribute: this sample was trial N's config; nothing ran, no budget used
PHASE, CONFIRM = "phase", "confirm"  # Optuna user attribute and child tag of a confirmation trial (confirm.py)
OPTUNA_STATE = {
    "COMPLETE": TrialState.COMPLETE,
    "PRUNED": TrialState.PRUNED,
    "FAILED": TrialState.FAIL,
    "KILLED": TrialState.FAIL,
    "SKIPPED": TrialState.PRUNED,  # infeasible (its constraints say why): no sampler takes it for a result
}
MLFLOW_STATUS = {
    "COMPLETE": "FINISHED",
    "PRUNED": "FINISHED",
    "SKIPPED": "FINISHED",
    "FAILED": "FAILED",
    "KILLED": "KILLED",
}


def run_name(number: int, config: dict) -> str:
    """`t007 r=8 alpha=16 lr=0.003`: the trial number, then each sampled field by its last name."""

    def show(v):
        return f"{v:.3g}" if isinstance(v, float) else (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)

    return " ".join([f"t{number:03d}", *(f"{k.rsplit('.', 1)[-1]}={show(v)}" for k, v in config.items())])[:250]


def open_child(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    study: optuna.Study,
    trial: optuna.Trial,
    config: dict,
    overrides: list[str],
    params: dict[str, object],
    sweep_id: str,
) -> str:
    """The trial's MLflow child run, created RUNNING before any work; its id is stored on the Optuna trial."""
    exp = client.get_run(parent_run_id).info.experiment_id
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "optuna_trial": str(trial.number),
        "sweep_id": sweep_id,
        "overrides": shlex.join(overrides),
        "trial_state": "RUNNING",
    }
    warm = warmstart.tag(study, trial)
    if warm:
        tags["warm_start"] = warm
    tags.update(_phase_tags(trial))
    run_id = client.create_run(exp, run_name=run_name(trial.number, config), tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    trial.set_user_attr(RUN_ID, run_id)
    return run_id


def reason(e: BaseException) -> str:
    """A failure's one-line reason: a ConfigError's own line, else the exception's type and first line."""
    from lorasweep.errors import ConfigError

    text = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0][:2000]


def finish(
    client: mlflow.MlflowClient,
    study: optuna.Study,
    number: int,
    run_id: str,
    state: str,
    value: float | None = None,
    reason: str | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Write a trial's end state to both stores. COMPLETE carries the objective value; PRUNED takes the
    last value the trial reported (Optuna's rule); FAILED and KILLED carry the reason, SKIPPED (over
    sweep.max_cost, never trained) why it was skipped."""
    extra = {"trial_state": state, **(tags or {})}
    if reason:
        extra["skip_reason" if state == "SKIPPED" else "failure_reason"] = reason[:4000]
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in extra.items()])
    client.set_terminated(run_id, MLFLOW_STATUS[state])
    try:
        if state == "COMPLETE":
            study.tell(number, value)
        else:
            study.tell(number, state=OPTUNA_STATE[state])
    except RuntimeError:  # GridSampler asks optimize() to stop once the grid is done; the state is stored first
        pass


def live_trial(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> optuna.Trial:
    """A handle on a RUNNING trial by its number, as a worker or a resumed driver needs (the storage's public API)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def kill_running(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    reason: str,
) -> int:
    """Every trial still RUNNING (a dead driver's, or one cut by the time limit): KILLED in MLflow, FAIL flagged
    `killed` in Optuna. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        live = live_trial(storage, study, t.number)
        live.set_user_attr(KILLED, True)
        run_id = t.user_attrs.get(RUN_ID)
        if run_id is None:  # the driver died between asking for the trial and storing its run's id
            run_id = _child_of(client, parent_run_id, t.number) or _bare_child(client, parent_run_id, t)
            live.set_user_attr(RUN_ID, run_id)
        finish(client, study, t.number, run_id, "KILLED", reason=reason)
    return len(running)


def _child_of(client: mlflow.MlflowClient, parent_run_id: str, number: int) -> str | None:
    """The child run open_child created for this trial number before the driver died, if it got that far."""
    exp = client.get_run(parent_run_id).info.experiment_id
    found = client.search_runs(
        [exp], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.optuna_trial = '{number}'", max_results=1
    )
    return found[0].info.run_id if found else None


def _phase_tags(trial: optuna.Trial | optuna.trial.FrozenTrial) -> dict[str, str]:
    """What part of the study a trial belongs to (a compare arm and phase, a confirmation run), as child tags."""
    return {k: str(v) for k, v in trial.user_attrs.items() if k in (compare.ARM, compare.PHASE, PHASE)}


def _bare_child(client: mlflow.MlflowClient, parent_run_id: str, t: optuna.trial.FrozenTrial) -> str:
    exp = client.get_run(parent_run_id).info.experiment_id
    tags = {"mlflow.parentRunId": parent_run_id, "optuna_trial": str(t.number), **_phase_tags(t)}
    run_id = client.create_run(exp, run_name=run_name(t.number, t.params), tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in t.params.items()])
    return run_id


def in_budget(t: optuna.trial.FrozenTrial) -> bool:
    """A search trial the budget counts: not one the sweep killed, a warm start's seed from an earlier sweep, a
    duplicate sample (never ran) or a confirmation run (counted apart)."""
    a = t.user_attrs
    return not a.get(KILLED) and warmstart.SEEDED not in a and DUPLICATE not in a and a.get(PHASE) != CONFIRM


def finished(study: optuna.Study) -> int:
    """Search trials that ended and count against the budget (in_budget)."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=ended) if in_budget(t))
