"""Figures (PNG): metric and cost against rank, effective rank against nominal rank, spectra, φ heatmaps,
the objective per swept dimension, and Optuna's own views of the study. Figure + Agg canvas: pyplot's global state
is left alone (Optuna's views draw with pyplot; optuna_views undoes them)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _rank_axis(ax, ranks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    ax.set_xlabel("rank r")


def metric_vs_rank(stats: pd.DataFrame, ylabel: str, path: Path) -> Path:
    """Mean ± std over seeds against r, one line per weight set."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for w, rows in stats.groupby("weights", sort=False):
        rows = rows.sort_values("r")
        ax.errorbar(rows["r"].astype(int), rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=w)
    _rank_axis(ax, sorted(int(r) for r in stats["r"].unique()))
    ax.set_ylabel(ylabel)
    ax.set_title("metric against rank (mean ± std over seeds)")
    ax.legend(title="adapted weights", fontsize=8)
    return _save(fig, path)


def rank_vs_nominal(trials: pd.DataFrame, path: Path) -> Path | None:
    """Energy rank at 95 % (solid) and entropy effective rank (dashed) of ΔW per module type against nominal r,
    one panel per weight set; the dotted diagonal is full use of the rank."""
    cols = [c for c in trials.columns if c.startswith("metrics.energy_rank95_") and c != "metrics.energy_rank95_mean"]
    if not cols or "r" not in trials:
        return None
    groups = list(trials.groupby("weights", sort=False)) if "weights" in trials else [("all", trials)]
    fig = _figure(4.2 * len(groups), 3.8)
    ranks = sorted(int(r) for r in trials["r"].dropna().unique())
    for i, (w, rows) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for n, col in enumerate(sorted(cols)):
            mtype = col.removeprefix("metrics.energy_rank95_").removesuffix("_mean")
            for metric, style in ((col, "-"), (f"metrics.effective_rank_{mtype}_mean", "--")):
                if metric not in rows or rows[metric].isna().all():
                    continue
                g = rows.groupby("r")[metric].agg(["mean", "std"]).reset_index()
                ax.errorbar(
                    g["r"].astype(int),
                    g["mean"],
                    yerr=g["std"].fillna(0),
                    ls=style,
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=f"C{n % 10}",
                    label=mtype if style == "-" else None,
                )
        ax.plot(ranks, ranks, ":", color="grey", lw=1)
        _rank_axis(ax, ranks)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("rank of ΔW")
        ax.set_title(f"{w}: 95 % energy (—), effective (--)", fontsize=9)
        ax.legend(title="module", fontsize=7)
    return _save(fig, path)


