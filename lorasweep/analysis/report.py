"""Report: `lorasweep report SWEEP` reads a sweep from MLflow and writes reports/<sweep id>/ (README with tables,
verdicts and figures; Markdown, LaTeX, CSV, PNG), then logs the same files on the sweep's parent run."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from lorasweep import sweepdir
from lorasweep.analysis import arms, figures, paper, runs, subspace, tables, verdicts
from lorasweep.errors import ConfigError

USAGE = (
    "usage: lorasweep report SWEEP [--out DIR] [--no-log]   (SWEEP: sweep id, sweep name or parent run id)\n"
    "       lorasweep report --rejudge DIR...   (a saved compare report's verdicts, again, from its own tables)"
)
OWNED = (".md", ".tex", ".csv", ".png")  # what a report writes; cleared first, so no stale figure survives
STATES = ("COMPLETE", "REUSED", "PRUNED", "SKIPPED", "FAILED", "KILLED")
ARTIFACT_DIR = "report"


def cli(argv: list[str]) -> int:
    """Entry point for `lorasweep report` / `make report SWEEP=...`; a bad SWEEP raises ConfigError."""
    ref, out, log = None, Path("reports"), True
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            print(USAGE)
            return 0
        if a == "--no-log":
            log = False
        elif a == "--out":
            out = Path(next(it, "reports"))
        elif a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
        elif ref is None:
            ref = a.split("=", 1)[1] if a.lower().startswith("sweep=") else a
        else:
            raise ConfigError("SWEEP", " ".join(argv), "one sweep id, sweep name or parent run id")
    if not ref:
        raise ConfigError("SWEEP", ref, "a sweep id, sweep name or parent run id: lorasweep report SWEEP")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per adapter is noise here
    path, sweep = build(ref, out, log=log)
    print(f"report: {path / 'README.md'}")
    if log:
        print(f"logged under {ARTIFACT_DIR}/ of MLflow run {sweep.parent_run_id} ({sweep.uri})")
    return 0


def build(ref: str, root: Path = Path("reports"), log: bool = True) -> tuple[Path, runs.Sweep]:
    """Write the report of the sweep `ref` names; returns its directory and the sweep."""
    sweep = runs.find_sweep(ref)
    trials = runs.load_trials(sweep)
    out = root / sweep.sweep_id
    _clear(out)
    metric = sweep.metric
    col = f"metrics.{metric}"
    complete = trials[(trials["state"] == "COMPLETE") & (trials[col].notna() if col in trials else False)].copy()
    scale, unit = runs.metric_unit(metric, complete[col] if col in complete else pd.Series(dtype=float))
    complete["value"] = complete[col] * scale if col in complete else np.nan
    dims = runs.swept_keys(trials)
    ylabel = tables.ours_column(metric, unit).removeprefix("ours: ")

    md = _header(sweep, trials, dims, unit)
    found: list[dict] = []
    shape = paper_shape(complete, dims)
    if shape:
        stats = verdicts.with_plateau(
            tables.group_stats(complete, ["weights", "r"], "value"),
            complete,
            ["weights", "r"],
            unit,
            scale,
            lambda row: f"{row['weights']} r={int(row['r'])}",
        )
        md += _paper_tables(shape, stats, complete, metric, unit, out)
        found += (
            verdicts.table5_verdicts(stats, unit, sweep.mode)
            if shape == "table5"
            else verdicts.table6_verdicts(stats, unit, sweep.mode)
        )
        found += verdicts.spectra_verdicts(complete)
        md += _rank_figures(shape, stats, complete, sweep, ylabel, out)
    if arms.is_compare(trials):
        compare_md, compare_found = _compare(sweep, trials, metric, scale, unit, ylabel, out)
        md += compare_md
        found += compare_found
    with tempfile.TemporaryDirectory(prefix="lorasweep-report-") as tmp:
        phi, sub_md = _subspace(complete, dims, sweep, out, Path(tmp))
    md += sub_md
    found += verdicts.subspace_verdicts(phi) if len(phi) else []
    md = (
        md[:2] + verdict_section(found, unit, out, cites_paper=bool(shape) or len(phi) > 0) + md[2:]
    )  # after the title and the sweep's facts
    md += _generic(sweep, trials, complete, dims, metric, unit, out)
    (out / "README.md").write_text("\n\n".join(md) + "\n")
    if log:
        mlflow.MlflowClient(sweep.uri).log_artifacts(sweep.parent_run_id, str(out), artifact_path=ARTIFACT_DIR)
    return out, sweep


def paper_shape(complete: pd.DataFrame, dims: list[str]) -> str | None:
    """'table6' when r varies within a weight set, 'table5' when weight sets vary at one r each; None when other
    fields vary too (then a cell would mix configs) or the trials have no targets/rank."""
    if complete.empty or "weights" not in complete or "r" not in complete:
        return None
    if set(dims) - {"adapter.targets", "adapter.r", "adapter.alpha"}:
        return None
    if (
        "params.adapter.alpha" in complete
        and complete.groupby(["weights", "r"])["params.adapter.alpha"].nunique().max() > 1
    ):
        return None  # alpha searched on its own, not a function of r
    if (complete.groupby("weights")["r"].nunique() > 1).any():
        return "table6"
    return "table5" if complete["weights"].nunique() > 1 else None


# ------------------------------------------------------------------------------------------ sections


def _header(sweep: runs.Sweep, trials: pd.DataFrame, dims: list[str], unit: str) -> list[str]:
    p = sweep.params
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    states = ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in STATES if counts.get(s)) or "no trials"
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique()) if "seed" in trials else []
    lines = [
        f"# Report: {sweep.sweep_id}",
        "\n".join(
            [
                f"- sweep `{sweep.name}`: {p.get('sweep.description', '')}".rstrip(": "),
                f"- MLflow parent run `{sweep.parent_run_id}` in `{sweep.uri}`; "
                f"these files are its `{ARTIFACT_DIR}/` artifacts",
                f"- model `{p.get('model.name', '?')}`, data `{p.get('data.name', '?')}`; objective `{sweep.metric}` "
                f"({sweep.mode}){' in %' if unit == '%' else ''}",
                f"- trials: {len(trials)} ({states}); swept: {', '.join(f'`{d}`' for d in dims) or 'nothing'}; "
                f"seeds: {seeds or '–'}",
                _provenance(sweep, trials),
                "- statistics use COMPLETE trials only: mean ± sample std (ddof=1) over seeds, and n",
                f"- regenerate: `lorasweep report {sweep.sweep_id}`",
            ]
        ),
    ]
    return lines


def _provenance(sweep: runs.Sweep, trials: pd.DataFrame) -> str:
    """Where and when the sweep ran, from its parent run: device (its trials say it: the driver imports no torch),
    versions, commit, start and wall time."""
    t = dict(sweep.tags)
    if "device" not in t and "tags.device" in trials and trials["tags.device"].notna().any():
        t["device"] = trials["tags.device"].dropna().iloc[0]
    start = datetime.fromtimestamp(sweep.start_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    wall = (
        f"wall {(sweep.end_ms - sweep.start_ms) / 60000:.1f} min ({sweep.status})"
        if sweep.end_ms
        else f"still {sweep.status}"
    )
    versions = ", ".join(f"{k} {t[f'{k}_version']}" for k in ("torch", "peft", "transformers") if f"{k}_version" in t)
    command = f"`{t['command']}` " if "command" in t else ""
    commit = t.get("git_commit", "?")
    commit = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    return (
        f"- ran {command}on {t.get('device', '?')} ({versions}), lorasweep commit `{commit}`; started {start}, {wall}"
    )


def _paper_tables(
    shape: str, stats: pd.DataFrame, complete: pd.DataFrame, metric: str, unit: str, out: Path
) -> list[str]:
    cite = f"Reference columns are the paper's: {paper.CITATION}"
    if shape == "table5":
        n_params = (
            complete.groupby("weights")["metrics.trainable_params"].mean().to_dict()
            if "metrics.trainable_params" in complete
            else {}
        )
        numeric, shown = tables.table5(stats, n_params, metric, unit)
        caption = (
            f"Table 5 layout (transposed): weight types at an equal adapter budget. {cite}, Table 5 "
            f"({paper.MODEL}, validation accuracy %, 18M trainable parameters)."
        )
        tables.write(numeric, shown, out / "table5", caption)
        return [
            "## Table 5: which weight matrices, at an equal budget",
            f"{caption} Files: [md](table5.md), [tex](table5.tex), [csv](table5.csv).",
            tables.to_markdown(shown),
        ]
    numeric, shown, grid = tables.table6(stats, metric, unit)
    caption = f"Table 6: validation metric against rank r. {cite}, Table 6 ({paper.MODEL}, validation accuracy %)."
    tables.write(numeric, shown, out / "table6", caption)
    tables.write(grid, grid, out / "table6_grid", caption + " Paper's layout: a block of rows per source.")
    return [
        "## Table 6: which rank",
        f"{caption} Files: [md](table6.md), [tex](table6.tex), [csv](table6.csv); the paper's layout: "
        f"[md](table6_grid.md), [tex](table6_grid.tex), [csv](table6_grid.csv).",
        tables.to_markdown(grid),
        tables.to_markdown(shown),
    ]


def _rank_figures(
    shape: str, stats: pd.DataFrame, complete: pd.DataFrame, sweep: runs.Sweep, ylabel: str, out: Path
) -> list[str]:
    md = ["## Figures"]
    if shape == "table6":
        figures.metric_vs_rank(stats, ylabel, out / "metric_vs_rank.png")
        md.append(
            "Metric against rank, mean ± std over seeds, per set of adapted weights:\n\n"
            "![metric against rank](metric_vs_rank.png)"
        )
    erank = _effective_rank_table(complete, out)
    if figures.rank_vs_nominal(complete, out / "effective_rank.png"):
        md.append(
            "Rank of the learned update ΔW against its nominal rank r, per module type (mean over layers, "
            "then mean ± std over seeds); the dotted diagonal is full use of r. "
            "Files: [md](effective_rank.md), [tex](effective_rank.tex), [csv](effective_rank.csv).\n\n"
            "![effective rank](effective_rank.png)\n\n" + erank
        )
    if figures.spectra(_spectra_rows(complete, sweep), out / "spectra.png"):
        md.append(
            "Normalised singular values σᵢ/σ₁ of ΔW (mean over layers and seeds), per module type and r:\n\n"
            "![spectra](spectra.png)"
        )
    if figures.cost_vs_rank(complete, out / "cost.png"):
        md.append("Peak memory and trainable parameters:\n\n![cost](cost.png)")
    return md


def _compare(
    sweep: runs.Sweep, trials: pd.DataFrame, metric: str, scale: float, unit: str, ylabel: str, out: Path
) -> tuple[list[str], list[dict]]:
    """The LR-first comparison: each arm's LR curve, best LR and metric there over seeds, and its verdicts."""
    raw = sweep.params.get("sweep.compare.tolerance")
    tol = float(raw) if raw not in (None, "None", "null", "") else None
    stats = arms.arm_stats(trials, metric, scale, unit, sweep.mode, tol)
    pts = arms.points(trials, metric, scale)
    shown = pd.DataFrame(
        {
            "arm": stats["arm"],
            "best lr": [
                f"{x:.3g}" + (f" ({e}est searched)" if isinstance(e, str) else "")
                for x, e in zip(stats["best_lr"], stats.get("edge", [None] * len(stats)))
            ],
            tables.ours_column(metric, unit).removeprefix("ours: ") + " at best lr": [
                tables.fmt_ms(m, s, unit) if n else "–" for m, s, n in zip(stats["mean"], stats["std"], stats["n"])
            ],
            "seeds": stats["n"],
            "near-best lr": [
                f"{a:.3g}–{b:.3g}" if n else "–"
                for a, b, n in zip(stats.get("lr_low", stats["n"]), stats.get("lr_high", stats["n"]), stats["n"])
            ],
            "LR trials (complete/pruned/failed)": [
                f"{c}/{p}/{f}" for c, p, f in zip(stats["complete"], stats["pruned"], stats["failed"])
            ],
        }
    )
    tables.write(stats, shown, out / "arms", f"Each arm at its own best learning rate ({metric}).")
    md = [
        "## Arms at their own best learning rate",
        "Every arm had the same budget of its own LR search (at the first seed), then more seeds at its best LR "
        "(its best COMPLETE LR-search trial); a best LR that is the highest or lowest searched says so: the search did "
        "not bracket that arm's optimum. Near-best lr: the LRs whose value is within tolerance of the arm's best. "
        "Files: [md](arms.md), [tex](arms.tex), [csv](arms.csv).",
        tables.to_markdown(shown),
    ]
    if figures.lr_curves(pts, stats, ylabel, out / "lr_curves.png"):
        md.append("![learning-rate curves](lr_curves.png)")
    return md, arms.verdicts_of(stats, unit, sweep.mode, tol)


