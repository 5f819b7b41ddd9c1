"""Tables: mean ± std and n over seeds per group, the paper's Table 5 and 6 layouts, and Markdown/LaTeX/CSV files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lorasweep.analysis import paper
from lorasweep.analysis.runs import SEED_KEYS


def group_stats(trials: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """keys + mean, std (sample, ddof=1; NaN for a single seed), n and the values themselves (a tuple: what a verdict
    tests over seeds) of `value` over the rows of each group."""
    cols = [*keys, "mean", "std", "n", "values"]
    rows = trials.dropna(subset=[value])
    if rows.empty:
        return pd.DataFrame(columns=cols)
    g = rows.groupby(keys, dropna=False, sort=False)[value]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count(), "values": g.agg(tuple)}).reset_index()
    return out[cols]


def fmt(x: float | None, unit: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "–"
    return f"{x:.1f}" if unit == "%" else f"{x:.4g}"


def fmt_ms(mean: float, std: float, unit: str) -> str:
    """'62.3 ± 1.0' in %; else both to the decimals of std's second significant digit ('10.3805 ± 0.0057').
    A single seed has no std, shown as ± –."""
    if unit == "%" or std is None or not math.isfinite(std) or std <= 0:
        return f"{fmt(mean, unit)} ± {fmt(std, unit)}"
    d = min(8, max(0, 1 - math.floor(math.log10(std))))
    return f"{mean:.{d}f} ± {std:.{d}f}"


def pm(mean: float, std: float, decimals: int) -> str:
    """'19.5 ± 1.2' at fixed decimals; a single seed (std nan) shows ± –, as fmt_ms does."""
    return f"{mean:.{decimals}f} ± " + ("–" if std is None or not math.isfinite(std) else f"{std:.{decimals}f}")


def weights_order(labels: list[str]) -> list[str]:
    """The paper's rows first (Table 5 order), then any other weight sets alphabetically."""
    known = [paper.label(t) for t in paper.TABLE5]
    return [w for w in known if w in labels] + sorted(w for w in set(labels) if w not in known)


def _targets_of(label: str) -> tuple[str, ...]:
    return tuple(t[1:] if t in ("Wq", "Wk", "Wv", "Wo") else t for t in label.split("+"))


def ours_column(metric: str, unit: str) -> str:
    return f"ours: {metric}" + (f" ({unit})" if unit else "")


