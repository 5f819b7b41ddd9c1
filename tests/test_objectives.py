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


def test_an_objective_no_trial_logs_is_refused_before_anything_starts(capsys):
    from lorasweep.cli import main

    assert main(["sweep", *BASE, "+sweep.objectives={eval_loss:min,vram_gb:min}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.objectives.vram_gb" in err[0] and "peak_memory_mb" in err[0]


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
