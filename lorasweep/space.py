"""Search space: parse and validate cfg.sweep, sample one trial's overrides, build the Optuna sampler and pruner."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf

from lorasweep import compare as compare_arms
from lorasweep.compare import Compare
from lorasweep.errors import ConfigError
from lorasweep.samplers import MULTI_OBJECTIVE_SAMPLERS, NEEDS, PRUNERS, SAMPLERS, asha, build, build_pruner
from lorasweep.schema import FIELDS, SEED_KEYS, SWEEP_FIELDS, check_value

# cfg.sweep schema (a sweeps/<name>.yaml under `# @package _global_`, next to base fields like train.max_steps):
#   metric: eval_loss          mode: max | min
#   sampler: {name: tpe | random | grid | cmaes | gp, seed: 0, <sampler kwargs>}
#   pruner:  {name: median | percentile | successive_halving | hyperband | none | asha, <pruner kwargs>}
#   num_trials: 12   max_concurrent: 2   time_limit_s: 600   max_failures: 0   description: "..."
#   warm_start: <an earlier sweep's id or name>   warm_start_top_k: 3   (lorasweep/warmstart.py)
#   objectives: {eval_accuracy: max, trainable_params: min}: a multi-objective study (its first objective is metric)
#   max_cost: {est_vram_mb: 4096, trainable_params: 1.0e6}: upper bounds on costs the estimator predicts; a config
#     over one is SKIPPED before it trains (an Optuna constraint, so the sampler learns to avoid it)
#   compare: {arms, lr, trials_per_arm, seeds, tolerance}: LR-first comparisons (lorasweep/compare.py); it plans
#     every trial, so the space then holds only fixed and derived dimensions
#   space: nested (adapter: {r: ...}) or dotted (adapter.r: ...) config keys -> dimension:
#     {kind: choice | grid, values: [...]}   {kind: int, low, high, step: 1, log: false}
#     {kind: float | logfloat, low, high}    {kind: fixed, value: ...}
#     {derived: mul | add | first, of: [key or number, ...]}
#   any dimension may add `when: {key: [values]}` (sampled only then) and `helper: true` (a searched name
#   that is not a config field: it feeds when/derived and is not an override).

KINDS = ("choice", "int", "float", "logfloat", "grid", "fixed")
OPS = ("mul", "add", "first")  # first: the first operand set in this trial (per-branch values)
SWEEP_KEYS = tuple(k.removeprefix("sweep.") for k in SWEEP_FIELDS)  # their defaults and help: schema.SweepCfg
DIM_KEYS = {
    "choice": {"values"},
    "grid": {"values"},
    "fixed": {"value"},
    "int": {"low", "high", "step", "log"},
    "float": {"low", "high"},
    "logfloat": {"low", "high"},
}
_COMMON = {"kind", "when", "helper"}
_ABSENT = object()


@dataclass(frozen=True)
class Dim:
    """One dimension: a config field (dotted key) or a helper that only feeds `when`/`derived`."""

    key: str
    kind: str  # one of KINDS, or "derived"
    low: float | None = None
    high: float | None = None
    step: int = 1
    log: bool = False
    values: tuple = ()  # choice / grid
    value: Any = None  # fixed
    op: str | None = None  # derived
    of: tuple = ()  # derived operands: keys or numbers
    when: Mapping[str, tuple] = field(default_factory=dict)
    helper: bool = False
    cast: str | None = None  # derived: "int" or "float", the type of the field it sets


@dataclass(frozen=True)
class Confirm:
    """sweep.confirm: after the search, the top_k best distinct configs are re-trained with `seeds` new seeds."""

    top_k: int
    seeds: int


CONFIRM_KEYS = {"top_k": 2, "seeds": 3}  # the defaults: the winner and its runner-up, three seeds each


@dataclass(frozen=True)
class SweepSpec:
    """A validated cfg.sweep; dims are in sampling order (each after what it depends on)."""

    metric: str
    mode: str
    dims: tuple[Dim, ...]
    sampler: str = "tpe"
    seed: int | None = None
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: Mapping[str, Any] = field(default_factory=dict)
    num_trials: int = 10
    max_concurrent: int = 1
    time_limit_s: float | None = None
    max_failures: int | None = None
    base: Mapping[str, Any] = field(default_factory=dict)  # composed value of every referenced config field
    description: str | None = None
    warm_start: str | None = None  # an earlier sweep's id or name
    warm_start_top_k: int = 3
    compare: Compare | None = None  # LR-first arms: the plan decides every trial
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of each objective; () = metric, mode alone
    max_cost: tuple[tuple[str, float], ...] = ()  # (predicted cost, upper bound): checked before a trial trains
    confirm: Confirm | None = None  # re-train the best configs with new seeds after the search (confirm.py)

    @property
    def metrics(self) -> list[str]:
        """The objectives' names, in order (one: the metric)."""
        return [m for m, _ in self.objectives] or [self.metric]

    @property
    def directions(self) -> list[str]:
        return [
            "maximize" if mode == "max" else "minimize" for _, mode in self.objectives or [(self.metric, self.mode)]
        ]

    def dim(self, key: str) -> Dim | None:
        return next((d for d in self.dims if d.key == key), None)

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in grid_space(self).values())


