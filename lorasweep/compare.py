"""LR-first comparisons (`sweep.compare`): each arm gets the same budget of its own learning-rate search, then more
seeds at its best learning rate, so arms are compared at their own best LR and not at one LR that suits some.

Arms are sets of config values (a variant, a rank, targets, a quant). The plan is a function of the study: every
trial is enqueued with its arm, LR and seed fixed and tagged with its arm and phase (Optuna user attributes), so a
resumed sweep plans from what its study holds. A range of LRs is searched per arm by a 1-D Optuna sampler that
sees only that arm's trials; a grid gives every arm the same LRs.

    compare:
      arms: {adapter.variant: [lora, dora]}           # every combination of the values; or a list of mappings
      lr: {values: [1.0e-4, 3.0e-4, 1.0e-3]}          # a grid, or {low: 1.0e-5, high: 1.0e-2, sampler: tpe}
      trials_per_arm: 3                               # the LR search's budget per arm (a grid: its size)
      seeds: [0, 1]                                   # the LR search runs at the first, the best LR at the rest
      tolerance: null                                 # the tie band ±tolerance; null = the floor (1 pt in %)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from lorasweep.errors import ConfigError
from lorasweep.samplers import SAMPLERS

ARM = "compare_arm"  # Optuna user attribute and child tag: the arm's label, e.g. "adapter.variant=dora"
PHASE = "compare_phase"  # "lr" (the arm's LR search) or "seeds" (more seeds at its best LR)
LR_KEY, SEED_KEY = "train.lr", "seed"
KEYS = ("arms", "lr", "trials_per_arm", "seeds", "tolerance")
LR_SAMPLERS = ("tpe", "random", "gp")  # 1-D: CMA-ES needs two dimensions or more
WAIT = "wait"  # the next trial depends on trials still running
_ABSENT = object()


@dataclass(frozen=True)
class Compare:
    arms: tuple[Mapping[str, Any], ...]
    lr_values: tuple[float, ...]  # a grid; empty for a range
    low: float | None
    high: float | None
    lr_sampler: Mapping[str, Any]  # {"name": ..., **options} for a range
    trials_per_arm: int
    seeds: tuple[int, ...]
    tolerance: float | None
    labels: tuple[str, ...]  # each arm by the fields it sets: an IA3 arm is not labelled with a rank it lacks

    @property
    def num_trials(self) -> int:
        return len(self.arms) * (self.trials_per_arm + len(self.seeds) - 1)

    @property
    def searched(self) -> tuple[str, ...]:
        return (*self.arms[0], LR_KEY, SEED_KEY)

    def label(self, i: int) -> str:
        return self.labels[i]


def parse(node: Any, cfg: DictConfig) -> tuple[Compare, dict]:
    """Validate sweep.compare against the composed config; returns it and the space dimensions it searches (the arm
    fields, train.lr and seed), as sweep.space would write them."""
    at = "sweep.compare"
    if not isinstance(node, dict):
        raise ConfigError(at, node, "a mapping with arms, lr, seeds (and trials_per_arm, tolerance)")
    for k in node:
        if k not in KEYS:
            raise ConfigError(f"{at}.{k}", node[k], f"unknown key; allowed: {', '.join(KEYS)}")
    arms, labels = _arms(node.get("arms"), cfg)
    lr = node.get("lr")
    if not isinstance(lr, dict) or not ({"values"} <= set(lr) or {"low", "high"} <= set(lr)):
        raise ConfigError(f"{at}.lr", lr, "{values: [lr, ...]} (a grid) or {low: .., high: .., sampler: tpe}")
    values, low, high, sampler = (), None, None, {}
    if "values" in lr:
        extra = set(lr) - {"values"}
        if extra:
            raise ConfigError(f"{at}.lr.{sorted(extra)[0]}", lr[sorted(extra)[0]], "a grid takes values only")
        values = lr["values"]
        if not isinstance(values, list) or len(values) < 2 or not all(_positive(v) for v in values):
            raise ConfigError(f"{at}.lr.values", values, "a list of two or more learning rates > 0")
        if len(set(values)) != len(values):
            raise ConfigError(f"{at}.lr.values", values, "distinct learning rates")
        values = tuple(float(v) for v in values)
    else:
        extra = set(lr) - {"low", "high", "sampler"}
        if extra:
            raise ConfigError(f"{at}.lr.{sorted(extra)[0]}", lr[sorted(extra)[0]], "a range takes low, high, sampler")
        low, high = lr["low"], lr["high"]
        if not _positive(low):
            raise ConfigError(f"{at}.lr.low", low, "a learning rate > 0 (the range is searched on a log scale)")
        if not _positive(high) or high <= low:
            raise ConfigError(f"{at}.lr.high", high, f"a learning rate > low ({low})")
        sampler = lr.get("sampler", "tpe")
        sampler = dict(sampler) if isinstance(sampler, dict) else {"name": sampler}
        if sampler.get("name") not in LR_SAMPLERS:
            raise ConfigError(f"{at}.lr.sampler.name", sampler.get("name"), " | ".join(LR_SAMPLERS))
        _lr_sampler(sampler, 0, 2)  # bad options fail here, not mid-sweep
    given = node.get("trials_per_arm")
    if values:
        if given is not None and given != len(values):
            raise ConfigError(
                f"{at}.trials_per_arm", given, f"{len(values)}, the size of the lr grid (or leave it out)"
            )
        per_arm = len(values)
    elif not isinstance(given, int) or isinstance(given, bool) or given < 2:
        raise ConfigError(f"{at}.trials_per_arm", given, "an int >= 2: the LR search's budget per arm")
    else:
        per_arm = given
    seeds = node.get("seeds", [0, 1])
    if (
        not isinstance(seeds, list)
        or len(seeds) < 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{at}.seeds", seeds, "a list of two or more distinct ints (the LR search runs at the first)")
    tol = node.get("tolerance")
    if tol is not None and not _positive(tol):
        raise ConfigError(f"{at}.tolerance", tol, "a number > 0 in the metric's unit, or null for the floor")
    c = Compare(
        arms=arms,
        lr_values=values,
        low=None if low is None else float(low),
        high=None if high is None else float(high),
        lr_sampler=sampler,
        trials_per_arm=per_arm,
        seeds=tuple(seeds),
        tolerance=None if tol is None else float(tol),
        labels=labels,
    )
    space = {key: {"kind": "choice", "values": _unique([arm[key] for arm in arms])} for key in arms[0]}
    space[LR_KEY] = (
        {"kind": "choice", "values": list(values)} if values else {"kind": "logfloat", "low": low, "high": high}
    )
    space[SEED_KEY] = {"kind": "choice", "values": list(seeds)}
    return c, space


def _arms(node: Any, cfg: DictConfig) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    at = "sweep.compare.arms"
    if isinstance(node, dict) and node:  # every combination of the values
        flat = dict(dotted_items(node))
        for key, vals in flat.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{at}.{key}", vals, "a non-empty list of the values to compare")
        arms = [dict(zip(flat, combo)) for combo in itertools.product(*flat.values())]
    elif isinstance(node, list) and node and all(isinstance(a, dict) and a for a in node):
        arms = [dict(dotted_items(a)) for a in node]
    else:
        raise ConfigError(at, node, "{key: [values]} (every combination) or a list of {key: value} mappings")
    keys = _unique([k for arm in arms for k in arm])
    for key in keys:
        if key in (LR_KEY, SEED_KEY, "train.seed") or key.startswith("sweep."):
            raise ConfigError(f"{at}.{key}", key, "a config field other than train.lr and seed (compare sets those)")
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"{at}.{key}", key, "a config field (e.g. adapter.variant, adapter.r, quant.method)")
    labels = tuple(_name(arm) for arm in arms)
    # An arm that leaves a key out keeps the composed value: every arm sets every key, so each trial's overrides do.
    arms = [{k: arm[k] if k in arm else _value(cfg, k) for k in keys} for arm in arms]
    if len({_name(arm) for arm in arms}) != len(arms):
        raise ConfigError(at, node, "distinct arms")
    if len(arms) < 2:
        raise ConfigError(at, node, "two or more arms to compare")
    return tuple(arms), labels


def _name(arm: dict) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in arm.items())


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def dotted_items(node: dict, prefix: str = ""):
    """(dotted key, leaf) pairs of a nested mapping: `{adapter: {r: [..]}}` and `{adapter.r: [..]}` mean the same."""
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from dotted_items(v, key)
        else:
            yield key, v


def _unique(values: list) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _show(v: Any) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# --- the plan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Next:
    params: dict[str, Any]  # every arm field, train.lr and seed, as Optuna stores them
    attrs: dict[str, str]  # ARM, PHASE


def next_trial(study: optuna.Study, c: Compare, stored, killed: str) -> Next | str | None:
    """The next trial of the plan: the arm that has run the fewest trials and has one to run, LR search first, then
    the remaining seeds at its best LR once its LR search has ended. WAIT when only trials still running decide what
    comes next; None when the plan is done. `stored(key, value)` is the value Optuna stores for a choice; trials
    flagged `killed` (the sweep stopped them) are planned again."""
    by_arm: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):  # one pass over the study, grouped by arm
        if ARM in t.user_attrs and not t.user_attrs.get(killed):
            by_arm.setdefault(t.user_attrs[ARM], []).append(t)
    options, waiting = [], False
    for i in range(len(c.arms)):
        label = c.label(i)
        mine = by_arm.get(label, [])
        search = [t for t in mine if t.user_attrs.get(PHASE) == "lr"]
        if len(search) < c.trials_per_arm:
            options.append((len(mine), i, "lr", search))
            continue
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in search):
            waiting = True
            continue
        best = best_lr(search, study.direction)
        seeded = {t.params.get(SEED_KEY) for t in mine if t.user_attrs.get(PHASE) == "seeds"}
        left = [s for s in c.seeds[1:] if s not in seeded]
        if best is not None and left:
            options.append((len(mine), i, "seeds", (best, left[0])))
    if not options:
        return WAIT if waiting else None
    _, i, phase, what = min(options, key=lambda o: (o[0], o[1]))
    arm = {k: stored(k, v) for k, v in c.arms[i].items()}
    if phase == "lr":
        tried = {t.params.get(LR_KEY, t.system_attrs.get("fixed_params", {}).get(LR_KEY)) for t in what}
        lr = next(v for v in c.lr_values if v not in tried) if c.lr_values else _next_lr(c, what, study.direction, i)
        seed = c.seeds[0]
    else:
        lr, seed = what
    return Next({**arm, LR_KEY: lr, SEED_KEY: seed}, {ARM: c.label(i), PHASE: phase})


def best_lr(search: list[optuna.trial.FrozenTrial], direction) -> float | None:
    """The learning rate of an arm's best COMPLETE LR-search trial, or None when none completed."""
    done = [t for t in search if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: sign * t.value).params[LR_KEY]


