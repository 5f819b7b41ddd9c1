"""lorasweep.confirm and lorasweep.distinct on real Optuna studies (sqlite storage): sweep.confirm's input, the K×S
plan and its resume, the ranking and its words; distinct configs, the re-ask, and counting a discrete space."""

import itertools
import math

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from lorasweep import confirm, distinct
from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.ledger import KILLED
from lorasweep.space import CONFIRM_KEYS, Confirm, parse_confirm, parse_sweep, suggest

optuna.logging.set_verbosity(optuna.logging.ERROR)
FOUR = "+sweep.space={adapter.r:{kind:choice,values:[4,8]},train.lr:{kind:choice,values:[0.001,0.003]}}"


def spec_of(*overrides: str):
    cfg = compose(list(overrides))
    return distinct.complete(parse_sweep(cfg), cfg)


def raw_sweep(**confirm_node) -> dict:
    return {**OmegaConf.to_container(compose(["sweep=rank_alpha"]).sweep, resolve=True), "confirm": confirm_node}


def score(values: dict, seed: int = 0) -> float:
    """A made-up macro-F1: rank helps up to 16, alpha far from 2r hurts, each seed adds noise."""
    r, alpha = values["adapter.r"], values.get("adapter.alpha", 16)
    noise = np.random.default_rng([seed, r, int(alpha * 2)]).normal(0, 0.004)
    return 0.6 + 0.01 * min(math.log2(r), 4) - 0.004 * abs(math.log2(alpha / (2 * r))) + noise


def search(study, spec, n: int) -> None:
    for _ in range(n):
        asked = distinct.ask_distinct(study, spec)
        assert asked is not None
        trial, values = asked
        study.tell(trial, score(values))


