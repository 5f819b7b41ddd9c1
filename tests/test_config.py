"""Bad input: one line naming the field, the value and what is allowed; exit code 2; no MLflow run left behind."""

import subprocess
import sys

import pytest

from lorasweep.cli import main
from tests.conftest import all_runs

BAD = [
    (["adapter.r=0"], "adapter.r=0"),
    (["adapter.alpha=0"], "adapter.alpha=0"),
    (["adapter.alpha_over_r=-1"], "adapter.alpha_over_r=-1"),
    (["adapter.dropout=1.0"], "adapter.dropout=1.0"),
    (["adapter.dropout=-0.1"], "adapter.dropout=-0.1"),
    (["adapter.variant=lokr"], "adapter.variant='lokr'"),
    (["adapter.targets=[q,nonsense]"], "adapter.targets='nonsense'"),
    (["quant.method=nf2"], "quant.method='nf2'"),
    (["adapter.loraplus_ratio=0"], "adapter.loraplus_ratio=0"),
    (["adapter.variant=vera", "adapter.loraplus_ratio=16"], "adapter.loraplus_ratio=16"),
    (["adapter.variant=pissa", "quant=nf4"], "quant.method='nf4'"),
    (["adapter.variant=dora", "quant=int8"], "quant.method='int8'"),
    (["adapter=full", "quant=nf4"], "quant.method='nf4' is not allowed: one of ['none'] with variant 'full'"),
    (["adapter=full", "quant=int8"], "quant.method='int8' is not allowed: one of ['none'] with variant 'full'"),
    (["adapter=full", "adapter.loraplus_ratio=16"], "adapter.loraplus_ratio=16 is not allowed: 1 with variant 'full'"),
    (["adapter=ia3", "adapter.loraplus_ratio=16"], "adapter.loraplus_ratio=16 is not allowed: 1 with variant 'ia3'"),
    (["train.optim=paged_adamw_8bit"], "train.optim='paged_adamw_8bit'"),
    (["model.source=pretrained", "model.path=/no/such/model"], "model.path='/no/such/model'"),
    (["model.source=pretrained", "model.path=nobody/not-cached-model"], "model.path='nobody/not-cached-model'"),
    (["data.text_column=tweet"], "data.text_column='tweet'"),
    (["data.source=hub", "data.path=nobody/not-cached-dataset"], "data.path='nobody/not-cached-dataset'"),
    (["data.eval_size=0"], "data.eval_size=0"),
    (["data.train_size=100000"], "data.train_size=100000"),
    (["adapter.r=8", "adapter.nope=1"], "adapter.nope=1 is not allowed: not a config field"),
    (["adapter.r=[1,2"], "override="),
    (["model=nonexistent"], "model='nonexistent' is not allowed: one of ['big_vocab_random'"),
    (["adapter.targets=[spectrum:0%]"], "adapter.targets='spectrum:0%'"),
    (["adapter.targets=[spectrum:150%]"], "adapter.targets='spectrum:150%'"),
    (["adapter.targets=[q,spectrum:lots]"], "adapter.targets='spectrum:lots'"),
    (["tracking.merge_check=maybe"], "tracking.merge_check='maybe'"),
    (["train.sampling=shuffled"], "train.sampling='shuffled'"),
    (["tracking.max_serving_rank=0"], "tracking.max_serving_rank=0"),
    (["tracking.forgetting=true"], "tracking.forgetting=True"),  # MiniLM classifies: no perplexity
    (
        ["model=tiny_llama", "data=tweets_sft", "tracking.forgetting=true", "tracking.forgetting_text=/no/such.txt"],
        "tracking.forgetting_text='/no/such.txt'",
    ),
    (
        ["model=tiny_llama", "data=tweets_sft", "tracking.forgetting=true", "tracking.forgetting_window=1"],
        "tracking.forgetting_window=1",
    ),
    (
        ["model=tiny_llama", "data=tweets_sft", "tracking.forgetting=true", "tracking.forgetting_tokens=64"],
        "tracking.forgetting_tokens=64",
    ),
]


@pytest.mark.parametrize("overrides,starts", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_exit_2(overrides, starts, store, capsys, no_gpu):  # 8-bit optims need CUDA
    assert main(["trial", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lorasweep: error: {starts}"), err
    assert "is not allowed" in err
    assert all_runs(store) == []  # validated before any run was started


def _csv(tmp_path, rows: str):
    p = tmp_path / "d.csv"
    p.write_text(rows)
    return [
        "data.source=file",
        f"data.path={p}",
        "data.format=csv",
        "data.encoding=utf-8",
        "data.train_size=4",
        "data.eval_size=1",
        "data.test_size=1",
    ]


def test_empty_column(tmp_path, store, capsys):
    rows = "text,sentiment\n" + "".join(f",{l}\n" for l in "ababab")
    assert main(["trial", *_csv(tmp_path, rows)]) == 2
    assert "data.text_column='text'" in capsys.readouterr().err


def test_one_class_only(tmp_path, store, capsys):
    rows = "text,sentiment\n" + "".join(f"tweet {i},pos\n" for i in range(6))
    assert main(["trial", *_csv(tmp_path, rows)]) == 2
    assert capsys.readouterr().err.strip() == (
        "lorasweep: error: data.label_column='sentiment' is not allowed: "
        "a column with at least 2 classes in the train split"
    )


def test_console_script_prints_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "lorasweep.cli", "trial", "adapter.r=-3"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "lorasweep: error: adapter.r=-3 is not allowed: an integer >= 1"


def test_default_config_is_valid():
    from lorasweep.config import compose, validate

    cfg = validate(compose([]), has_cuda=False)
    assert cfg.model.name == "minilm" and cfg.data.name == "tweets" and cfg.adapter.variant == "lora"
    assert validate(compose(["train.optim=paged_adamw_8bit"]), has_cuda=True)  # allowed where CUDA exists


def test_scheduler_names_are_transformers_own():
    from transformers.trainer_utils import SchedulerType

    from lorasweep.config import SCHEDULERS

    assert sorted(SCHEDULERS) == sorted(s.value for s in SchedulerType)


def test_the_sweep_driver_never_imports_torch():
    """Start-up: the driver checks fields, talks to MLflow and Optuna, and leaves torch and transformers (~6 s of
    imports) to the workers, which load them anyway."""
    code = (
        "import sys; from lorasweep.config import compose, validate; from lorasweep import sweep, ledger, tracking; "
        "validate(compose(['sweep=rank_alpha'])); tracking.environment_tags(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
