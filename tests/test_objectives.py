"""Multi-objective sweeps (sweep.objectives): parsing names the field, no pruner, the Pareto set on known points."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from lorasweep.analysis.tables import leaderboard, pareto
from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.space import parse_sweep

BASE = ["sweep=smoke", "~sweep.pruner", "~sweep.metric", "~sweep.mode"]
TWO = "+sweep.objectives={eval_loss:min,trainable_params:min}"


def test_objectives_set_the_metric_directions_and_switch_pruning_off():
    spec = parse_sweep(compose([*BASE, TWO]))
    assert (spec.metric, spec.mode) == ("eval_loss", "min")
    assert spec.metrics == ["eval_loss", "trainable_params"] and spec.directions == ["minimize", "minimize"]
    assert spec.pruner == "none"
    one = parse_sweep(compose(["sweep=smoke"]))
    assert one.metrics == ["eval_loss"] and one.directions == ["minimize"] and one.objectives == ()


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["sweep=smoke", "~sweep.metric", "~sweep.mode", TWO], "sweep.pruner.name"),  # smoke prunes: refused
        ([*BASE, "+sweep.objectives={eval_loss:min}"], "sweep.objectives"),
        ([*BASE, "+sweep.objectives={eval_loss:min,trainable_params:least}"], "sweep.objectives.trainable_params"),
        ([*BASE, TWO, "+sweep.metric=eval_perplexity"], "sweep.metric"),
        ([*BASE, TWO, "~sweep.sampler", "+sweep.sampler={name:cmaes}"], "sweep.sampler.name"),
    ],
)
def test_bad_objectives_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        parse_sweep(compose(overrides))
    assert e.value.field == field


def test_an_objective_no_trial_logs_is_refused_before_anything_starts(store, tmp_path, capsys):
    from lorasweep.cli import main
    from tests.conftest import all_runs

    assert main(["sweep", *BASE, "+sweep.objectives={eval_loss:min,vram_gb:min}"]) == 2  # run in tmp_path (store)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.objectives.vram_gb" in err[0] and "peak_memory_mb" in err[0]
    assert all_runs(store) == [] and not (tmp_path / "sweeps_out").exists()


def test_pareto_set_on_known_points():
    pts = pd.DataFrame(
        {
            "acc": [0.90, 0.85, 0.80, 0.80, 0.70, 0.95, float("nan")],
            "params": [1000, 500, 500, 100, 100, 5000, 10],
        }
    )
    # 0.90@1000, 0.85@500, 0.80@100, 0.95@5000 are on the front; 0.80@500 loses to 0.85@500, 0.70@100 to 0.80@100;
    # a trial with a missing value is never on it.
    assert pareto(pts, {"acc": "max", "params": "min"}).tolist() == [True, True, False, True, False, True, False]
    # turned around: 0.80@500 beats 0.85@500 and 0.80@100; 0.90@1000, 0.70@100 and 0.95@5000 stay unbeaten
    assert pareto(pts, {"acc": "min", "params": "max"}).tolist() == [True, False, True, False, True, True, False]
    ties = pd.DataFrame({"a": [1.0, 1.0], "b": [2.0, 2.0]})  # equal points dominate neither: both stay
    assert pareto(ties, {"a": "max", "b": "max"}).tolist() == [True, True]


def test_leaderboard_marks_only_finished_trials_on_the_front():
    trials = pd.DataFrame(
        {
            "tags.optuna_trial": ["0", "1", "2", "3"],
            "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
            "metrics.eval_accuracy": [0.8, 0.7, 0.99, 0.6],
            "metrics.trainable_params": [1000, 100, 1, 500],
            "run_id": list("abcd"),
        }
    )
    board = leaderboard(trials, [], "eval_accuracy", "max", {"eval_accuracy": "max", "trainable_params": "min"})
    assert dict(zip(board["trial"], board["pareto"])) == {"0": True, "1": True, "2": False, "3": False}


def test_a_searched_seed_is_one_leaderboard_column():
    """paper_table6 grids over seed: params.seed and the derived `seed` column once made two columns of one name."""
    trials = pd.DataFrame(
        {
            "tags.optuna_trial": ["0", "1"],
            "state": ["COMPLETE", "COMPLETE"],
            "metrics.eval_accuracy": [0.7, 0.8],
            "params.adapter.r": ["1", "64"],
            "params.seed": ["0", "1"],
            "seed": pd.array([0, 1], dtype="Int64"),
            "run_id": list("ab"),
        }
    )
    board = leaderboard(trials, ["seed", "adapter.r"], "eval_accuracy", "max")
    assert list(board.columns) == ["trial", "state", "eval_accuracy", "adapter.r", "seed", "run_id"]
    assert board["seed"].tolist() == [1, 0]


# ------------------------------------------------------------------ sweep.max_cost: bounds on predicted costs


@pytest.mark.parametrize(
    "bounds,field",
    [
        ("{peak_memory_mb:4096}", "sweep.max_cost.peak_memory_mb"),  # measured while training: not known before
        ("{est_vram_mb:-1}", "sweep.max_cost.est_vram_mb"),
        ("{trainable_params:lots}", "sweep.max_cost.trainable_params"),
        ("{}", "sweep.max_cost"),
    ],
)
def test_bad_cost_bounds_name_the_field(bounds, field):
    with pytest.raises(ConfigError) as e:
        parse_sweep(compose(["sweep=smoke", f"+sweep.max_cost={bounds}"]))
    assert e.value.field == field


def test_cost_bounds_are_refused_where_the_estimator_cannot_price_the_targets():
    """spectrum: targets pick layers by their weights; the estimator counts one block and multiplies by the depth."""
    searched = "+sweep.space.adapter.targets={kind:choice,values:[[q_proj],['spectrum:50%']]}"
    for extra in (["adapter.targets=[spectrum:50%]"], [searched]):
        with pytest.raises(ConfigError) as e:
            parse_sweep(compose(["sweep=smoke", "+sweep.max_cost={est_vram_mb:4096}", *extra]))
        assert e.value.field == "sweep.max_cost" and "spectrum:50%" in str(e.value)
    spec = parse_sweep(compose(["sweep=smoke", "+sweep.max_cost={est_vram_mb:4096,trainable_params:1.0e5}"]))
    assert spec.max_cost == (("est_vram_mb", 4096.0), ("trainable_params", 1.0e5))


def test_predicted_costs_name_each_bound_a_config_is_over():
    from lorasweep.estimate import over_limits, predicted

    costs = predicted(compose(["sweep=smoke", "adapter.r=8"]))
    half = costs["trainable_params"] / 2
    assert over_limits(costs, (("trainable_params", 2 * half),)) is None  # at the bound is within it
    why = over_limits(costs, (("trainable_params", half), ("est_vram_mb", 10 * costs["est_vram_mb"])))
    n = costs["trainable_params"]
    assert why == f"not trained: predicted trainable_params {n:,.0f} > {half:,.0f} (sweep.max_cost)"
