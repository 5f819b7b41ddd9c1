"""The schema is every field's one home: help and a check for each, every shipped YAML valid, every ConfigError a
real field, and bad values of each kind refused in one line before anything is written."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lorasweep import schema
from lorasweep.cli import main
from lorasweep.config import CONF_DIR, compose, validate
from lorasweep.errors import ConfigError
from lorasweep.space import parse_sweep
from lorasweep.variants import METHODS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lorasweep"


def test_every_field_has_help_and_a_check_with_its_allowed_text():
    fields = {**schema.FIELDS, **schema.SWEEP_FIELDS}
    assert len(fields) > 90
    for path, fl in fields.items():
        assert fl.metadata.get("help"), path
        check = fl.metadata.get("check")
        assert check is not None and check.allowed, path


def test_every_default_passes_its_own_check():
    cfg = OmegaConf.structured(schema.Root)
    cfg.train.seed = 0  # the default interpolates the top-level seed
    for path, fl in schema.FIELDS.items():
        value = OmegaConf.select(cfg, path)
        fl.metadata["check"](path, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def test_readme_field_table_is_the_fields_command_output():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- fields:start -->\n(.*?)<!-- fields:end -->", readme, re.S).group(1)
    out = subprocess.run(
        [sys.executable, "-m", "lorasweep.cli", "fields", "--markdown"], capture_output=True, text=True, check=True
    ).stdout
    assert table == out
    assert out.count("\n") == len(schema.FIELDS) + len(schema.SWEEP_FIELDS) - 1 + 2  # `sweep` itself is a section


PRESETS = sorted(
    f"{p.parent.name}={p.stem}"
    for group in ("model", "data", "adapter", "quant")
    for p in (CONF_DIR / group).glob("*.yaml")
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    overrides = [preset]
    if preset.startswith("data=custom"):
        overrides.append("data.path=any.csv")  # custom data names the user's file
    group, name = preset.split("=")
    if group == "adapter" and "none" in METHODS[name].quant_refused:
        overrides.append("quant=nf4")  # LoftQ refines LoRA on a 4-bit base
    cfg = validate(compose(overrides), has_cuda=False)
    assert cfg[group].get("name", cfg[group].get("variant", cfg[group].get("method"))) is not None
    # A preset holds only what differs from the schema: no line restates a default.
    text = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    defaults = OmegaConf.structured(getattr(schema, f"{group.capitalize()}Cfg"))
    for key, value in (text or {}).items():
        if key not in ("defaults", "name"):  # a preset names itself
            assert value != defaults.get(key), f"conf/{group}/{name}.yaml restates {group}.{key}: {value}"


SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEPS)
def test_every_shipped_sweep_composes_validates_and_parses(name):
    cfg = validate(compose([f"sweep={name}"]), has_cuda=False)
    spec = parse_sweep(cfg)
    assert spec.num_trials >= 1 and spec.dims


def _config_error_fields():
    """(file:line, the field text) of every ConfigError raised with a literal or f-string field."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError" and node.args:
                arg = node.args[0]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if isinstance(arg, ast.Constant):
                    yield where, arg.value, False
                elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                    yield where, arg.values[0].value, True  # f"data.{key}": its literal head


def test_every_config_error_names_a_schema_field():
    # `override`: a line Hydra cannot parse; SWEEP and DIR: the report command's arguments
    paths = set(schema.FIELDS) | set(schema.SWEEP_FIELDS) | {"sweep", "override", "SWEEP", "DIR"}
    heads = {p.rsplit(".", 1)[0] + "." for p in paths if "." in p} | {"sweep."}
    found = list(_config_error_fields())
    assert len(found) > 50
    for where, text, is_head in found:
        if is_head:
            assert any(text.startswith(h) or h.startswith(text) for h in heads) or text in paths, (where, text)
        else:
            assert text in paths or text.startswith("sweep."), (where, text)


def test_an_unknown_field_in_a_preset_is_refused_at_compose(tmp_path, monkeypatch):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf, symlinks=True)
    (conf / "adapter" / "typo.yaml").write_text("variant: lora\nrnak: 4\n")
    monkeypatch.setattr("lorasweep.config.CONF_DIR", conf)
    with pytest.raises(ConfigError, match=r"^adapter.rnak=.*not a config field; one of adapter.variant, adapter.r,"):
        compose(["adapter=typo"])


