"""LR-first comparisons (sweep.compare): the plan gives every arm the same LR budget and runs the remaining seeds at
each arm's best LR, on a real Optuna study; bad input names the field; the verdicts on data that tie and that do not."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import optuna
import pandas as pd
import pytest

from lorasweep import compare
from lorasweep import stats as st
from lorasweep.analysis import arms, verdicts
from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.space import parse_sweep, stored, suggest, to_overrides

optuna.logging.set_verbosity(optuna.logging.ERROR)
BASE = ["sweep=smoke", "~sweep.space", "~sweep.sampler", "~sweep.num_trials"]
GRID = "+sweep.compare={arms:{adapter.variant:[lora,dora,vera]},lr:{values:[1.0e-4,1.0e-3,1.0e-2]},seeds:[0,1,2]}"


def spec_of(*overrides: str):
    return parse_sweep(compose([*BASE, *overrides]))


def step(study, spec):
    """Plan, enqueue and ask the next trial as the sweep's loop does; returns the trial or what the plan said."""
    planned = compare.next_trial(study, spec.compare, lambda k, v: stored(spec, k, v), "killed")
    if not isinstance(planned, compare.Next):
        return planned
    study.enqueue_trial(planned.params, user_attrs=planned.attrs)
    trial = study.ask()
    suggest(trial, spec)
    return trial


def score(params: dict) -> float:
    """A made-up objective (max) with a different best LR per variant: dora at 1e-3, lora and vera at 1e-2."""
    best = {"lora": -2.0, "dora": -3.0, "vera": -2.0}[params["adapter.variant"]]
    return -abs(math.log10(params["train.lr"]) - best) + 0.01 * params["seed"]


def test_every_arm_gets_the_same_lr_budget_then_its_seeds_at_its_own_best_lr():
    spec = spec_of(GRID)
    assert spec.num_trials == 3 * (3 + 2)
    study = optuna.create_study(direction="maximize")
    while isinstance(trial := step(study, spec), optuna.Trial):
        study.tell(trial, score(trial.params))
    assert trial is None  # the plan is done, exactly at the budget
    assert len(study.trials) == spec.num_trials
    for variant, best in (("lora", 1e-2), ("dora", 1e-3), ("vera", 1e-2)):
        mine = [t for t in study.trials if t.params["adapter.variant"] == variant]
        search = [t for t in mine if t.user_attrs[compare.PHASE] == "lr"]
        assert sorted(t.params["train.lr"] for t in search) == [1e-4, 1e-3, 1e-2]
        assert {t.params["seed"] for t in search} == {0}
        seeds = [t for t in mine if t.user_attrs[compare.PHASE] == "seeds"]
        assert sorted(t.params["seed"] for t in seeds) == [1, 2]
        assert {t.params["train.lr"] for t in seeds} == {best}
        assert {t.user_attrs[compare.ARM] for t in mine} == {f"adapter.variant={variant}"}


def test_seeds_wait_for_the_arm_lr_search_and_a_killed_trial_is_planned_again():
    spec = spec_of(GRID)
    study = optuna.create_study(direction="maximize")
    running = [step(study, spec) for _ in range(9)]  # every arm's LR search, all still running
    assert step(study, spec) == compare.WAIT
    for t in running[:3]:  # killed by a stopped sweep: FAIL flagged killed, planned again
        t.set_user_attr("killed", True)
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    again = step(study, spec)
    assert again.params["train.lr"] == running[0].params["train.lr"]
    assert again.params["adapter.variant"] == running[0].params["adapter.variant"]


def test_an_arm_with_no_complete_lr_trial_runs_no_seeds():
    spec = spec_of("+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-3,1.0e-2]},seeds:[0,1]}")
    study = optuna.create_study(direction="minimize")
    while isinstance(trial := step(study, spec), optuna.Trial):
        if trial.params["adapter.r"] == 2:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, 1.0 / trial.params["train.lr"])
    assert trial is None
    phases = [(t.params["adapter.r"], t.user_attrs[compare.PHASE]) for t in study.trials]
    assert phases.count((2, "seeds")) == 0 and phases.count((4, "seeds")) == 1


def test_a_range_is_searched_per_arm_within_its_bounds():
    spec = spec_of(
        "+sweep.compare={arms:{adapter.variant:[lora,vera]},lr:{low:1.0e-5,high:1.0e-2,sampler:tpe},"
        "trials_per_arm:6,seeds:[0,1]}"
    )
    study = optuna.create_study(direction="maximize")
    while isinstance(trial := step(study, spec), optuna.Trial):
        study.tell(trial, score(trial.params))
    for variant in ("lora", "vera"):
        lrs = [t.params["train.lr"] for t in study.trials if t.params["adapter.variant"] == variant]
        assert len(lrs) == 6 + 1 and all(1e-5 <= lr <= 1e-2 for lr in lrs)
        assert len(set(lrs)) == 6  # the search's own draws differ; the seed trial repeats the best
    # overrides rerun a planned trial: list-valued and float fields keep their types
    assert to_overrides(suggest(study.trials[0], spec), spec)[0].startswith("adapter.variant=")