def _effective_rank_table(complete: pd.DataFrame, out: Path) -> str:
    """Energy rank at 95 % per module type (rows) and r (columns), mean ± std over seeds."""
    cols = sorted(c for c in complete.columns if c.startswith("metrics.energy_rank95_") and c.endswith("_mean"))
    numeric, shown = [], []
    for c in cols:
        mtype = (
            "all"
            if c == "metrics.energy_rank95_mean"
            else c.removeprefix("metrics.energy_rank95_").removesuffix("_mean")
        )
        for (w, r), rows in complete.groupby(["weights", "r"], sort=True):
            vals = rows[c].dropna()
            if vals.empty:
                continue
            std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            numeric.append(
                {
                    "module type": mtype,
                    "weight type": w,
                    "r": int(r),
                    "energy_rank95 mean": vals.mean(),
                    "std": std,
                    "n": len(vals),
                    "fraction of r": vals.mean() / int(r),
                }
            )
            shown.append(
                {
                    "module type": mtype,
                    "weight type": w,
                    "r": int(r),
                    "energy rank 95 %": tables.pm(vals.mean(), std, 2),
                    "n": len(vals),
                    "k / r": f"{vals.mean() / int(r):.2f}",
                }
            )
    if not numeric:
        return ""
    tables.write(
        pd.DataFrame(numeric),
        pd.DataFrame(shown),
        out / "effective_rank",
        "Effective rank at 95 % energy of ΔW (k of nominal r), per module type, mean ± std over seeds.",
    )
    return tables.to_markdown(pd.DataFrame(shown))


