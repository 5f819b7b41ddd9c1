"""Verdicts: each of the paper's claims tested on our data, with the difference and the measured noise.

A claim about two groups (cells of the sweep) is the range of differences a - b it allows, e.g. "r=1 is within
1 pt of r=64" is (-1, 1) and "Wq+Wv is better than Wq" is (1, inf); its margin is the floor: 1 point for metrics in
%, else 1 % of the larger |mean|, the smallest difference a verdict calls real. The difference's 95 % interval is
Welch's over the groups' seeds (lorasweep.stats.verdict_of_seeds): agree when the whole interval lies in the range,
disagree when none of it does, undecided when it straddles an end, with the seeds per group that would decide it.
Nothing here is written by hand: every number comes from the data or from lorasweep.analysis.paper.
"""

from __future__ import annotations

import math

import pandas as pd

from lorasweep import stats as st
from lorasweep.analysis import paper
from lorasweep.analysis.tables import fmt_ms, pm

CHI2_1_99 = 6.635  # 99th percentile of chi-square(1): a random unit vector's cos² with a fixed one is below 6.635/k
TOP_SHARED = 0.5  # paper §7.2: r=8 and r=64 share a top direction "with normalized similarity > 0.5"
LOW_RANK = 0.5  # "low intrinsic rank": 95 % of the update's energy within half its nominal rank


def floor(unit: str, *means: float) -> float:
    """The smallest difference a verdict calls real: 1 point for metrics in %, else 1 % of the larger |mean|."""
    return 1.0 if unit == "%" else 0.01 * max(abs(float(m)) for m in means)


def tolerance(a: pd.Series, b: pd.Series, unit: str) -> float:
    se2 = sum(float(x["std"]) ** 2 / int(x["n"]) for x in (a, b) if int(x["n"]) > 1 and not math.isnan(float(x["std"])))
    return max(floor(unit, a["mean"], b["mean"]), math.sqrt(se2))


def _row(
    claim: str,
    paper_says: str,
    ours: str,
    diff: float | None,
    tol: float | None,
    agree: bool | str | None,
    unit: str,
    how: str,
    groups: tuple = (),
) -> dict:
    """One verdict (`agree`: True, False, a word such as 'undecided', or None: not testable); `groups` are the stats
    rows it is built on: any that had not plateaued is named in the line."""
    if agree is None:
        verdict = f"n/a ({how})"
    else:
        word = agree if isinstance(agree, str) else "agree" if agree else "disagree"
        verdict = f"{word} ({how}{_plateau_note(groups, unit)})"
    return {
        "claim": claim,
        "paper": paper_says,
        "ours": ours,
        "difference": None if diff is None else round(diff, 3),
        "tolerance": None if tol is None else round(tol, 3),
        "verdict": verdict,
    }


WORDS = {"agrees": "agree", "disagrees": "disagree", "undecided": "undecided"}  # the report's words


def _range(claim: tuple[float, float], unit: str) -> str:
    lo, hi = claim
    if math.isinf(hi):
        return f"> {lo:.2f}{_u(unit)}"
    if math.isinf(lo):
        return f"< {hi:.2f}{_u(unit)}"
    return f"within ±{hi:.2f}{_u(unit)}"


def seed_verdict(a: pd.Series, b: pd.Series, allowed: tuple[float, float], sign: float = 1.0) -> st.Verdict:
    """The claim `allowed` about sign · (a - b) tested on the groups' seed values (what `judged` writes up)."""
    return st.verdict_of_seeds([sign * x for x in a["values"]], [sign * x for x in b["values"]], allowed)


def judged(
    claim: str,
    paper_says: str,
    ours: str,
    a: pd.Series,
    b: pd.Series,
    allowed: tuple[float, float],
    unit: str,
    sign: float = 1.0,
    note: str = "",
) -> dict:
    """One verdict on a claim about groups a and b (stats rows with their seeds' `values`): the range `allowed` of
    sign · (a - b), judged on the Welch interval over seeds (stats.verdict_of_seeds). `note` goes on the line after
    the interval, before the plateau note."""
    v = seed_verdict(a, b, allowed, sign)
    d = v.diff
    if math.isnan(d.low):
        how = f"difference {d.value:+.2f}{_u(unit)}, no interval: a group with one seed, or no spread between seeds"
    else:
        how = f"difference {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]{_u(unit)} vs {_range(allowed, unit)}"
    if v.needed:
        how += f"; ~{v.needed} {v.unit} would decide it"
    margin = min(abs(e) for e in allowed if math.isfinite(e))
    row = _row(claim, paper_says, ours, d.value, margin, WORDS[v.word], unit, how + note, (a, b))
    row["interval"] = None if math.isnan(d.low) else f"[{d.low:+.3f}, {d.high:+.3f}]"
    return row


