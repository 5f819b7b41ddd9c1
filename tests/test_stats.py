"""lorasweep.stats: bootstrap intervals over eval rows cover the truth at their rate, the paired test finds a planted
difference and not a null one, seed intervals and Welch's test, verdicts and the seeds that would decide one."""

import math

import numpy as np
import pytest

from lorasweep import stats

SETS = 200  # synthetic eval sets per coverage test
ROWS = 300  # the main job's eval size


def covered(rate: float, hits: int, n: int) -> bool:
    """hits out of n within 3 binomial standard deviations of the stated rate."""
    return abs(hits - rate * n) <= 3 * math.sqrt(rate * (1 - rate) * n)


def test_accuracy_interval_covers_the_true_accuracy_at_95_percent() -> None:
    rng = np.random.default_rng(7)
    p, hits = 0.62, 0
    for _ in range(SETS):
        labels = rng.integers(0, 3, ROWS)
        predictions = np.where(rng.random(ROWS) < p, labels, (labels + 1) % 3)
        iv = stats.interval(stats.accuracy(predictions, labels))
        hits += iv.low <= p <= iv.high
    assert covered(stats.CONFIDENCE, hits, SETS), hits


def test_macro_f1_interval_covers_the_population_macro_f1_at_95_percent() -> None:
    rng = np.random.default_rng(8)
    prior = np.array([0.5, 0.3, 0.2])
    confusion = np.array([[0.7, 0.2, 0.1], [0.25, 0.6, 0.15], [0.2, 0.2, 0.6]])  # P(predicted | true)
    joint = prior[:, None] * confusion
    truth = np.mean(2 * np.diag(joint) / (joint.sum(axis=1) + joint.sum(axis=0)))  # each F1 as a ratio of rates
    hits = 0
    for _ in range(SETS):
        labels = rng.choice(3, ROWS, p=prior)
        predictions = (rng.random(ROWS)[:, None] > confusion[labels].cumsum(axis=1)).sum(axis=1)
        iv = stats.interval(stats.macro_f1(predictions, labels))
        hits += iv.low <= truth <= iv.high
    assert covered(stats.CONFIDENCE, hits, SETS), hits


def test_perplexity_interval_covers_exp_of_the_true_token_loss_at_95_percent() -> None:
    rng = np.random.default_rng(9)
    mu, hits = 2.3, 0  # each token's loss ~ exponential(mean mu): the corpus perplexity tends to exp(mu)
    for _ in range(SETS):
        tokens = rng.integers(5, 60, ROWS)
        losses = rng.gamma(tokens, mu)  # a sum of t exponential token losses
        iv = stats.interval(stats.perplexity(losses, tokens))
        hits += iv.low <= math.exp(mu) <= iv.high
    assert covered(stats.CONFIDENCE, hits, SETS), hits


def test_macro_f1_equals_scikit_learn_also_when_a_class_is_never_predicted() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 120)
    predictions = np.where(rng.random(120) < 0.6, labels, 0)
    predictions[predictions == 3] = 1  # class 3 occurs only in the labels
    assert stats.macro_f1(predictions, labels).value == pytest.approx(f1_score(labels, predictions, average="macro"))
    idx = rng.integers(0, 120, (5, 120))  # resamples, some missing a class altogether
    got = stats.macro_f1(predictions, labels).resampled(idx)
    want = [f1_score(labels[i], predictions[i], average="macro") for i in idx]
    assert got == pytest.approx(want)


def test_perplexity_is_of_the_summed_tokens_not_a_mean_of_row_perplexities() -> None:
    rows = stats.perplexity([2.0, 12.0], [1, 3])  # row losses per token: 2 and 4
    assert rows.value == pytest.approx(math.exp(14 / 4))
    assert rows.value != pytest.approx((math.exp(2) + math.exp(4)) / 2)


def test_corpus_bleu_and_chrf_equal_sacrebleu_on_the_whole_set_and_on_a_resample() -> None:
    import sacrebleu

    rng = np.random.default_rng(4)
    words = "the a cat dog sat ran on under mat rug big small".split()
    gens = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    refs = [[" ".join(rng.choice(words, 6)) for _ in range(1 + i % 3)] for i in range(40)]  # 1 to 3 references
    idx = rng.integers(0, 40, 40)
    sub_gens, sub_refs = [gens[i] for i in idx], [refs[i] for i in idx]
    for rows_of, corpus in ((stats.bleu, sacrebleu.corpus_bleu), (stats.chrf, sacrebleu.corpus_chrf)):
        rows = rows_of(gens, refs)
        assert rows.value == pytest.approx(corpus(gens, stats.streams(refs)).score)
        assert float(rows.resampled(idx[None])[0]) == pytest.approx(corpus(sub_gens, stats.streams(sub_refs)).score)


def test_exact_match_and_rouge_l_intervals_hold_their_whole_set_value() -> None:
    gens = ["a b", "c  d", "x", "hello world", "foo"] * 20
    refs = [["a b"], ["c d", "e"], ["y"], ["hello there world"], ["bar"]] * 20
    em = stats.interval(stats.exact_match(gens, refs))
    assert em.value == pytest.approx(0.4) and em.low < 0.4 < em.high
    rl = stats.interval(stats.rouge_l(gens, refs))
    assert rl.low < rl.value < rl.high


def test_an_eval_set_with_no_spread_has_a_point_interval() -> None:
    iv = stats.interval(stats.accuracy([1] * 50, [1] * 50))
    assert (iv.value, iv.low, iv.high) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_finds_a_planted_difference() -> None:
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(30):
        labels = rng.integers(0, 3, ROWS)
        hard = rng.random(ROWS)  # a row's difficulty, shared by both trials: what pairing removes
        a = np.where(hard < 0.72, labels, (labels + 1) % 3)
        b = np.where(hard < 0.64, labels, (labels + 2) % 3)  # B gets 8 points fewer rows right, the same rows
        res = stats.paired(stats.accuracy(a, labels), stats.accuracy(b, labels))
        found += res.p < 0.05 and res.diff.low > 0
    assert found >= 28, found


