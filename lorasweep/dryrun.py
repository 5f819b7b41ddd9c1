"""`lorasweep sweep ... --dry-run`: what a sweep would run, sampled and estimated, with nothing trained or tracked."""

from __future__ import annotations

import shlex

import optuna

from lorasweep import compare, distinct
from lorasweep.config import compose
from lorasweep.space import parse_sweep, stored, to_overrides
from lorasweep.sweep import check_engine_and_metric, trial_config


def dry_run(argv: list[str]) -> int:
    """`lorasweep sweep ... --dry-run`: the space, the budget, and each sampled config's estimate and GPU share.
    Nothing trains, nothing is tracked. Without results TPE samples at random: the real sweep adapts."""
    from lorasweep.estimate import estimate, over_limits, predicted
    from lorasweep.trial import check

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose(argv)
    spec = parse_sweep(cfg)
    check_engine_and_metric(cfg, spec)
    check(cfg)
    print(
        f"sweep: {spec.num_trials} trials of {spec.metric} ({spec.mode}), {spec.max_concurrent} at a time, "
        f"sampler {spec.sampler}, pruner {spec.pruner}, time limit {spec.time_limit_s or '-'} s, "
        f"max failures {'-' if spec.max_failures is None else spec.max_failures}"
        + (f", max cost {dict(spec.max_cost)}" if spec.max_cost else "")
    )
    for d in spec.dims:
        what = (
            d.values
            if d.kind in ("choice", "grid")
            else (
                d.value
                if d.kind == "fixed"
                else f"{d.op}{list(d.of)}"
                if d.kind == "derived"
                else f"[{d.low}, {d.high}]"
            )
        )
        print(
            f"  {d.key}: {d.kind} {what}"
            + (f" when {dict(d.when)}" if d.when else "")
            + (" (helper)" if d.helper else "")
        )
    ident = distinct.complete(spec, cfg)
    sampler, num_trials = distinct.sampler_for(spec, ident)
    note = distinct.budget_note(num_trials, spec.num_trials)
    if note:
        print(f"{note} (each config once: Optuna's BruteForceSampler)")
    if spec.confirm is not None:
        c = spec.confirm
        print(f"confirm: then the {c.top_k} best configs again, {c.seeds} new seeds each ({c.top_k * c.seeds} trials)")
    study = optuna.create_study(sampler=sampler, directions=spec.directions)
    base = [a for a in argv if not a.startswith(("resume=", "+resume="))]
    if spec.compare is not None:
        c = spec.compare
        print(
            f"compare: {len(c.arms)} arms, each {c.trials_per_arm} LR trials at seed {c.seeds[0]}, then seeds "
            f"{list(c.seeds[1:])} at its best LR (shown: the LR search; where a range is searched, the LRs adapt)"
        )
    for _ in range(num_trials):
        if spec.compare is not None:
            planned = compare.next_trial(study, spec.compare, lambda k, v: stored(spec, k, v), "killed")
            if not isinstance(planned, compare.Next):  # what comes next depends on results
                break
            study.enqueue_trial(planned.params, user_attrs=planned.attrs)
        asked = distinct.ask_distinct(study, ident)
        if asked is None:
            print(f"the space is spent: {distinct.TRIES} samples in a row were configs already shown")
            break
        trial, values = asked
        overrides = to_overrides(values, spec)
        try:
            trial_cfg, share = trial_config(base, overrides)
            est = estimate(trial_cfg)
            line = (
                f"trainable {est['params']['trainable']:>12,}  "
                f"est. peak {est['memory']['total']['bytes'] / 2**30:6.2f} GiB  GPU share {share:g}"
            )
            skip = over_limits(predicted(trial_cfg, est), spec.max_cost)
            line += f"  SKIPPED, {skip}" if skip else ""
        except Exception as e:  # what the sweep would record as FAILED
            line = f"refused: {e}".splitlines()[0]
        print(f"t{trial.number:03d}  {shlex.join(overrides):<60}  {line}")
        try:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a preview: nothing is learnt
        except RuntimeError:  # GridSampler asks optimize() to stop once the grid is done
            pass
    return 0