def _spectra_rows(complete: pd.DataFrame, sweep: runs.Sweep) -> list[dict]:
    rows = []
    for _, run in complete.iterrows():
        try:
            data = mlflow.artifacts.load_dict(f"{run['artifact_uri']}/spectra/spectra.json")
        except Exception:  # a trial with tracking.spectra=false, or an unreadable artifact: no spectrum
            continue
        rows += [{"r": int(run["r"]), "module_type": m["module_type"], "sv": m["sv"]} for m in data if m.get("sv")]
    return rows


def _subspace(
    complete: pd.DataFrame, dims: list[str], sweep: runs.Sweep, out: Path, tmp: Path
) -> tuple[pd.DataFrame, list[str]]:
    """φ heatmaps for r_lo vs r_hi of the same config and seed (Fig. 3) and for two seeds at r_hi (Fig. 4)."""
    empty = pd.DataFrame(columns=["figure", "pair", "module", "layer", "module_type", "k", "r_a", "r_b", "phi11"])
    if complete.empty or "r" not in complete or "seed" not in complete:
        return empty, []
    config = [
        "weights" if d == "adapter.targets" else f"params.{d}" for d in dims if d not in ("adapter.r", "adapter.alpha")
    ]
    config = [c for c in config if c in complete]  # helper dimensions are not config params
    groups = list(complete.groupby(config, sort=True, dropna=False)) if config else [((), complete)]
    # the paper's Fig. 3/4 use the Wq+Wv adapter; else the config that adapts the most module types
    _, group = max(
        groups,
        key=lambda kv: (
            kv[1].get("weights", pd.Series([""])).iloc[0] == "Wq+Wv",
            len(kv[1].get("weights", pd.Series([""])).iloc[0].split("+")),
            len(kv[1]),
        ),
    )
    ranks = sorted(int(r) for r in group["r"].dropna().unique())
    if not ranks:
        return empty, []
    r_hi = ranks[-1]
    r_lo = 8 if 8 in ranks and 8 < r_hi else (ranks[0] if ranks[0] < r_hi else None)
    by = {(int(r), int(s)): rid for r, s, rid in zip(group["r"], group["seed"], group["run_id"]) if pd.notna(s)}
    cache: dict[str, dict] = {}

    def adapter(rid: str) -> dict | None:
        if rid not in cache:
            try:
                cache[rid] = subspace.load_lora_a(rid, sweep.uri, tmp)
            except FileNotFoundError:
                cache[rid] = None
        return cache[rid]

    plans = []
    if r_lo is not None:
        pairs = [
            (by[r_lo, s], by[r_hi, s], f"seed {s}")
            for s in sorted({s for _, s in by})
            if (r_lo, s) in by and (r_hi, s) in by
        ]
        plans.append(
            (
                "fig3",
                r_lo,
                r_hi,
                pairs,
                f"φ(A_r={r_lo}, A_r={r_hi}, i, j), same config and seed (paper Fig. 3), mean over {len(pairs)} seed(s)",
            )
        )
    seeds = sorted(s for r, s in by if r == r_hi)[:3]
    pairs4 = [(by[r_hi, a], by[r_hi, b], f"seeds {a} vs {b}") for a, b in itertools.combinations(seeds, 2)]
    plans.append(
        (
            "fig4",
            r_hi,
            r_hi,
            pairs4,
            f"φ(A_r={r_hi} seed a, A_r={r_hi} seed b, i, j) (paper Fig. 4), mean over {len(pairs4)} seed pair(s)",
        )
    )
    label = group["weights"].iloc[0] if "weights" in group else "the config"
    md, rows = [], []
    for fig_name, ra, rb, pairs, title in plans:
        grids: dict[tuple, list] = {}
        for a_id, b_id, pair in pairs:
            a, b = adapter(a_id), adapter(b_id)
            if not a or not b:
                continue
            for m in subspace.compare(a, b):
                grids.setdefault((m["module_type"], m["layer"], m["module"]), []).append(m["phi"])
                rows.append(
                    {
                        "figure": fig_name,
                        "pair": pair,
                        "module": m["module"],
                        "layer": m["layer"],
                        "module_type": m["module_type"],
                        "k": m["k"],
                        "r_a": ra,
                        "r_b": rb,
                        "phi11": float(m["phi"][0, 0]),
                        "phi_diag_mean": float(np.mean(np.diag(m["phi"]))),
                    }
                )
        heat = [{"module_type": t, "layer": layer, "phi": np.mean(g, axis=0)} for (t, layer, _), g in grids.items()]
        if figures.phi_heatmaps(heat, f"{label}: {title}", out / f"subspace_{fig_name}.png"):
            md.append(
                f"{title}, adapter {label}, per module type (rows) and layer (columns):\n\n"
                f"![subspace {fig_name}](subspace_{fig_name}.png)"
            )
    if not rows:
        return empty, [
            "## Subspace similarity",
            "_No pair of saved adapters to compare (needs trials with "
            "tracking.save_adapter=true: two ranks, or two seeds at one rank)._",
        ]
    phi = pd.DataFrame(rows)
    phi.to_csv(out / "subspace.csv", index=False)
    summary = (
        phi.groupby(["figure", "module_type"])
        .agg(
            modules=("phi11", "size"),
            phi11_median=("phi11", "median"),
            phi11_min=("phi11", "min"),
            phi11_max=("phi11", "max"),
            phi_diag_mean=("phi_diag_mean", "mean"),
        )
        .reset_index()
    )
    tables.write(
        summary.round(4),
        summary.round(3),
        out / "subspace_summary",
        "Subspace similarity φ(1,1) and the mean of φ(i,i), per figure and module type.",
    )
    head = [
        "## Subspace similarity (paper §7.2, Eq. 4)",
        "φ(A₁, A₂, i, j) = ‖U₁ᵢᵀU₂ⱼ‖²_F / min(i, j) over the right-singular vectors of the saved A matrices "
        "(loaded with PEFT's `load_peft_weights`). 1: one top subspace contains the other; 0: orthogonal. "
        "Per-module values: [subspace.csv](subspace.csv).",
        tables.to_markdown(summary.round(3)),
    ]
    return phi, head + md