def with_plateau(
    stats: pd.DataFrame, trials: pd.DataFrame, keys: list[str], unit: str, scale: float, label
) -> pd.DataFrame:
    """Group stats plus whether each group had plateaued: the mean of its trials' `last_eval_gain` (the objective's
    gain over their last eval interval, in the sweep's direction) against the noise between seeds (the std of the
    group's final values, at least the tolerance floor, which is all there is with one seed). A gain above the noise:
    still improving, the budget was too short. No gain logged (one eval per trial): unknown."""
    col = "metrics.last_eval_gain"
    out = stats.copy()
    gains = (
        trials.assign(_gain=trials[col] * scale).groupby(keys, dropna=False, sort=False)["_gain"].mean()
        if col in trials
        else None
    )
    rows = []
    for _, row in out.iterrows():
        key = tuple(row[k] for k in keys)
        gain = float(gains.get(key if len(keys) > 1 else key[0], math.nan)) if gains is not None else math.nan
        std = float(row["std"]) if int(row["n"]) > 1 and not math.isnan(float(row["std"])) else math.nan
        least = floor(unit, row["mean"])
        noise = least if math.isnan(std) else max(std, least)
        rows.append((gain, noise, None if math.isnan(gain) else gain <= noise))
    out["gain"], out["noise"], out["plateaued"] = zip(*rows) if rows else ((), (), ())
    out["label"] = [label(row) for _, row in out.iterrows()]
    return out


def _plateaued(group: pd.Series | None) -> bool | None:
    """A stats row's plateau flag as True, False or None (not measured), whatever dtype pandas gave the column."""
    flag = None if group is None else group.get("plateaued")
    return None if flag is None or (isinstance(flag, float) and math.isnan(flag)) else bool(flag)


def _plateau_note(groups: tuple, unit: str) -> str:
    short = [g for g in groups if _plateaued(g) is False]
    if short:
        named = ", ".join(
            f"{g['label']} still gained {float(g['gain']):.2f}{_u(unit)} in its last eval interval "
            f"(noise {float(g['noise']):.2f})"
            for g in short
        )
        return f"; not plateaued, trained too short: {named}"
    if groups and all(g is not None and "plateaued" in g and _plateaued(g) is None for g in groups):
        return "; plateau not measured: one eval per trial"
    return ""


def _pick(stats: pd.DataFrame, weights: str, r: int | None = None) -> pd.Series | None:
    sel = stats[stats["weights"] == weights]
    if r is not None:
        sel = sel[sel["r"] == r]
    return None if sel.empty else sel.iloc[0]


def _ms(row: pd.Series, unit: str) -> str:
    return f"{fmt_ms(float(row['mean']), float(row['std']), unit)} (n={int(row['n'])})"


def _u(unit: str) -> str:
    return " pts" if unit == "%" else ""


def table5_verdicts(stats: pd.DataFrame, unit: str, mode: str) -> list[dict]:
    """Equal budget (Table 5): Wq+Wv is the best row; Wq alone and Wk alone are worse than Wq+Wv."""
    sign = 1.0 if mode == "max" else -1.0
    qv = _pick(stats, "Wq+Wv")
    out = []
    claim = "Wq+Wv is best at an equal parameter budget"
    p = [
        (d, paper.table5(("q", "v"), d), max(paper.TABLE5.items(), key=lambda kv: kv[1][1 + i]))
        for i, d in enumerate(paper.DATASETS)
    ]
    paper_says = "; ".join(
        f"{d}: Wq+Wv {v:.1f}, best {paper.label(b[0])} {b[1][1 + i]:.1f} (gap {b[1][1 + i] - v:.1f})"
        for i, (d, v, b) in enumerate(p)
    )
    if qv is None or len(stats) < 2:
        out.append(_row(claim, paper_says, "–", None, None, None, unit, "needs a Wq+Wv row and another row"))
    else:
        others = stats[stats["weights"] != "Wq+Wv"]
        best = others.loc[(sign * others["mean"]).idxmax()]  # the row most likely to beat Wq+Wv
        rank = int((sign * stats["mean"] > sign * float(qv["mean"])).sum()) + 1
        ours = f"Wq+Wv {_ms(qv, unit)} is #{rank} of {len(stats)}; best other {best['weights']} {_ms(best, unit)}"
        least = floor(unit, best["mean"], qv["mean"])
        out.append(judged(claim, paper_says, ours, best, qv, (-math.inf, least), unit, sign))  # no row beats it
    for alone in ("Wq", "Wk"):
        t = (alone[1],)
        claim = f"{alone} alone (all the budget in one matrix) is worse than Wq+Wv"
        paper_says = "; ".join(
            f"{d}: {alone} {paper.table5(t, d):.1f} vs Wq+Wv {paper.table5(('q', 'v'), d):.1f} "
            f"({paper.table5(t, d) - paper.table5(('q', 'v'), d):+.1f})"
            for d in paper.DATASETS
        )
        row = _pick(stats, alone)
        if qv is None or row is None:
            out.append(_row(claim, paper_says, "–", None, None, None, unit, f"needs {alone} and Wq+Wv rows"))
            continue
        ours = f"{alone} {_ms(row, unit)} vs Wq+Wv {_ms(qv, unit)}"
        least = floor(unit, qv["mean"], row["mean"])
        out.append(judged(claim, paper_says, ours, qv, row, (least, math.inf), unit, sign))  # > 0: Wq+Wv better
    return out


