"""Sweep: run a search space as Ray Tune trials sampled by Optuna, tracked as one MLflow parent run with children."""

import collections
import functools
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import optuna
from omegaconf import DictConfig, OmegaConf

from lorasweep import tracking
from lorasweep.config import compose, validate
from lorasweep.errors import ConfigError
from lorasweep.space import SweepSpec, parse_sweep, suggest, to_overrides, make_sampler

SWEEPS_DIR = Path(os.environ.get("LORASWEEP_SWEEPS_DIR", "sweeps_out"))
SHARES = (0.125, 0.25, 0.5, 1.0)  # GPU shares gpus_per_trial=auto picks from
OOM_HINT = " (out of memory: try a smaller train.batch_size, quant=nf4, or train.gradient_checkpointing=true)"


# ---------------------------------------------------------------- a trial inside a Ray worker

def trainable(config: dict, *, base: list[str], spec: SweepSpec, parent_run_id: str, tracking_uri: str, sweep_id: str):
    """One Ray Tune trial: the sampled values as Hydra overrides on the sweep's base, through the same run_trial."""
    from ray import tune

    from lorasweep.trial import run_trial

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    overrides = [*base, *to_overrides(config, spec)]
    cfg = compose(overrides)
    trial_id = tune.get_context().get_trial_id()
    share = float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0))
    if share and not cfg.engine.skip_fit_check:
        fit_check(cfg, share)

    def report(metrics: dict[str, float], step: int) -> None:
        if spec.metric in metrics:
            tune.report({**metrics, "step": step, "mlflow_run_id": mlflow.active_run().info.run_id})

    summary = run_trial(cfg, listeners=(report,), parent_run_id=parent_run_id,
                        tags={"sweep_id": sweep_id, "ray_trial_id": trial_id, "gpu_share": f"{share:g}", "overrides": shlex.join(to_overrides(config, spec))})
    tune.report({**{k: v for k, v in summary.items() if v is not None}, "step": summary["steps"], "mlflow_run_id": summary["run_id"]})


# ---------------------------------------------------------------- GPU shares and the fit check

def gpu_memory_gb(cfg: DictConfig) -> float:
    if cfg.engine.gpu_memory_gb:
        return float(cfg.engine.gpu_memory_gb)
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("engine.gpu_memory_gb", None, "the GiB of one GPU: this machine has no GPU to read it from")
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def gpu_share(cfg: DictConfig, gpu_gb: float) -> float:
    """gpus_per_trial=auto: the smallest share of one GPU (1/8 ... 1) that holds the trial's estimated peak."""
    from lorasweep.estimate import estimate, gpu_fraction

    need = gpu_fraction(estimate(cfg), gpu_gb)
    return next((s for s in SHARES if need <= s), 1.0)


def fit_check(cfg: DictConfig, share: float) -> None:
    """A trial the estimator says cannot fit its GPU share fails at once, with both sizes, before it loads anything."""
    from lorasweep.estimate import estimate

    have = share * gpu_memory_gb(cfg)
    need = estimate(cfg)["memory"]["total"]["bytes"] / 2**30
    if need > have:
        raise MemoryError(f"would need {need:.1f} GB, has {have:.1f} GB ({share:g} of a GPU); "
                          "try quant=nf4, a smaller train.batch_size or train.gradient_checkpointing=true, "
                          "or engine.skip_fit_check=true to run it anyway")


def trial_resources(cfg: DictConfig, spec: SweepSpec, base: list[str]):
    """Ray resources per trial: fixed, or (gpus_per_trial=auto) sized from each sampled config's estimate."""
    e = cfg.engine
    if e.gpus_per_trial != "auto":
        return {"cpu": e.cpus_per_trial, "gpu": e.gpus_per_trial}
    gb = gpu_memory_gb(cfg)
    return lambda config: {"cpu": e.cpus_per_trial, "gpu": gpu_share(compose([*base, *to_overrides(config, spec)]), gb)}


