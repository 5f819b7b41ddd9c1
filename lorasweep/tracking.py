"""Tracking: MLflow runs for trials (and sweeps): params, tags, metrics, artifacts, and an honest end state."""

import json
import os
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
from omegaconf import DictConfig, OmegaConf

import lorasweep
from lorasweep.config import tracking_uri

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT_KIND = "mlflow.experimentKind"


def flatten(cfg: DictConfig, skip: tuple[str, ...] = ("sweep",)) -> dict[str, object]:
    """Dotted keys of the resolved config; numbers stay numbers, lists become JSON, so every child compares."""
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key not in ("model.config",):
                walk(v, key + ".")
            elif isinstance(v, (list, dict)):
                out[key] = json.dumps(v, separators=(",", ":"))
            else:
                out[key] = "null" if v is None else v

    walk({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in skip}, "")
    return out


def git_commit() -> str:
    """HEAD, marked +dirty when tracked files differ from it (a copied tree on another machine can sit on an old
    HEAD: the commit alone would name code that did not run)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    """What ran it. Versions are read from the installed packages' metadata, which imports nothing: the sweep
    driver's parent run does not pay ~4 s for torch."""
    from importlib.metadata import version

    return {
        "git_commit": git_commit(),
        "lorasweep_version": lorasweep.__version__,
        **{f"{p}_version": version(p) for p in ("torch", "peft", "transformers")},
    }


def device() -> str:
    """The device a trial trains on (a trial's tag; its process has torch loaded anyway)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def experiment(cfg: DictConfig) -> str:
    """The experiment, tagged so the MLflow UI opens it on model training, not its GenAI overview."""
    exp = mlflow.set_experiment(str(cfg.tracking.experiment))
    if exp.tags.get(EXPERIMENT_KIND) != "custom_model_development":
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "custom_model_development")
    return exp.experiment_id


@contextmanager
def run(
    cfg: DictConfig, run_id: str | None = None, tags: dict[str, str] | None = None, uri: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, or FAILED with `failure_reason`, never left RUNNING. With run_id it resumes
    a run someone else created (a sweep's child or parent run). uri: where to log, if not the config's store (a
    sweep's driver logs through its log server)."""
    import optuna

    mlflow.set_tracking_uri(uri or tracking_uri(cfg))
    if run_id is None:
        experiment(cfg)
    active = mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else cfg.tracking.run_name,
        tags={**environment_tags(), **(tags or {})},
        log_system_metrics=bool(cfg.tracking.system_metrics),
    )
    try:
        yield active
    except optuna.TrialPruned:  # a sweep's pruner stopped it: not a failure; the sweep's ledger records PRUNED
        mlflow.end_run("FINISHED")
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}".strip()[:4000]
        mlflow.set_tag("failure_reason", reason)
        mlflow.end_run("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_splits(cfg: DictConfig, parts: dict) -> None:
    """Each split as an MLflow dataset input (name, digest, schema, row count), so runs show what they trained on."""
    import mlflow.data

    from lorasweep.data import sources

    files = sources(cfg.data)  # a split carved out of train comes from train's file; a hub id: MLflow records the code
    for split, df in parts.items():
        ds = mlflow.data.from_pandas(df, source=files.get(split, files["train"]), name=f"{cfg.data.name}-{split}")
        try:
            mlflow.log_input(ds, context=split)
        except mlflow.exceptions.MlflowException:
            # Two trials logging the same new dataset at once: the store's unique key refuses the second insert.
            # The dataset exists now, so the second try only links it to this run.
            mlflow.log_input(ds, context=split)


def log_generations(rows: dict[str, list]) -> None:
    """Prompt / reference / generation rows of one eval, appended to one table the MLflow UI shows."""
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # log_table downloads the table so far to append: no bar each eval
    before = os.environ.get(bar)
    os.environ[bar] = "false"
    try:
        mlflow.log_table(rows, artifact_file="generations.json")
    finally:
        os.environ.pop(bar) if before is None else os.environ.update({bar: before})


def how_to_open(store: str, parent_run_id: str, optuna_storage: str) -> list[str]:
    """The commands that open a sweep in the MLflow UI and in optuna-dashboard once the sweep (and its log server)
    has ended. The URL opens the Model-training view (the UI's GenAI switch follows workflowType, not the experiment's
    kind tag) on this sweep's parent run with its trials nested under it; checked in a real browser by
    tests/test_dashboard.py."""
    from urllib.parse import quote

    run = mlflow.MlflowClient(store).get_run(parent_run_id)
    sweep_id = run.data.tags["sweep_id"]
    search = quote(f"tags.sweep_id = '{sweep_id}'", safe="")
    page = f"#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning&searchFilter={search}"
    if store.startswith(("http://", "https://")):  # a tracking server of the user's own: it outlives the sweep
        mlflow_line = f"  mlflow: {store.rstrip('/')}/{page}"
    else:
        if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):  # relative: make it absolute
            store = f"sqlite:///{Path(store[len('sqlite:///') :]).resolve()}"
        mlflow_line = f"  mlflow: make ui STORE={store}   then open http://127.0.0.1:5000/{page}"
    return [
        "open this sweep (after it has ended too):",
        mlflow_line,
        f"  optuna: optuna-dashboard {optuna_storage} --host 127.0.0.1   (pip install -e '.[dashboard]')",
    ]
