"""Sweep: the driver. It asks the Optuna study for each trial, opens the trial's MLflow child run, hands both to a
warm Ray worker, and writes each end state once, to both stores. Reads top to bottom like trial.py.

Ray core places the work (tasks with per-trial CPUs and GPU share, on worker processes that serve many trials);
Optuna owns sampling, pruning and each trial's state; MLflow records it. Why not Ray Tune: see docs/sweep-engine.md.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from lorasweep import compare, confirm, distinct, sweepdir
from lorasweep.analysis.summary import leaderboard
from lorasweep.config import COST_METRICS, TASK_METRICS, compose, tracking_uri, validate
from lorasweep.errors import ConfigError
from lorasweep.resources import cpus_per_trial
from lorasweep.space import SweepSpec, parse_sweep, stored, to_overrides


def run_sweep(argv: list[str]) -> dict:
    """Run (or resume) the sweep the overrides describe; returns its summary (counts, best trial, leaderboard)."""
    started = time.time()
    # 1. What can be wrong with the fields, with no heavy import, before a run, a folder or a process exists.
    cfg = compose(argv)
    spec = parse_sweep(cfg)
    out, resuming = sweepdir.sweep_dir(cfg, argv)
    base = [a for a in argv if not a.startswith(("resume=", "+resume="))]
    state = sweepdir.read_state(out) if resuming else None
    composed = base
    if resuming:
        base = state["argv"]
        composed = [*base, *[a for a in argv if a.startswith("sweep.")]]
        cfg = compose(composed)
        spec = parse_sweep(cfg)
    check_engine_and_metric(cfg, spec)
    validate(cfg)
    ident = distinct.complete(spec, cfg)  # what makes two trials one config
    earlier = None
    if spec.warm_start and not resuming:  # a resumed study holds its seeds already
        from lorasweep import warmstart

        earlier = sweepdir.find(spec.warm_start)

    # 2. Ray starts; then each worker imports what a trial needs, checks the base config and the data once, and loads
    #    them (torch and transformers: the biggest start-up cost, ~8 s on a core, which the driver never pays), while
    #    the log server starts and the driver imports MLflow. Bad input still stops before any run exists, and the
    #    folder made for the server's log goes again.
    import ray

    from lorasweep import lifeline, logserver, worker

    watcher = lifeline.start()
    ray.init(
        address=cfg.engine.address,
        num_cpus=cfg.engine.num_cpus,
        num_gpus=cfg.engine.num_gpus,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        logging_level=logging.ERROR,  # bad input found meanwhile stays one line on stderr
    )
    lifeline.hold(watcher)
    new_folder, server, direct = not out.exists(), None, tracking_uri(cfg)
    parent_made = resuming
    try:
        cpus = cpus_per_trial(cfg.engine, spec.max_concurrent)
        task = ray.remote(max_calls=0)(worker.run)  # max_calls=0: GPU tasks reuse their worker too (Ray's default: 1)
        warm = ray.remote(max_calls=0)(worker.warm)
        n_slots = min(spec.max_concurrent, spec.num_trials)
        slots = [warm.options(num_cpus=cpus).remote(composed, int(cpus)) for _ in range(n_slots)]
        # While the workers import and check: the log server starts and the driver imports MLflow (~1.5 s), after
        # ray.init rather than beside it, which would slow Ray's own start.
        out.mkdir(parents=True, exist_ok=True)
        if cfg.engine.log_server == "auto" and direct.startswith("sqlite:"):
            server = logserver.start(direct, Path("mlruns").resolve(), out, cfg.engine.log_server_host or "127.0.0.1")
            lifeline.hold(watcher)
        import mlflow

        from lorasweep import ledger, tracking

        # 3. The log server, the study; once the workers' check has passed, the parent run.
        log_uri = direct
        if server is not None:
            logserver.wait(*server)
            log_uri = server[1]
        mlflow.set_tracking_uri(log_uri)  # the driver logs through the sweep's server too: one writer to sqlite
        client = mlflow.MlflowClient(log_uri)
        state = state or {
            "sweep_id": out.name,
            "argv": base,
            "study_name": out.name,
            "parent_run_id": None,
            "storage": cfg.engine.storage or sweepdir.default_storage(out),
        }
        storage = optuna.storages.RDBStorage(state["storage"], engine_kwargs=worker.engine_kwargs(state["storage"]))
        _ready(slots)
        print(f"[sweep] workers ready {time.time() - started:.1f} s after the command", flush=True)
        tracking.experiment(cfg)
        study = optuna.create_study(
            study_name=state["study_name"],
            storage=storage,
            load_if_exists=True,
            directions=spec.directions,
        )
        study.sampler, num_trials = distinct.sampler_for(spec, ident, resumed_after=len(study.trials))
        with warnings.catch_warnings():  # experimental in Optuna since 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.metrics)
        parent_made = True
        with tracking.run(
            cfg,
            run_id=state["parent_run_id"],
            tags={"sweep_id": state["sweep_id"], "lorasweep_role": "sweep"},
            uri=log_uri,
        ) as parent:
            if not resuming:
                client.update_run(parent.info.run_id, name=state["sweep_id"])
                state["parent_run_id"] = parent.info.run_id
                sweepdir.write_state(out, state)
                mlflow.log_params(
                    {k: v for k, v in tracking.flatten(cfg, skip=()).items() if not k.startswith("sweep.space")}
                )
                mlflow.log_dict(OmegaConf.to_container(cfg.sweep, resolve=True), "sweep.yaml")
                mlflow.set_tag("command", shlex.join(["lorasweep", "sweep", *base]))
                if spec.objectives:
                    mlflow.set_tag("objectives", json.dumps(dict(spec.objectives)))
            pid = parent.info.run_id
            # Resume: every trial the dead driver left RUNNING is KILLED in MLflow and FAIL in Optuna.
            if resuming:
                ledger.kill_running(client, pid, storage, study, "the sweep driver died while this trial ran")
            if earlier is not None:
                note = warmstart.seed(study, spec, earlier)
                mlflow.set_tag("warm_start", note)
                print(f"[sweep] warm start: {note}", flush=True)
            done_before = ledger.finished(study)
            budget = num_trials - done_before
            print(
                f"[sweep] {state['sweep_id']}: {num_trials} trials of {spec.metric} ({spec.mode}); "
                f"{done_before} already finished; mlflow parent run {pid}",
                flush=True,
            )
            note = distinct.budget_note(num_trials, spec.num_trials)
            if note:
                print(f"[sweep] {note} (each config once: Optuna's BruteForceSampler)", flush=True)

            # 4. Trials: ask, open the child run, run it on a warm worker, write its end state to both stores.
            run = dict(base=base, study=study, storage=storage, client=client, parent_run_id=pid, state=state)
            run.update(log_uri=log_uri, started=started, task=task, cpus=cpus)
            stop = loop(spec, ident, budget=budget, **run) if budget > 0 else None

            # 5. Confirmation: the best distinct configs again, each with new seeds (after a kill, what is missing).
            if spec.confirm is not None and stop is None:
                confirm.enqueue(study, ident, spec.confirm, base_seed=cfg.seed)
                queued = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
                if queued:
                    c = spec.confirm
                    print(f"[confirm] the {c.top_k} best configs, {c.seeds} new seeds each: {queued} trials to run")
                    loop(spec, ident, budget=queued, **run)
            elif spec.confirm is not None:
                print("[confirm] not run: the search did not finish", flush=True)

            # 6. The leaderboard, the plot and the best config (or the Pareto front), on the parent run.
            summary = leaderboard(client, pid, spec, out, base, study, ident)
    finally:
        ray.shutdown()
        if server is not None:
            logserver.stop(server[0])
        lifeline.stop(watcher)
        if not parent_made and new_folder:  # refused (or stopped) before the sweep existed: nothing is left
            sweepdir.discard(out)
        if "mlflow" in sys.modules:  # the server is gone: later calls in this process use the store itself
            sys.modules["mlflow"].set_tracking_uri(direct)
    summary["sweep_dir"] = str(out)
    summary["open"] = tracking.how_to_open(direct, state["parent_run_id"], state["storage"])
    summary["wall_s"] = time.time() - started
    return summary


def _ready(slots: list) -> None:
    """Wait for each worker slot's check and warm-up, so the first trials land on warm workers; bad input the check
    found is raised here. A warm-up that failed otherwise only costs its trial the same work again; that trial
    reports its own error."""
    import ray

    for ref in slots:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError:
            continue
        if "error" in result:
            raise result["error"]


# ---------------------------------------------------------------- checks before anything starts


def check_engine_and_metric(cfg: DictConfig, spec: SweepSpec) -> None:
    """The metric against the task, the engine fields, and where a cluster's trials can log: no heavy imports."""
    from lorasweep.resources import check_engine

    reported = TASK_METRICS[cfg.model.task]
    if spec.metric not in reported:
        raise ConfigError(
            "sweep.metric", spec.metric, f"a metric a {cfg.model.task} trial reports: {', '.join(reported)}"
        )
    for metric in spec.metrics[1:]:
        if metric not in reported + COST_METRICS:
            raise ConfigError(
                f"sweep.objectives.{metric}", metric, f"a metric a trial logs: {', '.join(reported + COST_METRICS)}"
            )
    check_engine(cfg)
    local_store = tracking_uri(cfg).startswith(("sqlite:", "file:", "/", "."))
    if cfg.engine.address and local_store and cfg.engine.log_server == "auto" and not cfg.engine.log_server_host:
        raise ConfigError(
            "tracking.uri",
            tracking_uri(cfg),
            "on a cluster (engine.address set), a tracking server the "
            "nodes reach: tracking.uri=http://host:port, or engine.log_server_host=<an address of this "
            "machine they reach> for the sweep's own log server",
        )