# --- parsing -------------------------------------------------------------------------------------


def parse_sweep(cfg: DictConfig) -> SweepSpec:
    """Validate cfg.sweep against the composed config; any problem is a ConfigError naming the field."""
    node = cfg.get("sweep") if isinstance(cfg, DictConfig) else None
    if node is None:
        raise ConfigError("sweep", None, "pick one with sweep=<name> (a file in sweeps/)")
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(raw, dict):
        raise ConfigError("sweep", raw, "a mapping with metric, mode, space, ...")
    for k in raw:
        if k not in SWEEP_KEYS:
            raise ConfigError(f"sweep.{k}", raw[k], f"unknown key; allowed: {', '.join(SWEEP_KEYS)}")

    objectives = _objectives(raw)
    if objectives:  # the first objective is the sweep's metric: what single-valued views (and names) show
        for key, value in zip(("metric", "mode"), objectives[0]):
            if raw.get(key) not in (None, value):
                raise ConfigError(f"sweep.{key}", raw[key], f"{value} (the first of sweep.objectives), or left out")
            raw[key] = value
        pruner_given = raw.get("pruner", {"name": "none"})
        if (pruner_given.get("name") if isinstance(pruner_given, dict) else pruner_given) != "none":
            raise ConfigError(
                "sweep.pruner.name",
                pruner_given.get("name") if isinstance(pruner_given, dict) else pruner_given,
                "none with sweep.objectives: Optuna cannot prune a multi-objective study",
            )
        raw["pruner"] = {"name": "none"}
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError("sweep.metric", metric, "required: the reported metric to optimise, e.g. eval_loss")
    mode = raw.get("mode")
    if mode not in ("max", "min"):
        raise ConfigError("sweep.mode", mode, "max | min")
    num_trials = _int(raw.get("num_trials", _default("num_trials")), "sweep.num_trials", 1)
    max_concurrent = _int(raw.get("max_concurrent", _default("max_concurrent")), "sweep.max_concurrent", 1)
    # Failed trials tolerated before the sweep stops launching new ones; null = no limit.
    max_failures = raw.get("max_failures")
    max_failures = None if max_failures is None else _int(max_failures, "sweep.max_failures", 0)
    time_limit_s = raw.get("time_limit_s")
    if time_limit_s is not None and (not _is_num(time_limit_s) or time_limit_s <= 0):
        raise ConfigError("sweep.time_limit_s", time_limit_s, "a number of seconds > 0, or null")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError("sweep.description", description, "a string")

    warm_start = raw.get("warm_start")
    if warm_start is not None and (not isinstance(warm_start, str) or not warm_start):
        raise ConfigError("sweep.warm_start", warm_start, "an earlier sweep's id or name, or null")
    warm_start_top_k = _int(raw.get("warm_start_top_k", _default("warm_start_top_k")), "sweep.warm_start_top_k", 1)

    sampler, seed, sampler_options = _named(raw.get("sampler", {"name": "tpe"}), "sweep.sampler", SAMPLERS)
    pruner, _, pruner_options = _named(raw.get("pruner", {"name": "median"}), "sweep.pruner", PRUNERS, seeded=False)

    space_node, compare = raw.get("space"), None
    if raw.get("compare") is not None:
        compare, space_node, num_trials = _compared(raw, cfg)
        sampler, seed, sampler_options = "random", 0, {}  # never draws: every trial is enqueued by the plan
    dims, base = _parse_space(space_node, cfg)
    spec = SweepSpec(
        metric=metric,
        mode=mode,
        dims=dims,
        sampler=sampler,
        seed=seed,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        num_trials=num_trials,
        max_concurrent=max_concurrent,
        time_limit_s=time_limit_s,
        max_failures=max_failures,
        base=base,
        description=description,
        warm_start=warm_start,
        warm_start_top_k=warm_start_top_k,
        compare=compare,
        objectives=objectives,
        max_cost=_max_cost(raw, cfg, dims),
        confirm=parse_confirm(raw),
    )
    if objectives and sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise ConfigError(
            "sweep.sampler.name", sampler, f"one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)} with objectives"
        )
    for d in dims if compare else ():
        if d.kind not in ("fixed", "derived") and d.key not in compare.searched:
            raise ConfigError(
                f"sweep.space.{d.key}.kind", d.kind, "fixed or derived with sweep.compare: its plan sets every search"
            )

    if sampler == "grid":
        for d in dims:
            if d.kind not in ("grid", "fixed", "derived"):
                raise ConfigError(
                    f"sweep.space.{d.key}.kind",
                    d.kind,
                    "the grid sampler enumerates only grid dimensions (fixed/derived are fine)",
                )
        if not grid_space(spec):
            raise ConfigError("sweep.space", None, "the grid sampler needs at least one grid dimension")
        if num_trials > spec.grid_size:
            raise ConfigError("sweep.num_trials", num_trials, f"at most {spec.grid_size}, the size of the grid")
    # Build once so bad options (or a missing optional package) fail here, not mid-sweep.
    make_sampler(spec)
    make_pruner(spec)
    return spec