def check_engine(cfg: DictConfig) -> None:
    """Engine fields, before the sweep's MLflow run exists (auto shares need the GPU's size up front)."""
    e = cfg.engine
    if isinstance(e.cpus_per_trial, bool) or not isinstance(e.cpus_per_trial, (int, float)) or e.cpus_per_trial <= 0:
        raise ConfigError("engine.cpus_per_trial", e.cpus_per_trial, "a number > 0")
    g = e.gpus_per_trial
    if g != "auto" and (isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0 or (g > 1 and g != int(g))):
        raise ConfigError("engine.gpus_per_trial", g, "auto, a share in [0, 1], or a whole number of GPUs")
    if g == "auto":
        gpu_memory_gb(cfg)


# ---------------------------------------------------------------- the MLflow store the trials write to

@contextmanager
def log_server(cfg: DictConfig) -> Iterator[str]:
    """Concurrent trials log through one MLflow server on loopback when the store is a local sqlite file.

    sqlite allows one writer at a time; a single server process serialises every trial's writes, so none is
    lost to a 'database is locked' error. Remote stores (http, postgres, ...) are used as they are.
    """
    uri = tracking.uri(cfg)
    if cfg.engine.log_server != "auto" or not uri.startswith("sqlite:"):
        yield uri
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--default-artifact-root", str(Path("mlruns").resolve())]
    log = open(Path(cfg.get("_sweep_dir", ".")) / "mlflow-server.log", "ab")
    # Same process group as the driver: Ctrl-C or a kill of the group stops the server and its workers too.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the MLflow server exited; see {log.name}")
                time.sleep(0.5)
        yield url
    finally:
        stop_tree(proc.pid)
        log.close()