def trial_config(base: list[str], overrides: list[str]) -> tuple[DictConfig, float]:
    """A sampled trial's fields and its GPU share, fit-checked: what the driver needs to place it. The data and the
    targets it meets once, in its worker (run_trial checks them before training), not twice."""
    from lorasweep.resources import fit_check, share_of

    cfg = validate(compose([*base, *overrides]))
    share = share_of(cfg)
    if share and not cfg.engine.skip_fit_check:
        fit_check(cfg, share)
    return cfg, share


# ---------------------------------------------------------------- the loop


def loop(
    spec: SweepSpec,
    ident: SweepSpec,
    base,
    study,
    storage,
    client,
    parent_run_id: str,
    state: dict,
    log_uri: str,
    budget: int,
    started: float,
    task,
    cpus: float,
) -> str | None:
    """Keep max_concurrent trials in flight until the budget, the time limit or max_failures ends the sweep (the
    reason it stopped early is returned), or the space holds no config not yet run. A sample of a config some trial
    already holds is asked again (distinct.ask_distinct): it costs no budget slot and makes no MLflow run."""
    import ray
    from mlflow.entities import Metric, RunTag

    from lorasweep import ledger, tracking, worker

    pruner = {"name": spec.pruner, **spec.pruner_options}
    in_flight: dict = {}  # Ray ObjectRef -> (trial number, MLflow run id)
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAILED", "KILLED", "SKIPPED")}
    best: float | None = None
    launched, stop = 0, None
    deadline = started + spec.time_limit_s if spec.time_limit_s else None

    def end(number: int, run_id: str, result: dict) -> None:
        nonlocal best, stop
        s = result["state"]
        tags = {k: result[k] for k in ("node", "ray_node_id", "pid") if k in result}
        if s == "PRUNED":
            tags["pruned_at_step"] = result["step"]
        if result.get("last_eval_gain") is not None:
            client.log_metric(run_id, "last_eval_gain", result["last_eval_gain"])
        if result.get("costs"):  # a skipped trial's predicted costs: what it was skipped for
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in result["costs"].items()])
        ledger.finish(
            client, study, number, run_id, s, value=result.get("value"), reason=result.get("reason"), tags=tags
        )
        counts[s] += 1
        if s == "COMPLETE":  # a multi-objective sweep shows its first objective's best
            v = result["value"][0] if isinstance(result["value"], list) else result["value"]
            best = v if best is None or (v > best if spec.mode == "max" else v < best) else best
        if s == "FAILED" and spec.max_failures is not None and counts["FAILED"] > spec.max_failures:
            stop = stop or f"stopped launching: more than sweep.max_failures={spec.max_failures} trials failed"
        show()

    began = time.time()  # this phase's (search or confirmation) start: what its ETA extrapolates from

    def show() -> None:
        done, elapsed = sum(counts.values()), time.time() - started
        eta = f"{(time.time() - began) / done * (budget - done):.0f}s" if done else "-"
        line = "  ".join(f"{k.lower()} {v}" for k, v in counts.items() if v or k in ("COMPLETE", "PRUNED", "FAILED"))
        print(
            f"[sweep] done {done}/{budget}  running {len(in_flight)}  {line}  best {spec.metric}="
            f"{'-' if best is None else f'{best:.4f}'}  elapsed {elapsed:.0f}s  eta {eta}",
            flush=True,
        )

    while True:
        while stop is None and launched < budget and len(in_flight) < spec.max_concurrent:
            # The plan fixes each trial's arm, LR and seed. A planned trial that a dead driver enqueued but never
            # asked for is asked for first, as it was planned.
            if spec.compare is not None and not study.get_trials(False, states=(optuna.trial.TrialState.WAITING,)):
                planned = compare.next_trial(study, spec.compare, lambda k, v: stored(spec, k, v), ledger.KILLED)
                if planned is None or (planned == compare.WAIT and not in_flight):
                    stop = "every arm has run its plan (an arm with no complete LR trial runs no more seeds)"
                if planned is None or planned == compare.WAIT:
                    break
                study.enqueue_trial(planned.params, user_attrs=planned.attrs)
            asked = distinct.ask_distinct(study, ident)
            if asked is None:
                stop = f"the space is spent: {distinct.TRIES} samples in a row were configs already run"
                break
            launched += 1
            trial, values = asked
            overrides = to_overrides(values, spec) + confirm.seed_override(trial)
            sampled = {k: v for k, v in values.items() if spec.dim(k) and not spec.dim(k).helper}
            try:
                trial_cfg, share = trial_config(base, overrides)
                if confirm.is_confirm(trial) and trial_cfg.train.max_steps > 0:  # never pruned: one eval, at the end
                    overrides.append(f"train.eval_every={trial_cfg.train.max_steps}")
                    trial_cfg.train.eval_every = trial_cfg.train.max_steps
                params = tracking.flatten(trial_cfg)
            except Exception as e:  # refused before any work (bad sampled config, cannot fit): FAILED with the reason
                run_id = ledger.open_child(
                    client, parent_run_id, study, trial, sampled, overrides, sampled, state["sweep_id"]
                )
                end(trial.number, run_id, {"state": "FAILED", "reason": ledger.reason(e)})
                continue
            run_id = ledger.open_child(
                client, parent_run_id, study, trial, sampled, overrides, params, state["sweep_id"]
            )
            job = worker.Job(
                number=trial.number,
                run_id=run_id,
                config=OmegaConf.to_container(trial_cfg),
                study_name=state["study_name"],
                storage=state["storage"],
                pruner=pruner if not seeded(trial) else {"name": "none"},
                metric=spec.metric,
                objectives=tuple(spec.metrics) if spec.objectives else (),
                mode=spec.mode,
                tracking_uri=log_uri,
                gpu_share=share,
                threads=max(1, int(cpus)),
                max_cost=spec.max_cost,
            )
            client.log_batch(run_id, tags=[RunTag("gpu_share", f"{share:g}"), RunTag("cpus", f"{cpus:g}")])
            ref = task.options(num_cpus=cpus, num_gpus=share).remote(job)
            in_flight[ref] = (trial.number, run_id)
        if not in_flight:
            break
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
        for ref in ready:
            number, run_id = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker process died (e.g. killed for memory)
                result = {
                    "state": "FAILED",
                    "reason": f"the trial's worker died: {str(e).strip().splitlines()[0][:500]}",
                }
            end(number, run_id, result)
        if deadline is not None and time.time() >= deadline:
            stop = f"stopped when the sweep reached sweep.time_limit_s={spec.time_limit_s:g}"
            for ref in in_flight:
                ray.cancel(ref, force=True)
            for number, run_id in in_flight.values():
                ledger.live_trial(storage, study, number).set_user_attr(ledger.KILLED, True)
                ledger.finish(client, study, number, run_id, "KILLED", reason=stop)
                counts["KILLED"] += 1
            in_flight.clear()
            break
    if stop:
        print(f"[sweep] {stop}", flush=True)
    return None if stop is None or stop.startswith("the space is spent") else stop