def sufficient_rank(rows: pd.DataFrame, unit: str, mode: str) -> tuple[int, pd.Series]:
    """The smallest r whose mean is within tolerance of the best mean of these rows (one weight set), and the best."""
    sign = 1.0 if mode == "max" else -1.0
    best = rows.loc[(sign * rows["mean"]).idxmax()]
    for _, row in rows.sort_values("r").iterrows():
        if sign * (float(best["mean"]) - float(row["mean"])) <= tolerance(best, row, unit):
            return int(row["r"]), best
    return int(best["r"]), best


def _paper_sufficient_rank(targets: tuple[str, ...], dataset: str) -> int:
    rows = pd.DataFrame({"r": paper.TABLE6_RANKS, "mean": paper.TABLE6[dataset][targets], "std": math.nan, "n": 1})
    return sufficient_rank(rows, "%", "max")[0]


def table6_verdicts(stats: pd.DataFrame, unit: str, mode: str = "max") -> list[dict]:
    """Rank (Table 6): per weight set, the smallest r is within tolerance of the largest (paper: r=1 vs r=64);
    and Wq alone needs a larger r than Wq+Wv, where a set's sufficient r is its smallest r within tolerance of its
    best."""
    out = []
    for w in stats["weights"].unique():
        rows = stats[stats["weights"] == w]
        ranks = sorted(int(r) for r in rows["r"])
        lo, hi = ranks[0], ranks[-1]
        claim = f"{w}: r={lo} is within tolerance of r={hi}"  # the number goes in once it is computed
        t = tuple(x[1:] if x.startswith("W") else x for x in w.split("+"))
        refs = [(d, paper.table6(t, lo, d), paper.table6(t, hi, d)) for d in paper.DATASETS]
        paper_says = (
            "; ".join(f"{d}: {a:.1f} vs {b:.1f} ({a - b:+.1f})" for d, a, b in refs if a is not None and b is not None)
            or "– (not in Table 6)"
        )
        if lo == hi:
            out.append(_row(claim, paper_says, "–", None, None, None, unit, "needs two ranks"))
            continue
        a, b = _pick(stats, w, lo), _pick(stats, w, hi)
        least = floor(unit, a["mean"], b["mean"])
        claim = f"{w}: r={lo} is within {least:.2f}{_u(unit)} of r={hi}"
        ours = f"r={lo} {_ms(a, unit)} vs r={hi} {_ms(b, unit)}"
        out.append(judged(claim, paper_says, ours, a, b, (-least, least), unit))
    return out + _sufficient_rank_verdict(stats, unit, mode)


