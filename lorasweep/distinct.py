"""A budget buys distinct configs: a sampled config equal to one already evaluated, running or queued is told to
Optuna as a pruned duplicate (no MLflow run, no budget slot) and the sampler is asked again; a small, fully discrete
space is counted, so a budget larger than the space stops after the space, and is searched exhaustively.

Two samples are one config when every searched config field has the same value, sampled or (where a `when` left it
out) the composed one: helpers, which only steer `when` and `derived`, do not count, so `alpha_rule=fixed` with r=4
and `alpha_rule=per_rank, alpha_mult=4` with r=4 (both alpha=16) are one config.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from lorasweep.ledger import DUPLICATE, KILLED
from lorasweep.space import SweepSpec, make_sampler, suggest, to_overrides

TRIES = 20  # samples asked for in a row before the space counts as spent
CAP = 512  # parameter combinations counted at most: a larger space is no small space
# A trial holding its config: ended (a FAIL the sweep did not kill failed for its config, and would again), running,
# or queued to run.
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def complete(spec: SweepSpec, cfg: DictConfig) -> SweepSpec:
    """The spec with the composed value of every searched field in its base (parse_sweep keeps only those that a
    `when` or `derived` reads): what a field holds in a trial that leaves it unsampled."""
    fields = {}
    for d in spec.dims:
        if not d.helper and d.key not in spec.base:
            node = OmegaConf.select(cfg, d.key)
            fields[d.key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return replace(spec, base={**fields, **spec.base})


def config_of(values: Mapping[str, object], spec: SweepSpec, drop: tuple[str, ...] = ()) -> tuple:
    """A trial's config as a hashable key: every searched config field (not helpers, not `drop`), sampled or, for
    a spec from complete(), its composed value."""
    keys = sorted(d.key for d in spec.dims if not d.helper and d.key not in drop)
    return tuple(to_overrides({k: values[k] if k in values else spec.base[k] for k in keys}))


def values_of(trial: FrozenTrial, spec: SweepSpec) -> dict[str, object] | None:
    """The config fields a stored trial sampled, recomputed from its Optuna params by the space itself (derived and
    conditional values included). None: its params do not fit this space."""
    try:
        return suggest(optuna.trial.FixedTrial(dict(trial.params)), spec)
    except ValueError:
        return None


def twin(study: optuna.Study, spec: SweepSpec, values: Mapping[str, object], number: int) -> FrozenTrial | None:
    """An earlier trial, other than `number`, that holds the same config (see TAKEN)."""
    key = config_of(values, spec)
    for t in study.get_trials(deepcopy=False, states=TAKEN):
        if t.number == number or t.user_attrs.get(KILLED) or t.user_attrs.get(DUPLICATE) is not None:
            continue
        theirs = values_of(t, spec)
        if theirs is not None and config_of(theirs, spec) == key:
            return t
    return None


def ask_distinct(study: optuna.Study, spec: SweepSpec, tries: int = TRIES) -> tuple[optuna.Trial, dict] | None:
    """The next trial and its sampled values, asking again (at most `tries` times) while the sampler proposes a
    config some trial already holds. Each such proposal is told PRUNED, with no intermediate value and DUPLICATE
    (its twin's number): the budget does not count it, and TPE ranks it below every trial with a value, so it
    learns to propose elsewhere (a FAIL it would ignore, and propose the same winner again). Past half the tries the
    rest are drawn at random: a sampler sure of its winner can propose it many times over in a small space. None:
    `tries` proposals in a row were duplicates, the space is spent. A queued trial (enqueue_trial: a plan, a warm
    start, a confirmation seed) is returned as planned."""
    own = study.sampler
    try:
        for i in range(tries):
            if i == tries // 2:
                study.sampler = optuna.samplers.RandomSampler(seed=len(study.trials))
            queued = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # ask() takes those first
            trial = study.ask()
            values = suggest(trial, spec)
            same = None if queued else twin(study, spec, values, trial.number)
            if same is None:
                return trial, values
            trial.set_user_attr(DUPLICATE, same.number)
            try:
                study.tell(trial, state=TrialState.PRUNED)
            except RuntimeError:  # an exhaustive sampler asks optimize() to stop once the space is done
                pass
        return None
    finally:
        study.sampler = own


def is_discrete(spec: SweepSpec) -> bool:
    """Every dimension takes finitely many values: no float ranges, and not a compare plan (which sets trials)."""
    return spec.compare is None and all(d.kind not in ("float", "logfloat") for d in spec.dims)


def count(spec: SweepSpec, cap: int = CAP) -> int | None:
    """The distinct configs of a fully discrete space, enumerated by Optuna's BruteForceSampler through the space's
    own suggest (conditions and derived values as a trial sees them). None: not discrete, or over `cap`
    parameter combinations."""
    if not is_discrete(spec):
        return None
    seen: set[tuple] = set()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=exhaustive_sampler(spec, seed=0))
        study.optimize(lambda t: seen.add(config_of(suggest(t, spec), spec)) or 0.0, n_trials=cap + 1)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return None if len(study.trials) > cap else len(seen)


def exhaustive_sampler(spec: SweepSpec, seed: int | None = None) -> optuna.samplers.BruteForceSampler:
    """Optuna's exhaustive sampler for a discrete space: every combination once, conditional dimensions included
    (GridSampler takes only a fixed product of grid dimensions). avoid_premature_stop: a strict search, since the
    duplicates it may then propose under concurrency are caught by ask_distinct."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.BruteForceSampler(seed=spec.seed if seed is None else seed, avoid_premature_stop=True)


def budget_note(distinct: int | None, budget: int) -> str | None:
    """The line a sweep prints when its space holds fewer distinct configs than its budget."""
    if distinct is None or distinct >= budget:
        return None
    return f"this space has {distinct} distinct configs; budget {budget} -> stopping after {distinct}"


def sampler_for(spec: SweepSpec, ident: SweepSpec, resumed_after: int = 0) -> tuple[optuna.samplers.BaseSampler, int]:
    """The sweep's sampler and its budget. A fully discrete space with no more distinct configs than the budget is
    searched exhaustively, each config once, and the budget shrinks to its size: sampling it would only propose
    configs already run. A grid (already exhaustive) and a compare plan keep theirs. `ident`: complete()'s spec."""
    n = None if spec.sampler == "grid" else count(ident)
    if n is not None and n <= spec.num_trials:
        return exhaustive_sampler(spec), n
    return make_sampler(spec, resumed_after=resumed_after), spec.num_trials
