"""The estimator inside sweeps: GPU shares for gpus_per_trial=auto, and the fit check that refuses a trial."""

import pytest

from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.estimate import estimate
from lorasweep.resources import check_engine, fit_check, gpu_share


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(["sweep=smoke"])
    return cfg, estimate(cfg)["memory"]["total"]["bytes"] / 2**30


@pytest.mark.parametrize(
    "need_over_gpu,share", [(0.05, 0.125), (0.1, 0.125), (0.2, 0.25), (0.3, 0.5), (0.75, 1.0), (1.5, 1.0)]
)
def test_auto_share_is_the_smallest_that_holds_the_estimate(tiny, need_over_gpu, share):
    cfg, need = tiny
    assert gpu_share(cfg, need / need_over_gpu) == share  # 1.5: it fits no share; the fit check then refuses it


def test_fit_check_refuses_with_both_sizes(tiny):
    cfg, need = tiny
    cfg.engine.gpu_memory_gb = need * 2
    fit_check(cfg, 0.5)  # exactly enough: runs
    with pytest.raises(MemoryError) as e:
        fit_check(cfg, 0.25)
    assert str(e.value).startswith(f"would need {need:.1f} GB, has {need / 2:.1f} GB (0.25 of a GPU)")


def test_fit_check_needs_a_gpu_size_without_a_gpu(tiny, no_gpu):
    cfg, _ = tiny
    cfg.engine.gpu_memory_gb = None
    with pytest.raises(ConfigError, match="engine.gpu_memory_gb"):
        fit_check(cfg, 0.5)


@pytest.mark.parametrize(
    "field,value", [("gpus_per_trial", -1), ("gpus_per_trial", 1.5), ("gpus_per_trial", "half"), ("cpus_per_trial", 0)]
)
def test_bad_engine_fields(field, value):
    cfg = compose([])
    cfg.engine[field] = value
    with pytest.raises(ConfigError, match=f"engine.{field}"):
        check_engine(cfg)


def test_auto_shares_without_a_gpu_size_are_refused_before_the_sweep_starts(store, capsys, no_gpu):
    from lorasweep.cli import main
    from tests.conftest import all_runs

    assert main(["sweep", "sweep=smoke", "engine.gpus_per_trial=auto"]) == 2
    assert capsys.readouterr().err.strip().startswith("lorasweep: error: engine.gpu_memory_gb=None is not allowed")
    assert all_runs(store) == []
