"""A saved LR-first comparison report (sweep.compare) judged again under the current verdict rule, from its own
tables, for when its MLflow store is gone: `lorasweep report --rejudge DIR...`.

arms.csv holds each arm's best LR, mean, std, n, plateau and edge flags; leaderboard.csv holds every trial, so the
seeds at each arm's best LR are its COMPLETE trials there, taken only where they give back the arm's n, mean and
std. Without them, two seeds are exactly mean ± std/√2 and one seed is the mean; more seeds cannot be rebuilt from a
mean and a std, and such a report is refused rather than judged on made-up values. The band (sweep.compare.tolerance
or the floor) is what the saved verdicts say they used. DIR/verdicts.{csv,md,tex} and the verdict section of
DIR/README.md are rewritten; claims that are not the comparison's (φ, spectra) keep their saved rows.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lorasweep.analysis import arms, report
from lorasweep.errors import ConfigError

SAVED = ("README.md", "arms.csv", "leaderboard.csv", "verdicts.csv")
GIVEN_BAND = ("the given tolerance", "band from sweep.compare.tolerance")  # the old rule's words, the new rule's
REBUILT = "mean ± std/√2"


def _objective(readme: str, folder: Path) -> tuple[str, str, str]:
    """metric, mode and unit from the report's header line "objective `eval_macro_f1` (max) in %"."""
    m = re.search(r"objective `([^`]+)` \((max|min)\)( in %)?", readme)
    if not m:
        raise ConfigError("DIR", str(folder), "a report whose README names its objective: objective `<metric>` (max)")
    return m.group(1), m.group(2), "%" if m.group(3) else ""


def _band(saved: pd.DataFrame) -> float | None:
    """sweep.compare.tolerance where the saved pair verdicts say they used it (their tolerance column), else None."""
    pairs = saved[saved["claim"].str.contains("ties with the best arm", regex=False)]
    given = pairs[pairs["verdict"].map(lambda v: any(w in str(v) for w in GIVEN_BAND))]
    return float(given["tolerance"].iloc[0]) if len(given) else None


def _owner(overrides: object, labels: list[str]) -> str | None:
    """The arm a trial ran in: the label with the most fields, all of them among the trial's overrides."""
    fields = set(str(overrides).split())
    mine = [a for a in labels if set(a.split()) <= fields]
    return max(mine, key=lambda a: len(a.split())) if mine else None


def _same(values: tuple[float, ...], arm: pd.Series) -> bool:
    """Whether these values give back the arm's n, mean and sample std."""
    n, mean, std = int(arm["n"]), float(arm["mean"]), float(arm["std"])
    if len(values) != n or not math.isclose(float(np.mean(values)), mean, rel_tol=1e-9):
        return False
    return n < 2 or math.isclose(float(np.std(values, ddof=1)), std, rel_tol=1e-9, abs_tol=1e-12)


def seeds(arm: pd.Series, board: pd.DataFrame, metric: str, scale: float, labels: list[str]) -> tuple[tuple, str]:
    """The arm's values over seeds at its best LR (in the report's unit) and where they came from: its COMPLETE
    trials in the leaderboard, where they give back its n, mean and std; else one seed's mean, or two seeds' mean ±
    std/√2; else no values ('')."""
    lr = pd.to_numeric(board["train.lr"], errors="coerce") if "train.lr" in board else pd.Series(np.nan, board.index)
    at = board[
        (board["state"] == "COMPLETE")
        & np.isclose(lr, float(arm["best_lr"]), rtol=1e-9, atol=0)
        & (board["overrides"].map(lambda o: _owner(o, labels)) == arm["arm"])
    ]
    found = tuple(float(v) * scale for v in at[metric].dropna()) if metric in at else ()
    if _same(found, arm):
        return found, "leaderboard.csv"
    n, mean, std = int(arm["n"]), float(arm["mean"]), float(arm["std"])
    if n == 1:
        return (mean,), "mean"  # one seed's value is its mean
    if n == 2:
        half = std / math.sqrt(2)  # the only two values with this mean and sample std
        return (mean - half, mean + half), REBUILT
    return (), ""


