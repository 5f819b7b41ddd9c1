"""Reading a sweep back from MLflow: find its parent run from a name, id or run id, and its trials as a table."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from lorasweep.analysis import paper
from lorasweep.errors import ConfigError
from lorasweep.schema import SEED_KEYS
from lorasweep.sweepdir import STAMP

DEFAULT_URI = "sqlite:///mlflow.db"
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Sweep:
    """A sweep's parent run, as the report needs it."""

    sweep_id: str
    parent_run_id: str
    experiment_id: str
    metric: str
    mode: str
    params: dict[str, str]
    uri: str
    tags: dict[str, str]
    start_ms: int
    end_ms: int | None  # None while the sweep's parent run is still open
    status: str

    @property
    def name(self) -> str:
        return re.sub(rf"-{STAMP}$", "", self.sweep_id)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def find_sweep(ref: str, uri: str | None = None) -> Sweep:
    """The sweep `ref` names: a sweep id, a sweep name (its latest run) or the MLflow parent run id."""
    uri = uri or tracking_uri()
    ref = (ref or "").strip()
    if not ref:
        raise ConfigError("SWEEP", ref, "a sweep id (rank_alpha-20261123-013825), a sweep name or a parent run id")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        # MLflow would create an empty store here; a missing file is a wrong directory or URI
        raise ConfigError("SWEEP", ref, f"a sweep in an MLflow store, but there is no store at {uri}")
    client = mlflow.MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(exps, "tags.lorasweep_role = 'sweep'", max_results=50000) if exps else []
    hits = [p for p in parents if ref in (p.data.tags.get("sweep_id"), p.info.run_id)]
    if not hits:
        named = re.compile(rf"{re.escape(ref)}-{STAMP}")
        hits = sorted(
            (p for p in parents if named.fullmatch(p.data.tags.get("sweep_id", ""))),
            key=lambda p: (p.data.tags["sweep_id"], p.info.start_time),
            reverse=True,
        )[:1]
    if not hits and _RUN_ID.fullmatch(ref):
        try:
            client.get_run(ref)
        except mlflow.exceptions.MlflowException:
            pass
        else:
            raise ConfigError("SWEEP", ref, "the parent run of a sweep; this run is not tagged lorasweep_role=sweep")
    if not hits:
        known = sorted({p.data.tags.get("sweep_id", p.info.run_id) for p in parents})
        shown = ", ".join(known[-8:]) or "none"
        raise ConfigError("SWEEP", ref, f"a sweep id, sweep name or parent run id in {uri} (sweeps there: {shown})")
    p = hits[0]
    params = dict(p.data.params)
    # a multi-objective sweep file may leave metric and mode out: its first objective is both
    first = next(iter(json.loads(p.data.tags.get("objectives", "{}")).items()), ("eval_loss", "min"))
    return Sweep(
        sweep_id=p.data.tags.get("sweep_id", p.info.run_id),
        parent_run_id=p.info.run_id,
        experiment_id=p.info.experiment_id,
        metric=params.get("sweep.metric", first[0]),
        mode=params.get("sweep.mode", first[1]),
        params=params,
        uri=uri,
        tags=dict(p.data.tags),
        start_ms=p.info.start_time,
        end_ms=p.info.end_time,
        status=p.info.status,
    )


def load_trials(sweep: Sweep) -> pd.DataFrame:
    """One row per child run: run_id, state, artifact_uri, params.* (as logged), metrics.*, plus decoded
    `targets` (canonical alias tuple), `weights` (Wq+Wv label), `r` and `seed` where the config has them."""
    mlflow.set_tracking_uri(sweep.uri)
    df = mlflow.search_runs(
        experiment_ids=[sweep.experiment_id],
        max_results=50000,
        filter_string=f"tags.mlflow.parentRunId = '{sweep.parent_run_id}'",
    )
    if df.empty:
        return pd.DataFrame(columns=["run_id", "state", "artifact_uri", "weights", "r", "seed"])
    status = df["status"].map({"FINISHED": "COMPLETE"}).fillna(df["status"])
    state = df["tags.trial_state"] if "tags.trial_state" in df else pd.Series(None, index=df.index)
    df["state"] = state.fillna(status)  # a trial without the driver's tag: its run status says how it ended
    if "params.adapter.targets" in df:
        df["targets"] = df["params.adapter.targets"].map(_targets)
        df["weights"] = df["targets"].map(lambda t: paper.label(t) if t else None)
    if "params.adapter.r" in df:
        df["r"] = pd.to_numeric(df["params.adapter.r"], errors="coerce").astype("Int64")
    seed = next((f"params.{k}" for k in SEED_KEYS if f"params.{k}" in df), None)
    if seed:
        df["seed"] = pd.to_numeric(df[seed], errors="coerce").astype("Int64")
    return df.reset_index(drop=True)


def _targets(raw: object) -> tuple[str, ...] | None:
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        value = [raw]
    return paper.canonical([str(v) for v in value]) if isinstance(value, list) and value else None


def swept_keys(trials: pd.DataFrame) -> list[str]:
    """Config keys (dotted, without `params.`) that differ between trials, seeds left out: the groups of the
    report. Read from the data rather than the sweep file, so derived fields (Table 5's r) count too."""
    keys = []
    for col in trials.columns:
        if not col.startswith("params."):
            continue
        key = col.removeprefix("params.")
        if key in SEED_KEYS or key.startswith("sweep."):
            continue
        if trials[col].fillna("∅").nunique() > 1:
            keys.append(key)
    return sorted(keys)


def metric_unit(metric: str, values: pd.Series) -> tuple[float, str]:
    """Accuracy-like metrics in [0, 1] are shown in % (the paper's unit), so differences read as points."""
    in_unit = values.dropna()
    if re.search(r"accuracy|f1|precision|recall", metric) and len(in_unit) and in_unit.between(0, 1).all():
        return 100.0, "%"
    return 1.0, ""