def verdict_section(found: list[dict], unit: str, out: Path, cites_paper: bool) -> list[str]:
    """Writes out/verdicts.{csv,md,tex}; returns the README's verdict section: its heading, the counts and the rules
    of the claims present (an LR-first comparison's, the paper's, or both), and the table."""
    if not found:
        return []
    df = pd.DataFrame(found)
    tables.write(df, df, out / "verdicts", "The claims tested on this sweep.")
    n = {w: int(df["verdict"].str.startswith(w).sum()) for w in ("agree", "disagree", "undecided")}
    counts = ", ".join(f"{k} {w}" for w, k in n.items()) + f", {len(df) - sum(n.values())} not testable."
    plateau = (
        "A verdict names the groups it rests on that had not plateaued: their objective still gained more in the "
        "last eval interval (`last_eval_gain`, mean over seeds) than the noise between seeds (their std, at least "
        "the tolerance floor)."
    )
    files = "Files: [md](verdicts.md), [tex](verdicts.tex), [csv](verdicts.csv)."
    compares = bool(df["paper"].isin(arms.PAPERS.values()).any())  # an LR-first comparison's claims name their sources
    rules = []
    if compares:
        rules.append(
            "An arm ties with the best arm when the 95 % Welch interval over their seeds (at each one's best LR) of "
            "the gap between them lies wholly inside ±band; disagree when it lies wholly outside, undecided when it "
            "straddles an end, with the seeds per arm that would decide it at the spread seen (docs/statistics.md). "
            "The band is sweep.compare.tolerance when set, else the floor: 1 pt for metrics in %, 1 % of the larger "
            "|mean| otherwise. The arms tie when every arm does, and do not when any does not. The best LR is the "
            "same across ranks when one LR lies in every rank's near-best range (LRs within the band of the rank's "
            "best, from the single-seed LR search). Best LoRA LR / best FullFT LR agrees with 10× within a "
            f"factor of {arms.FULL_FACTOR:g}."
        )
    if cites_paper:
        rules.append(
            "A claim about two cells allows a range of differences, with a margin of 1 pt for metrics in % (else 1 % "
            "of the larger |mean|): 'within' is ±margin, 'better' is > margin. The difference's 95 % interval is "
            "Welch's over the cells' seeds: agree when the whole interval lies in the range, disagree when none of it "
            "does, undecided when it straddles an end, with the seeds per cell that would decide it at the spread seen "
            "(docs/statistics.md). A set's sufficient r is its smallest r within max(margin, se) of the set's best "
            "mean, se = √(s_a²/n_a + s_b²/n_b). Effective-rank claims: "
            f"agree when k/r ≤ {verdicts.LOW_RANK}. φ claims: Fig. 3 agrees when median φ(1,1) > "
            f"{verdicts.TOP_SHARED}, Fig. 4 when it exceeds 6.635/k, the 99th percentile of φ(1,1) for random "
            "directions in ℝᵏ."
        )
    text = " ".join([counts, *rules, plateau])
    if not cites_paper:
        return ["## Verdicts", f"{text} {files}", tables.to_markdown(df)]
    return [
        "## Verdicts" if compares else "## Verdicts on the paper's claims",
        f"{text} Paper: {paper.CITATION}; the paper's numbers are {paper.MODEL} on WikiSQL and MultiNLI, ours are "
        f"this sweep's model and data, so the verdicts compare the direction and size of effects, not accuracies. "
        f"{files}",
        tables.to_markdown(df),
    ]


