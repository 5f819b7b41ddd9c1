"""A finished sweep's summary in its own folder and on its MLflow parent run: the leaderboard, the objective plot,
the Pareto front for several objectives, and the best trial with the command that reruns it."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from lorasweep import evalrows, stats, sweepdir

if TYPE_CHECKING:
    import mlflow
    import pandas as pd

    from lorasweep.space import SweepSpec


def leaderboard(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    spec: SweepSpec,
    out: Path,
    base: list[str],
    study,
    ident: SweepSpec,
) -> dict:
    """The leaderboard and the objective plot, the same ones `lorasweep report` shows, onto the parent run; the
    best config and the command that reruns it: the confirmed winner where the sweep confirms (sweep.confirm),
    else the best search trial. Several objectives: the Pareto front too, plot and table. `ident`: the spec that
    says which trials are one config (distinct.complete)."""
    import mlflow

    from lorasweep import confirm
    from lorasweep.analysis import figures, runs, tables

    trials = runs.load_trials(runs.find_sweep(parent_run_id, client.tracking_uri))
    keys = [d.key for d in spec.dims if not d.helper]
    board = tables.leaderboard(trials, keys, spec.metric, spec.mode, dict(spec.objectives) or None)
    if spec.objectives:
        front = board[board["pareto"]].drop(columns=["pareto"])
        front.to_csv(out / sweepdir.PARETO_CSV, index=False)
        (out / sweepdir.PARETO_MD).write_text((front.drop(columns=["run_id"]).to_markdown(index=False) or "") + "\n")
        mlflow.log_artifact(str(out / sweepdir.PARETO_CSV))
        mlflow.log_artifact(str(out / sweepdir.PARETO_MD))
        if isinstance(figures.pareto_front(study, out / sweepdir.PARETO_FRONT), Path):
            mlflow.log_artifact(str(out / sweepdir.PARETO_FRONT))
        mlflow.log_metric("pareto_trials", len(front))
    counts = board["state"].value_counts().to_dict() if len(board) else {}
    board.to_csv(out / sweepdir.LEADERBOARD_CSV, index=False)
    shown = board.drop(columns=["run_id"]).to_markdown(index=False) if len(board) else "no trials"
    confirmed = confirm.ranked(study, ident) if spec.confirm else []
    if confirmed:
        table = confirmed_table(confirmed, board, spec.metric)
        shown = f"## Confirmed configs\n\n{table.to_markdown(index=False)}\n\n## All trials\n\n{shown}"
        table.to_csv(out / sweepdir.CONFIRMED_CSV, index=False)
        mlflow.log_artifact(str(out / sweepdir.CONFIRMED_CSV))
    (out / sweepdir.LEADERBOARD_MD).write_text(shown + "\n")
    mlflow.log_artifact(str(out / sweepdir.LEADERBOARD_CSV))
    mlflow.log_artifact(str(out / sweepdir.LEADERBOARD_MD))
    if figures.objective(trials, keys, spec.metric, out / sweepdir.OBJECTIVE_PLOT):
        mlflow.log_artifact(str(out / sweepdir.OBJECTIVE_PLOT))
    search = board["phase"].fillna("") != confirm.CONFIRM if "phase" in board else True
    complete = board[(board["state"] == "COMPLETE") & search].dropna(subset=[spec.metric]) if len(board) else board
    summary = {"counts": counts, "metric": spec.metric, "top": complete.head(5).to_dict("records")}
    if len(complete):
        best = complete.iloc[0]
        if confirmed:  # the winner over new seeds: the search trial it confirms
            best = complete[complete["trial"].astype(int) == confirmed[0].source].iloc[0]
        mlflow.set_tag("best_run_id", best["run_id"])
        mlflow.log_metric(f"best_{spec.metric}", float(best[spec.metric]))
        # A trial composed with sweep=<name> gets the sweep file's base fields; its sweep section is ignored.
        cmd = (
            shlex.join(["lorasweep", "trial", *[a for a in base if not a.lstrip("~+").startswith("sweep.")]])
            + " "
            + best["overrides"]
        )
        mlflow.set_tag("best_command", cmd)
        summary.update(
            best_run_id=best["run_id"],
            best_value=confirmed[0].interval.value if confirmed else float(best[spec.metric]),
            best_command=cmd,
            best_adapter=f"{client.get_run(best['run_id']).info.artifact_uri}/adapter",
        )
        summary["eval_words"] = eval_words(complete, spec.metric, spec.mode)
        mlflow.set_tag("eval_words", summary["eval_words"])
    if spec.confirm:
        summary["answer"] = confirm.words(confirmed, spec.metric)
        mlflow.set_tag("answer", summary["answer"])
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()})
    return summary


def confirmed_table(confirmed: list, board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per confirmed config, best mean first: the search's value (one seed, picked as best, so biased up),
    the mean over the new seeds with its 95 % t interval and their spread, and beside it the eval-set half-width
    (the median of those runs' bootstrap half-widths): which of the two noises is the larger."""
    import pandas as pd

    half = (board[f"{metric}_ci_high"] - board[f"{metric}_ci_low"]) / 2 if f"{metric}_ci_high" in board else None
    rows = []
    for c in confirmed:
        mine = board["run_id"].isin(c.run_ids)
        spread = float(pd.Series(c.scores).std(ddof=1)) if len(c.scores) > 1 else math.nan
        rows.append(
            {
                "config": c.label,
                "search trial": c.source,
                f"search {metric}": c.search_value,
                "seeds": len(c.scores),
                f"mean {metric}": c.interval.value,
                "95% low": c.interval.low,
                "95% high": c.interval.high,
                "seed sd": spread,
                "eval-set ±": float(half[mine].median()) if half is not None and mine.any() else math.nan,
            }
        )
    return pd.DataFrame(rows)