def _objectives(raw: dict) -> tuple[tuple[str, str], ...]:
    """sweep.objectives: {metric: max | min, ...} in order, two or more."""
    node = raw.get("objectives")
    if node is None:
        return ()
    if not isinstance(node, dict) or len(node) < 2:
        raise ConfigError(
            "sweep.objectives",
            node,
            "two or more {metric: max | min}, e.g. {eval_accuracy: max, trainable_params: min}",
        )
    for metric, mode in node.items():
        if mode not in ("max", "min"):
            raise ConfigError(f"sweep.objectives.{metric}", mode, "max | min")
    return tuple(node.items())


def parse_confirm(sweep: Mapping) -> Confirm | None:
    """sweep.confirm from the raw sweep mapping (its siblings decide what it may be combined with)."""
    node = sweep.get("confirm")
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError("sweep.confirm", node, "{top_k: K, seeds: S}: re-train the K best configs with S seeds")
    for key, value in node.items():
        if key not in CONFIRM_KEYS:
            raise ConfigError(f"sweep.confirm.{key}", value, f"unknown key; allowed: {', '.join(CONFIRM_KEYS)}")
    top_k, seeds = (node.get(k, d) for k, d in CONFIRM_KEYS.items())
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError("sweep.confirm.top_k", top_k, "an int >= 1: the best distinct configs to re-train")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 2:
        raise ConfigError("sweep.confirm.seeds", seeds, "an int >= 2: new seeds per config (one has no spread)")
    budget = sweep.get("num_trials")
    if isinstance(budget, int) and top_k > budget:
        raise ConfigError("sweep.confirm.top_k", top_k, f"at most sweep.num_trials ({budget}): configs the search ran")
    for sibling, why in (("objectives", "a Pareto front has no K best"), ("compare", "compare runs its own seeds")):
        if sweep.get(sibling) is not None:
            raise ConfigError("sweep.confirm", dict(node), f"absent with sweep.{sibling}: {why}")
    space = sweep.get("space")
    searched = compare_arms.dotted_items(space) if isinstance(space, Mapping) else ()
    if any(k.rpartition(".")[0] in SEED_KEYS for k, _ in searched):  # seed: {kind: ..., values: ...}
        raise ConfigError("sweep.confirm", dict(node), "absent when sweep.space searches the seed: confirm sets it")
    return Confirm(top_k, seeds)