def _generic(
    sweep: runs.Sweep, trials: pd.DataFrame, complete: pd.DataFrame, dims: list[str], metric: str, unit: str, out: Path
) -> list[str]:
    """For any sweep: summary per swept group, leaderboard, objective per dimension, importances, pruning."""
    md = []
    keys = [
        "weights"
        if d == "adapter.targets" and "weights" in complete
        else "r"
        if d == "adapter.r" and "r" in complete
        else f"params.{d}"
        for d in dims
    ]
    if len(complete):
        summary = tables.group_stats(complete.assign(all="all"), keys or ["all"], "value").drop(columns=["values"])
        summary["mean ± std"] = [tables.fmt_ms(m, s, unit) for m, s in zip(summary["mean"], summary["std"])]
        summary = summary.sort_values("mean", ascending=sweep.mode == "min")
        shown = summary.drop(columns=["mean", "std"]).rename(columns=lambda c: c.removeprefix("params."))
        tables.write(
            summary.rename(columns=lambda c: c.removeprefix("params.")),
            shown,
            out / "summary",
            f"{metric}{' (%)' if unit == '%' else ''} per swept group, mean ± std over seeds, best first.",
        )
        md += [
            "## Summary per swept group",
            "Files: [md](summary.md), [tex](summary.tex), [csv](summary.csv).",
            tables.to_markdown(shown),
        ]
    objectives = json.loads(sweep.tags.get("objectives", "{}")) or None
    board = tables.leaderboard(trials, dims, metric, sweep.mode, objectives)
    if objectives:
        md += _pareto_section(sweep, board, objectives, out)
    tables.write(board, board, out / "leaderboard", f"Trials by {metric} ({sweep.mode}), best first.")
    md += [
        "## Leaderboard",
        f"Top {min(10, len(board))} of {len(board)} (all states: [csv](leaderboard.csv)).",
        tables.to_markdown(board.head(10)),
    ]
    if figures.objective(trials, [*dims, *(["seed"] if "seed" in trials else [])], metric, out / "objective.png"):
        md += ["## Objective against each swept dimension", "![objective](objective.png)"]
    md += _learns_vs_forgets(complete, dims, metric, sweep.mode, out)
    md += _after_training(complete, dims, metric, sweep.mode, out)
    md += _optuna_sections(sweep, metric, out)
    md += ["## Pruning and failures", _pruning(sweep, trials, metric)]
    return md


