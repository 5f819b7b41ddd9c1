"""LR-first comparisons (sweep.compare): each arm's learning-rate curve, its best LR and the metric there over seeds,
and the verdicts: do the arms tie once each has its own LR, is the best LR the same across ranks, and how the best
LoRA LR relates to full fine-tuning's."""

from __future__ import annotations

import math

import pandas as pd

from lorasweep.analysis import verdicts
from lorasweep.analysis.tables import fmt_ms
from lorasweep.variants import BASELINE, LORA

ARM, PHASE = "tags.compare_arm", "tags.compare_phase"
LR = "params.train.lr"
PAPERS = {
    "tie": "Learning Rate Matters (arXiv 2602.04998): nine LoRA variants land within 1–2 % of one another once "
    "the learning rate is tuned for each",
    "rank": "LoRA Without Regret (Thinking Machines, 2025): the best LoRA LR is nearly the same across ranks",
    "fullft": "LoRA Without Regret (Thinking Machines, 2025): the best LoRA LR is about 10× full fine-tuning's",
}
TIE = "the arms tie within tolerance once LR is tuned"
FULL_RATIO, FULL_FACTOR = 10.0, 3.0  # agree when best LoRA LR / best FullFT LR is within a factor of 3 of 10


def is_compare(trials: pd.DataFrame) -> bool:
    return ARM in trials and trials[ARM].notna().any()


def points(trials: pd.DataFrame, metric: str, scale: float) -> pd.DataFrame:
    """Every LR-search trial that has a value: arm, lr, value (in the report's unit), state (a PRUNED trial's value
    is the last it reported, the one the pruner judged), seed."""
    col = f"metrics.{metric}"
    rows = trials[(trials[ARM].notna()) & (trials[PHASE] == "lr") & trials["state"].isin(["COMPLETE", "PRUNED"])]
    rows = rows[rows[col].notna()] if col in rows else rows.iloc[0:0]
    return pd.DataFrame(
        {
            "arm": rows[ARM],
            "lr": pd.to_numeric(rows[LR], errors="coerce"),
            "value": rows[col] * scale if col in rows else [],
            "state": rows["state"],
            "run_id": rows["run_id"],
        }
    ).sort_values(["arm", "lr"])