def _max_cost(raw: dict, cfg: DictConfig, dims: tuple[Dim, ...]) -> tuple[tuple[str, float], ...]:
    """sweep.max_cost: {predicted cost: upper bound}. The estimator counts one block of a stack and multiplies by
    its depth, so it cannot price `spectrum:` targets, which pick layers by their weights: they are refused."""
    from lorasweep.config import PREDICTED_COSTS
    from lorasweep.targets import spectrum_percent

    node = raw.get("max_cost")
    if node is None:
        return ()
    if not isinstance(node, dict) or not node:
        raise ConfigError("sweep.max_cost", node, f"a mapping {{cost: upper bound}} of {', '.join(PREDICTED_COSTS)}")
    for cost, bound in node.items():
        if cost not in PREDICTED_COSTS:
            allowed = f"a cost known before training: {', '.join(PREDICTED_COSTS)}"
            raise ConfigError(f"sweep.max_cost.{cost}", bound, allowed)
        if not _is_num(bound) or bound <= 0:
            raise ConfigError(f"sweep.max_cost.{cost}", bound, "a number > 0")
    searched = [v for d in dims if d.key == "adapter.targets" for v in (*d.values, d.value) if v is not None]
    for targets in [cfg.adapter.targets, *searched]:
        for t in [targets] if isinstance(targets, str) else targets:
            if spectrum_percent(t) is not None:
                why = f"absent with spectrum targets ({t}): the estimator cannot price them"
                raise ConfigError("sweep.max_cost", node, why)
    return tuple((cost, float(bound)) for cost, bound in node.items())


def _compared(raw: dict, cfg: DictConfig) -> tuple[Compare, dict, int]:
    """sweep.compare, checked against the rest of the sweep: its dimensions join the space, its plan is the budget."""
    for key, why in (("sampler", "the plan picks every trial (give compare.lr.sampler)"), ("warm_start", "")):
        if raw.get(key) is not None:
            raise ConfigError(f"sweep.{key}", raw[key], f"absent with sweep.compare: {why or 'each arm starts afresh'}")
    plan, generated = compare_arms.parse(raw["compare"], cfg)
    user = dict(_walk(raw["space"], "")) if isinstance(raw.get("space"), dict) and raw["space"] else {}
    for key in user:
        if key in generated:
            raise ConfigError(f"sweep.space.{key}", user[key], "absent: sweep.compare searches it")
    given = raw.get("num_trials")
    if given is not None and given != plan.num_trials:
        raise ConfigError(
            "sweep.num_trials",
            given,
            f"{plan.num_trials} with sweep.compare ({len(plan.arms)} arms x ({plan.trials_per_arm} LR trials + "
            f"{len(plan.seeds) - 1} more seeds)), or leave it out",
        )
    return plan, {**generated, **user}, plan.num_trials


def stored(spec: SweepSpec, key: str, value: Any) -> Any:
    """The value Optuna stores for `value` of a choice dimension: list values travel as their override text."""
    labels = _labels(spec.dim(key))
    return labels[list(spec.dim(key).values).index(value)] if labels else value