def spectra(rows: list[dict], path: Path) -> Path | None:
    """Normalised singular values σᵢ/σ₁ of ΔW, averaged over layers and seeds: a panel per module type,
    a line per nominal r."""
    if not rows:
        return None
    df = pd.DataFrame(rows)
    types = sorted(df["module_type"].unique())
    fig = _figure(4 * len(types), 3.6)
    for i, mtype in enumerate(types):
        ax = fig.add_subplot(1, len(types), i + 1)
        for n, (r, sel) in enumerate(sorted(df[df["module_type"] == mtype].groupby("r"), key=lambda kv: kv[0])):
            width = min(len(s) for s in sel["sv"])
            mean = np.mean([s[:width] for s in sel["sv"]], axis=0)
            keep = mean > 0  # a log axis has no zero
            ax.plot(
                np.arange(1, width + 1)[keep],
                mean[keep],
                marker="." if width < 20 else None,
                color=f"C{n % 10}",
                label=f"r={int(r)}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("σᵢ / σ₁")
        ax.set_title(f"ΔW{mtype}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def cost_vs_rank(trials: pd.DataFrame, path: Path) -> Path | None:
    """Peak memory and trainable parameters against r per weight set (bars per weight set when r is fixed)."""
    metrics = [m for m in ("metrics.peak_memory_mb", "metrics.trainable_params") if m in trials]
    if not metrics:
        return None
    fig = _figure(5 * len(metrics), 3.8)
    by_rank = "r" in trials and trials["r"].nunique() > 1
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        if by_rank:
            for w, rows in trials.groupby("weights", sort=False) if "weights" in trials else [("all", trials)]:
                g = rows.groupby("r")[m].agg(["mean", "std"]).reset_index()
                ax.errorbar(g["r"].astype(int), g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=w)
            _rank_axis(ax, sorted(int(r) for r in trials["r"].dropna().unique()))
            ax.legend(fontsize=7)
        else:
            key = "weights" if "weights" in trials else "run_id"
            g = trials.groupby(key, sort=False)[m].agg(["mean", "std"])
            ax.bar(range(len(g)), g["mean"], yerr=g["std"].fillna(0), capsize=3)
            ax.set_xticks(range(len(g)))
            ax.set_xticklabels(g.index, rotation=30, ha="right", fontsize=8)
        if m.endswith("trainable_params"):
            ax.set_yscale("log")
        ax.set_ylabel(m.removeprefix("metrics."))
    return _save(fig, path)


def phi_heatmaps(rows: list[dict], title: str, path: Path, max_layers: int = 6) -> Path | None:
    """φ(i, j) heatmaps: a row of panels per module type, a column per layer (evenly spaced when there are
    more than max_layers); i on the vertical axis, j across, both from 1."""
    if not rows:
        return None
    types = sorted({r["module_type"] for r in rows})
    layers = sorted({r["layer"] for r in rows})
    if len(layers) > max_layers:
        layers = [layers[int(round(x))] for x in np.linspace(0, len(layers) - 1, max_layers)]
    fig = _figure(2.6 * len(layers) + 1, 2.4 * len(types) + 0.6)
    image = None
    for ti, mtype in enumerate(types):
        for li, layer in enumerate(layers):
            ax = fig.add_subplot(len(types), len(layers), ti * len(layers) + li + 1)
            cell = next((r for r in rows if r["module_type"] == mtype and r["layer"] == layer), None)
            if cell is None:
                ax.axis("off")
                continue
            grid = cell["phi"]
            image = ax.imshow(
                grid,
                vmin=0,
                vmax=1,
                cmap="viridis",
                aspect="auto",
                origin="lower",
                interpolation="nearest",
                extent=(0.5, grid.shape[1] + 0.5, 0.5, grid.shape[0] + 0.5),
            )
            ax.set_title(f"ΔW{mtype}, layer {layer}", fontsize=8)
            ax.tick_params(labelsize=6)
            if li == 0:
                ax.set_ylabel("i", fontsize=8)
            if ti == len(types) - 1:
                ax.set_xlabel("j", fontsize=8)
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=9)
    if image is not None:
        fig.tight_layout(rect=(0, 0, 0.93, 0.95))
        fig.colorbar(image, ax=fig.axes, fraction=0.02, pad=0.01, label="φ")
    fig.savefig(path, dpi=DPI)
    return path


def objective(trials: pd.DataFrame, dims: list[str], metric: str, path: Path) -> Path | None:
    """The objective against each swept dimension (and seed): complete trials as dots, pruned as crosses."""
    col = f"metrics.{metric}"
    if col not in trials or not dims:
        return None
    fig = _figure(3.8 * len(dims), 3.4)
    for i, key in enumerate(dims):
        ax = fig.add_subplot(1, len(dims), i + 1)
        if key == "adapter.targets" and "weights" in trials:
            values = trials["weights"]  # Wq+Wv, not the logged JSON list: short enough to read as a tick label
        else:
            values = trials[f"params.{key}"] if f"params.{key}" in trials else trials[key]
        num = pd.to_numeric(values, errors="coerce")
        x = (
            num if num.notna().all() else values.map(lambda v: "-" if pd.isna(v) else str(v))
        )  # pandas 3 keeps NaN in astype(str)
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            sel = (trials["state"] == state) & trials[col].notna()
            if sel.any():
                ax.scatter(x[sel], trials.loc[sel, col], marker=marker, alpha=0.7, label=state.lower())
        if not pd.api.types.is_numeric_dtype(x):  # pandas 3 strings are not object dtype
            ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=35, ha="right", fontsize=7)
        elif key in ("adapter.r", "r") and (num > 0).all():
            ax.set_xscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    if fig.axes[0].get_legend_handles_labels()[0]:
        fig.axes[0].legend(fontsize=7)
    return _save(fig, path)


def learning_curves(study, metric: str):
    """Optuna's intermediate-values view, each pruned trial marked where it stopped (the axes)."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    ax = ov.plot_intermediate_values(study)
    pruned = study.get_trials(False, states=(TrialState.PRUNED,))
    stops = [max(t.intermediate_values.items()) for t in pruned if t.intermediate_values]
    if stops:
        ax.scatter(*zip(*stops), marker="x", s=70, color="black", zorder=3, label="pruned here")
    ax.set_title(f"Learning curves: {metric} at each eval")
    ax.set_ylabel(metric)
    handles, labels = ax.get_legend_handles_labels()
    if sum(lab != "pruned here" for lab in labels) > 12:  # an entry per trial squeezes the plot out past a dozen
        kept = [(h, lab) for h, lab in zip(handles, labels) if lab == "pruned here"]
        handles, labels = zip(*kept) if kept else ((), ())
    if labels:
        ax.legend(handles, labels, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    elif ax.get_legend() is not None:
        ax.get_legend().remove()
    return ax


def optuna_views(study, params: list[str], metric: str, out: Path) -> tuple[dict[str, Path | str], dict[str, float]]:
    """Optuna's own matplotlib views of a sweep's study, over the params that varied: learning curves (the evals the
    pruner judged, each pruned trial marked where it stopped), parallel coordinates, and fANOVA importances (of a
    multi-objective study, of its first objective). Each name maps to its PNG, or to why it could not be drawn; the
    importances drawn come back too (empty when not drawn), for the report's table."""
    import optuna
    from optuna.visualization import matplotlib as ov

    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    importances: dict[str, float] = {}

    class Computed(optuna.importance.BaseImportanceEvaluator):
        """Hands Optuna's plot the importances computed once (the plot takes an evaluator, not numbers)."""

        def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
            return dict(importances)

    def draw_importances():
        # fANOVA fits a random forest per call: fit it once, and draw the numbers the table shows.
        importances.update(
            optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params, target=target
            )
        )
        return ov.plot_param_importances(study, evaluator=Computed(), params=params, target=target, target_name=metric)

    draws = {
        "learning_curves": lambda: learning_curves(study, metric),
        "parallel_coordinates": lambda: ov.plot_parallel_coordinate(
            study, params=params, target=target, target_name=metric
        ),
        "importances": draw_importances,
    }
    views: dict[str, Path | str] = {}
    for name, draw in draws.items():
        if name == "learning_curves" and not any(t.intermediate_values for t in study.get_trials(False)):
            views[name] = "no trial reported an intermediate value (a multi-objective study takes none)"
            continue
        views[name] = _optuna_png(draw, out / f"{name}.png")
    return views, importances if isinstance(views["importances"], Path) else {}