def _pareto_section(sweep: runs.Sweep, board: pd.DataFrame, objectives: dict[str, str], out: Path) -> list[str]:
    """A multi-objective sweep's Pareto front: the finished trials no other beats on every objective."""
    front = board[board["pareto"]].drop(columns=["pareto"]).reset_index(drop=True)
    aims = ", ".join(f"{m} ({mode})" for m, mode in objectives.items())
    tables.write(front, front, out / "pareto", f"The Pareto front over {aims}.")
    md = [
        "## Pareto front",
        f"Objectives: {aims}. {len(front)} of {int(board['state'].isin(['COMPLETE', 'REUSED']).sum())} finished "
        "trials are on the front: no other trial is at least as good on every objective and better on one "
        "(the leaderboard's `pareto` column). Files: [md](pareto.md), [tex](pareto.tex), [csv](pareto.csv).",
        tables.to_markdown(front),
    ]
    study, note = sweepdir.study(sweep.sweep_id)
    drawn = figures.pareto_front(study, out / "pareto_front.png") if study is not None else note
    md.append("![Pareto front](pareto_front.png)" if isinstance(drawn, Path) else f"_Not drawn: {drawn}_")
    return md


def _learns_vs_forgets(complete: pd.DataFrame, dims: list[str], metric: str, mode: str, out: Path) -> list[str]:
    """The task metric against forget_ppl_ratio (trials run with tracking.forgetting=true), Pareto points marked."""
    pts = figures.learns_vs_forgets(complete, metric, mode, out / "learns_vs_forgets.png")
    if pts is None:
        return []
    cols = {
        f"metrics.{metric}": metric,
        "metrics.forget_ppl_ratio": "forget_ppl_ratio",
        "metrics.forget_ppl_before": "ppl before",
        "metrics.forget_ppl_after": "ppl after",
        **{f"params.{d}": d for d in dims},
        "is_pareto": "Pareto",
        "run_id": "run_id",
    }
    table = pts[[c for c in cols if c in pts]].rename(columns=cols).sort_values("forget_ppl_ratio")
    tables.write(table, table, out / "learns_vs_forgets", f"{metric} against forget_ppl_ratio per complete trial.")
    return [
        "## Learns vs forgets",
        (
            f"{metric} against general-text perplexity after / before training (tracking.forgetting); ringed: the "
            f"Pareto front ({int(pts['is_pareto'].sum())} of {len(pts)} trials), where no trial learns more and "
            "forgets less. Files: [md](learns_vs_forgets.md), [csv](learns_vs_forgets.csv)."
        ),
        "![learns vs forgets](learns_vs_forgets.png)",
        tables.to_markdown(table.head(20)),
    ]