@pytest.mark.parametrize(
    "override,field",
    [
        ("+sweep.compare={arms:{adapter.variant:[lora]},lr:{values:[1.0e-4,1.0e-3]}}", "sweep.compare.arms"),
        ("+sweep.compare={arms:{adapter.nope:[1,2]},lr:{values:[1.0e-4,1.0e-3]}}", "sweep.compare.arms.adapter.nope"),
        ("+sweep.compare={arms:{train.lr:[1,2]},lr:{values:[1.0e-4,1.0e-3]}}", "sweep.compare.arms.train.lr"),
        ("+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-4]}}", "sweep.compare.lr.values"),
        (
            "+sweep.compare={arms:{adapter.r:[2,4]},lr:{low:1.0e-2,high:1.0e-4},trials_per_arm:3}",
            "sweep.compare.lr.high",
        ),
        ("+sweep.compare={arms:{adapter.r:[2,4]},lr:{low:1.0e-4,high:1.0e-2}}", "sweep.compare.trials_per_arm"),
        (
            "+sweep.compare={arms:{adapter.r:[2,4]},lr:{low:1.0e-4,high:1.0e-2,sampler:cmaes},trials_per_arm:3}",
            "sweep.compare.lr.sampler.name",
        ),
        ("+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-4,1.0e-3]},seeds:[0]}", "sweep.compare.seeds"),
        ("+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-4,1.0e-3]},tolerance:0}", "sweep.compare.tolerance"),
        ("+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-4,1.0e-3]},bogus:1}", "sweep.compare.bogus"),
    ],
)
def test_bad_compare_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        spec_of(override)
    assert e.value.field == field


def test_compare_refuses_what_its_plan_would_contradict():
    arms_lr = "+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-4,1.0e-3]}}"
    cases = [
        (["sweep=smoke", "~sweep.num_trials", "~sweep.sampler", arms_lr], "sweep.space.adapter.r"),  # smoke searches r
        ([*BASE, arms_lr, "+sweep.num_trials=5"], "sweep.num_trials"),
        ([*BASE, arms_lr, "+sweep.sampler={name:tpe}"], "sweep.sampler"),
        (
            [*BASE, arms_lr, "+sweep.space={train:{warmup_ratio:{kind:float,low:0.0,high:0.1}}}"],
            "sweep.space.train.warmup_ratio.kind",
        ),
    ]
    for overrides, field in cases:
        with pytest.raises(ConfigError) as e:
            parse_sweep(compose(overrides))
        assert e.value.field == field, overrides


def test_arms_are_labelled_by_the_fields_they_set_and_trained_with_every_field():
    """A list of arms: IA3 sets no rank, so its label has none, while its overrides still set the composed r for
    every arm alike (one set of keys per trial)."""
    arms_list = "+sweep.compare={arms:[{adapter.variant:lora},{adapter.variant:vera,adapter.r:256}],"
    spec = spec_of(arms_list + "lr:{values:[1.0e-4,1.0e-3]}}")
    assert [spec.compare.label(i) for i in range(2)] == ["adapter.variant=lora", "adapter.variant=vera adapter.r=256"]
    assert [dict(a) for a in spec.compare.arms] == [
        {"adapter.variant": "lora", "adapter.r": 8},
        {"adapter.variant": "vera", "adapter.r": 256},
    ]
    study = optuna.create_study(direction="maximize")
    trial = step(study, spec)
    assert trial.user_attrs[compare.ARM] == "adapter.variant=lora"
    assert "adapter.r=8" in to_overrides(trial.params, spec)


# ---------------------------------------------------------------------------------------------- verdicts


def trials_frame(values: dict[str, dict[float, list[float]]], gain: float = 0.0) -> pd.DataFrame:
    """Child runs as report.load_trials gives them: per arm, per LR, the values of seeds 0, 1, ... (seed 0 is the LR
    search's, the rest ran at the best LR)."""
    rows, n = [], 0
    for arm, by_lr in values.items():
        fields = dict(p.split("=") for p in arm.split())
        variant, r = fields["adapter.variant"], fields.get("adapter.r", "8")
        for lr, vals in by_lr.items():
            for seed, v in enumerate(vals):
                rows.append(
                    {
                        "run_id": f"run{n}",
                        "tags.optuna_trial": str(n),
                        "state": "COMPLETE",
                        arms.ARM: arm,
                        arms.PHASE: "lr" if seed == 0 else "seeds",
                        arms.LR: repr(lr),
                        "params.adapter.variant": variant,
                        "params.adapter.r": r,
                        "metrics.eval_accuracy": v,
                        "metrics.last_eval_gain": gain,
                    }
                )
                n += 1
    return pd.DataFrame(rows)


