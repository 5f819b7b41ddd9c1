"""Worker: one sweep trial inside a long-lived Ray worker process, through the same run_trial as `lorasweep trial`.

The process outlives the trial: imports, tokenized splits and (where safe) the base model stay warm for the next
trial it serves (lorasweep.data and lorasweep.model keep them). Each eval is reported to the trial's Optuna
trial, and should_prune() decides, against the storage the driver and every worker share: Optuna's own idiom,
whoever runs the trial. The worker returns an end state; the driver's ledger writes it to both stores.
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass

OOM_HINT = " (out of memory: try a smaller train.batch_size, quant=nf4, or train.gradient_checkpointing=true)"


@dataclass(frozen=True)
class Job:
    """What the driver hands a worker: the trial's identity in both stores, and how to build its config."""

    number: int  # the Optuna trial number: the trial's one identity
    run_id: str  # its MLflow child run, created by the driver
    config: dict  # the trial's config, composed and checked by the driver (not composed twice)
    study_name: str
    storage: str  # Optuna storage URL the workers share
    pruner: dict  # {"name": ..., **options}, built into the same Optuna pruner as the driver's
    metric: str
    objectives: tuple[str, ...]  # a multi-objective sweep's metrics (the first is `metric`); () for one objective
    mode: str  # max | min: the direction the objective improves in
    tracking_uri: str
    gpu_share: float
    threads: int
    max_cost: tuple[tuple[str, float], ...] = ()  # sweep.max_cost: (predicted cost, upper bound)


def run(job: Job) -> dict:
    """Train one trial; returns {"state": COMPLETE | PRUNED | SKIPPED | FAILED, "value", "step", "reason", "node",
    ...}."""
    import optuna
    import torch
    from omegaconf import OmegaConf

    from lorasweep import ledger, samplers
    from lorasweep.trial import run_trial

    os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
    torch.set_num_threads(max(1, job.threads))
    node = {"node": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        node["ray_node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not inside Ray (a test calling run directly)
        pass
    storage = optuna.storages.RDBStorage(job.storage, engine_kwargs=engine_kwargs(job.storage))
    study = optuna.load_study(study_name=job.study_name, storage=storage, pruner=samplers.build_pruner(job.pruner))
    trial = ledger.live_trial(storage, study, job.number)
    last = {"step": 0, "value": None, "before": None}

    def prune(metrics: dict[str, float], step: int) -> None:
        if job.metric not in metrics or step <= last["step"]:
            return
        last.update(step=step, value=float(metrics[job.metric]), before=last["value"])
        if job.objectives:  # Optuna takes no intermediate values of a multi-objective trial, and prunes none
            return
        trial.report(last["value"], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {job.metric}={last['value']:.4g}")

    try:
        cfg = OmegaConf.create(job.config)  # its fields and fit checked by the driver; run_trial checks data, targets
        OmegaConf.set_struct(cfg, True)  # as compose() leaves it: a misspelt key read is an error, not None
        costs, skip = priced(trial, cfg, job.max_cost)
        if skip:
            return {"state": "SKIPPED", "reason": skip, "costs": costs, **node}
        summary = run_trial(cfg, listeners=(prune,), run_id=job.run_id)
    except optuna.TrialPruned as e:
        return {"state": "PRUNED", "value": last["value"], "step": last["step"], "reason": str(e), **node}
    except Exception as e:  # recorded with its reason; the sweep goes on
        reason = ledger.reason(e)
        return {"state": "FAILED", "reason": reason + (OOM_HINT if "out of memory" in reason.lower() else ""), **node}
    missing = [m for m in job.objectives or (job.metric,) if summary.get(m) is None]
    if missing:
        return {"state": "FAILED", "reason": f"the trial never reported {', '.join(missing)}", **node}
    value = float(summary[job.metric])
    return {
        "state": "COMPLETE",
        "value": [float(summary[m]) for m in job.objectives] if job.objectives else value,
        "last_eval_gain": last_gain(last, job.mode),
        "step": summary["steps"],
        "train_runtime_s": summary["train_runtime_s"],
        **node,
    }


def priced(trial, cfg, limits: tuple[tuple[str, float], ...]) -> tuple[dict[str, float], str | None]:
    """sweep.max_cost, before anything loads: the estimator's costs (a meta-device model, ~30 ms in a warm worker)
    and why the config is not trained, if it is over a bound. Each bound becomes an Optuna constraint, the relative
    excess (feasible at <= 0): TPE, NSGA-II and GP then steer away from what was skipped, and Optuna's best trials
    are feasible ones."""
    if not limits:
        return {}, None
    from lorasweep import estimate

    costs = estimate.predicted(cfg)
    for cost, bound in limits:
        trial.set_constraint(cost, (costs[cost] - bound) / bound)
    return costs, estimate.over_limits(costs, limits)


def last_gain(last: dict, mode: str) -> float | None:
    """How much the objective still improved over the trial's last eval interval (positive: better, in the sweep's
    direction): near zero or below, it had plateaued. The report weighs it against the noise between seeds."""
    if last["before"] is None:
        return None
    return (last["value"] - last["before"]) * (1.0 if mode == "max" else -1.0)


def warm(overrides: list[str], threads: int) -> dict:
    """Check the sweep's base config once, then ready this worker for the sweep's trials: the imports, the tokenized
    splits and (where a trial may reuse it) the base model. The check runs here, not in the driver, because this
    process imports torch and transformers anyway (~8 s on a core) and the driver need not: it waits for this
    answer before the sweep's folder gets a run. Returns {"pid": ...}, or {"error": ConfigError} for bad input."""
    import torch

    from lorasweep import data, model, trial
    from lorasweep.config import compose
    from lorasweep.errors import ConfigError

    # The ~640k objects these imports made live as long as the process: out of the collector's sight, the full
    # collection the Trainer runs after every train() takes ~0.09 s instead of ~0.45 s (a short trial's third).
    gc.freeze()
    torch.set_num_threads(max(1, threads))
    cfg = compose(overrides)
    try:
        parts, labels, _, _ = trial.check(cfg)
        data.tokenize(cfg, parts, model.prefetch(cfg, labels), labels)  # what needs the tokenizer (chat template)
    except ConfigError as e:
        return {"error": e}
    return {"pid": os.getpid()}


def engine_kwargs(url: str) -> dict:
    """sqlite: wait for the lock instead of failing when the driver and workers write at once."""
    return {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