AFTER_COLUMNS = (
    "adapter_size_mb",
    "adapter_max_rank",
    "serving_rank_ok",
    "merge_max_abs_logit_diff",
    "merge_metric_delta",
    "merge_requant_max_abs_logit_diff",
    "merge_requant_metric_delta",
)


def _after_training(complete: pd.DataFrame, dims: list[str], metric: str, mode: str, out: Path) -> list[str]:
    """Size, serving rank and merge check per complete trial (lorasweep/after.py), best objective first."""
    cols = [
        f"metrics.{c}" for c in AFTER_COLUMNS if f"metrics.{c}" in complete and complete[f"metrics.{c}"].notna().any()
    ]
    if not cols:
        return []
    keep = {f"params.{d}": d for d in dims if f"params.{d}" in complete}
    table = complete[[*keep, f"metrics.{metric}", *cols, "run_id"]].rename(columns=lambda c: c.removeprefix("metrics."))
    table = table.rename(columns=keep).sort_values(metric, ascending=mode == "min").reset_index(drop=True)
    tables.write(table, table, out / "after_training", "Adapter size, serving rank and merge check per complete trial.")
    return [
        "## After training: size, serving rank, merge check",
        (
            "Per complete trial, best first (`docs/after.md`): the saved adapter in MiB, its largest rank against "
            "tracking.max_serving_rank, and, where tracking.merge_check was on, the largest logit difference and "
            "the metric difference of the merged model against the unmerged one on the eval rows. Files: "
            "[md](after_training.md), [csv](after_training.csv)."
        ),
        tables.to_markdown(table.head(20)),
    ]


