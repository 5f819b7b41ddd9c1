"""The Optuna-pruner bridge in a real Ray Tune run: a below-median trial is stopped early and stored PRUNED."""

import functools
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna
import pytest
import ray
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.prune import OptunaPruning, make_scheduler
from lorasweep.space import make_sampler, parse_sweep, suggest, to_overrides

STEPS = list(range(10, 101, 10))                      # training steps at which the trainable "evaluates"
QUALITY = {8: 1.0, 4: 0.9, 2: 0.2}                     # adapter.r -> final score; r=2 is the bad trial
ORDER = [8, 4, 8, 2]                                   # enqueued so the bad trial comes last


def curve(config: dict) -> None:
    q = QUALITY[config["adapter.r"]]
    assert config["adapter.alpha"] == config["adapter.r"] * config["alpha_mult"]  # derived value arrived
    for step in STEPS:
        time.sleep(0.05)
        tune.report({"score": q * (1.0 - 0.5 ** (step / 10)), "step": step})


@pytest.fixture(scope="module")
def ray_cluster():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _spec(*extra: str):
    pruner = ["sweep.pruner.n_startup_trials=2", "+sweep.pruner.n_warmup_steps=20"] if not extra else []
    return parse_sweep(compose([
        "sweep=smoke", "sweep.metric=score", "sweep.mode=max", "sweep.num_trials=4", "sweep.max_concurrent=2",
        *pruner, *extra]))


def test_median_pruner_stops_bad_trial_and_marks_it_pruned(ray_cluster, tmp_path) -> None:
    spec = _spec()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = OptunaSearch(
        space=functools.partial(suggest, spec=spec), metric=spec.metric, mode=spec.mode,
        sampler=make_sampler(spec), storage=optuna.storages.RDBStorage(url), study_name="bridge",
        points_to_evaluate=[{"adapter.r": r} for r in ORDER],
    )
    scheduler = make_scheduler(spec, ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent))
    assert isinstance(scheduler, OptunaPruning)
    results = tune.Tuner(
        curve,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent),
                                    scheduler=scheduler, num_samples=spec.num_trials),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="bridge", verbose=0),
    ).fit()

    assert not results.errors
    by_r: dict[int, list] = {}
    for res in results:
        by_r.setdefault(res.config["adapter.r"], []).append(res)
        assert set(to_overrides(res.config, spec)) >= {f"adapter.r={res.config['adapter.r']}"}
        assert not any(o.startswith("alpha_mult=") for o in to_overrides(res.config, spec))  # helper left out
    (bad,) = by_r[2]
    assert 20 <= bad.metrics["step"] < STEPS[-1]          # stopped early, not before the warmup steps
    assert all(r.metrics["step"] == STEPS[-1] for r in by_r[8] + by_r[4])
    assert bad.metrics["trial_id"] in scheduler.pruned and len(scheduler.pruned) == 1

    trials = optuna.load_study(study_name="bridge", storage=url).get_trials()
    assert len(trials) == 4
    states = {t.params["adapter.r"]: [] for t in trials}
    for t in trials:
        states[t.params["adapter.r"]].append(t.state)
    assert states[2] == [optuna.trial.TrialState.PRUNED]
    assert states[8] == [optuna.trial.TrialState.COMPLETE] * 2 and states[4] == [optuna.trial.TrialState.COMPLETE]
    pruned = next(t for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    # Intermediate values are keyed by training step (the result's "step"), not by training_iteration.
    assert set(pruned.intermediate_values) <= set(STEPS) and max(pruned.intermediate_values) == bad.metrics["step"]
    assert pruned.value == pytest.approx(pruned.intermediate_values[bad.metrics["step"]])
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == STEPS
            assert t.value == pytest.approx(QUALITY[t.params["adapter.r"]] * (1 - 0.5 ** 10))


def test_asha_is_selectable() -> None:
    spec = _spec("~sweep.pruner", "+sweep.pruner={name:asha,grace_period:2,max_t:10,reduction_factor:2}")
    sched = make_scheduler(spec, None)
    assert isinstance(sched, ASHAScheduler)
    assert sched.metric == "score" and sched._mode == "max"
    bad = _spec("~sweep.pruner", "+sweep.pruner={name:asha,grace_period:20,max_t:10}")
    with pytest.raises(ConfigError) as e:
        make_scheduler(bad, None)
    assert e.value.field == "sweep.pruner"
    with pytest.raises(ConfigError) as e:
        _spec("~sweep.pruner", "+sweep.pruner={name:asha,patience:3}")
    assert e.value.field == "sweep.pruner.patience"


def test_no_pruner_and_wrong_searcher() -> None:
    spec = _spec("~sweep.pruner", "+sweep.pruner={name:none}")
    searcher = OptunaSearch(space=functools.partial(suggest, spec=spec), metric="score", mode="max")
    assert type(make_scheduler(spec, searcher)) is FIFOScheduler
    with pytest.raises(TypeError, match="OptunaSearch"):
        make_scheduler(_spec(), BasicVariantGenerator())