def verdict_rows(frame: pd.DataFrame, tol=None) -> dict[str, dict]:
    stats = arms.arm_stats(frame, "eval_accuracy", 100.0, "%", "max", tol)
    return {v["claim"]: v for v in arms.verdicts_of(stats, "%", "max", tol)}


def verdict_lines(frame: pd.DataFrame, tol=None) -> dict[str, str]:
    return {claim: v["verdict"] for claim, v in verdict_rows(frame, tol).items()}


LORA, DORA = "adapter.variant=lora", "adapter.variant=dora"
WORSE = 0.2  # the LRs either side of the best score this much lower: the middle LR is each arm's best


def seeded_pair(lora: np.ndarray, dora: np.ndarray) -> pd.DataFrame:
    """Two arms whose best LR is 1e-3, with the given values over seeds there (seed 0's is the LR search's)."""
    return trials_frame(
        {arm: {1e-4: [v[0] - WORSE], 1e-3: list(v), 1e-2: [v[0] - WORSE]} for arm, v in ((LORA, lora), (DORA, dora))}
    )


def pair_row(rows: dict[str, dict]) -> dict:
    """The one verdict on the other arm against the best, whichever of the two is best."""
    (row,) = (v for c, v in rows.items() if "ties with the best arm" in c)
    return row