def _sufficient_rank_verdict(stats: pd.DataFrame, unit: str, mode: str) -> list[dict]:
    claim = "Wq alone needs a larger r than Wq+Wv (sufficient r: the smallest r within tolerance of the set's best)"
    paper_says = "; ".join(
        f"{d}: Wq r={_paper_sufficient_rank(('q',), d)}, Wq+Wv r={_paper_sufficient_rank(('q', 'v'), d)}"
        for d in paper.DATASETS
    )
    sets = {w: stats[stats["weights"] == w] for w in ("Wq", "Wq+Wv")}
    if any(rows["r"].nunique() < 2 for rows in sets.values()):
        return [_row(claim, paper_says, "–", None, None, None, unit, "needs two ranks of Wq and of Wq+Wv")]
    (rq, bq), (rqv, bqv) = (sufficient_rank(sets[w], unit, mode) for w in ("Wq", "Wq+Wv"))
    ours = f"Wq r={rq} (best r={int(bq['r'])} {_ms(bq, unit)}); Wq+Wv r={rqv} (best r={int(bqv['r'])} {_ms(bqv, unit)})"
    diff = math.log2(rq / rqv)
    return [
        _row(
            claim,
            paper_says,
            ours,
            diff,
            None,
            rq > rqv,
            unit,
            f"log2 of the sufficient-r ratio {diff:+.2f} {'>' if rq > rqv else '≤'} 0",
            tuple(r for _, r in pd.concat(sets.values()).iterrows()),
        )
    ]


def spectra_verdicts(trials: pd.DataFrame) -> list[dict]:
    """At the largest nominal rank, per module type: how many directions hold 95 % of ΔW's energy (k of r)."""
    if "r" not in trials or trials["r"].dropna().empty:
        return []
    r = int(trials["r"].max())
    top = trials[trials["r"] == r]
    out = []
    paper_says = "ΔW has a very low intrinsic rank: r=1 already performs competitively (§7, Table 6)"
    for col in sorted(
        c
        for c in top.columns
        if c.startswith("metrics.energy_rank95_") and c.endswith("_mean") and c != "metrics.energy_rank95_mean"
    ):  # per module type; the overall mean repeats them
        mtype = col.removeprefix("metrics.energy_rank95_").removesuffix("_mean")
        vals = top[col].dropna()
        if mtype == "" or vals.empty:
            continue
        k = float(vals.mean())
        claim = f"ΔW{mtype}: 95 % of the update's energy lies in k of its r={r} directions, k ≤ {LOW_RANK:.0%} of r"
        if r < 4:
            out.append(_row(claim, paper_says, f"k = {k:.1f}", None, None, None, "", "needs r ≥ 4"))
            continue
        ours = f"k = {pm(k, vals.std(ddof=1) if len(vals) > 1 else math.nan, 1)} of r = {r} (n={len(vals)})"
        out.append(
            _row(
                claim,
                paper_says,
                ours,
                k / r,
                LOW_RANK,
                k / r <= LOW_RANK,
                "",
                f"k/r = {k / r:.2f} {'≤' if k / r <= LOW_RANK else '>'} {LOW_RANK}",
            )
        )
    return out


def subspace_verdicts(phi: pd.DataFrame) -> list[dict]:
    """From per-module φ(1,1) rows (columns figure, module_type, phi11, k, r_a, r_b): Fig. 3 — r_lo and r_hi share
    their top direction (median φ > 0.5); Fig. 4 — two seeds share it beyond chance (median φ > 6.635/k)."""
    out = []
    for (figure, mtype), rows in phi.groupby(["figure", "module_type"], sort=True):
        med = float(rows["phi11"].median())
        k = int(rows["k"].iloc[0])
        ra, rb = int(rows["r_a"].iloc[0]), int(rows["r_b"].iloc[0])
        ours = f"median φ(1,1) = {med:.3f} over {len(rows)} modules (layers × pairs)"
        if figure == "fig3":
            claim = f"ΔW{mtype}: r={ra} and r={rb} of the same config share their top direction (φ(1,1) > {TOP_SHARED})"
            paper_says = "Fig. 3: ΔWq and ΔWv of r=8 and r=64 share a 1-dimensional subspace with φ > 0.5"
            out.append(
                _row(
                    claim,
                    paper_says,
                    ours,
                    med - TOP_SHARED,
                    0.0,
                    med > TOP_SHARED,
                    "",
                    f"{med:.3f} {'>' if med > TOP_SHARED else '≤'} {TOP_SHARED}",
                )
            )
        else:
            chance = CHI2_1_99 / k
            claim = f"ΔW{mtype}: two seeds at r={ra} share their top direction beyond chance (φ(1,1) > {chance:.3f})"
            paper_says = "Fig. 4: top singular directions of two seeds at r=64 overlap, unlike random matrices"
            out.append(
                _row(
                    claim,
                    paper_says,
                    ours,
                    med - chance,
                    0.0,
                    med > chance,
                    "",
                    f"{med:.3f} {'>' if med > chance else '≤'} {chance:.3f}, the 99th percentile of chance for k={k}",
                )
            )
    return out
