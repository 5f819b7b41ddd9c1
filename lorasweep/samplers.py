"""The Optuna samplers and pruners a sweep may name, and building them from a config node: shared by the search
space (space.py), LR-first comparisons (compare.py) and every worker (worker.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from lorasweep.errors import ConfigError

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "grid", "gp", "nsga2")  # CMA-ES optimises one objective
NEEDS = {"cmaes": ["cmaes"], "gp": ["torch", "scipy"]}  # Optuna imports these only when it first samples
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
    "asha": None,  # Ray ASHA's argument names for Optuna's successive halving: see asha()
}


def build_pruner(node: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The Optuna pruner for {"name": ..., **options}: the same in the driver and in every worker."""
    opts = dict(node)
    name = opts.pop("name")
    return build(asha if name == "asha" else PRUNERS[name], opts, "sweep.pruner", name)


def asha(
    grace_period: int = 1,
    reduction_factor: int = 4,
    time_attr: str = "step",
    max_t: int | None = None,
    brackets: int = 1,
) -> optuna.pruners.SuccessiveHalvingPruner:
    """`asha` takes Ray ASHAScheduler's names for what is Optuna's SuccessiveHalvingPruner (asynchronous successive
    halving, the same algorithm): rungs at grace_period × reduction_factor^k steps. max_t is the trial's own
    length here (train.max_steps), so it only has to be at least grace_period."""
    if time_attr != "step":
        raise ValueError(f"time_attr={time_attr!r}: trials report by training step, so only 'step'")
    if brackets != 1:
        raise ValueError(f"brackets={brackets}: one bracket (use hyperband for several)")
    if max_t is not None and max_t < grace_period:
        raise ValueError(f"max_t={max_t} must be >= grace_period={grace_period}")
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=grace_period, reduction_factor=reduction_factor, min_early_stopping_rate=0
    )


def build(cls: type, args: dict, where: str, name: str) -> Any:
    try:
        return cls(**args)
    except ImportError as e:
        raise ConfigError(f"{where}.name", name, f"needs an optional package: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(
            where,
            {"name": name, **{k: v for k, v in args.items() if k != "search_space"}},
            str(e).strip().splitlines()[0],
        ) from None