def seeded(trial) -> bool:
    """A trial that re-trains a chosen config with another seed: its value must be the whole run's, so no pruner
    stops it (a compare arm's extra seeds, a confirmation run)."""
    return trial.user_attrs.get(compare.PHASE) == "seeds" or confirm.is_confirm(trial)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: list[str]) -> int:
    import signal

    # SIGTERM unwinds like Ctrl-C, so the log server is stopped and runs are closed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    s = run_sweep(argv)
    print(
        f"\n[sweep] finished in {s['wall_s']:.0f}s: "
        + ", ".join(f"{k.lower()} {v}" for k, v in sorted(s["counts"].items()))
    )
    for i, row in enumerate(s["top"], 1):
        acc = row.get("eval_accuracy")
        extra = (
            f"  eval_accuracy={acc:.4f}" if s["metric"] != "eval_accuracy" and acc == acc and acc is not None else ""
        )
        print(f"  {i}. {s['metric']}={row[s['metric']]:.4f}{extra}  {row['overrides']}")
    for line in (s.get("eval_words"), s.get("answer")):
        if line:
            print(line)
    if "best_command" in s:
        print(f"best: {s['best_value']:.4f}  rerun: {s['best_command']}")
        print(f"best adapter: {s['best_adapter']}")
    print(f"leaderboard: {s['sweep_dir']}/{sweepdir.LEADERBOARD_MD}", *s["open"], sep="\n")
    return 0
