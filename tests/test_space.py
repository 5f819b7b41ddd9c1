"""Search spaces: validation names the field, conditions and derived values hold per trial, grids, shipped sweeps."""

import math
import os
import shlex
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna
import pytest
from omegaconf import OmegaConf

from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.space import grid_space, make_pruner, make_sampler, parse_sweep, suggest, to_overrides

optuna.logging.set_verbosity(optuna.logging.ERROR)
SWEEPS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


def spec_of(*overrides: str):
    return parse_sweep(compose(list(overrides)))


def sample(spec, n: int, enqueue: list[dict] = ()) -> list[tuple[dict, dict]]:
    """(overrides, Optuna params) for n trials, asked and told the way OptunaSearch does."""
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize" if spec.mode == "max" else "minimize")
    for point in enqueue:
        study.enqueue_trial(point)
    out = []
    for i in range(n):
        trial = study.ask()
        values = suggest(trial, spec)
        out.append((values, dict(trial.params)))
        try:
            study.tell(trial, float(i))
        except RuntimeError:
            pass  # GridSampler calls study.stop() on its last point, which only works inside optimize()
    return out


def test_shipped_sweeps_are_there() -> None:
    assert {"smoke", "rank_alpha", "target_modules", "loraplus_ratio", "variants", "qlora"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweep_composes_parses_and_reruns(name: str) -> None:
    cfg = compose([f"sweep={name}"])
    spec = parse_sweep(cfg)
    assert spec.metric.startswith("eval_") and spec.mode in ("max", "min")
    assert 1 <= spec.max_concurrent <= 2 and spec.num_trials >= 3
    make_pruner(spec)
    for values, _ in sample(spec, min(spec.num_trials, 6)):
        assert values and all(spec.dim(k) is not None and not spec.dim(k).helper for k in values)
        # The overrides rerun the trial: composing them gives back every value with its type.
        rerun = compose([f"sweep={name}", *to_overrides(values)])
        for key, value in values.items():
            got = OmegaConf.select(rerun, key)
            got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            assert got == value and type(got) is type(value), (key, got, value)


def test_sweep_file_sets_base_fields_and_user_overrides_win() -> None:
    plain, cfg = compose([]), compose(["sweep=rank_alpha"])
    assert (plain.train.max_steps, plain.train.eval_every) == (80, 40)  # schema.TrainCfg defaults
    assert cfg.train.max_steps == 60 and cfg.train.eval_every == 20 and cfg.model.name == "minilm"  # the sweep's base
    cfg = compose(
        ["sweep=rank_alpha", "sweep.num_trials=5", "train.max_steps=200", "sweep.space.adapter.r.values=[4,8]"]
    )
    spec = parse_sweep(cfg)
    assert (spec.num_trials, cfg.train.max_steps, spec.dim("adapter.r").values) == (5, 200, (4, 8))
    smoke = compose(["sweep=smoke"])
    assert smoke.model.name == "tiny_llama" and smoke.model.task == "causal_lm"  # defaults override in the sweep file


BAD = [
    ([], "sweep"),
    (["sweep=smoke", "~sweep.metric"], "sweep.metric"),
    (["sweep=smoke", "sweep.mode=maximize"], "sweep.mode"),
    (["sweep=smoke", "+sweep.trials=3"], "sweep.trials"),
    (["sweep=smoke", "sweep.num_trials=0"], "sweep.num_trials"),
    (["sweep=smoke", "sweep.max_concurrent=1.5"], "sweep.max_concurrent"),
    (["sweep=smoke", "sweep.time_limit_s=-1"], "sweep.time_limit_s"),
    (["sweep=smoke", "sweep.sampler.name=bayes"], "sweep.sampler.name"),
    (["sweep=smoke", "+sweep.sampler.n_startup_trials=3"], "sweep.sampler.n_startup_trials"),  # random has none
    (["sweep=smoke", "sweep.pruner.name=early"], "sweep.pruner.name"),
    (["sweep=smoke", "+sweep.pruner.patience=2"], "sweep.pruner.patience"),
    (["sweep=smoke", "~sweep.pruner", "+sweep.pruner={name:percentile}"], "sweep.pruner.percentile"),
    (["sweep=smoke", "sweep.pruner.n_startup_trials=-1"], "sweep.pruner"),
    (["sweep=smoke", "~sweep.space", "+sweep.space={}"], "sweep.space"),
    (["sweep=smoke", "sweep.space.adapter.r.kind=gaussian"], "sweep.space.adapter.r.kind"),
    (["sweep=smoke", "sweep.space.adapter.r.values=[]"], "sweep.space.adapter.r.values"),
    (["sweep=smoke", "sweep.space.adapter.r.values=[2,2]"], "sweep.space.adapter.r.values"),
    (["sweep=smoke", "sweep.space.train.lr.low=0.1"], "sweep.space.train.lr.low"),  # low >= high
    (["sweep=smoke", "sweep.space.train.lr.low=0.0"], "sweep.space.train.lr.low"),  # logfloat low <= 0
    (["sweep=smoke", "+sweep.space.train.lr.step=0.1"], "sweep.space.train.lr.step"),
    (["sweep=smoke", "+sweep.space.train.max_steps={kind:int,low:10,high:10}"], "sweep.space.train.max_steps.low"),
    (
        ["sweep=smoke", "+sweep.space.train.max_steps={kind:int,low:10,high:25,step:10}"],
        "sweep.space.train.max_steps.high",
    ),
    (
        ["sweep=smoke", "+sweep.space.train.max_steps={kind:int,low:0,high:64,log:true}"],
        "sweep.space.train.max_steps.low",
    ),
    (
        ["sweep=smoke", "+sweep.space.train.max_steps={kind:int,low:1,high:65,log:true,step:2}"],
        "sweep.space.train.max_steps.log",
    ),
    (["sweep=smoke", "+sweep.space.train.max_steps={kind:float,low:1,high:5}"], "sweep.space.train.max_steps.kind"),
    (["sweep=smoke", "+sweep.space.train.batch_size=32"], "sweep.space.train.batch_size"),
    (["sweep=smoke", "+sweep.space.adapter.rank={kind:choice,values:[1,2]}"], "sweep.space.adapter.rank"),
    (["sweep=smoke", "+sweep.space.quant={kind:choice,values:[1]}"], "sweep.space.quant"),
    (["sweep=smoke", "+sweep.space.seed={kind:choice,values:[1,2],helper:true}"], "sweep.space.seed.helper"),
    (
        ["sweep=smoke", "+sweep.space.train.lr.when={adapter.varaint:[lora]}"],
        "sweep.space.train.lr.when.adapter.varaint",
    ),
    (["sweep=smoke", "+sweep.space.train.lr.when={alpha_mult:[3]}"], "sweep.space.train.lr.when.alpha_mult"),
    (["sweep=smoke", "+sweep.space.train.lr.when={train.lr:[0.1]}"], "sweep.space.train.lr.when.train.lr"),
    (["sweep=smoke", "sweep.space.adapter.alpha.of=[adapter.r,alpha_mul]"], "sweep.space.adapter.alpha.of"),
    (["sweep=smoke", "sweep.space.adapter.alpha.of=[adapter.r,adapter.variant]"], "sweep.space.adapter.alpha.of"),
    (["sweep=smoke", "sweep.space.adapter.alpha.derived=pow"], "sweep.space.adapter.alpha.derived"),
    (["sweep=smoke", "+sweep.space.alpha_mult.when={adapter.r:[2,4]}"], "sweep.space.adapter.alpha.when"),
    (["sweep=smoke", "+sweep.space.adapter.r.when={adapter.alpha:[4]}"], "sweep.space.adapter.alpha.when"),
    (
        [
            "sweep=smoke",
            "+sweep.space.h1={kind:choice,values:[1,2],helper:true,when:{h2:1}}",
            "+sweep.space.h2={kind:choice,values:[1,2],helper:true,when:{h1:1}}",
        ],
        "sweep.space.h1",
    ),  # a cycle
    (["sweep=smoke", "sweep.sampler.name=grid"], "sweep.space.adapter.r.kind"),
    (["sweep=target_modules", "sweep.num_trials=7"], "sweep.num_trials"),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=[f for _, f in BAD])
def test_invalid_sweep_names_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        spec_of(*overrides)
    assert e.value.field == field
    msg = str(e.value)
    assert msg.startswith(f"{field}=") and " is not allowed: " in msg and "\n" not in msg


def test_conditional_dimensions_sampled_only_when_condition_holds() -> None:
    spec = spec_of("sweep=variants", "~sweep.sampler", "+sweep.sampler={name:random,seed:1}")
    seen = set()
    for values, params in sample(spec, 60):
        variant = values["adapter.variant"]
        seen.add(variant)
        assert ("r_vera" in params) == ("lr_vera" in params) == (variant == "vera")
        assert ("lr_pissa" in params) == (variant == "pissa")
        assert ("r_lowrank" in params) == (variant != "vera")
        assert ("lr_lowrank" in params) == (variant not in ("vera", "pissa"))
        r, lr = values["adapter.r"], values["train.lr"]
        assert type(r) is int and r in ((64, 256) if variant == "vera" else (4, 8, 16))
        low, high = {"vera": (2e-3, 5e-2), "pissa": (1e-4, 2e-3)}.get(variant, (3e-4, 5e-3))
        assert type(lr) is float and low <= lr <= high
    assert seen == {"lora", "rslora", "dora", "pissa", "vera", "adalora"}


def test_condition_on_a_config_field_outside_the_space() -> None:
    extra = "+sweep.space.quant.double_quant={kind:grid,values:[false,true],when:{quant.method:[nf4]}}"
    assert all("quant.double_quant" not in v for v, _ in sample(spec_of("sweep=smoke", extra), 5))
    values = [v for v, _ in sample(spec_of("sweep=smoke", "quant.method=nf4", extra), 8)]
    assert {v["quant.double_quant"] for v in values} == {False, True}


def test_grid_search_space_and_enumeration() -> None:
    spec = spec_of("sweep=target_modules")
    assert grid_space(spec) == {"adapter.targets": ["[q]", "[v]", "[q,v]", "[q,k,v,o]", "[mlp]", "[all-linear]"]}
    assert isinstance(make_sampler(spec), optuna.samplers.GridSampler) and spec.grid_size == 6
    got = sorted(tuple(v["adapter.targets"]) for v, _ in sample(spec, 6))
    assert got == sorted([("q",), ("v",), ("q", "v"), ("q", "k", "v", "o"), ("mlp",), ("all-linear",)])

    qlora = spec_of("sweep=qlora")
    assert grid_space(qlora) == {"quant.method": ["none", "nf4", "fp4"], "quant.double_quant": [False, True]}
    trials = [v for v, _ in sample(qlora, 6)]
    assert {(v["quant.method"], v.get("quant.double_quant")) for v in trials} == {
        ("none", None),
        ("nf4", False),
        ("nf4", True),
        ("fp4", False),
        ("fp4", True),
    }
    assert all(("quant.double_quant" in v) == (v["quant.method"] != "none") for v in trials)


def test_derived_values() -> None:
    spec = spec_of("sweep=rank_alpha")
    points = [
        {"adapter.r": 1, "alpha_rule": "per_rank", "alpha_mult": 0.5},
        {"adapter.r": 16, "alpha_rule": "per_rank", "alpha_mult": 2},
        {"adapter.r": 32, "alpha_rule": "fixed"},
    ]
    (a, pa), (b, pb), (c, pc) = sample(spec, 3, enqueue=points)
    assert a == {"adapter.r": 1, "adapter.alpha": 0.5} and type(a["adapter.alpha"]) is float
    assert b == {"adapter.r": 16, "adapter.alpha": 32} and type(b["adapter.alpha"]) is int  # int field stays int
    assert c == {"adapter.r": 32} and "alpha_mult" not in pc  # alpha keeps its 16
    assert pb == points[1]  # helpers are Optuna params

    lit = spec_of("sweep=smoke", "sweep.space.adapter.alpha={derived:add,of:[adapter.r,8]}")
    for v, p in sample(lit, 4):
        assert v["adapter.alpha"] == p["adapter.r"] + 8 and type(v["adapter.alpha"]) is int
    first = spec_of(
        "sweep=smoke",
        "+sweep.space.alpha_mult.when={adapter.r:[8]}",
        "sweep.space.adapter.alpha={derived:first,of:[alpha_mult,12]}",
    )
    for v, p in sample(first, 8, enqueue=[{"adapter.r": 8}, {"adapter.r": 2}]):
        assert v["adapter.alpha"] == (p["alpha_mult"] if v["adapter.r"] == 8 else 12)


def test_types_survive_sampling() -> None:
    spec = spec_of(
        "sweep=smoke",
        "+sweep.space.train.max_steps={kind:int,low:2,high:8,step:2}",
        "+sweep.space.adapter.dropout={kind:float,low:0,high:0.2}",
    )
    for v, _ in sample(spec, 6):
        assert type(v["adapter.r"]) is int and type(v["train.max_steps"]) is int and v["train.max_steps"] % 2 == 0
        assert type(v["adapter.dropout"]) is float and type(v["train.lr"]) is float
        assert 1e-3 <= v["train.lr"] <= 1e-2 and not math.isnan(v["adapter.dropout"])


def test_to_overrides_syntax() -> None:
    values = {
        "adapter.r": 8,
        "adapter.targets": ["q", "v"],
        "train.lr": 1e-05,
        "quant.double_quant": True,
        "adapter.alpha_over_r": None,
        "adapter.variant": "lora",
        "data.prompt_template": "Tweet: {}",
    }
    ov = to_overrides(values)
    assert ov == [
        "adapter.r=8",
        "adapter.targets=[q,v]",
        "train.lr=1e-05",
        "quant.double_quant=true",
        "adapter.alpha_over_r=null",
        "adapter.variant=lora",
        "data.prompt_template='Tweet: {}'",
    ]
    assert shlex.join(ov[:2]) == "adapter.r=8 'adapter.targets=[q,v]'"
    cfg = compose(ov)
    assert cfg.train.lr == 1e-05 and cfg.data.prompt_template == "Tweet: {}" and list(cfg.adapter.targets) == ["q", "v"]
    spec = spec_of("sweep=smoke")
    assert to_overrides({"adapter.r": 2, "alpha_mult": 2, "adapter.alpha": 4}, spec) == [
        "adapter.r=2",
        "adapter.alpha=4",
    ]


@pytest.mark.parametrize("name", ["tpe", "random", "gp", "cmaes"])
def test_every_sampler_builds_and_samples(name: str) -> None:
    import importlib.util

    from lorasweep.space import NEEDS

    missing = [p for p in NEEDS.get(name, []) if importlib.util.find_spec(p) is None]
    if missing:  # the test extra installs them
        pytest.skip(f"sampler {name} needs {missing}: pip install -e '.[test]'")
    spec = spec_of("sweep=smoke", "~sweep.sampler", f"+sweep.sampler={{name:{name},seed:3}}")
    values = [v for v, _ in sample(spec, 3)]
    assert all(v["adapter.r"] in (2, 4, 8) for v in values) and len(values) == 3


def test_a_sampler_whose_package_is_missing_says_what_to_install(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "cmaes" else real(n, *a))
    with pytest.raises(ConfigError) as e:  # said at parse time, not mid-sweep
        spec_of("sweep=smoke", "~sweep.sampler", "+sweep.sampler={name:cmaes,seed:3}")
    assert e.value.field == "sweep.sampler.name" and "pip install cmaes" in str(e.value)


@pytest.mark.parametrize(
    "pruner,cls",
    [
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
        ("asha", optuna.pruners.SuccessiveHalvingPruner),
    ],
)
def test_every_pruner_builds(pruner: str, cls: type) -> None:
    assert type(make_pruner(spec_of("sweep=smoke", "~sweep.pruner", f"+sweep.pruner={{name:{pruner}}}"))) is cls


def test_pruner_name_none_switches_pruning_off_whatever_its_options() -> None:
    spec = parse_sweep(compose(["sweep=rank_alpha", "sweep.pruner.name=none"]))  # n_startup_trials etc. stay set
    assert spec.pruner == "none" and dict(spec.pruner_options) == {}
    assert isinstance(make_pruner(spec), optuna.pruners.NopPruner)


def test_a_resumed_grid_keeps_its_shuffle_and_other_samplers_do_not_replay():
    """GridSampler stores grid ids in the study: a resumed grid sweep must shuffle its grid the same way, or the ids
    of the cells already run name other cells. Other samplers get their seed offset, so they do not replay."""
    grid = spec_of("sweep=paper_table6")
    assert make_sampler(grid)._all_grids == make_sampler(grid, resumed_after=11)._all_grids
    tpe = spec_of("sweep=rank_alpha")
    first = [values for values, _ in sample(tpe, 3)]

    def resumed(n: int):
        study = optuna.create_study(sampler=make_sampler(tpe, resumed_after=n), direction="maximize")
        return [suggest(study.ask(), tpe) for _ in range(3)]

    assert resumed(3) != first and resumed(0) == first