def test_paired_bootstrap_rejects_a_null_difference_at_about_5_percent() -> None:
    rng = np.random.default_rng(12)
    n, rejected = 100, 0
    for _ in range(n):
        labels = rng.integers(0, 3, ROWS)
        a, b = (np.where(rng.random(ROWS) < 0.62, labels, (labels + 1) % 3) for _ in range(2))
        rejected += stats.paired(stats.accuracy(a, labels), stats.accuracy(b, labels)).p < 0.05
    assert rejected <= 0.05 * n + 3 * math.sqrt(0.05 * 0.95 * n), rejected


def test_paired_bootstrap_of_identical_trials_has_p_one() -> None:
    labels = np.arange(90) % 3
    preds = np.where(np.arange(90) % 4 == 0, 0, labels)
    res = stats.paired(stats.macro_f1(preds, labels), stats.macro_f1(preds, labels))
    assert res.p == 1.0 and res.diff.value == 0.0


def test_seed_t_interval_covers_the_true_mean_at_95_percent() -> None:
    rng = np.random.default_rng(13)
    hits = sum((iv := stats.seed_interval(rng.normal(0.6, 0.02, 3))).low <= 0.6 <= iv.high for _ in range(SETS * 5))
    assert covered(stats.CONFIDENCE, hits, SETS * 5), hits


def test_one_seed_has_no_interval() -> None:
    iv = stats.seed_interval([0.6])
    assert iv.value == 0.6 and math.isnan(iv.low) and math.isnan(iv.high)


def test_welch_separates_planted_seed_means_and_not_equal_ones() -> None:
    rng = np.random.default_rng(14)
    planted = sum(stats.welch(rng.normal(0.66, 0.01, 5), rng.normal(0.62, 0.01, 5))[1] < 0.05 for _ in range(50))
    null = sum(stats.welch(rng.normal(0.62, 0.01, 5), rng.normal(0.62, 0.01, 5))[1] < 0.05 for _ in range(400))
    assert planted >= 48, planted
    assert null <= 0.05 * 400 + 3 * math.sqrt(0.05 * 0.95 * 400), null


def test_verdicts_agree_disagree_and_undecided() -> None:
    within = (-1.0, 1.0)  # "A is within 1 point of B"
    assert stats.verdict_of_seeds([60.1, 60.3, 60.2], [60.0, 60.2, 60.1], within).word == "agrees"
    assert stats.verdict_of_seeds([65.1, 65.3, 65.2], [60.0, 60.2, 60.1], within).word == "disagrees"
    v = stats.verdict_of_seeds([63.4, 68.6], [64.5, 66.0], within)  # paper_table6's spread: 5 points over 2 seeds
    assert v.word == "undecided" and v.needed is not None and v.needed > 2
    on_the_edge = stats.verdict_of_seeds([63.4, 68.6], [64.0, 66.0], within)  # difference exactly 1: never decided
    assert on_the_edge.word == "undecided" and on_the_edge.needed is None
    assert "seeds per config would decide it" in str(v)


def test_the_seeds_an_undecided_verdict_asks_for_decide_it_about_as_often_as_planned() -> None:
    rng = np.random.default_rng(15)
    true_diff, sd, claim = 0.5, 2.0, (-2.0, 2.0)
    n = stats.needed(math.sqrt(2) * sd, true_diff, claim)
    runs = 300
    decided = sum(
        stats.verdict_of_seeds(rng.normal(true_diff, sd, n), rng.normal(0.0, sd, n), claim).word == "agrees"
        for _ in range(runs)
    )
    tol = 3 * math.sqrt(stats.POWER * (1 - stats.POWER) * runs)
    assert stats.POWER * runs - tol <= decided <= stats.POWER * runs + tol, (n, decided)


def test_bootstrap_verdict_asks_for_eval_rows() -> None:
    rng = np.random.default_rng(16)
    labels = rng.integers(0, 3, ROWS)
    hard = rng.random(ROWS)
    a = np.where(hard < 0.63, labels, (labels + 1) % 3)
    b = np.where(hard < 0.61, labels, (labels + 1) % 3)
    res = stats.paired(stats.accuracy(a, labels), stats.accuracy(b, labels))
    v = stats.verdict_of_bootstrap(res, ROWS, (0.0, math.inf))  # "A is better than B"
    assert v.word == "undecided" and v.unit == "eval rows" and v.needed > ROWS


def test_few_seed_verdicts_ask_for_enough_seeds_to_decide_at_the_planned_rate() -> None:
    """Where the normal formula asks for 2 seeds, the t test's few degrees of freedom need more: the searched n
    decides at least as often as planned, and an undecided verdict never asks for fewer seeds than it had."""
    rng = np.random.default_rng(17)
    true_diff, sd, claim = 0.0, 1.0, (-4.0, 4.0)
    normal = stats.needed(math.sqrt(2) * sd, true_diff, claim)
    n = stats.needed(math.sqrt(2) * sd, true_diff, claim, groups=2)
    assert n > normal
    runs = 400
    decided = sum(
        stats.verdict_of_seeds(rng.normal(true_diff, sd, n), rng.normal(0.0, sd, n), claim).word == "agrees"
        for _ in range(runs)
    )
    assert decided >= stats.POWER * runs - 3 * math.sqrt(stats.POWER * (1 - stats.POWER) * runs), (n, decided)
    assert stats.needed(math.sqrt(2) * sd, true_diff, claim, have=n + 4, groups=2) == n + 5