def _optuna_sections(sweep: runs.Sweep, metric: str, out: Path) -> list[str]:
    """Optuna's learning curves, parallel coordinates and importances, over the dimensions that varied (a fixed
    seed, say, is left out), with the importances as a table too."""
    from optuna.trial import TrialState

    study, note = sweepdir.study(sweep.sweep_id)
    if study is None:
        return ["## Optuna's views of the study", note]
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    names = sorted({p for t in finished for p in t.params})
    params = [p for p in names if len({json.dumps(t.params.get(p)) for t in finished}) > 1]
    views, importances = figures.optuna_views(study, params, metric, out)
    n = sum(t.state == TrialState.COMPLETE for t in finished)
    fixed = sorted(set(names) - set(params))
    md = [
        "## Optuna's views of the study",
        f"From the Optuna study `{sweep.sweep_id}` ({n} complete, {len(finished) - n} pruned trials), over the "
        f"dimensions that varied: {', '.join(params) or 'none'}"
        + (f" (left out, one value only: {', '.join(fixed)})." if fixed else "."),
    ]
    titles = {
        "learning_curves": (
            "Learning curves",
            f"{metric} at each eval: the values the pruner judged; x marks where a pruned trial stopped.",
        ),
        "parallel_coordinates": ("Parallel coordinates", "Each trial's values, coloured by its objective."),
        "importances": (
            "Parameter importances",
            "fANOVA, seeded. Seed importance is the share of the objective's variance that is noise between seeds.",
        ),
    }
    for name, (heading, text) in titles.items():
        v = views[name]
        md += [f"### {heading}", text, f"![{name}]({name}.png)" if isinstance(v, Path) else f"_Not drawn: {v}_"]
        if name == "importances" and importances:
            df = pd.DataFrame(
                {"parameter": list(importances), "importance": [round(x, 4) for x in importances.values()]}
            )
            tables.write(df, df, out / "importances", "Optuna parameter importances.")
            md.append(tables.to_markdown(df))
    return md


def _pruning(sweep: runs.Sweep, trials: pd.DataFrame, metric: str) -> str:
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    total = max(1, len(trials))
    df = pd.DataFrame(
        [
            {"state": s, "trials": int(counts.get(s, 0)), "share": f"{100 * counts.get(s, 0) / total:.0f} %"}
            for s in [*STATES, *sorted(set(counts) - set(STATES))]
        ]
    )
    lines = [tables.to_markdown(df)]
    pruned = trials[trials["state"] == "PRUNED"]
    if len(pruned):
        client = mlflow.MlflowClient(sweep.uri)
        stopped = [max((m.step for m in client.get_metric_history(rid, metric)), default=0) for rid in pruned["run_id"]]
        max_steps = pd.to_numeric(pruned.get("params.train.max_steps"), errors="coerce").fillna(0)
        budget = float(max_steps.sum())
        ran = float(sum(stopped))
        saved = (
            f", saving {budget - ran:.0f} of their {budget:.0f} steps ({100 * (1 - ran / budget):.0f} %)"
            if budget
            else ""
        )
        lines.append(
            f"Pruned trials stopped at step {np.median(stopped):.0f} (median; {min(stopped)}–{max(stopped)}){saved}."
        )
    for state, tag, title in (
        ("SKIPPED", "skip_reason", "Skipped before training"),
        ("FAILED", "failure_reason", "Failures"),
    ):
        rows = trials[trials["state"] == state]
        if len(rows) and f"tags.{tag}" in rows:
            reasons = rows[f"tags.{tag}"].fillna("unknown").str.slice(0, 160).value_counts()
            lines.append(f"{title}:\n\n" + "\n".join(f"- {n} × {r}" for r, n in reasons.items()))
    return "\n\n".join(lines)


def _clear(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if f.is_file() and f.suffix in OWNED:
            f.unlink()
