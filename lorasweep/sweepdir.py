"""Where a sweep lives: one folder per sweep under LORASWEEP_SWEEPS_DIR (default sweeps_out/), named by its sweep id
<name>-YYYYmmdd-HHMMSS, and the files in it. The one module that knows this layout: the driver, the warm start, the
log server, the report and the benchmarks all ask here."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lorasweep.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

SWEEPS_DIR = Path(os.environ.get("LORASWEEP_SWEEPS_DIR", "sweeps_out"))
STAMP = r"\d{8}-\d{6}"  # sweep ids are <name>-YYYYmmdd-HHMMSS
_STAMP_FORMAT = "%Y%m%d-%H%M%S"

# The files in a sweep's folder.
STATE = "state.json"  # argv, study name, storage, parent run id: what a resume and a warm start read
OPTUNA_DB = "optuna.db"  # the study, unless engine.storage names another
SERVER_LOG = "mlflow-server.log"  # the sweep's own MLflow log server (logserver.py)
SERVER_PID = "logserver.pid"
LEADERBOARD_CSV, LEADERBOARD_MD = "leaderboard.csv", "leaderboard.md"
CONFIRMED_CSV = "confirmed.csv"  # confirmed configs: mean and interval over new seeds (sweep.confirm)
PARETO_CSV, PARETO_MD, PARETO_FRONT = "pareto.csv", "pareto.md", "pareto_front.png"
OBJECTIVE_PLOT = "objective.png"


def sweep_name(argv: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(("sweep=", "+sweep="))), "sweep")


def sweep_dir(cfg: DictConfig, argv: list[str]) -> tuple[Path, bool]:
    """A new directory per sweep, or the one `resume=true` (latest of this name) or `resume=<sweep id>` names."""
    name = sweep_name(argv)
    resume = cfg.resume
    if resume in (False, None, "false"):
        return new(name), False
    if resume in (True, "true"):
        found = latest(name)
        if found is None:
            raise ConfigError("resume", resume, f"a sweep to resume: none of {name!r} in {SWEEPS_DIR}/")
        return found, True
    path = SWEEPS_DIR / str(resume)
    if not (path / STATE).exists():
        raise ConfigError("resume", resume, f"true, false, or a sweep id in {SWEEPS_DIR}/: {existing()}")
    return path, True


def new(name: str) -> Path:
    """A fresh folder path (not yet made) for a sweep of this name."""
    stem = SWEEPS_DIR / f"{name}-{time.strftime(_STAMP_FORMAT)}"
    path, n = stem, 1
    while path.exists():  # two sweeps of one name started in the same second
        n += 1
        path = Path(f"{stem}-{n}")
    return path


def find(ref: str) -> Path:
    """An earlier sweep's folder (sweep.warm_start): a sweep id, or the latest sweep of that name."""
    if (SWEEPS_DIR / ref / STATE).exists():
        return SWEEPS_DIR / ref
    found = latest(ref)
    if found is not None:
        return found
    raise ConfigError("sweep.warm_start", ref, f"a sweep id or name in {SWEEPS_DIR}/: {existing()}")


def latest(name: str) -> Path | None:
    found = sorted(SWEEPS_DIR.glob(f"{name}-*/{STATE}"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def existing() -> list[str]:
    """The ids of the sweeps that got as far as their state file."""
    return sorted(p.parent.name for p in SWEEPS_DIR.glob(f"*/{STATE}"))


def discard(folder: Path) -> None:
    """Remove a sweep folder that never became a sweep, and the sweeps folder too if that leaves it empty."""
    shutil.rmtree(folder, ignore_errors=True)
    if not any(SWEEPS_DIR.iterdir()):
        SWEEPS_DIR.rmdir()


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE).read_text())


def write_state(folder: Path, state: dict) -> None:
    (folder / STATE).write_text(json.dumps(state, indent=1))


def default_storage(folder: Path) -> str:
    """The study's storage when engine.storage names none: sqlite in the sweep's folder."""
    return f"sqlite:///{(folder / OPTUNA_DB).resolve()}"


def study(sweep_id: str):
    """The sweep's Optuna study (sweeps_out/<sweep id>/, or the storage its state.json names), or why there is none."""
    import optuna

    folder = SWEEPS_DIR / sweep_id
    db = folder / OPTUNA_DB
    state = folder / STATE
    storage = json.loads(state.read_text()).get("storage") if state.exists() else None
    if not storage or not Path(storage.removeprefix("sqlite:///")).exists():
        storage = default_storage(folder) if db.exists() else None
    if storage is None:
        return None, f"_No Optuna study at `{db}` (run the report where the sweep ran, or copy `{folder}/`)._"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=sweep_id, storage=storage), ""
    except KeyError:
        return None, f"_No Optuna study named `{sweep_id}` in `{storage}`._"