def _named(node: Any, where: str, table: Mapping[str, Any], seeded: bool = True) -> tuple[str, Any, dict]:
    if isinstance(node, str):
        node = {"name": node}
    if not isinstance(node, dict):
        raise ConfigError(where, node, f"a mapping with name: {' | '.join(table)}")
    opts = dict(node)
    name = opts.pop("name", None)
    if name not in table:
        raise ConfigError(f"{where}.name", name, " | ".join(table))
    seed = opts.pop("seed", None) if seeded else None
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"{where}.seed", seed, "an int or null")
    target = asha if name == "asha" else table[name]
    params = {
        p: v
        for p, v in inspect.signature(target).parameters.items()
        if p not in ("seed", "search_space", "metric", "mode")
    }
    if name == "none":  # pruning off: `sweep.pruner.name=none` switches it off, whatever options were set
        opts = {}
    for k, v in opts.items():
        if k not in params:
            raise ConfigError(f"{where}.{k}", v, f"not an option of {name}; allowed: {', '.join(params) or 'none'}")
    for p, param in params.items():
        if param.default is inspect.Parameter.empty and p not in opts:
            raise ConfigError(f"{where}.{p}", None, f"required by {name}")
    return name, seed, opts


def _parse_space(node: Any, cfg: DictConfig) -> tuple[tuple[Dim, ...], dict[str, Any]]:
    if not isinstance(node, dict) or not node:
        raise ConfigError("sweep.space", node, "a non-empty mapping from config key to dimension")
    raw = dict(_walk(node, ""))
    dims = {key: _parse_dim(key, d, cfg) for key, d in raw.items()}
    base: dict[str, Any] = {}

    def ref(key: str, where: str) -> Any:
        """What a reference may hold: its dimension, else the composed config's value."""
        if key in dims:
            if not dims[key].helper:
                base[key] = _config_value(cfg, key)
            return dims[key]
        value = _config_value(cfg, key)
        if value is _ABSENT or key.startswith("sweep."):
            raise ConfigError(where, key, "neither a dimension of this space nor a config field")
        base[key] = value
        return value

    for d in dims.values():
        for k, allowed in d.when.items():
            where = f"sweep.space.{d.key}.when.{k}"
            if k == d.key:
                raise ConfigError(where, list(allowed), "a dimension cannot depend on itself")
            target = ref(k, where)
            possible = _possible(target, base.get(k))
            for v in allowed:
                if k in FIELDS:
                    check_value(k, v, where)
                if possible is not None and v not in possible:
                    raise ConfigError(where, v, f"{k} never takes it; possible: {_show(possible)}")
        for o in d.of:
            where = f"sweep.space.{d.key}.of"
            if _is_num(o):
                continue
            if o == d.key:
                raise ConfigError(where, o, "a dimension cannot depend on itself")
            target = ref(o, where)
            if d.op == "first":
                continue  # any type, and conditional operands are the point
            if not _numeric(target):
                raise ConfigError(where, o, f"operands of {d.op} must be numeric")
            if isinstance(target, Dim):
                for k, vals in target.when.items():
                    mine = d.when.get(k)
                    if mine is None or not set(map(_label, mine)) <= set(map(_label, vals)):
                        raise ConfigError(
                            f"sweep.space.{d.key}.when",
                            dict(d.when),
                            f"{o} is only sampled when {k} in {_show(vals)}; add that condition",
                        )
    return _order(dims), base


def _walk(node: dict, prefix: str):
    """Nested or dotted keys down to dimension mappings (those with kind: or derived:)."""
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and ("kind" in v or "derived" in v):
            yield key, v
        elif isinstance(v, dict) and v:
            yield from _walk(v, key)
        else:
            raise ConfigError(
                f"sweep.space.{key}",
                v,
                f"a dimension: a mapping with kind: {' | '.join(KINDS)} or derived: {' | '.join(OPS)}",
            )