# The values issue 25 found taken silently, then one bad value of each kind of check.
BAD = [
    ("tracking.spectra=no", "tracking.spectra='no'", "true or false"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing='maybe'", "true or false"),
    ("train.eval_samples=-5", "train.eval_samples=-5", "an integer >= 1, or null"),
    ("engine.log_server=off", "engine.log_server='off'", "one of ['auto', 'none']"),
    ("data.split_seed=x", "data.split_seed='x'", "an integer >= 0"),
    ("seed=abc", "seed='abc'", "an integer"),
    ("quant.double_quant=3", "quant.double_quant=3", "true or false"),
    ("data.max_train_samples=-3", "data.max_train_samples=-3", "an integer >= 1"),
    ("estimate.num_labels=-1", "estimate.num_labels=-1", "an integer >= 1"),
    ("train.batch_size=2.5", "train.batch_size=2.5", "an integer >= 1"),  # int
    ("train.lr=fast", "train.lr='fast'", "a number > 0"),  # number
    ("adapter.dropout=1.0", "adapter.dropout=1.0", "a number in [0, 1)"),  # interval
    ("train.optim=sgd", "train.optim='sgd'", "one of ['adamw_torch'"),  # choice
    ("train.mixed_precision=fp16", "train.mixed_precision='fp16'", "one of ['auto', 'no', 'bf16']"),
    ("tracking.experiment=''", "tracking.experiment=''", "a non-empty string"),  # text
    ("data.eval_size=1.5", "data.eval_size=1.5", "a count >= 1, a fraction in (0, 1)"),  # size
    ("adapter.targets=q", "adapter.targets='q'", "a non-empty list"),  # list
    ("data.files=3", "data.files=3", "a mapping of ['train', 'eval', 'test']"),  # mapping
    ("engine.cpus_per_trial=many", "engine.cpus_per_trial='many'", "one of ['auto'], or a number > 0"),  # either
    ("resume=''", "resume=''", "true, false or a sweep id"),
    ("+train.lrr=1", "train.lrr=1", "not a config field; did you mean train.lr?"),  # unknown key
]


@pytest.mark.parametrize("override,starts,allowed", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_of_each_kind_is_one_line_exit_2_and_no_run(override, starts, allowed, tmp_path, capsys):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        assert main(["trial", override]) == 2
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lorasweep: error: {starts} is not allowed: {allowed}"), err
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_bf16_without_a_bf16_device_is_one_line_exit_2_and_no_run(tmp_path, capsys, no_gpu, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["trial", "train.mixed_precision=bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lorasweep: error: train.mixed_precision='bf16' is not allowed: "
        "auto or no on this machine: bf16 autocast needs a CUDA GPU with bf16"
    )
    assert not list(tmp_path.iterdir())
    assert validate(compose(["train.mixed_precision=bf16"]), has_cuda=True)  # where a bf16 GPU is assumed


SPACE_BAD = [
    ("adapter.r={kind:choice,values:[0,4]}", "sweep.space.adapter.r.values=0", "an integer >= 1"),
    ("adapter.dropout={kind:float,low:0.5,high:1.5}", "sweep.space.adapter.dropout.high=1.5", "a number in [0, 1)"),
    ("quant.method={kind:choice,values:[nf4,q3]}", "sweep.space.quant.method.values='q3'", "one of ['none'"),
    ("train.optim={kind:fixed,value:sgd}", "sweep.space.train.optim.value='sgd'", "one of ['adamw_torch'"),
    (
        "train.warmup_ratio={kind:choice,values:[0.0,0.1],when:{adapter.variant:[lorra]}}",
        "sweep.space.train.warmup_ratio.when.adapter.variant='lorra'",
        "one of ['lora'",
    ),
    ("train.max_steps={kind:int,low:-4,high:8}", "sweep.space.train.max_steps.low=-4", "an integer >= 0"),
]


@pytest.mark.parametrize("dim,starts,allowed", SPACE_BAD, ids=[b[0].split("=")[0] for b in SPACE_BAD])
def test_a_sweep_value_a_field_does_not_take_is_refused_at_parse(dim, starts, allowed):
    cfg = validate(compose(["sweep=smoke", f"+sweep.space.{dim}"]), has_cuda=False)
    with pytest.raises(ConfigError) as e:
        parse_sweep(cfg)
    assert str(e.value).startswith(f"{starts} is not allowed: {allowed}"), str(e.value)


def test_composed_numbers_keep_their_type_for_logged_params():
    cfg = compose(["adapter.alpha=16", "adapter.loraplus_ratio=4", "train.lr=0.001", "data.train_size=100"])
    assert type(cfg.adapter.alpha) is int and type(cfg.adapter.loraplus_ratio) is int
    assert type(cfg.train.lr) is float and type(cfg.data.train_size) is int


def test_a_method_whose_package_is_missing_is_refused_before_a_run(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "galore_torch" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"^adapter.variant='galore' is not allowed: a method whose package is"):
        validate(compose(["adapter=galore"]), has_cuda=False)
