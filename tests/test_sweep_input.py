"""Bad sweep input, found before the sweep exists (by the driver, or by its workers' check of the base config and
data): one line naming the field, the value and what is allowed; exit 2; no MLflow run, no sweeps_out/ entry."""

import pytest

from lorasweep.cli import main
from tests.conftest import all_runs


def _small_csv(tmp_path):
    p = tmp_path / "small.csv"
    p.write_text("text,sentiment\n" + "".join(f"tweet number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(2225)))
    return f"data.path={p}"


BAD = [
    (["sweep=rank_alpha", "sweep.metric=eval_bogus"], "sweep.metric='eval_bogus'", "eval_accuracy, eval_macro_f1"),
    (["sweep=smoke", "sweep.metric=eval_accuracy"], "sweep.metric='eval_accuracy'", "eval_loss, eval_perplexity"),
    (["sweep=qlora", "model=tiny_llama", "data=tweets_sft"], "sweep.metric='eval_macro_f1'", "a causal_lm trial"),
    (
        ["sweep=rank_alpha", "data.source=file", "data.format=csv", "data.encoding=utf-8", "CSV"],
        "data.train_size=4800",
        "rows remain for it (2225 usable rows); data.train_size=null takes the rest",
    ),
    (["sweep=smoke", "+adapter.bogus=1"], "adapter.bogus=1", "not a config field"),
    (["sweep=smoke", "+train.max_step=9"], "train.max_step=9", "did you mean train.max_steps?"),
    (["sweep=smoke", "engine.address=127.0.0.1:6379"], "tracking.uri=", "engine.log_server_host"),
    (["sweep=smoke", "sweep.num_trials=0"], "sweep.num_trials=0", ""),
    (["sweep=smoke", "sweep.max_concurrent=0"], "sweep.max_concurrent=0", ""),
    (["sweep=smoke", "sweep.sampler.name=bogus"], "sweep.sampler.name='bogus'", "tpe"),
    (
        ["sweep=smoke", "~sweep.pruner", "+sweep.pruner={name:asha,time_attr:training_iteration}"],
        "sweep.pruner=",
        "only 'step'",
    ),
    (["sweep=smoke", "engine.cpus_per_trial=0"], "engine.cpus_per_trial=0", ""),
    (["sweep=smoke", "resume=nosuch"], "resume='nosuch'", ""),
    (["sweep=smoke", "adapter.targets=[nonsense]"], "adapter.targets='nonsense'", ""),
    (["sweep=smoke", "data.chat_template=true"], "data.chat_template=True", "has no chat template"),
    (["sweep=smoke", "+sweep.warm_start=nosuch"], "sweep.warm_start='nosuch'", "a sweep id or name"),
    (["sweep=rank_alpha", "engine.storage=notaurl://x"], "engine.storage='notaurl://x'", "SQLAlchemy database URL"),
    (["sweep=smoke", "engine.storage=not a url"], "engine.storage='not a url'", "Could not parse"),
    (["sweep=smoke", "engine.storage='mysql+nosuchdriver://u@h/d'"], "engine.storage=", "SQLAlchemy database URL"),
    (["sweep=rank_alpha", "sweep.confirm.top_k=0"], "sweep.confirm.top_k=0", "an int >= 1"),
    (["sweep=rank_alpha", "sweep.confirm.seeds=1"], "sweep.confirm.seeds=1", "one has no spread"),
    (["sweep=rank_alpha", "+sweep.confirm.sedes=3"], "sweep.confirm.sedes=3", "allowed: top_k, seeds"),
]


@pytest.mark.parametrize("argv,starts,mentions", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_sweep_input_is_one_line_exit_2_and_nothing_created(argv, starts, mentions, store, tmp_path, capsys):
    argv = [_small_csv(tmp_path) if a == "CSV" else a for a in argv]
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lorasweep: error: {starts}") and "is not allowed" in err and mentions in err, err
    assert all_runs(store) == []
    assert not (tmp_path / "sweeps_out").exists()


def test_bad_storage_url_is_refused_by_the_dry_run_too(store, tmp_path, capsys):
    assert main(["sweep", "sweep=smoke", "engine.storage=notaurl://x", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorasweep: error: engine.storage='notaurl://x' is not allowed") and "\n" not in err, err


@pytest.mark.parametrize(
    "argv,starts",
    [
        (["model=llama2_7b", "adapter.r=0", "--json"], "adapter.r=0"),
        (["model=nosuch"], "model='nosuch' is not allowed: one of "),
    ],
)
def test_bad_estimate_input_is_one_line_exit_2(argv, starts, capsys):
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"lorasweep: error: {starts}"), err