def _parse_dim(key: str, d: dict, cfg: DictConfig) -> Dim:
    at = f"sweep.space.{key}"
    helper = d.get("helper", False)
    if not isinstance(helper, bool):
        raise ConfigError(f"{at}.helper", helper, "true | false")
    current = _config_value(cfg, key)
    if helper and current is not _ABSENT:
        raise ConfigError(f"{at}.helper", True, f"{key} is a config field; name helpers with a free name")
    if not helper:
        if key.startswith("sweep.") or key in ("sweep",):
            raise ConfigError(at, d, "the sweep section itself cannot be searched")
        if current is _ABSENT:
            raise ConfigError(at, d, "not a config field (mark searched helpers with helper: true)")
        if isinstance(current, (dict, list)) and not (isinstance(current, list) and _is_leaf_list(current)):
            raise ConfigError(at, d, "a config group, not a field; search one of its fields")
    when = _parse_when(d.get("when"), at)

    if "derived" in d:
        extra = set(d) - {"derived", "of", "when", "helper"}
        if extra:
            raise ConfigError(f"{at}.{sorted(extra)[0]}", d[sorted(extra)[0]], "derived takes of, when, helper")
        op, of = d["derived"], d.get("of")
        if op not in OPS:
            raise ConfigError(f"{at}.derived", op, " | ".join(OPS))
        if not isinstance(of, list) or len(of) < 2 or not all(_is_num(o) or isinstance(o, str) for o in of):
            raise ConfigError(f"{at}.of", of, "a list of two or more dimension keys or numbers")
        if op == "first" and any(_is_num(o) for o in of[:-1]):
            raise ConfigError(f"{at}.of", of, "keys, with at most one number last (the fallback)")
        cast = type(current).__name__ if _is_num(current) else None
        return Dim(key, "derived", op=op, of=tuple(of), when=when, helper=helper, cast=cast)

    kind = d.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{at}.kind", kind, " | ".join(KINDS))
    for k in d:
        if k not in DIM_KEYS[kind] | _COMMON:
            raise ConfigError(
                f"{at}.{k}", d[k], f"not an option of {kind}; allowed: {', '.join(sorted(DIM_KEYS[kind]))}"
            )
    if kind in ("int", "float", "logfloat") and current is not _ABSENT and current is not None:
        if isinstance(current, bool) or not _is_num(current) or (kind != "int" and isinstance(current, int)):
            raise ConfigError(f"{at}.kind", kind, f"{key} holds {type(current).__name__} values; use choice")

    if kind in ("choice", "grid"):
        values = d.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}.values", values, "a non-empty list")
        for v in values:
            if not _is_value(v):
                raise ConfigError(f"{at}.values", v, "scalars or flat lists of scalars")
        labels = [_label(v) for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{at}.values", values, "distinct values")
        for v in values if key in FIELDS else ():
            check_value(key, v, f"{at}.values")
        return Dim(key, kind, values=tuple(values), when=when, helper=helper)
    if kind == "fixed":
        if "value" not in d or not _is_value(d["value"]):
            raise ConfigError(f"{at}.value", d.get("value"), "a scalar or a flat list of scalars")
        if key in FIELDS:
            check_value(key, d["value"], f"{at}.value")
        return Dim(key, kind, value=d["value"], when=when, helper=helper)

    low, high = d.get("low"), d.get("high")
    integral = kind == "int"
    for name, v in (("low", low), ("high", high)):
        if not _is_num(v) or (integral and not isinstance(v, int)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{at}.{name}", v, "an int" if integral else "a finite number")
    if low >= high:
        raise ConfigError(f"{at}.low", low, f"less than high ({high})")
    if kind == "logfloat" and low <= 0:
        raise ConfigError(f"{at}.low", low, "> 0 for logfloat")
    for name, v in (("low", low), ("high", high)) if key in FIELDS else ():  # both ends: every value between is
        check_value(key, v, f"{at}.{name}")  # allowed too, since every number check is an interval
    if kind != "int":
        return Dim(key, kind, low=float(low), high=float(high), log=kind == "logfloat", when=when, helper=helper)
    step, log = d.get("step", 1), d.get("log", False)
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ConfigError(f"{at}.step", step, "an int >= 1")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log", log, "true | false")
    if log and step != 1:
        raise ConfigError(f"{at}.log", log, "false when step != 1 (Optuna cannot combine them)")
    if log and low < 1:
        raise ConfigError(f"{at}.low", low, ">= 1 for a log int")
    if (high - low) % step:
        raise ConfigError(f"{at}.high", high, f"low + a multiple of step ({step})")
    return Dim(key, kind, low=low, high=high, step=step, log=log, when=when, helper=helper)


def _parse_when(node: Any, at: str) -> dict[str, tuple]:
    if node is None:
        return {}
    if not isinstance(node, dict) or not node:
        raise ConfigError(f"{at}.when", node, "a mapping {key: [allowed values]}")
    out = {}
    for k, v in dict(compare_arms.dotted_items(node)).items():
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(_is_value(x) for x in vals):
            raise ConfigError(f"{at}.when.{k}", v, "a value or a non-empty list of values")
        out[k] = tuple(vals)
    return out


def _order(dims: dict[str, Dim]) -> tuple[Dim, ...]:
    """Declaration order, except that a dimension follows the dimensions it depends on."""
    done: dict[str, Dim] = {}
    visiting: list[str] = []

    def visit(key: str) -> None:
        if key in done:
            return
        if key in visiting:
            cycle = " -> ".join(visiting[visiting.index(key) :] + [key])
            raise ConfigError(
                f"sweep.space.{key}",
                {"when": dict(dims[key].when), "of": list(dims[key].of)},
                f"no circular dependencies ({cycle})",
            )
        visiting.append(key)
        d = dims[key]
        for dep in [*d.when, *(o for o in d.of if isinstance(o, str))]:
            if dep in dims:
                visit(dep)
        visiting.pop()
        done[key] = d

    for key in dims:
        visit(key)
    return tuple(done.values())


# --- sampling ------------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, object]:
    """Define-by-run: sample one trial; returns {dotted config key: value} (helpers left out)."""
    values: dict[str, object] = {}
    for d in spec.dims:
        if all(_effective(k, values, spec) in allowed for k, allowed in d.when.items()):
            v = _draw(trial, d, values, spec)
            if v is not _ABSENT:
                values[d.key] = v
    return {k: v for k, v in values.items() if not spec.dim(k).helper}


def distributions(spec: SweepSpec) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of each sampled dimension, as _draw suggests it: what warm start compares spaces by."""
    dists = optuna.distributions
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for d in spec.dims:
        if d.kind in ("choice", "grid"):
            out[d.key] = dists.CategoricalDistribution(_labels(d) or list(d.values))
        elif d.kind == "int":
            out[d.key] = dists.IntDistribution(d.low, d.high, step=d.step, log=d.log)
        elif d.kind in ("float", "logfloat"):
            out[d.key] = dists.FloatDistribution(d.low, d.high, log=d.log)
    return out


def _effective(key: str, values: Mapping[str, object], spec: SweepSpec) -> object:
    # An unsampled config field keeps its composed value; an unsampled helper has none.
    return values[key] if key in values else spec.base.get(key)


def _draw(trial: optuna.Trial, d: Dim, values: Mapping[str, object], spec: SweepSpec) -> object:
    if d.kind in ("choice", "grid"):
        labels = _labels(d)
        if labels is None:
            return trial.suggest_categorical(d.key, list(d.values))
        picked = trial.suggest_categorical(d.key, labels)
        return copy.deepcopy(d.values[labels.index(picked)])
    if d.kind == "int":
        return trial.suggest_int(d.key, d.low, d.high, step=d.step, log=d.log)
    if d.kind in ("float", "logfloat"):
        return trial.suggest_float(d.key, d.low, d.high, log=d.log)
    if d.kind == "fixed":
        return copy.deepcopy(d.value)
    if d.op == "first":
        out = next(
            (
                copy.deepcopy(o if _is_num(o) else _effective(o, values, spec))
                for o in d.of
                if _is_num(o) or o in values or (o in spec.base and spec.dim(o) is None)
            ),
            _ABSENT,
        )
        if not _is_num(out):
            return out
    else:
        operands = [o if _is_num(o) else _effective(o, values, spec) for o in d.of]
        out = math.prod(operands) if d.op == "mul" else sum(operands)
    if d.cast == "int" and float(out).is_integer():
        return int(out)  # alpha = 2 * r stays an int like the field; 0.5 * 1 cannot
    return float(out) if d.cast == "float" else out


def _labels(d: Dim) -> list[str] | None:
    """Optuna stores only scalars: list values travel as their override text, e.g. "[q,v]"."""
    if all(not isinstance(v, list) for v in d.values):
        return None
    return [_label(v) for v in d.values]


def grid_space(spec: SweepSpec) -> dict[str, list]:
    """GridSampler's search_space: each grid dimension's values as Optuna sees them."""
    return {d.key: _labels(d) or list(d.values) for d in spec.dims if d.kind == "grid"}


def make_sampler(spec: SweepSpec, resumed_after: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler. A resumed sweep offsets the seed by the trials already asked: the same seed would
    replay the first configs (Optuna's samplers keep their random state in memory, not in the study)."""
    for package in NEEDS.get(spec.sampler, []):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                "sweep.sampler.name", spec.sampler, f"needs the package {package} (pip install {package})"
            )
    cls = SAMPLERS[spec.sampler]
    # Not the grid sampler: it shuffles its grid by the seed and keeps each trial's grid id in the study, so a
    # resumed sweep needs the same shuffle, or its ids name other cells (a killed cell would never run again).
    offset = 0 if spec.sampler == "grid" else resumed_after
    args = {"seed": None if spec.seed is None else spec.seed + offset, **spec.sampler_options}
    if spec.sampler == "grid":
        args["search_space"] = grid_space(spec)
    return build(cls, args, "sweep.sampler", spec.sampler)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    return build_pruner({"name": spec.pruner, **spec.pruner_options})


# --- overrides -----------------------------------------------------------------------------------


def to_overrides(values: Mapping[str, object], spec: SweepSpec | None = None) -> list[str]:
    """Hydra overrides that rerun a trial; with spec, keys that are not searched config fields are dropped."""
    keep = None if spec is None else {d.key for d in spec.dims if not d.helper}
    return [f"{k}={_label(v)}" for k, v in values.items() if keep is None or k in keep]


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")
_RESERVED = {"true", "false", "null", "nan", "inf"}


def _label(v: object) -> str:
    """A value in Hydra's override grammar, read back with the same type."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ",".join(_label(x) for x in v) + "]"
    s = str(v)
    if _BARE.fullmatch(s) and s.lower() not in _RESERVED:
        return s
    # Hydra keeps a backslash literally unless it precedes a quote or ends the string.
    s = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", s)
    s = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, s)
    return "'" + s.replace("${", "\\${") + "'"


# --- small checks --------------------------------------------------------------------------------


def _config_value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _possible(target: Any, default: Any) -> list | None:
    """Values a `when` can see for a dimension; None when any value may come (ranges, plain fields)."""
    if not isinstance(target, Dim) or target.kind not in ("choice", "grid", "fixed"):
        return None
    out = list(target.values) if target.kind != "fixed" else [target.value]
    if target.when:  # while unsampled it holds the composed value (or None for a helper)
        out.append(None if target.helper else default)
    return out


def _numeric(target: Any) -> bool:
    if isinstance(target, Dim):
        if target.kind in ("choice", "grid"):
            return all(_is_num(v) for v in target.values)
        if target.kind == "fixed":
            return _is_num(target.value)
        return True  # int, float, logfloat, derived
    return _is_num(target)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_value(v: Any) -> bool:
    scalar = (type(None), bool, int, float, str)
    return isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))


def _is_leaf_list(v: list) -> bool:
    return all(not isinstance(x, (dict, list)) for x in v)


def _default(key: str) -> Any:
    return SWEEP_FIELDS[f"sweep.{key}"].default


def _int(v: Any, where: str, minimum: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(where, v, f"an int >= {minimum}")
    return v


def _show(values: Any) -> str:
    return ", ".join(_label(v) for v in values)