def arm_stats(trials: pd.DataFrame, metric: str, scale: float, unit: str, mode: str, tol: float | None) -> pd.DataFrame:
    """One row per arm, in plan order: its best LR (of its COMPLETE LR-search trials), the metric at that LR over
    every seed (mean, std, n and the seeds' values), the LRs whose value is within tolerance of its best
    (lr_low..lr_high), the LR trials by state, whether the trials at the best LR had plateaued, and whether the best
    LR is an end of the search."""
    sign = 1.0 if mode == "max" else -1.0
    col = f"metrics.{metric}"
    pts = points(trials, metric, scale)
    out = []
    planned = trials[trials[ARM].notna()].sort_values("tags.optuna_trial", key=lambda n: pd.to_numeric(n))
    for arm in planned[ARM].unique():  # plan order: the arms' first trials ran in the order the sweep lists them
        mine = trials[trials[ARM] == arm]
        search = mine[mine[PHASE] == "lr"]
        done = pts[(pts["arm"] == arm) & (pts["state"] == "COMPLETE")]
        row = {"arm": arm, "lr_trials": len(search), **_states(search)}
        if done.empty:
            out.append({**row, "best_lr": math.nan, "mean": math.nan, "std": math.nan, "n": 0, "values": ()})
            continue
        best = done.loc[(sign * done["value"]).idxmax()]
        lr = pd.to_numeric(mine[LR], errors="coerce")
        at = mine[(lr == best["lr"]) & (mine["state"] == "COMPLETE") & mine[col].notna()]
        values = at[col] * scale
        near_tol = tol if tol is not None else verdicts.floor(unit, best["value"])
        near = done[sign * (float(best["value"]) - done["value"]) <= near_tol]["lr"]
        gain = at["metrics.last_eval_gain"] * scale if "metrics.last_eval_gain" in at else pd.Series(dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        least = verdicts.floor(unit, values.mean())
        noise = least if math.isnan(std) else max(std, least)
        g = float(gain.mean()) if gain.notna().any() else math.nan
        out.append(
            {
                **row,
                "best_lr": float(best["lr"]),
                "mean": float(values.mean()),
                "std": std,
                "n": len(values),
                "values": tuple(float(v) for v in values),
                "lr_low": float(near.min()),
                "lr_high": float(near.max()),
                "gain": g,
                "noise": noise,
                "plateaued": None if math.isnan(g) else g <= noise,
                "edge": _edge(float(best["lr"]), pd.to_numeric(search[LR], errors="coerce").dropna()),
                "label": arm,
                **_fields(mine),
            }
        )
    return pd.DataFrame(out)


def _edges(groups) -> str:
    """Names the arms whose best LR is the end of their search: the search did not bracket their optimum, so a wider
    one may move their best LR and the metric there."""
    edges = [g for g in groups if isinstance(g.get("edge"), str)]
    if not edges:
        return ""
    return "; best LR at the end of the search, a wider one may do better: " + ", ".join(
        f"{g['label']} ({g['edge']}est lr {g['best_lr']:.3g})" for g in edges
    )


def _verdict(claim, paper, ours, diff, tol, agree, unit, how, groups) -> dict:
    return verdicts._row(claim, paper, ours, diff, tol, agree, unit, how + _edges(groups), groups)


def _states(search: pd.DataFrame) -> dict[str, int]:
    return {s.lower(): int((search["state"] == s).sum()) for s in ("COMPLETE", "PRUNED", "FAILED")}


def _edge(best: float, searched: pd.Series) -> str | None:
    """ "high" or "low" where the best LR is the highest or lowest the arm's search tried (of three or more)."""
    if searched.nunique() < 3:
        return None
    return "high" if best >= searched.max() else "low" if best <= searched.min() else None


def _fields(rows: pd.DataFrame) -> dict[str, str]:
    """The arm's variant and rank, as logged, for the rank and full fine-tuning verdicts."""
    first = rows.iloc[0]
    return {k: str(first.get(f"params.adapter.{k}")) for k in ("variant", "r")}


def band(a: pd.Series, b: pd.Series, unit: str, tol: float | None) -> float:
    """The tie band ±band: sweep.compare.tolerance, else the floor (the smallest difference a verdict calls real)."""
    return tol if tol is not None else verdicts.floor(unit, a["mean"], b["mean"])


def _ms(row: pd.Series, unit: str) -> str:
    return f"{fmt_ms(float(row['mean']), float(row['std']), unit)} (n={int(row['n'])}) at lr {row['best_lr']:.3g}"


def verdicts_of(stats: pd.DataFrame, unit: str, mode: str, tol: float | None) -> list[dict]:
    """The comparison's claims, computed from the arms' stats. A tie is judged on the seeds: each other arm's
    difference from the best arm (in the sweep's direction) must lie within ±band with its whole 95 % Welch
    interval (verdicts.judged); the arms tie when every pair agrees, do not when any disagrees."""
    sign = 1.0 if mode == "max" else -1.0
    ok = stats[stats["n"] > 0]
    u = " pts" if unit == "%" else ""
    floor = "1 pt" if unit == "%" else "1 % of the larger |mean|"
    source = "band from sweep.compare.tolerance" if tol is not None else f"band from the floor ({floor}), no tolerance"
    if len(ok) < 2:
        how = "needs two arms with a complete trial at their best LR"
        return [verdicts._row(TIE, PAPERS["tie"], "–", None, None, None, unit, how)]
    best = ok.loc[(sign * ok["mean"]).idxmax()]
    out, words, bands = [], {}, set()
    for _, arm in ok.iterrows():
        if arm["arm"] == best["arm"]:
            continue
        t = band(best, arm, unit, tol)
        v = verdicts.seed_verdict(best, arm, (-t, t), sign)
        words[arm["arm"]], bands = v, bands | {round(t, 3)}
        claim = f"{arm['arm']} ties with the best arm ({best['arm']}) at their own best LRs"
        ours = f"{_ms(arm, unit)} vs {_ms(best, unit)}"
        note = f"; {source}" + _edges((arm, best))
        out.append(verdicts.judged(claim, PAPERS["tie"], ours, best, arm, (-t, t), unit, sign, note))
    missing = stats[stats["n"] == 0]["arm"].tolist()
    by = {w: [a for a, v in words.items() if v.word == w] for w in verdicts.WORDS}
    bands = sorted(bands)
    shown = f"±{bands[0]:.2f}{u}" if len(bands) == 1 else f"±{bands[0]:.2f}–{bands[-1]:.2f}{u}"
    how = f"each other arm's 95 % Welch interval over seeds of its gap to the best vs {shown}, {source}: "
    if by["disagrees"]:
        word, how = "disagree", how + f"wholly outside for {', '.join(by['disagrees'])}"
    elif by["undecided"]:
        counts = [words[a].needed for a in by["undecided"]]
        blind = [a for a in by["undecided"] if math.isnan(words[a].diff.low)]  # one seed, or no spread: no interval
        spans = [a for a in by["undecided"] if a not in blind]
        parts = [f"straddles an end for {', '.join(spans)}"] if spans else []
        parts += [f"no interval for {', '.join(blind)} (one seed, or no spread between seeds)"] if blind else []
        word, how = "undecided", how + "; ".join(parts)
        if all(counts):
            how += f"; ~{max(counts)} seeds per arm would decide them all"
    else:
        word, how = "agree", how + "all wholly inside"
    out.insert(
        0,
        verdicts._row(
            TIE,
            PAPERS["tie"],
            f"best {best['arm']}; of {len(words)} others {len(by['agrees'])} tie with it, "
            f"{len(by['disagrees'])} do not, {len(by['undecided'])} undecided"
            + (f"; no complete trial: {', '.join(missing)}" if missing else ""),
            None,
            bands[0] if len(bands) == 1 else None,
            word,
            unit,
            how + _edges(tuple(r for _, r in ok.iterrows())),
            tuple(r for _, r in ok.iterrows()),
        ),
    )
    return out + _rank_verdicts(ok, unit) + _full_verdict(ok, unit)


def _rank_verdicts(ok: pd.DataFrame, unit: str) -> list[dict]:
    """Per set of arms that differ only in rank: one LR lies within the band of every rank's best (their near-best
    LR ranges overlap), or not. A rule on the LR search's single-seed trials, not an interval: the LRs other than the
    best ran one seed, so there is no spread per LR to judge by."""
    out = []
    # arms are labelled "adapter.variant=lora adapter.r=8": the same label without its rank is the same arm otherwise
    rest = ok["arm"].map(lambda a: " ".join(p for p in a.split() if not p.startswith("adapter.r=")) or "the arms")
    for name, rows in ok.groupby(rest, sort=False):
        if rows["r"].nunique() < 2:
            continue
        lo, hi = float(rows["lr_low"].max()), float(rows["lr_high"].min())
        shared = lo <= hi
        ours = "; ".join(
            f"r={r['r']}: best {r['best_lr']:.3g} (within tolerance {r['lr_low']:.3g}–{r['lr_high']:.3g})"
            for _, r in rows.iterrows()
        )
        how = (
            f"the near-best ranges share {lo:.3g}–{hi:.3g}"
            if shared
            else f"no LR is near-best for every rank ({lo:.3g} > {hi:.3g})"
        )
        out.append(
            _verdict(
                f"{name}: the best LR is the same across ranks",
                PAPERS["rank"],
                ours,
                math.log10(float(rows["best_lr"].max()) / float(rows["best_lr"].min())),
                None,
                shared,
                unit,
                how,
                tuple(r for _, r in rows.iterrows()),
            )
        )
    return out


def _full_verdict(ok: pd.DataFrame, unit: str) -> list[dict]:
    """With a full fine-tuning arm: k = best LoRA LR / best FullFT LR for each LoRA arm (a rule on the best LRs, which
    have no seeds of their own: the seeds ran at them)."""
    full = ok[ok["variant"] == BASELINE]
    lora = ok[ok["variant"] == LORA]
    if full.empty or lora.empty:
        return []
    f = full.iloc[0]
    out = []
    for _, arm in lora.iterrows():
        k = float(arm["best_lr"]) / float(f["best_lr"])
        lo, hi = FULL_RATIO / FULL_FACTOR, FULL_RATIO * FULL_FACTOR
        agree = lo <= k <= hi
        out.append(
            _verdict(
                f"{arm['arm']}: best LoRA LR / best FullFT LR = {k:.3g}",
                PAPERS["fullft"],
                f"LoRA {arm['best_lr']:.3g} vs FullFT {f['best_lr']:.3g}",
                k,
                None,
                agree,
                unit,
                f"k = {k:.3g} {'within' if agree else 'outside'} {lo:.3g}–{hi:.3g}",
                (arm, f),
            )
        )
    return out