def pareto_front(study, path: Path) -> Path | str:
    """Optuna's Pareto-front view of a multi-objective study (the first two objectives when there are more than
    three), or why it could not be drawn."""
    from optuna.visualization import matplotlib as ov

    names = list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
    if len(names) > 3:
        return _optuna_png(
            lambda: ov.plot_pareto_front(study, targets=lambda t: tuple(t.values[:2]), target_names=names[:2]), path
        )
    return _optuna_png(lambda: ov.plot_pareto_front(study, target_names=names), path)


def _optuna_png(draw, path: Path) -> Path | str:
    """Save one of Optuna's pyplot views; its style and figures are undone after it."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    import optuna

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            fig = draw().figure
        except Exception as e:  # too few trials, one value only, ...: the report says why
            plt.close("all")
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
    return path


def pareto(metric: pd.Series, forget: pd.Series, mode: str) -> pd.Series:
    """True where no other trial has a metric at least as good and a forget ratio at least as low, one of the two
    strictly (mode: 'max' or 'min' for the metric; forget_ppl_ratio is always better low)."""
    from lorasweep.analysis.tables import pareto as front

    return front(pd.DataFrame({"m": metric, "f": forget}), {"m": mode, "f": "min"})


def learns_vs_forgets(trials: pd.DataFrame, metric: str, mode: str, path: Path) -> pd.DataFrame | None:
    """The task metric against forget_ppl_ratio, a point per complete trial, the Pareto points ringed and joined;
    returns the plotted trials with an `is_pareto` column (None when no trial measured forgetting)."""
    col, ratio = f"metrics.{metric}", "metrics.forget_ppl_ratio"
    if col not in trials or ratio not in trials:
        return None
    pts = trials[trials[col].notna() & trials[ratio].notna()].copy()
    if pts.empty:
        return None
    pts["is_pareto"] = pareto(pts[col], pts[ratio], mode)
    fig = _figure(6, 4.2)
    ax = fig.add_subplot()
    by_weights = "weights" in pts and pts["weights"].notna().all()
    groups = pts.groupby("weights", sort=True) if by_weights else [("trials", pts)]
    for n, (label, rows) in enumerate(groups):
        ax.scatter(rows[ratio], rows[col], color=f"C{n % 10}", alpha=0.75, label=label)
    front = pts[pts["is_pareto"]].sort_values(ratio)
    ax.plot(front[ratio], front[col], color="black", lw=1, ls="--")
    ax.scatter(front[ratio], front[col], s=140, facecolors="none", edgecolors="black", label="Pareto")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")  # ratio 1: general text as well predicted as before training
    if pts[ratio].max() > 10 * pts[ratio].min():  # one run that wrecked general text would squash the rest
        ax.set_xscale("log")
    ax.set_xlabel("forget_ppl_ratio (general-text perplexity after / before; lower forgets less)")
    ax.set_ylabel(metric)
    ax.set_title(f"learns vs forgets ({len(pts)} trials, {int(pts['is_pareto'].sum())} on the Pareto front)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return pts


def lr_curves(pts: pd.DataFrame, stats: pd.DataFrame, ylabel: str, path: Path) -> Path | None:
    """Each arm's metric against learning rate: its LR-search trials (x: pruned, at the last value it reported),
    and at its best LR the mean ± std over seeds."""
    if pts.empty:
        return None
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for n, arm in enumerate(stats["arm"]):
        colour = f"C{n % 10}"
        rows = pts[pts["arm"] == arm]
        done, pruned = rows[rows["state"] == "COMPLETE"], rows[rows["state"] == "PRUNED"]
        ax.plot(done["lr"], done["value"], color=colour, marker="o", ms=4, lw=1, label=arm)
        ax.scatter(pruned["lr"], pruned["value"], color=colour, marker="x", s=40)
        best = stats[stats["arm"] == arm].iloc[0]
        if best["n"] > 0:
            yerr = 0 if np.isnan(best["std"]) else best["std"]
            ax.errorbar([best["best_lr"]], [best["mean"]], yerr=[yerr], color=colour, marker="*", ms=11, capsize=4)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(ylabel)
    ax.set_title("each arm's LR search (x: pruned); star: best LR, mean ± std over seeds")
    ax.legend(fontsize=7)
    return _save(fig, path)