def _next_lr(c: Compare, search: list[optuna.trial.FrozenTrial], direction, arm: int) -> float:
    """One arm's next LR from a 1-D study that holds only this arm's finished LR-search trials."""
    dist = optuna.distributions.FloatDistribution(c.low, c.high, log=True)
    study = optuna.create_study(
        direction=direction, sampler=_lr_sampler(c.lr_sampler, arm, c.trials_per_arm, len(search))
    )
    for t in search:
        if t.state == TrialState.COMPLETE or t.state == TrialState.PRUNED:
            study.add_trial(
                optuna.trial.create_trial(
                    state=t.state,
                    value=t.value if t.state == TrialState.COMPLETE else None,
                    params={"lr": t.params[LR_KEY]},
                    distributions={"lr": dist},
                    intermediate_values=t.intermediate_values,
                )
            )
    return study.ask({"lr": dist}).params["lr"]


def _lr_sampler(node: Mapping[str, Any], arm: int, per_arm: int, asked: int = 0) -> optuna.samplers.BaseSampler:
    """The 1-D sampler: seeded per arm and per draw, so arms do not replay one another's LRs. TPE starts modelling
    after half the arm's budget (its default of 10 random trials is more than most arms get)."""
    opts = {k: v for k, v in node.items() if k not in ("name", "seed")}
    base = node.get("seed", 0) or 0
    if node["name"] == "tpe":
        opts.setdefault("n_startup_trials", max(1, per_arm // 2))
    try:
        return SAMPLERS[node["name"]](seed=base + 1000 * arm + asked, **opts)
    except (TypeError, ValueError) as e:
        raise ConfigError("sweep.compare.lr.sampler", dict(node), str(e).strip().splitlines()[0]) from None