def rejudged(folder: Path) -> tuple[list[dict], str, list[str]]:
    """The verdicts of the saved report in `folder` under the current rule (the comparison's in place of the saved
    ones, the others as saved), its unit, and the arms whose seeds were rebuilt as mean ± std/√2."""
    missing = [name for name in SAVED if not (folder / name).is_file()]
    if missing:
        raise ConfigError("DIR", str(folder), f"a saved compare report with {', '.join(SAVED)}; missing {missing}")
    readme = (folder / "README.md").read_text()
    if "\n## Verdicts" not in readme:
        raise ConfigError("DIR", str(folder), "a report whose README has a verdict section (## Verdicts...)")
    metric, mode, unit = _objective(readme, folder)
    scale = 100.0 if unit == "%" else 1.0  # runs.metric_unit: a metric shown in % was logged as a fraction
    stats = pd.read_csv(folder / "arms.csv")
    board = pd.read_csv(folder / "leaderboard.csv")
    saved = pd.read_csv(folder / "verdicts.csv")
    labels = list(stats["arm"])
    found = [seeds(arm, board, metric, scale, labels) if int(arm["n"]) else ((), "none") for _, arm in stats.iterrows()]
    lost = [f"{a} (n={n})" for a, n, (_, src) in zip(stats["arm"], stats["n"], found) if not src]
    if lost:
        raise ConfigError("DIR", str(folder), "not recomputable from the committed tables: " + ", ".join(lost))
    stats["values"] = [v for v, _ in found]
    new = arms.verdicts_of(stats, unit, mode, _band(saved))
    rows = saved.astype(object).where(saved.notna(), None).to_dict("records")
    ours = [i for i, r in enumerate(rows) if r["paper"] in arms.PAPERS.values()]
    kept = [r for i, r in enumerate(rows) if i not in ours]
    at = ours[0] if ours else 0  # the comparison's claims where the report put them
    rebuilt = [a for a, (_, src) in zip(stats["arm"], found) if src == REBUILT]
    return kept[:at] + new + kept[at:], unit, rebuilt


def rewrite(folder: Path) -> list[dict]:
    """Rewrite the saved report's verdicts.{csv,md,tex} and its README's verdict section; returns the verdicts."""
    found, unit, rebuilt = rejudged(folder)
    readme = (folder / "README.md").read_text()
    start = readme.find("\n## Verdicts")
    end = readme.find("\n## ", start + 1)
    cites_paper = any(r["paper"] not in arms.PAPERS.values() for r in found)
    heading, *rest = report.verdict_section(found, unit, folder, cites_paper)
    how = (
        "Re-judged under the rule below by `lorasweep report --rejudge DIR` from this report's own tables: arms.csv, "
        "and each arm's seeds at its best LR from leaderboard.csv"
        + (f" (two seeds rebuilt as {REBUILT}: {', '.join(rebuilt)})" if rebuilt else "")
        + ". The other sections are as `lorasweep report` wrote them."
    )
    section = "\n\n".join([heading, how, *rest])
    tail = readme[end:] if end >= 0 else ""
    (folder / "README.md").write_text(readme[: start + 1] + section + "\n" + tail)
    return found


def cli(folders: list[Path]) -> int:
    """`lorasweep report --rejudge DIR...`: every folder judged before any is written, so one that cannot be leaves
    them all as they were."""
    if not folders:
        raise ConfigError("DIR", None, "one or more saved report folders: lorasweep report --rejudge DIR...")
    for folder in folders:
        rejudged(folder)
    for folder in folders:
        tie = next(v for v in rewrite(folder) if v["claim"] == arms.TIE)
        print(f"{folder}: {tie['verdict'].split(' (')[0]} ({tie['ours']}); verdicts.md and README.md rewritten")
    return 0