SAME_ROWS = ("labels", "tokens", "references")  # outputs that name the rows: equal when two trials saw the same ones


def eval_words(board: pd.DataFrame, metric: str, mode: str) -> str:
    """One line: does the winner beat the runner-up on these eval rows? A paired bootstrap of winner - runner-up
    over their saved per-row outputs (the same rows for both; stats.paired), read as a verdict on the claim "the
    winner is better" (stats.verdict_of_bootstrap). `board`: finished trials, best first (tables.leaderboard)."""
    if len(board) < 2:
        return f"{metric}: one finished trial, no runner-up to compare with"
    (_, a), (_, b) = board.head(2).iterrows()
    names = f"trial {a['trial']} vs runner-up {b['trial']}"
    split, name = evalrows.split_of(metric)
    saved = [evalrows.load(row["run_id"]).get(split, {}) for row in (a, b)]
    rows = [evalrows.rows(s, name) for s in saved]
    if None in rows:
        return f"{metric}: {names}: no per-row eval outputs saved for this metric, no paired comparison"
    if len(rows[0].stats) != len(rows[1].stats) or any(
        k in saved[0] and saved[0][k] != saved[1].get(k) for k in SAME_ROWS
    ):
        return f"{metric}: {names} were not scored on the same eval rows, no paired comparison"
    diff = stats.paired(*rows)
    claim = (0.0, math.inf) if mode == "max" else (-math.inf, 0.0)  # winner - runner-up, in the better direction
    verdict = stats.verdict_of_bootstrap(diff, len(rows[0].stats), claim)
    words = {"agrees": "the winner is better", "disagrees": "the runner-up is better"}
    said = words.get(verdict.word, "not distinguishable")
    if verdict.needed:  # undecided: how many eval rows would decide it, at the spread seen
        said += f", ~{verdict.needed} eval rows would decide it"
    d = diff.diff
    return (
        f"{metric} on the same {len(rows[0].stats)} eval rows, winner {names}: "
        f"{d.value:+.4g} [{d.low:+.4g}, {d.high:+.4g}] (paired bootstrap, p={diff.p:.2g}): {said}"
    )