def run_confirmations(study, spec, n: int | None = None) -> list:
    """Ask and complete queued confirmation trials (all, or n of them) as the sweep's loop would."""
    done = []
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) and (n is None or len(done) < n):
        trial, values = distinct.ask_distinct(study, spec)
        assert confirm.is_confirm(trial) and trial.user_attrs.get(distinct.DUPLICATE) is None
        (override,) = confirm.seed_override(trial)
        study.tell(trial, score(values, int(override.removeprefix("seed="))))
        done.append(trial.number)
    return done


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(
        study_name="s",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


# ---------------------------------------------------------------- sweep.confirm input


@pytest.mark.parametrize(
    "node,field",
    [
        ({"top_k": 0}, "sweep.confirm.top_k"),
        ({"top_k": 2, "seeds": 1}, "sweep.confirm.seeds"),
        ({"seeds": "three"}, "sweep.confirm.seeds"),
        ({"top_k": 2, "sedes": 3}, "sweep.confirm.sedes"),
        ({"top_k": 11}, "sweep.confirm.top_k"),  # rank_alpha's budget is 10
    ],
)
def test_bad_confirm_input_is_one_line_naming_the_field(node: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_confirm(raw_sweep(**node))
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}=") and " is not allowed: " in str(e.value) and "\n" not in str(e.value)


def test_confirm_is_refused_beside_objectives_compare_or_a_searched_seed() -> None:
    for extra in ({"objectives": {"eval_accuracy": "max", "trainable_params": "min"}}, {"compare": {"arms": []}}):
        with pytest.raises(ConfigError) as e:
            parse_confirm({**raw_sweep(top_k=2, seeds=3), **extra})
        assert e.value.field == "sweep.confirm"
    seeded = raw_sweep(top_k=2, seeds=3)
    seeded["space"]["seed"] = {"kind": "choice", "values": [0, 1]}
    with pytest.raises(ConfigError, match="searches the seed"):
        parse_confirm(seeded)


def test_confirm_parses_with_defaults_and_is_absent_without_the_node() -> None:
    assert parse_confirm(raw_sweep(top_k=3, seeds=4)) == Confirm(3, 4)
    assert parse_confirm(raw_sweep()) == Confirm(*CONFIRM_KEYS.values())
    assert parse_confirm({k: v for k, v in raw_sweep().items() if k != "confirm"}) is None


# ---------------------------------------------------------------- the plan


def test_best_configs_are_distinct_even_when_two_samples_compose_to_one() -> None:
    spec = spec_of("sweep=rank_alpha")
    study = optuna.create_study(direction="maximize")
    # r=16 with alpha left at 16, and r=16 with alpha = 1 × r: the same config, sampled two ways.
    for params, value in (
        ({"adapter.r": 16, "alpha_rule": "fixed"}, 0.70),
        ({"adapter.r": 16, "alpha_rule": "per_rank", "alpha_mult": 1}, 0.69),
        ({"adapter.r": 8, "alpha_rule": "per_rank", "alpha_mult": 2}, 0.68),
        ({"adapter.r": 64, "alpha_rule": "fixed"}, 0.60),
    ):
        study.enqueue_trial(params)
        trial = study.ask()
        suggest(trial, spec)
        study.tell(trial, value)
    assert [t.number for t in confirm.best(study, spec, 2)] == [0, 2]
    minimise = optuna.create_study(direction="minimize")
    minimise.add_trials(study.trials)
    assert [t.number for t in confirm.best(minimise, spec_of("sweep=rank_alpha", "sweep.mode=min"), 1)] == [3]


def test_confirm_plans_exactly_k_times_s_trials_with_new_seeds(study) -> None:
    spec = spec_of("sweep=rank_alpha")
    search(study, spec, 8)
    c = Confirm(top_k=3, seeds=4)
    assert confirm.enqueue(study, spec, c, base_seed=0) == 12
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert len(queued) == 12 and all(confirm.is_confirm(t) for t in queued)
    pairs = {(t.user_attrs[confirm.OF], t.user_attrs[confirm.SEED]) for t in queued}
    assert len(pairs) == 12 and {s for _, s in pairs} == {1, 2, 3, 4}  # the search ran at seed 0
    sources = {o for o, _ in pairs}
    assert sources == {t.number for t in confirm.best(study, spec, 3)}
    keys = {distinct.config_of(distinct.values_of(study.trials[n], spec), spec) for n in sources}
    assert len(keys) == 3


def test_confirm_resumed_after_a_kill_adds_only_what_is_missing(study, tmp_path) -> None:
    spec = spec_of("sweep=rank_alpha")
    search(study, spec, 8)
    c = Confirm(top_k=2, seeds=3)
    assert confirm.enqueue(study, spec, c, base_seed=0) == 6
    run_confirmations(study, spec, 2)
    running, _ = distinct.ask_distinct(study, spec)  # the driver dies while this one trains
    # What a resumed driver does to it first (ledger.kill_running): FAIL, flagged killed.
    running.set_user_attr(KILLED, True)
    study.tell(running, state=TrialState.FAIL)
    resumed = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert confirm.enqueue(resumed, spec, c, base_seed=0) == 1
    assert confirm.enqueue(resumed, spec, c, base_seed=0) == 0
    run_confirmations(resumed, spec)
    done = [t for t in resumed.get_trials(states=(TrialState.COMPLETE,)) if confirm.is_confirm(t)]
    assert len(done) == 6 and len({(t.user_attrs[confirm.OF], t.user_attrs[confirm.SEED]) for t in done}) == 6
    assert confirm.enqueue(resumed, spec, c, base_seed=0) == 0


def test_ranking_and_words_name_the_winner_its_interval_and_the_runner_up(study) -> None:
    spec = spec_of("sweep=rank_alpha")
    search(study, spec, 8)
    confirm.enqueue(study, spec, Confirm(top_k=2, seeds=3), base_seed=0)
    run_confirmations(study, spec)
    top, second = confirm.ranked(study, spec)
    assert top.interval.value >= second.interval.value and len(top.scores) == len(second.scores) == 3
    assert top.interval.low < top.interval.value < top.interval.high
    line = confirm.words([top, second], "eval_macro_f1")
    assert line.startswith(f"best {top.label}: macro-F1 {top.interval.value:.3g} [") and "over 3 seeds" in line
    assert f"runner-up {second.label} " in line and "distinguishable (p=" in line


def test_words_say_distinguishable_only_for_a_real_gap() -> None:
    iv = confirm.stats.seed_interval

    def c(name, xs):
        return confirm.Confirmed(name, 0, max(xs), tuple(xs), iv(xs), ())

    close = confirm.words([c("r=16", [0.621, 0.609, 0.633]), c("r=64", [0.615, 0.600, 0.630])], "eval_macro_f1")
    assert "r=64 0.615: not distinguishable (p=" in close
    far = confirm.words([c("r=16", [0.721, 0.719, 0.723]), c("r=1", [0.615, 0.612, 0.618])], "eval_accuracy")
    assert far.startswith("best r=16: accuracy 0.721 [") and ": distinguishable (p=" in far


# ---------------------------------------------------------------- distinct configs


def test_a_four_config_discrete_space_counts_four() -> None:
    spec = spec_of("sweep=smoke", "~sweep.space", FOUR)
    assert distinct.count(spec) == 4
    assert distinct.budget_note(4, 10) == "this space has 4 distinct configs; budget 10 -> stopping after 4"
    assert distinct.budget_note(4, 4) is None


def test_count_merges_samples_that_compose_to_one_config() -> None:
    spec = spec_of("sweep=rank_alpha")
    ranks, mults = spec.dim("adapter.r").values, spec.dim("alpha_mult").values
    configs = {(r, 16) for r in ranks} | {(r, m * r) for r, m in itertools.product(ranks, mults)}
    assert distinct.count(spec) == len(configs) < len(ranks) * (1 + len(mults))


def test_a_space_with_a_float_range_is_not_counted() -> None:
    assert distinct.count(spec_of("sweep=smoke")) is None


@pytest.mark.parametrize("sampler", ["random", "exhaustive"])
def test_a_budget_of_ten_on_four_configs_trains_four_and_then_finds_the_space_spent(sampler: str) -> None:
    spec = spec_of("sweep=smoke", "~sweep.space", FOUR)
    chosen = distinct.exhaustive_sampler(spec) if sampler == "exhaustive" else optuna.samplers.RandomSampler(seed=3)
    study = optuna.create_study(direction="maximize", sampler=chosen)
    trained = []
    for _ in range(10):
        asked = distinct.ask_distinct(study, spec)
        if asked is None:
            break
        trial, values = asked
        trained.append(distinct.config_of(values, spec))
        try:
            study.tell(trial, float(len(trained)))
        except RuntimeError:  # the exhaustive sampler asks optimize() to stop after the last config
            pass
    assert len(trained) == len(set(trained)) == 4
    duplicates = [t for t in study.trials if t.user_attrs.get(distinct.DUPLICATE) is not None]
    assert all(t.state == TrialState.PRUNED for t in duplicates) and len(duplicates) >= distinct.TRIES


def test_a_killed_trial_config_may_run_again_but_a_running_one_may_not() -> None:
    spec = spec_of("sweep=smoke", "~sweep.space", FOUR)
    study = optuna.create_study(direction="maximize")
    first = study.ask()
    values = suggest(first, spec)
    second = study.ask({})
    assert distinct.twin(study, spec, values, second.number).number == first.number  # first is RUNNING
    first.set_user_attr(KILLED, True)
    study.tell(first, state=TrialState.FAIL)
    assert distinct.twin(study, spec, values, second.number) is None


def test_tpe_on_rank_alphas_space_finds_a_new_config_for_every_slot(tmp_path) -> None:
    """rank_alpha's space (31 distinct configs) under its own TPE sampler: 12 slots buy 12 distinct configs. TPE sure
    of a winner proposes it again and again; told as pruned duplicates (and past half the tries, random draws) it
    moves on, where duplicates told FAIL left it proposing the winner 20 times in a row after 5 trials."""
    from lorasweep.space import make_sampler

    cfg = compose(["sweep=rank_alpha"])
    spec = distinct.complete(parse_sweep(cfg), cfg)
    tpe = optuna.create_study(storage=f"sqlite:///{tmp_path}/tpe.db", direction="maximize", sampler=make_sampler(spec))
    search(tpe, spec, 12)
    done = [t for t in tpe.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 12
    assert len({distinct.config_of(distinct.values_of(t, spec), spec) for t in done}) == 12