def table5(stats: pd.DataFrame, params: pd.DataFrame, metric: str, unit: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Weight types at an equal budget: (numeric frame for CSV, display frame for Markdown/LaTeX).
    A paper value is filled only where our r is the paper's r for that row."""
    numeric, shown = [], []
    order = weights_order(list(stats["weights"]))
    for w in order:
        row = stats[stats["weights"] == w].iloc[0]
        t, r = _targets_of(w), int(row["r"])
        refs = {d: paper.table5(t, d) if paper.table5_rank(t) == r else None for d in paper.DATASETS}
        n_params = params.get(w)
        numeric.append(
            {
                "weight type": w,
                "r": r,
                "trainable params": n_params,
                "mean": row["mean"],
                "std": row["std"],
                "n": int(row["n"]),
                **{paper.ref_column(d): refs[d] for d in paper.DATASETS},
            }
        )
        shown.append(
            {
                "weight type": w,
                "r": r,
                "trainable params": "–" if n_params is None else f"{n_params:,.0f}",
                f"{ours_column(metric, unit)} mean ± std": fmt_ms(row["mean"], row["std"], unit),
                "n": int(row["n"]),
                **{paper.ref_column(d): _ref(refs[d], t, paper.table5_rank(t)) for d in paper.DATASETS},
            }
        )
    return pd.DataFrame(numeric), pd.DataFrame(shown)


def _ref(value: float | None, t: tuple[str, ...], paper_r: int | None) -> str:
    if value is not None:
        return f"{value:.1f}"
    return f"– (paper: r={paper_r})" if paper_r is not None else "–"


def table6(stats: pd.DataFrame, metric: str, unit: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rank r per weight set: (numeric long frame, display long frame, display grid in the paper's layout:
    a block of rows per source — ours, then the paper's WikiSQL and MultiNLI — weight types × r columns)."""
    ranks = sorted(int(r) for r in stats["r"].unique())
    numeric, shown, grid = [], [], []
    order = weights_order(list(stats["weights"].unique()))
    for w in order:
        t = _targets_of(w)
        for r in ranks:
            sel = stats[(stats["weights"] == w) & (stats["r"] == r)]
            if sel.empty:
                continue
            row = sel.iloc[0]
            refs = {d: paper.table6(t, r, d) for d in paper.DATASETS}
            numeric.append(
                {
                    "weight type": w,
                    "r": r,
                    "mean": row["mean"],
                    "std": row["std"],
                    "n": int(row["n"]),
                    **{paper.ref_column(d): refs[d] for d in paper.DATASETS},
                }
            )
            shown.append(
                {
                    "weight type": w,
                    "r": r,
                    f"{ours_column(metric, unit)} mean ± std": fmt_ms(row["mean"], row["std"], unit),
                    "n": int(row["n"]),
                    **{paper.ref_column(d): fmt(refs[d], "%") for d in paper.DATASETS},
                }
            )
    for source in ["ours", *paper.DATASETS]:
        for w in order:
            t = _targets_of(w)
            if source != "ours" and t not in paper.TABLE6[source]:
                continue
            cells = {}
            for r in ranks:
                sel = stats[(stats["weights"] == w) & (stats["r"] == r)]
                if source == "ours":
                    cells[f"r={r}"] = (
                        "–"
                        if sel.empty
                        else (f"{fmt_ms(sel['mean'].iloc[0], sel['std'].iloc[0], unit)} (n={int(sel['n'].iloc[0])})")
                    )
                else:
                    cells[f"r={r}"] = fmt(paper.table6(t, r, source), "%")
            label = f"{ours_column(metric, unit)}, mean ± std" if source == "ours" else paper.ref_column(source)
            grid.append({"source": label, "weight type": w, **cells})
    return pd.DataFrame(numeric), pd.DataFrame(shown), pd.DataFrame(grid)


# ------------------------------------------------------------------------------------------ files

STATE_ORDER = {"COMPLETE": 0, "REUSED": 1, "PRUNED": 2, "SKIPPED": 3, "FAILED": 4, "KILLED": 5}


def leaderboard(
    trials: pd.DataFrame, dims: list[str], metric: str, mode: str, objectives: dict[str, str] | None = None
) -> pd.DataFrame:
    """Every trial of a sweep (rows of runs.load_trials): finished ones first, best first; then reused, pruned
    (ranked by the value they were stopped at, never above a finished one), failed, killed. The sweep prints it
    and the report shows it. With several objectives ({metric: mode}), each is a column and `pareto` marks the
    finished trials on their front. The metric's 95 % interval over the eval rows stands beside it."""
    col = f"metrics.{metric}"
    others = {f"metrics.{m}": m for m in (objectives or {}) if m != metric}
    ci = {f"{col}_ci_{end}": f"{metric}_ci_{end}" for end in ("low", "high")}  # its 95 % interval over eval rows
    cols = {
        "tags.optuna_trial": "trial",
        "state": "state",
        "tags.phase": "phase",  # confirm: a confirmation run (lorasweep/confirm.py); empty: the search
        col: metric,
        **ci,
        **others,
        **{
            c: c.removeprefix("metrics.")
            for c in sorted(trials)
            if c.startswith("metrics.eval_") and c != col and "_ci_" not in c  # the others' intervals: in MLflow
        },
        **{f"params.{d}": d for d in dims if d not in SEED_KEYS},  # a searched seed is the `seed` column
        "seed": "seed",
        "tags.overrides": "overrides",
        "tags.failure_reason": "failure_reason",
        "tags.skip_reason": "skip_reason",
        "run_id": "run_id",
    }
    board = trials[[c for c in cols if c in trials]].rename(columns=cols)
    if metric not in board:  # no trial reported it (all failed or killed)
        board.insert(min(2, len(board.columns)), metric, float("nan"))
    if len(board):
        board = board.assign(
            _o=board["state"].map(STATE_ORDER).fillna(len(STATE_ORDER)), _v=board[metric] * (-1 if mode == "max" else 1)
        )
        board = board.sort_values(["_o", "_v"], na_position="last").drop(columns=["_o", "_v"])
    if objectives:
        finished = board["state"].isin(["COMPLETE", "REUSED"])
        have = {m: objectives[m] for m in objectives if m in board}
        front = pareto(board[finished], have) if len(have) == len(objectives) else pd.Series(False, index=board.index)
        board.insert(2, "pareto", front.reindex(board.index, fill_value=False))
    return board.reset_index(drop=True)


def pareto(values: pd.DataFrame, modes: dict[str, str]) -> pd.Series:
    """True for each row no other row dominates: at least as good in every column of `modes` (max or min), better in
    one. Rows with a missing value are never on the front. Quadratic: a sweep has hundreds of trials, not millions."""
    signed = np.column_stack([values[c].to_numpy(float) * (1 if m == "max" else -1) for c, m in modes.items()])
    ok = ~np.isnan(signed).any(axis=1)
    front = [
        bool(ok[i])
        and not any(
            ok[j] and (signed[j] >= signed[i]).all() and (signed[j] > signed[i]).any() for j in range(len(signed))
        )
        for i in range(len(signed))
    ]
    return pd.Series(front, index=values.index)


def to_markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "_no rows_"
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, missingval="–")  # not "nan"


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table; written here so no template engine is needed."""

    def cell(v: object) -> str:
        s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        s = re.sub(r"([&%$#_{}])", r"\\\1", s).replace("±", r"$\pm$").replace("–", "--")
        return s

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{cell(caption)}}}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{" + "l" * len(df.columns) + "}",
        r"\toprule",
        " & ".join(cell(c) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write(numeric: pd.DataFrame, shown: pd.DataFrame, base: Path, caption: str) -> list[Path]:
    """base.csv (numbers), base.md and base.tex (formatted); returns the paths."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".csv"), base.with_suffix(".md"), base.with_suffix(".tex")]
    numeric.to_csv(paths[0], index=False)
    paths[1].write_text(f"{caption}\n\n{to_markdown(shown)}\n")
    paths[2].write_text(to_latex(shown, caption, f"tab:{base.name}"))
    return paths