def stop_tree(pid: int) -> None:
    """Stop a process and every process it started (the MLflow server runs uvicorn and job workers)."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


# ---------------------------------------------------------------- progress and states, seen from the driver

def _progress_callback(spec: SweepSpec, budget: int, started: float, client: mlflow.MlflowClient, parent_run_id: str,
                       scheduler):
    from ray.tune import Callback

    class Progress(Callback):
        """Live progress, and each trial's final state written once, by the driver, onto its MLflow child run."""

        def __init__(self):
            self.runs: dict[str, str] = {}      # Ray trial id -> MLflow run id
            self.states: dict[str, str] = {}
            self.best: float | None = None
            self.failures = 0
            self.last_line = ""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "mlflow_run_id" in result:
                self.runs[trial.trial_id] = result["mlflow_run_id"]
            self._print(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            pruned = trial.trial_id in scheduler_pruned(scheduler)
            self._finish(trial, "PRUNED" if pruned else "COMPLETE", None)
            if not pruned and trial.last_result.get(spec.metric) is not None:
                v = float(trial.last_result[spec.metric])
                better = self.best is None or (v > self.best if spec.mode == "max" else v < self.best)
                self.best = v if better else self.best
            self._print(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failures += 1
            self._finish(trial, "FAILED", error_reason(trial))
            self._print(trials)

        def _finish(self, trial, state: str, reason: str | None) -> None:
            self.states[trial.trial_id] = state
            run_id = self.runs.get(trial.trial_id) or find_child(client, parent_run_id, trial.trial_id)
            if run_id is None:  # failed before its run began (e.g. a sampled config the validator refuses)
                run_id = _late_child(client, parent_run_id, trial.config, spec, ray_trial_id=trial.trial_id)
            self.runs[trial.trial_id] = run_id
            client.set_tag(run_id, "trial_state", state)
            if reason:
                client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, "FAILED" if state == "FAILED" else "FINISHED")

        def _print(self, trials) -> None:
            n = {s: sum(1 for t in trials if self.states.get(t.trial_id) == s) for s in ("COMPLETE", "PRUNED", "FAILED")}
            running = sum(1 for t in trials if t.status == "RUNNING")
            done = sum(n.values())
            elapsed = time.time() - started
            eta = f"{elapsed / done * (budget - done):.0f}s" if done else "-"
            best = f"{self.best:.4f}" if self.best is not None else "-"
            line = (f"done {done}/{budget}  running {running}  complete {n['COMPLETE']}  pruned {n['PRUNED']}  "
                    f"failed {n['FAILED']}  best {spec.metric}={best}")
            if line != self.last_line:
                self.last_line = line
                print(f"[sweep] {line}  elapsed {elapsed:.0f}s  eta {eta}", flush=True)

    return Progress()


def scheduler_pruned(scheduler) -> set[str]:
    return getattr(scheduler, "pruned", set())


def error_reason(trial) -> str:
    """The last line of the trial's error (the exception and its message), with a hint for out-of-memory."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and Path(path).exists():
        text = Path(path).read_text()
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    reason = lines[-1] if lines else "unknown error"
    reason = reason.split("ray.exceptions.RayTaskError", 1)[0].strip()
    return reason + (OOM_HINT if "out of memory" in reason.lower() else "")


def find_child(client: mlflow.MlflowClient, parent_run_id: str, ray_trial_id: str) -> str | None:
    exp = client.get_run(parent_run_id).info.experiment_id
    found = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.ray_trial_id = '{ray_trial_id}'")
    return found[0].info.run_id if found else None


# ---------------------------------------------------------------- resume

def sweep_name(argv: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(("sweep=", "+sweep="))), "sweep")


def sweep_dir(cfg: DictConfig, argv: list[str]) -> tuple[Path, bool]:
    """A new directory per sweep, or the one `resume=true` (latest of this name) or `resume=<sweep id>` names."""
    name = sweep_name(argv)
    resume = cfg.resume
    if resume in (False, None, "false"):
        return SWEEPS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", False
    if resume in (True, "true"):
        found = sorted(SWEEPS_DIR.glob(f"{name}-*/state.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError("resume", resume, f"a sweep to resume: none of {name!r} in {SWEEPS_DIR}/")
        return found[-1].parent, True
    path = SWEEPS_DIR / str(resume)
    if not (path / "state.json").exists():
        have = sorted(p.parent.name for p in SWEEPS_DIR.glob("*/state.json"))
        raise ConfigError("resume", resume, f"true, false, or a sweep id in {SWEEPS_DIR}/: {have}")
    return path, True


def reconcile(client: mlflow.MlflowClient, parent_run_id: str, study: optuna.Study, spec: SweepSpec,
              reason: str = "the sweep driver died while this trial ran") -> int:
    """Trials left RUNNING (a dead driver, or the sweep's time limit): MLflow children become KILLED with the
    reason, Optuna trials become FAIL flagged `killed`. A trial stopped before its MLflow run began gets a KILLED
    run, so MLflow records every trial Optuna does. Returns how many trials finished for real (they count against
    the budget and are not rerun)."""
    exp = client.get_run(parent_run_id).info.experiment_id
    open_runs = collections.Counter()
    for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"):
        open_runs[frozenset(shlex.split(run.data.tags.get("overrides", "")))] += 1  # Ray may reorder the keys
        _kill(client, run.info.run_id, reason)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        config = suggest(optuna.trial.FixedTrial(t.params), spec)  # the config Ray was given, derived keys included
        key = frozenset(to_overrides(config, spec))
        if open_runs[key]:
            open_runs[key] -= 1
        else:
            _kill(client, _late_child(client, parent_run_id, config, spec, optuna_trial=str(t.number)),
                  f"{reason}, before its MLflow run started")
        study._storage.set_trial_user_attr(t._trial_id, "killed", True)  # not a failure of its config: not counted
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=finished) if not t.user_attrs.get("killed"))


def _late_child(client: mlflow.MlflowClient, parent_run_id: str, config: dict, spec: SweepSpec, **tags: str) -> str:
    """A child run for a trial that ended before its own run began: its overrides and sampled params, so the
    comparison view still lists it."""
    exp = client.get_run(parent_run_id).info.experiment_id
    run_id = client.create_run(exp, tags={"mlflow.parentRunId": parent_run_id,
                                          "overrides": shlex.join(to_overrides(config, spec)), **tags}).info.run_id
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in config.items()])
    return run_id


def _kill(client: mlflow.MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, "trial_state", "KILLED")
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, "KILLED")


# ---------------------------------------------------------------- the driver

def run_sweep(argv: list[str]) -> dict:
    cfg = compose(argv)
    if not cfg.get("sweep"):
        raise ConfigError("sweep", None, "sweep=<name> naming one of sweeps/*.yaml")
    spec = parse_sweep(cfg)
    validate(cfg)
    check_engine(cfg)
    base = [a for a in argv if not a.startswith(("resume=", "+resume="))]
    out, resuming = sweep_dir(cfg, argv)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if resuming else {
        "sweep_id": out.name, "argv": base, "storage": f"sqlite:///{(out / 'optuna.db').resolve()}",
        "study_name": out.name, "parent_run_id": None}
    if resuming:
        base = state["argv"]
        cfg = compose([*base, *[a for a in argv if a.startswith("sweep.")]])
        spec = parse_sweep(cfg)

    import ray

    direct = tracking.uri(cfg)
    mlflow.set_tracking_uri(direct)
    client = mlflow.MlflowClient(direct)
    mlflow.set_experiment(str(cfg.tracking.experiment))  # created on the store itself, so artifacts stay local
    storage = optuna.storages.RDBStorage(state["storage"])
    study = optuna.create_study(study_name=state["study_name"], storage=storage, load_if_exists=True,
                                direction="maximize" if spec.mode == "max" else "minimize")
    started = time.time()
    with tracking.run(cfg, run_id=state["parent_run_id"], tags={"sweep_id": state["sweep_id"], "lorasweep_role": "sweep"}) as parent:
        if not resuming:
            state["parent_run_id"] = parent.info.run_id
            state_file.write_text(json.dumps(state, indent=1))
            mlflow.log_params({k: v for k, v in tracking.flatten(cfg, skip=()).items() if not k.startswith("sweep.space")})
            mlflow.log_dict(OmegaConf.to_container(cfg.sweep, resolve=True), "sweep.yaml")
            mlflow.set_tag("command", shlex.join(["lorasweep", "sweep", *base]))
        done_before = reconcile(client, parent.info.run_id, study, spec) if resuming else 0
        budget = spec.num_trials - done_before
        print(f"[sweep] {state['sweep_id']}: {spec.num_trials} trials of {spec.metric} ({spec.mode}); "
              f"{done_before} already finished; mlflow parent run {parent.info.run_id}", flush=True)
        if budget > 0:
            with log_server(cfg) as log_uri:
                ray.init(address=cfg.engine.address, num_cpus=cfg.engine.num_cpus, num_gpus=cfg.engine.num_gpus,
                         include_dashboard=False,
                         ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
                try:
                    _fit(cfg, spec, state, budget, base, log_uri, parent.info.run_id, client, started)
                finally:
                    ray.shutdown()
            # Trials Ray cut at the end (sweep.time_limit_s) never reported an end of their own.
            reconcile(client, parent.info.run_id, study, spec, f"stopped when the sweep reached sweep.time_limit_s={spec.time_limit_s}")
        summary = leaderboard(client, parent.info.run_id, spec, out, base)
    summary["sweep_dir"] = str(out)
    summary["wall_s"] = time.time() - started
    return summary


def _fit(cfg, spec, state, budget, base, log_uri, parent_run_id, client, started):
    from ray import tune
    from ray.tune import Stopper
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from lorasweep.prune import make_scheduler

    searcher = OptunaSearch(space=functools.partial(suggest, spec=spec), metric=spec.metric, mode=spec.mode,
                            sampler=make_sampler(spec), study_name=state["study_name"],
                            storage=optuna.storages.RDBStorage(state["storage"]))
    limited = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
    scheduler = make_scheduler(spec, limited)
    progress = _progress_callback(spec, budget, started, client, parent_run_id, scheduler)

    class TooManyFailures(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return spec.max_failures is not None and progress.failures > spec.max_failures

    resources = trial_resources(cfg, spec, base)
    fn = tune.with_resources(functools.partial(trainable, base=base, spec=spec, parent_run_id=parent_run_id,
                                               tracking_uri=log_uri, sweep_id=state["sweep_id"]), resources)
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=limited, scheduler=scheduler, num_samples=budget,
                                    time_budget_s=spec.time_limit_s, reuse_actors=True),  # imports once per worker
        run_config=tune.RunConfig(name="ray", storage_path=str((Path(state["storage"][10:]).parent).resolve()),
                                  callbacks=[progress], stop=TooManyFailures(), verbose=0,
                                  failure_config=tune.FailureConfig(fail_fast=False)),
    )
    return tuner.fit()


def leaderboard(client: mlflow.MlflowClient, parent_run_id: str, spec: SweepSpec, out: Path, base: list[str]) -> dict:
    """Top trials from the child runs; CSV, Markdown and a plot of the objective per dimension on the parent run."""
    import pandas as pd

    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)
    rows = []
    keys = [d.key for d in spec.dims if not d.helper]
    for r in runs:
        row = {"state": r.data.tags.get("trial_state", r.info.status), spec.metric: r.data.metrics.get(spec.metric)}
        row.update({k: v for k, v in sorted(r.data.metrics.items()) if k.startswith("eval_") and k != spec.metric})
        row.update({"overrides": r.data.tags.get("overrides", ""), **{k: r.data.params.get(k) for k in keys},
                    "failure_reason": r.data.tags.get("failure_reason", ""), "run_id": r.info.run_id})
        rows.append(row)
    df = pd.DataFrame(rows)
    counts = df["state"].value_counts().to_dict() if len(df) else {}
    if len(df):  # finished trials first, best first; then pruned, failed, killed
        order = {"COMPLETE": 0, "PRUNED": 1, "FAILED": 2, "KILLED": 3}
        df = df.assign(_o=df["state"].map(order).fillna(4), _v=df[spec.metric] * (-1 if spec.mode == "max" else 1))
        df = df.sort_values(["_o", "_v"], na_position="last").drop(columns=["_o", "_v"])
    complete = df[df["state"] == "COMPLETE"].dropna(subset=[spec.metric]) if len(df) else df
    df.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.md").write_text(df.drop(columns=["run_id"]).to_markdown(index=False) if len(df) else "no trials\n")
    mlflow.log_artifact(str(out / "leaderboard.csv"))
    mlflow.log_artifact(str(out / "leaderboard.md"))
    if len(complete):
        _plot(df, spec, keys, out / "objective.png")
        mlflow.log_artifact(str(out / "objective.png"))
    summary = {"counts": counts, "metric": spec.metric, "top": complete.head(5).to_dict("records")}
    if len(complete):
        best = complete.iloc[0]
        mlflow.set_tag("best_run_id", best["run_id"])
        mlflow.log_metric(f"best_{spec.metric}", float(best[spec.metric]))
        # A trial composed with sweep=<name> gets the sweep file's base fields; its sweep section is ignored.
        cmd = shlex.join(["lorasweep", "trial", *[a for a in base if not a.startswith("sweep.")]]) + " " + best["overrides"]
        mlflow.set_tag("best_command", cmd)
        summary.update(best_run_id=best["run_id"], best_value=float(best[spec.metric]), best_command=cmd,
                       best_adapter=f"{client.get_run(best['run_id']).info.artifact_uri}/adapter")
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()})
    return summary


def _plot(df, spec: SweepSpec, keys: list[str], path: Path) -> None:
    import pandas as pd
    from matplotlib.figure import Figure

    keys = keys or ["overrides"]
    fig = Figure(figsize=(4 * len(keys), 3.2))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            part = df[(df["state"] == state) & df[spec.metric].notna()]
            x = pd_numeric(part[k])
            ax.scatter(x, part[spec.metric], marker=marker, label=state.lower())
        ax.set_xlabel(k)
        ax.set_ylabel(spec.metric)
        if k == "adapter.r":
            ax.set_xscale("log", base=2)
        elif not pd.api.types.is_numeric_dtype(pd_numeric(df[k])):  # category labels such as ["q","v"]: tilt them
            ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=35, ha="right", fontsize=7)
    fig.axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pd_numeric(col):
    import pandas as pd

    num = pd.to_numeric(col, errors="coerce")
    return num if num.notna().all() else col.map(lambda v: "-" if pd.isna(v) else str(v))  # pandas 3 keeps NaN in astype(str)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(argv: list[str]) -> int:
    import signal

    # SIGTERM unwinds like Ctrl-C, so the log server is stopped and runs are closed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    s = run_sweep(argv)
    print(f"\n[sweep] finished in {s['wall_s']:.0f}s: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(s["counts"].items())))
    for i, row in enumerate(s["top"], 1):
        acc = row.get("eval_accuracy")
        extra = f"  eval_accuracy={acc:.4f}" if s["metric"] != "eval_accuracy" and acc == acc and acc is not None else ""
        print(f"  {i}. {s['metric']}={row[s['metric']]:.4f}{extra}  {row['overrides']}")
    if "best_command" in s:
        print(f"best: {s['best_value']:.4f}  rerun: {s['best_command']}")
        print(f"best adapter: {s['best_adapter']}")
    print(f"leaderboard: {s['sweep_dir']}/leaderboard.md")
    return 0
