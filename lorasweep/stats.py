"""How far to trust a number: eval-set noise (bootstrap over eval rows) and training noise (over seeds).

Every metric a trial reports is a function of sums over its eval rows: accuracy (correct rows), macro-F1 (per-class
true positives, true and predicted counts), loss and perplexity (token losses and token counts), exact match and
ROUGE-L (per-row scores), corpus BLEU and chrF (sacreBLEU's per-sentence n-gram statistics). So one resample of
the rows is one vector of counts, counts @ per-row statistics gives the sums, and the metric is recomputed from the
sums exactly as on the whole set. docs/statistics.md says which test is used where and why. numpy/scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
# 2000 resamples: the 2.5 % and 97.5 % quantiles then rest on ~50 resamples each, and BCa's jackknife adds one
# evaluation per row. Measured on 2 loaded cores (docs/statistics.md): 25-65 ms an interval on 300 rows, 0.1-0.3 s
# on 1000, for every metric kind: nothing next to a trial's training.
RESAMPLES = 2000
SEED = 0  # a trial's interval is reproducible: the same rows give the same interval
POWER = 0.8  # seeds_needed: the chance that the planned seeds decide a verdict whose effect is as observed

Score = Callable[[np.ndarray], np.ndarray]  # sums over rows (..., k) -> the metric (...)


@dataclass(frozen=True)
class Rows:
    """One trial's eval rows as the metric sees them: per-row statistics (n, k) and the metric of their sums."""

    stats: np.ndarray
    score: Score

    @property
    def value(self) -> float:
        return float(self.score(self.stats.sum(axis=0)))

    def resampled(self, idx: np.ndarray) -> np.ndarray:
        """The metric of each resample of row indices (..., n): counts of each row, then the metric of the sums."""
        n = len(self.stats)
        flat = idx.reshape(-1, idx.shape[-1])
        offsets = np.arange(len(flat))[:, None] * n
        counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * n).reshape(len(flat), n)
        return self.score(counts @ self.stats).reshape(idx.shape[:-1])


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class Paired:
    """A minus B on the same eval rows: the difference's interval, the two-sided p-value of "no difference", and the
    bootstrap distribution of the difference (what verdict_of_bootstrap reads)."""

    diff: Interval
    p: float
    distribution: np.ndarray


# --- per-row statistics of each metric kind -------------------------------------------------------------------


def accuracy(predictions: Sequence, labels: Sequence) -> Rows:
    correct = np.asarray(predictions) == np.asarray(labels)
    return Rows(correct[:, None].astype(float), lambda s: s[..., 0] / len(correct))


def macro_f1(predictions: Sequence, labels: Sequence) -> Rows:
    """Macro-F1 as scikit-learn's f1_score(average="macro"): F1 = 2 TP / (true + predicted) per class, averaged over
    the classes that occur in the labels or the predictions of the (resampled) rows."""
    y, yhat = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(y, yhat)
    cols = [np.stack([(y == c) & (yhat == c), y == c, yhat == c], axis=1) for c in classes]
    stats = np.concatenate(cols, axis=1).astype(float)  # per class: tp, true, predicted

    def score(s: np.ndarray) -> np.ndarray:
        tp, true, pred = s[..., 0::3], s[..., 1::3], s[..., 2::3]
        present = true + pred > 0
        f1 = np.divide(2 * tp, true + pred, out=np.zeros_like(tp), where=present)
        return f1.sum(axis=-1) / present.sum(axis=-1)

    return Rows(stats, score)


def loss(losses: Sequence[float], tokens: Sequence[float] | None = None) -> Rows:
    """Mean loss per token: `losses` are per-row sums of token losses, `tokens` their token counts (None: one per
    row, a classifier's per-example loss)."""
    summed = np.asarray(losses, dtype=float)
    counts = np.ones_like(summed) if tokens is None else np.asarray(tokens, dtype=float)
    return Rows(np.stack([summed, counts], axis=1), lambda s: s[..., 0] / s[..., 1])


def perplexity(losses: Sequence[float], tokens: Sequence[float]) -> Rows:
    """exp(total loss / total tokens): the corpus perplexity, not a mean of per-row perplexities."""
    per_token = loss(losses, tokens)
    return Rows(per_token.stats, lambda s: np.exp(per_token.score(s)))


def mean(scores: Sequence[float]) -> Rows:
    """A metric that is the mean of per-row scores: exact match, ROUGE-L F1."""
    values = np.asarray(scores, dtype=float)
    return Rows(values[:, None], lambda s: s[..., 0] / len(values))


def _normal(text: str) -> str:
    return " ".join(text.split())