def draws(center: float, spread: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(center, spread, n)


def test_arms_that_tie_at_their_own_best_lr_agree_and_a_worse_arm_disagrees():
    tie = trials_frame(
        {
            "adapter.variant=lora": {1e-4: [0.60], 1e-3: [0.70, 0.705, 0.698], 1e-2: [0.50]},
            "adapter.variant=dora": {1e-4: [0.699, 0.702, 0.70], 1e-3: [0.65], 1e-2: [0.40]},
        }
    )
    lines = verdict_lines(tie)
    assert lines["the arms tie within tolerance once LR is tuned"].startswith("agree")
    worse = trials_frame(
        {
            "adapter.variant=lora": {1e-4: [0.60], 1e-3: [0.70, 0.705, 0.698], 1e-2: [0.50]},
            "adapter.variant=vera": {1e-4: [0.55], 1e-3: [0.60, 0.61, 0.59], 1e-2: [0.58]},
        }
    )
    lines = verdict_lines(worse)
    assert lines["the arms tie within tolerance once LR is tuned"].startswith("disagree")
    assert lines["adapter.variant=vera ties with the best arm (adapter.variant=lora) at their own best LRs"].startswith(
        "disagree"
    )
    # a tolerance wide enough turns it into a tie
    assert verdict_lines(worse, tol=20.0)["the arms tie within tolerance once LR is tuned"].startswith("agree")


def test_a_real_gap_between_arms_over_seeds_disagrees_with_a_tie():
    gap, spread, seeds = 0.05, 0.005, 5  # 5 pts apart, 0.5 pt noise: far outside the 1-pt band
    rows = verdict_rows(seeded_pair(draws(0.70, spread, seeds, 1), draws(0.70 - gap, spread, seeds, 2)))
    pair = rows[f"{DORA} ties with the best arm ({LORA}) at their own best LRs"]
    assert pair["verdict"].startswith("disagree (difference +")
    low = float(pair["interval"].strip("[]").split(",")[0])
    assert low > pair["tolerance"] == verdicts.floor("%", 0.0)  # no tolerance set: the band is the floor
    assert rows[arms.TIE]["verdict"].startswith("disagree (each other arm's 95 % Welch interval")
    assert f"wholly outside for {DORA}" in rows[arms.TIE]["verdict"]


def test_arms_drawn_from_one_distribution_tie_within_a_wide_tolerance():
    spread, seeds, tol = 0.003, 5, 3.0  # 0.3 pt noise against a ±3 pt band
    rows = verdict_rows(seeded_pair(draws(0.70, spread, seeds, 3), draws(0.70, spread, seeds, 4)), tol=tol)
    pair = pair_row(rows)
    assert pair["verdict"].startswith("agree") and pair["tolerance"] == tol
    assert "band from sweep.compare.tolerance" in pair["verdict"]
    assert rows[arms.TIE]["verdict"].startswith("agree") and "all wholly inside" in rows[arms.TIE]["verdict"]


def test_a_noisy_pair_straddling_the_band_is_undecided_and_says_how_many_seeds_decide_it():
    spread, seeds = 0.03, 3  # 3 pts of noise over 3 seeds: the interval is far wider than the 1-pt band
    lora, dora = draws(0.70, spread, seeds, 5), draws(0.70, spread, seeds, 6)
    best, other = (lora, dora) if lora.mean() >= dora.mean() else (dora, lora)
    band = verdicts.floor("%", 0.0)
    rows = verdict_rows(seeded_pair(lora, dora))
    pair = pair_row(rows)
    need = st.verdict_of_seeds(100 * best, 100 * other, (-band, band)).needed
    assert need > seeds
    assert pair["verdict"].startswith("undecided")
    assert f"~{need} seeds per config would decide it" in pair["verdict"]
    assert rows[arms.TIE]["verdict"].startswith("undecided")
    assert f"~{need} seeds per arm would decide them all" in rows[arms.TIE]["verdict"]


def test_an_arm_with_one_seed_is_undecided_with_no_interval_and_no_count():
    rows = verdict_rows(seeded_pair(np.array([0.70, 0.71]), np.array([0.60])))
    assert pair_row(rows)["verdict"].startswith("undecided (difference +") and pair_row(rows)["interval"] is None
    tie = rows[arms.TIE]["verdict"]
    assert tie.startswith("undecided") and f"no interval for {DORA} (one seed" in tie
    assert "straddles" not in tie and "would decide" not in tie


def test_best_lr_across_ranks_and_the_full_fine_tuning_ratio():
    same = trials_frame(
        {
            "adapter.variant=lora adapter.r=1": {1e-4: [0.5], 1e-3: [0.70, 0.70], 1e-2: [0.6]},
            "adapter.variant=lora adapter.r=64": {1e-4: [0.55], 1e-3: [0.71, 0.71], 1e-2: [0.65]},
            "adapter.variant=full": {1e-5: [0.60], 1e-4: [0.72, 0.72], 1e-3: [0.3]},
        }
    )
    lines = verdict_lines(same)
    assert lines["adapter.variant=lora: the best LR is the same across ranks"].startswith("agree")
    assert lines["adapter.variant=lora adapter.r=1: best LoRA LR / best FullFT LR = 10"].startswith("agree")
    apart = trials_frame(
        {
            "adapter.variant=lora adapter.r=1": {1e-4: [0.5], 1e-3: [0.50], 1e-2: [0.70, 0.70]},
            "adapter.variant=lora adapter.r=64": {1e-4: [0.71, 0.71], 1e-3: [0.55], 1e-2: [0.45]},
            "adapter.variant=full": {1e-5: [0.60], 1e-4: [0.72, 0.72], 1e-3: [0.3]},
        }
    )
    lines = verdict_lines(apart)
    assert lines["adapter.variant=lora: the best LR is the same across ranks"].startswith("disagree")
    assert lines["adapter.variant=lora adapter.r=64: best LoRA LR / best FullFT LR = 1"].startswith("disagree")


def test_a_verdict_on_arms_still_improving_says_so():
    frame = trials_frame(
        {"adapter.variant=lora": {1e-3: [0.70, 0.71]}, "adapter.variant=dora": {1e-3: [0.70, 0.70]}}, gain=0.05
    )  # 5 pts > noise
    line = verdict_lines(frame)["the arms tie within tolerance once LR is tuned"]
    assert "not plateaued, trained too short: adapter.variant=lora still gained 5.00 pts" in line
    calm = verdict_lines(
        trials_frame(
            {"adapter.variant=lora": {1e-3: [0.70, 0.71]}, "adapter.variant=dora": {1e-3: [0.70, 0.70]}}, gain=0.001
        )
    )
    assert "not plateaued" not in calm["the arms tie within tolerance once LR is tuned"]


def test_a_verdict_on_a_best_lr_at_the_end_of_its_search_says_the_search_did_not_bracket_it():
    frame = trials_frame(
        {
            "adapter.variant=lora": {1e-4: [0.5], 1e-3: [0.6], 1e-2: [0.70, 0.70]},  # still rising at the top
            "adapter.variant=dora": {1e-4: [0.5], 1e-3: [0.71, 0.71], 1e-2: [0.6]},  # a peak inside the grid
        }
    )
    line = verdict_lines(frame)[
        "adapter.variant=lora ties with the best arm (adapter.variant=dora) at their own best LRs"
    ]
    assert "best LR at the end of the search, a wider one may do better: adapter.variant=lora (highest lr 0.01)" in line
    assert "adapter.variant=dora (" not in line
    two = trials_frame({"adapter.variant=lora": {1e-3: [0.6], 1e-2: [0.7, 0.7]}, "adapter.variant=dora": {1e-2: [0.7]}})
    assert "end of the search" not in verdict_lines(two)["the arms tie within tolerance once LR is tuned"]