def exact_match(generations: Sequence[str], refs: Sequence[Sequence[str]]) -> Rows:
    """1 where the answer equals any reference after collapsing whitespace."""
    return mean([_normal(g) in {_normal(r) for r in rs} for g, rs in zip(generations, refs)])


def rouge_l(generations: Sequence[str], refs: Sequence[Sequence[str]]) -> Rows:
    """ROUGE-L F1 against the best reference, per row."""
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"])
    return mean([rouge.score_multi(rs, g)["rougeL"].fmeasure for g, rs in zip(generations, refs)])


def streams(refs: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacreBLEU's reference streams from per-row reference lists; None pads rows with fewer references."""
    return [[rs[i] if i < len(rs) else None for rs in refs] for i in range(max(map(len, refs)))]


def _corpus(metric, generations: Sequence[str], refs: Sequence[Sequence[str]]) -> Rows:
    # Corpus BLEU and chrF are not means of sentence scores: each resample's score is recomputed by sacreBLEU from
    # the summed per-sentence statistics, the same path sacreBLEU's own bootstrap (sacrebleu.significance) takes,
    # and equal to corpus_bleu / corpus_chrf on those rows. Recomputing from text per resample costs ~100x more.
    stats = np.asarray(metric._extract_corpus_statistics(list(generations), streams(refs)), dtype=float)

    def score(s: np.ndarray) -> np.ndarray:
        flat = s.reshape(-1, s.shape[-1])
        out = [metric._compute_score_from_stats(list(row)).score for row in flat]
        return np.asarray(out).reshape(s.shape[:-1])

    return Rows(stats, score)


def bleu(generations: Sequence[str], refs: Sequence[Sequence[str]]) -> Rows:
    from sacrebleu.metrics import BLEU

    return _corpus(BLEU(), generations, refs)


def chrf(generations: Sequence[str], refs: Sequence[Sequence[str]]) -> Rows:
    from sacrebleu.metrics import CHRF

    return _corpus(CHRF(), generations, refs)


# --- eval-set noise: bootstrap over eval rows ------------------------------------------------------------------


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int):
    # BCa, not percentile: macro-F1, perplexity and corpus BLEU are biased and skewed on a few hundred rows, and
    # BCa corrects the percentile interval for both (its jackknife costs n more evaluations, cheap here).
    # The resampled unit is the row index, so A and B of a paired comparison see the same rows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)  # no spread: handled in _ends
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa's acceleration 0/0 then, too
        return sps.bootstrap(
            (np.arange(n),),
            lambda idx, axis=-1: statistic(idx),
            n_resamples=resamples,
            vectorized=True,
            batch=max(1, 2_000_000 // max(n, 1)),  # a batch's count matrix stays ~16 MB
            confidence_level=CONFIDENCE,
            method="BCa",
            rng=np.random.default_rng(seed),
        )


def _ends(res, value: float) -> tuple[float, float]:
    dist = res.bootstrap_distribution
    if np.ptp(dist) == 0:  # every resample scores the same (e.g. all rows right): no eval-set noise to show
        return value, value
    low, high = res.confidence_interval
    if math.isnan(low) or math.isnan(high):  # BCa undefined (the estimate outside the resamples): percentile
        low, high = np.quantile(dist, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def interval(rows: Rows, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The metric on the whole eval set and its 95 % bootstrap interval (BCa)."""
    value = rows.value
    res = _bootstrap(rows.resampled, len(rows.stats), resamples, seed)
    return Interval(value, *_ends(res, value))


def paired(a: Rows, b: Rows, resamples: int = RESAMPLES, seed: int = SEED) -> Paired:
    """Paired bootstrap of A - B on the same eval rows (row i of A and of B is the same example). The p-value is
    two-sided, from the resampled differences shifted to the null: (1 + #{|d* - d| >= |d|}) / (1 + resamples)."""
    if len(a.stats) != len(b.stats):
        raise ValueError(f"paired rows differ in number: {len(a.stats)} vs {len(b.stats)}")
    d = a.value - b.value
    res = _bootstrap(lambda idx: a.resampled(idx) - b.resampled(idx), len(a.stats), resamples, seed)
    dist = res.bootstrap_distribution
    p = (1 + int(np.sum(np.abs(dist - d) >= abs(d)))) / (1 + len(dist))
    return Paired(Interval(d, *_ends(res, d)), min(1.0, p), dist)


# --- training noise: over seeds --------------------------------------------------------------------------------


def seed_interval(values: Sequence[float]) -> Interval:
    """The mean over seeds and its 95 % t interval: mean ± t(0.975, n-1) · s / √n. One seed: no interval (nan)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return Interval(m, math.nan, math.nan)
    half = float(sps.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(m, m - half, m + half)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[Interval, float]:
    """Two configs' seed means: the difference mean(a) - mean(b) with its 95 % Welch interval and the two-sided
    p-value of Welch's t-test (unequal variances). nan where it is undefined: fewer than two seeds in a group, or
    no spread in either."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return Interval(d, math.nan, math.nan), math.nan
    res = sps.ttest_ind(x, y, equal_var=False)
    low, high = res.confidence_interval(CONFIDENCE)
    return Interval(d, float(low), float(high)), float(res.pvalue)


# --- verdicts --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the measured difference says of a claim. `claim` is the range of differences (A - B) the claim allows:
    "within tol" is (-tol, tol), "A better by more than m" is (m, inf). agrees: the whole interval lies in it;
    disagrees: none of it does; undecided: it straddles an end, and `needed` says how many seeds per config (or eval
    rows) would decide it if the difference is what was measured."""

    word: str  # agrees | disagrees | undecided
    diff: Interval
    claim: tuple[float, float]
    needed: int | None = None
    unit: str = "seeds"  # what `needed` counts: seeds per config, or eval rows

    def __str__(self) -> str:
        text = f"{self.word}: difference {self.diff.value:+.4g} [{self.diff.low:+.4g}, {self.diff.high:+.4g}]"
        if self.word == "undecided" and self.needed is not None:
            text += f"; ~{self.needed} {self.unit} would decide it"
        return text


def _word(diff: Interval, claim: tuple[float, float]) -> str:
    lo, hi = claim
    if math.isnan(diff.low) or math.isnan(diff.high):
        return "undecided"
    if lo < diff.low and diff.high < hi:
        return "agrees"
    if diff.high <= lo or diff.low >= hi:
        return "disagrees"
    return "undecided"


def needed(sd: float, diff: float, claim: tuple[float, float], have: int = 0, groups: int = 0) -> int | None:
    """Units (seeds per config, or eval rows) at which a difference `diff`, measured with per-unit spread `sd`, is
    decided with chance POWER at 95 %: n = (z_0.975 + z_power)² · sd² / δ² + z_0.975² / 4, δ the distance from diff
    to the nearest end of the claim (the last term: Guenther's correction of the normal formula for the t test).
    `groups` > 0: a t test over seeds of that many configs, whose few degrees of freedom the normal formula
    undercounts, so n is searched upwards from it until t quantiles at groups·(n-1) degrees of freedom decide it.
    Never fewer than `have` + 1: the units already measured did not decide it. None where it never decides (the
    difference sits on an end) or nothing varies."""
    delta = min(abs(diff - end) for end in claim if math.isfinite(end))
    if delta == 0 or not math.isfinite(sd) or sd == 0:
        return None
    z = NormalDist()
    za, zb = z.inv_cdf((1 + CONFIDENCE) / 2), z.inv_cdf(POWER)
    n = max(2, math.ceil((za + zb) ** 2 * sd**2 / delta**2 + za**2 / 4))
    if groups:

        def power_ok(n: int) -> bool:
            df = groups * (n - 1)
            return (sps.t.ppf((1 + CONFIDENCE) / 2, df) + sps.t.ppf(POWER, df)) * sd / math.sqrt(n) <= delta

        while not power_ok(n):
            n += 1
    return max(n, have + 1)


def verdict_of_seeds(a: Sequence[float], b: Sequence[float], claim: tuple[float, float]) -> Verdict:
    """A claim about A - B tested on two configs' values over seeds (Welch). Undecided: the seeds per config that
    would decide it, from the spread seen: per-config variance s_a² + s_b² for a difference of two means."""
    diff, _ = welch(a, b)
    word = _word(diff, claim)
    if word != "undecided" or len(a) < 2 or len(b) < 2:
        return Verdict(word, diff, claim)
    sd = math.sqrt(float(np.var(a, ddof=1) + np.var(b, ddof=1)))
    have = min(len(a), len(b))
    return Verdict(word, diff, claim, needed(sd, diff.value, claim, have=have, groups=2), "seeds per config")


def verdict_of_bootstrap(p: Paired, rows: int, claim: tuple[float, float]) -> Verdict:
    """A claim about A - B tested on one eval set (a paired bootstrap). Undecided: the eval rows that would decide
    it (its standard error shrinks as 1/√rows: per-row spread = se · √rows)."""
    word = _word(p.diff, claim)
    if word != "undecided":
        return Verdict(word, p.diff, claim, unit="eval rows")
    sd = float(np.std(p.distribution, ddof=1)) * math.sqrt(rows)
    return Verdict(word, p.diff, claim, needed(sd, p.diff.value, claim, have=rows), "eval rows")
