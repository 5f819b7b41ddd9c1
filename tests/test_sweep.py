"""Sweeps for real, through the CLI and the public API: Ray, Optuna storage and MLflow in tmp dirs, on the smoke
sweep (tiny_llama, a few steps). No assertion depends on wall-clock margins or on a model cache from an earlier run."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest

from lorasweep.config import compose
from lorasweep.sweep import run_sweep
from lorasweep.tracking import flatten

pytestmark = pytest.mark.slow
GRID_LR = [
    "~sweep.space",
    "~sweep.sampler",
    "+sweep.sampler={name:grid,seed:0}",
    "+sweep.space={train:{lr:{kind:grid,values:[0.03,0.01,1.0e-6,1.0e-7]}}}",
]
# Seed 1 samples useful rates first (0.003, 0.01), then a useless one: some pruner has something to prune.
GRID_LR6 = [
    "~sweep.space",
    "~sweep.sampler",
    "+sweep.sampler={name:grid,seed:1}",
    "+sweep.space={train:{lr:{kind:grid,values:[0.03,0.01,0.003,1.0e-6,1.0e-7,1.0e-8]}}}",
]


def children(store: str, sweep_dir: str):
    parent = json.loads((Path(sweep_dir) / "state.json").read_text())["parent_run_id"]
    client = mlflow.MlflowClient(store)
    exp = client.get_run(parent).info.experiment_id
    return client, parent, client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def study_of(sweep_dir: str) -> optuna.Study:
    return optuna.load_study(study_name=Path(sweep_dir).name, storage=f"sqlite:///{sweep_dir}/optuna.db")


def same_states(runs, study) -> dict[int, str]:
    """Each Optuna trial has exactly one MLflow child, keyed by the trial number, in the matching state."""
    by_number = {int(r.data.tags["optuna_trial"]): r for r in runs}
    ran = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # a duplicate sample has no run
    assert len(by_number) == len(runs) == len(ran)
    optuna_of = {
        "COMPLETE": "COMPLETE",
        "PRUNED": "PRUNED",
        "SKIPPED": "PRUNED",
        "FAILED": "FAIL",
        "KILLED": "FAIL",
    }
    for t in ran:
        run = by_number[t.number]
        assert optuna_of[run.data.tags["trial_state"]] == t.state.name, (t.number, run.data.tags, t.state)
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status != "RUNNING"
    return {n: r.data.tags["trial_state"] for n, r in by_number.items()}


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_trial_and_its_rerun_command(mode, store, capsys):
    """The best trial is the min (or max) of the COMPLETE ones; the printed command composes its exact config."""
    from lorasweep.cli import main

    assert main(["sweep", "sweep=smoke", "sweep.pruner.name=none", f"sweep.mode={mode}", "engine.num_cpus=2"]) == 0
    out = capsys.readouterr().out
    sweep_dir = next(Path("sweeps_out").glob("smoke-*"))
    client, parent, runs = children(store, str(sweep_dir))
    same_states(runs, study_of(str(sweep_dir)))
    values = {r.info.run_id: r.data.metrics["eval_loss"] for r in runs if r.data.tags["trial_state"] == "COMPLETE"}
    assert len(values) == 3
    best = (min if mode == "min" else max)(values, key=values.get)
    assert client.get_run(parent).data.tags["best_run_id"] == best
    cmd = next(line for line in out.splitlines() if line.startswith("best:")).split("rerun: ", 1)[1]
    args = shlex.split(cmd)
    assert args[:3] == ["lorasweep", "trial", "sweep=smoke"]
    rerun = {k: str(v) for k, v in flatten(compose(args[2:])).items()}
    assert rerun == client.get_run(best).data.params
    board = [line for line in (sweep_dir / "leaderboard.md").read_text().splitlines()[2:]]
    ranked = [float(line.split("|")[3]) for line in board if "COMPLETE" in line]
    assert ranked == sorted(ranked, reverse=mode == "max")
    # Names a person can read, and the UI opens on model training.
    assert client.get_run(parent).info.run_name == sweep_dir.name
    assert all(r.info.run_name.startswith(f"t{int(r.data.tags['optuna_trial']):03d} r=") for r in runs)
    exp = client.get_experiment(client.get_run(parent).info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # engine.cpus_per_trial=auto: one trial at a time gets every CPU (and as many torch threads).
    assert {r.data.tags["cpus"] for r in runs} == {"2"}


@pytest.mark.parametrize(
    "pruner",
    [
        "{name:median,n_startup_trials:1,n_warmup_steps:0}",
        "{name:asha,time_attr:step,grace_period:2,reduction_factor:2,max_t:6}",
        "{name:successive_halving,min_resource:2,reduction_factor:2}",
        "{name:hyperband,min_resource:2,max_resource:6,reduction_factor:2}",
        "{name:percentile,percentile:25,n_startup_trials:1,n_warmup_steps:0}",
    ],
)
def test_pruned_trials_are_the_same_in_optuna_and_mlflow(pruner, store):
    """Learning rates from useful to useless: the pruner stops some; both stores name the same trials PRUNED,
    stopped before the last step, and the leaderboard ranks only the finished ones."""
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=6",
            "train.max_steps=6",
            "train.eval_every=2",
            *GRID_LR6,
            "~sweep.pruner",
            f"+sweep.pruner={pruner}",
        ]
    )
    client, _, runs = children(store, s["sweep_dir"])
    states = same_states(runs, study_of(s["sweep_dir"]))
    pruned = [r for r in runs if r.data.tags["trial_state"] == "PRUNED"]
    assert pruned, states
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")]
        if r.data.tags["trial_state"] == "PRUNED":
            assert max(steps) < 6 and int(r.data.tags["pruned_at_step"]) == max(steps)
        else:
            assert r.data.tags["trial_state"] == "COMPLETE" and steps == [2, 4, 6]
    assert s["counts"] == {"COMPLETE": 6 - len(pruned), "PRUNED": len(pruned)}
    assert {row["run_id"] for row in s["top"]} <= {
        r.info.run_id for r in runs if r.data.tags["trial_state"] == "COMPLETE"
    }


def test_four_concurrent_trials_all_train_overlap_and_lose_no_metric(store):
    """4 trials at once, packed 4 to one (Ray-counted) GPU by gpus_per_trial=auto: all four train, their training
    spans overlap, and every step of every trial reaches the store."""
    from lorasweep.estimate import estimate

    need_gb = estimate(compose(["sweep=smoke"]))["memory"]["total"]["bytes"] / 2**30
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=4",
            "sweep.max_concurrent=4",
            "engine.num_cpus=4",
            "engine.num_gpus=1",
            "engine.gpus_per_trial=auto",
            f"engine.gpu_memory_gb={need_gb / 0.2:.3f}",
            "sweep.pruner.name=none",
            "train.max_steps=8",
            *GRID_LR,
        ]
    )
    client, parent, runs = children(store, s["sweep_dir"])
    assert s["counts"] == {"COMPLETE": 4}
    spans = []
    for r in runs:
        assert r.data.tags["gpu_share"] == "0.25"  # need/GPU = 0.2 -> a quarter
        assert r.data.tags["cpus"] == "1"  # auto: 4 CPUs over 4 trials at once
        assert [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")] == [2, 4, 6, 8]
        train = client.get_metric_history(r.info.run_id, "train_loss")
        assert [m.step for m in train] == [2, 4, 6, 8]
        spans.append((min(m.timestamp for m in train), max(m.timestamp for m in train)))
    # Some pair of trials was training at the same time (step 2 of one before the last step of another).
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), spans
    assert len({r.data.tags["pid"] for r in runs}) >= 2
    assert len({frozenset(r.data.params) for r in runs}) == 1  # the compare view lines the params up
    arts = {a.path for a in client.list_artifacts(parent)}
    assert {"sweep.yaml", "leaderboard.csv", "leaderboard.md", "objective.png"} <= arts


def test_refused_configs_fail_in_both_stores_and_max_failures_stops_launches(store):
    """Every sampled trial is VeRA with LoRA+ (refused by validation): each ends FAILED with the reason, and the
    sweep stops launching after max_failures + 1 failures, though the space holds 4 distinct configs."""
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=6",
            "+sweep.max_failures=1",
            "adapter.loraplus_ratio=4",
            "~sweep.space",
            "+sweep.space={adapter:{variant:{kind:choice,values:[vera]},r:{kind:choice,values:[2,4,8,16]}}}",
        ]
    )
    client, _, runs = children(store, s["sweep_dir"])
    states = same_states(runs, study_of(s["sweep_dir"]))
    assert list(states.values()) == ["FAILED", "FAILED"]
    for r in runs:
        assert r.info.status == "FAILED"
        assert "adapter.loraplus_ratio=4 is not allowed: 1 with variant 'vera'" in r.data.tags["failure_reason"]
        assert r.data.params["adapter.variant"] == "vera"


def test_a_config_sampled_again_costs_no_budget_and_makes_no_run(store, capsys):
    """A grid of two cells that compose to one config (a helper no field uses): the second cell is told to Optuna as
    a duplicate of the first, makes no MLflow run, and the sweep says the space is spent instead of training it."""
    from lorasweep.cli import main

    grid = "+sweep.space={adapter:{r:{kind:grid,values:[4]}},unused:{kind:grid,values:[1,2],helper:true}}"
    args = ["sweep", "sweep=smoke", "sweep.pruner.name=none", "~sweep.sampler", "+sweep.sampler={name:grid,seed:0}"]
    assert main([*args, "sweep.num_trials=2", "~sweep.space", grid]) == 0
    out = capsys.readouterr().out
    sweep_dir = next(Path("sweeps_out").glob("smoke-*"))
    client, _, runs = children(store, str(sweep_dir))
    study = study_of(str(sweep_dir))
    states = same_states(runs, study)
    assert list(states.values()) == ["COMPLETE"]
    (ran,) = states
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert duplicates and all(t.user_attrs["duplicate_of"] == ran and t.state.name == "PRUNED" for t in duplicates)
    assert "the space is spent" in out


def test_a_budget_of_ten_on_four_distinct_configs_trains_four_and_says_so(store, capsys):
    """r in {2, 4} x lr in {0.001, 0.003}: a 4-config discrete space with a budget of 10 runs each config once
    (Optuna's BruteForceSampler) and says why it stops after 4."""
    from lorasweep.cli import main

    space = "+sweep.space={adapter:{r:{kind:choice,values:[2,4]}},train:{lr:{kind:choice,values:[0.001,0.003]}}}"
    assert main(["sweep", "sweep=smoke", "sweep.pruner.name=none", "sweep.num_trials=10", "~sweep.space", space]) == 0
    out = capsys.readouterr().out
    sweep_dir = next(Path("sweeps_out").glob("smoke-*"))
    client, _, runs = children(store, str(sweep_dir))
    same_states(runs, study_of(str(sweep_dir)))
    assert sorted((r.data.params["adapter.r"], r.data.params["train.lr"]) for r in runs) == [
        ("2", "0.001"),
        ("2", "0.003"),
        ("4", "0.001"),
        ("4", "0.003"),
    ]
    assert "this space has 4 distinct configs; budget 10 -> stopping after 4" in out


def test_warm_start_seeds_a_shared_space_and_enqueues_the_best_of_another(store):
    """Same space: the earlier sweep's finished trials are added to the new study, untrained and outside the budget.
    A changed space: the earlier top-k configs run first, each child run saying where its config came from."""
    first = run_sweep(["sweep=smoke", "sweep.pruner.name=none"])
    earlier = {t.number: t for t in study_of(first["sweep_dir"]).trials}
    name = Path(first["sweep_dir"]).name

    seeded = run_sweep(["sweep=smoke", "sweep.pruner.name=none", "sweep.sampler.seed=1", "+sweep.warm_start=smoke"])
    study = study_of(seeded["sweep_dir"])
    added = [t for t in study.trials if "seeded_from" in t.user_attrs]
    assert [t.user_attrs["seeded_from"] for t in added] == [f"{name} t{n:03d}" for n in sorted(earlier)]
    assert [t.value for t in added] == [earlier[n].value for n in sorted(earlier)]
    _, _, runs = children(store, seeded["sweep_dir"])
    assert len(runs) == 3 and len(study.trials) == 6  # the budget is this sweep's 3 trials
    assert {r.data.tags["warm_start"] for r in runs} == {
        f"the study was seeded with 3 finished trials of {name} (same space)"
    }

    wider = ["sweep.space.train.lr.high=0.02", f"+sweep.warm_start={name}", "+sweep.warm_start_top_k=2"]
    queued = run_sweep(["sweep=smoke", "sweep.pruner.name=none", "sweep.num_trials=2", *wider])
    study = study_of(queued["sweep_dir"])
    assert not any("seeded_from" in t.user_attrs for t in study.trials)
    top = sorted(earlier.values(), key=lambda t: t.value)[:2]  # smoke minimises eval_loss
    assert [t.params for t in study.trials] == [t.params for t in top]
    _, _, runs = children(store, queued["sweep_dir"])
    tags = sorted(r.data.tags["warm_start"] for r in runs)
    assert tags == sorted(f"enqueued from {name} t{t.number:03d}" for t in top)


def test_compare_runs_each_arm_lr_search_then_its_seeds_at_its_best_lr_and_reports_it(store):
    """A real LR-first comparison: 2 arms x (2 LRs at seed 0 + seed 1 at the arm's best LR), two at a time. Seed trials
    are never pruned; each child run names its arm and phase; the report has the arms table and its verdicts."""
    from lorasweep.analysis import report

    s = run_sweep(
        [
            "sweep=smoke",
            "~sweep.space",
            "~sweep.sampler",
            "~sweep.num_trials",
            "sweep.max_concurrent=2",
            "engine.num_cpus=2",
            "sweep.pruner.n_startup_trials=1",
            "+sweep.compare={arms:{adapter.r:[2,4]},lr:{values:[1.0e-2,1.0e-7]},seeds:[0,1]}",
        ]
    )
    study = study_of(s["sweep_dir"])
    _, _, runs = children(store, s["sweep_dir"])
    states = same_states(runs, study)
    by_number = {int(r.data.tags["optuna_trial"]): r for r in runs}
    seeds_run = 0
    for r in (2, 4):
        mine = [t for t in study.trials if t.params["adapter.r"] == r]
        search = [t for t in mine if t.user_attrs["compare_phase"] == "lr"]
        assert sorted(t.params["train.lr"] for t in search) == [1e-7, 1e-2]  # the same LR budget for every arm
        assert {t.params["seed"] for t in search} == {0}
        done = [t for t in search if t.state == optuna.trial.TrialState.COMPLETE]
        seeds = [t for t in mine if t.user_attrs["compare_phase"] == "seeds"]
        assert len(seeds) == (1 if done else 0)
        for t in seeds:
            assert t.params["train.lr"] == min(done, key=lambda d: d.value).params["train.lr"]  # eval_loss: min
            assert t.params["seed"] == 1 and states[t.number] == "COMPLETE"  # no pruner at the best LR
            seeds_run += 1
        for t in mine:
            tags = by_number[t.number].data.tags
            assert tags["compare_arm"] == f"adapter.r={r}" and tags["compare_phase"] == t.user_attrs["compare_phase"]
    assert seeds_run >= 1  # the first trial is never pruned (n_startup_trials=1): its arm has a best LR
    path, _ = report.build(Path(s["sweep_dir"]).name, Path("reports"), log=False)
    text = (path / "README.md").read_text()
    assert "## Arms at their own best learning rate" in text and (path / "lr_curves.png").exists()
    assert "| the arms tie within tolerance once LR is tuned" in text


def test_a_multi_objective_sweep_marks_optunas_pareto_front(store):
    """Two objectives through Optuna's multi-objective study: every trial COMPLETE (no pruner), both values told, and
    the leaderboard's Pareto column is Optuna's own front (study.best_trials); the parent run holds the front."""
    from lorasweep.analysis import report

    s = run_sweep(
        ["sweep=smoke", "~sweep.pruner", "~sweep.metric", "~sweep.mode", "engine.num_cpus=2", "sweep.num_trials=4"]
        + ["+sweep.objectives={eval_perplexity:min,trainable_params:min}"]
    )
    study = study_of(s["sweep_dir"])
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["eval_perplexity", "trainable_params"]
    client, parent, runs = children(store, s["sweep_dir"])
    assert set(same_states(runs, study).values()) == {"COMPLETE"}
    for t in study.trials:  # Optuna holds what MLflow logged, for both objectives
        logged = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        assert t.values == [logged["eval_perplexity"], logged["trainable_params"]]
    board = pd.read_csv(Path(s["sweep_dir"]) / "leaderboard.csv")
    assert set(board.loc[board["pareto"], "trial"]) == {t.number for t in study.best_trials}
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.md", "pareto.csv", "pareto_front.png"} <= names
    objectives = {"eval_perplexity": "min", "trainable_params": "min"}
    assert json.loads(client.get_run(parent).data.tags["objectives"]) == objectives
    path, sweep = report.build(Path(s["sweep_dir"]).name, Path("reports"), log=False)
    assert (sweep.metric, sweep.mode) == ("eval_perplexity", "min")  # the first objective, with no sweep.metric set
    assert "## Pareto front" in (path / "README.md").read_text() and (path / "pareto_front.png").exists()


def test_configs_over_max_cost_are_skipped_before_they_train_and_optuna_counts_them_infeasible(store):
    """A grid r in {2, 8, 32} on a two-objective front with trainable params bounded between r=8's and r=32's: r=32
    is SKIPPED before anything trains (its reason and predicted costs on its run, an infeasible PRUNED trial in
    Optuna), the others train, log the params the estimator predicted, and make up Optuna's front."""
    from lorasweep.analysis import report

    grid = ["~sweep.space", "~sweep.sampler", "+sweep.sampler={name:grid,seed:0}", "sweep.num_trials=3"]
    s = run_sweep(
        ["sweep=smoke", "~sweep.pruner", "~sweep.metric", "~sweep.mode", *grid]
        + ["+sweep.space={adapter:{r:{kind:grid,values:[2,8,32]}}}", "+sweep.max_cost={trainable_params:8000}"]
        + ["+sweep.objectives={eval_perplexity:min,trainable_params:min}"]
    )
    study = study_of(s["sweep_dir"])
    client, _, runs = children(store, s["sweep_dir"])
    states = same_states(runs, study)
    by_r = {t.params["adapter.r"]: t for t in study.trials}
    assert {r: states[t.number] for r, t in by_r.items()} == {2: "COMPLETE", 8: "COMPLETE", 32: "SKIPPED"}
    for r, t in by_r.items():
        # By hand: tiny_llama's 2 layers adapt q (64 -> 4 heads x 16) and v (64 -> 2 kv heads x 16), r x (in + out)
        want = 2 * r * ((64 + 64) + (64 + 32))
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.metrics["trainable_params"] == want  # predicted for the skipped, counted for the trained
        assert t.constraints == {"trainable_params": pytest.approx((want - 8000) / 8000)}
        trained = client.get_metric_history(run.info.run_id, "train_loss")
        if r == 32:
            assert not trained and run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
            assert run.data.tags["skip_reason"] == (
                "not trained: predicted trainable_params 14,336 > 8,000 (sweep.max_cost)"
            )
        else:
            assert trained
    assert {t.number for t in study.best_trials} == {by_r[2].number, by_r[8].number}
    board = pd.read_csv(Path(s["sweep_dir"]) / "leaderboard.csv")
    assert list(board["state"]) == ["COMPLETE", "COMPLETE", "SKIPPED"]
    assert not board.loc[board["state"] == "SKIPPED", "pareto"].any()
    path, _ = report.build(Path(s["sweep_dir"]).name, Path("reports"), log=False)
    text = (path / "README.md").read_text()
    assert "Skipped before training:\n\n- 1 × not trained: predicted trainable_params 14,336 > 8,000" in text


def test_three_concurrent_trials_build_the_model_cache_once(store, tmp_path, monkeypatch):
    """An empty model cache and 3 workers at once that all need the config-built model (each warms up on it, then
    serves one trial): it is built once, and the 3 trials ran at the same time, shown by what they recorded."""
    monkeypatch.setenv("LORASWEEP_CACHE", str(tmp_path / "empty-cache"))  # the workers' cache, not the session's
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.max_concurrent=3",
            "engine.num_cpus=3",
            "sweep.pruner.name=none",
            *GRID_LR,
            "sweep.num_trials=3",
            "train.max_steps=16",  # trials long beside the driver's launching one after another
        ]
    )
    assert s["counts"] == {"COMPLETE": 3}
    # Built once: one folder beside its lock; a second build would have left its .tmp-<pid> folder (its rename onto
    # the built folder fails).
    built = sorted(p.name for p in (tmp_path / "empty-cache" / "models").iterdir())
    assert len(built) == 2 and built[0].startswith("tiny_llama-") and built[1] == built[0] + ".lock", built
    # At once: three worker processes, and each trial had loaded its model (its trainable_params, logged by its worker
    # after the load) before any other trial ended. Recorded times in order, no margin.
    client, _, runs = children(store, s["sweep_dir"])
    assert len({r.data.tags["pid"] for r in runs}) == 3
    loaded = [client.get_metric_history(r.info.run_id, "trainable_params")[0].timestamp for r in runs]
    assert max(loaded) < min(r.info.end_time for r in runs), (loaded, [r.info.end_time for r in runs])


def _leftovers(tmp_path: Path) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        if p.pid == os.getpid():  # this test runs in tmp_path too
            continue
        try:
            if str(tmp_path) in " ".join(p.info["cmdline"] or []) or str(p.info["cwd"] or "").startswith(str(tmp_path)):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_sigkill_the_driver_then_resume(store, tmp_path):
    """SIGKILL the driver (only it) mid-sweep: no process of the sweep outlives it; resume=true kills the trial
    left RUNNING in both stores and finishes the budget without rerunning finished trials."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    cmd = [
        sys.executable,
        "-m",
        "lorasweep.cli",
        "sweep",
        "sweep=smoke",
        "sweep.num_trials=4",
        "sweep.pruner.name=none",
    ]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    db = None
    while proc.poll() is None:  # until one trial finished and the next one runs
        # Only once the driver has made its study (state.json follows): opening the storage while the driver
        # creates its tables races it on sqlite's alembic table.
        dbs = [p.parent / "optuna.db" for p in tmp_path.glob("sweeps_out/smoke-*/state.json")]
        if dbs:
            db = dbs[0]
            try:
                states = [t.state for t in study_of(str(db.parent)).trials]
            except Exception:  # the study is still being created
                states = []
            if states.count(optuna.trial.TrialState.COMPLETE) >= 1 and optuna.trial.TrialState.RUNNING in states:
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be killed: " + log.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(60):  # the log server and Ray's processes exit on their own once the driver is gone
        if not _leftovers(tmp_path):
            break
        time.sleep(0.5)
    assert [p.cmdline() for p in _leftovers(tmp_path)] == []
    finished_before = {t.number for t in study_of(str(db.parent)).trials if t.state.name == "COMPLETE"}

    p = subprocess.run([*cmd, "resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    study = study_of(str(db.parent))
    client, parent, runs = children(store, str(db.parent))
    states = same_states(runs, study)
    killed = [t for t in study.trials if t.user_attrs.get("killed")]
    assert killed and all(states[t.number] == "KILLED" for t in killed)
    assert all(
        "driver died" in client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["failure_reason"] for t in killed
    )
    assert sorted(states.values()).count("COMPLETE") == 4 and finished_before <= {
        n for n, s in states.items() if s == "COMPLETE"
    }
    assert client.get_run(parent).info.status == "FINISHED"
    assert _leftovers(tmp_path) == []


def test_confirm_runs_k_times_s_new_seeds_and_survives_sigkill_and_resume(store, tmp_path):
    """sweep.confirm {top_k: 2, seeds: 2} after a 3-trial search: the driver is SIGKILLed while a confirmation run
    trains; resume=true kills that run in both stores and completes exactly one run per (config, new seed); the last
    lines give the confirmed winner over its seeds and the verdict on the runner-up."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    cmd = [sys.executable, "-m", "lorasweep.cli", "sweep", "sweep=smoke", "sweep.pruner.name=none"]
    cmd += ["+sweep.confirm={top_k:2,seeds:2}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = None
    while proc.poll() is None:  # until a confirmation run trains
        dbs = list(tmp_path.glob("sweeps_out/smoke-*/optuna.db"))
        if dbs:
            db = dbs[0]
            try:
                trials = study_of(str(db.parent)).trials
            except Exception:  # the study is still being created
                trials = []
            if any(t.user_attrs.get("phase") == "confirm" and t.state.name == "RUNNING" for t in trials):
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(60):
        if not _leftovers(tmp_path):
            break
        time.sleep(0.5)

    p = subprocess.run([*cmd, "resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    study = study_of(str(db.parent))
    client, _, runs = children(store, str(db.parent))
    states = same_states(runs, study)
    search = [t for t in study.trials if t.user_attrs.get("phase") != "confirm" and "duplicate_of" not in t.user_attrs]
    confirmed = [t for t in study.trials if t.user_attrs.get("phase") == "confirm"]
    killed = [t for t in confirmed if t.user_attrs.get("killed")]
    done = [t for t in confirmed if not t.user_attrs.get("killed")]
    assert len(search) == 3 and killed and all(states[t.number] == "KILLED" for t in killed)
    pairs = sorted((t.user_attrs["confirm_of"], t.user_attrs["confirm_seed"]) for t in done)
    assert len(pairs) == 4 and len(set(pairs)) == 4 and {s for _, s in pairs} == {1, 2}  # seed 0 was the search's
    assert all(states[t.number] == "COMPLETE" for t in done)
    best_two = sorted((t for t in search if t.value is not None), key=lambda t: t.value)[:2]
    assert {of for of, _ in pairs} == {t.number for t in best_two}  # eval_loss, min: the two lowest
    assert all(client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["phase"] == "confirm" for t in confirmed)
    for t in done:  # never pruned, so evaluated once, at the last step (the search's trials: at steps 2 and 4)
        assert [m.step for m in client.get_metric_history(t.user_attrs["mlflow_run_id"], "eval_loss")] == [4]
    assert [m.step for m in client.get_metric_history(search[0].user_attrs["mlflow_run_id"], "eval_loss")] == [2, 4]
    assert "over 2 seeds; runner-up" in p.stdout
    assert "## Confirmed configs" in (db.parent / "leaderboard.md").read_text()


@pytest.fixture
def two_nodes():
    """A Ray cluster of two 1-CPU nodes on this machine; yields its address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def test_two_node_cluster_runs_trials_on_both_nodes(store, two_nodes):
    """A Ray cluster of two nodes (one machine) joined through engine.address; the log server binds where the nodes
    reach it; each trial records the node it ran on."""
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=2",
            "sweep.max_concurrent=2",
            "sweep.pruner.name=none",
            *GRID_LR,
            f"engine.address={two_nodes}",
            "engine.log_server_host=127.0.0.1",
        ]
    )
    client, _, runs = children(store, s["sweep_dir"])
    assert s["counts"] == {"COMPLETE": 2}
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2  # one trial per node: each has 1 CPU


def test_time_limit_kills_running_trials_with_that_reason(store):
    """Trials still running at sweep.time_limit_s end KILLED in MLflow and FAIL (killed) in Optuna."""
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=3",
            "sweep.pruner.name=none",
            "sweep.time_limit_s=15",
            "train.max_steps=100000",
            "train.eval_every=50000",
        ]
    )
    client, _, runs = children(store, s["sweep_dir"])
    study = study_of(s["sweep_dir"])
    states = same_states(runs, study)
    assert "KILLED" in states.values()
    for t in study.trials:
        if states[t.number] == "KILLED":
            assert t.user_attrs["killed"] is True
            reason = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["failure_reason"]
            assert reason == "stopped when the sweep reached sweep.time_limit_s=15"


def _server_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _server_bins(*names: str) -> list[str]:
    """The server's binaries. One missing fails the test in CI, which installs them (.ci/run sets LORASWEEP_CI; other
    CIs set CI), and skips it elsewhere."""
    found = [_server_bin(n) for n in names]
    if not all(found):
        why = f"no PostgreSQL server binary here ({', '.join(names)}): apt-get install postgresql"
        if os.environ.get("CI") or os.environ.get("LORASWEEP_CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.mark.parametrize("env,outcome", [({"LORASWEEP_CI": "1"}, "fail"), ({"CI": "true"}, "fail"), ({}, "skip")])
def test_a_missing_postgres_server_fails_the_test_in_ci_and_skips_it_elsewhere(env, outcome, monkeypatch):
    for key in ("CI", "LORASWEEP_CI"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the real finder (PATH, then Debian's /usr/lib/postgresql/*/bin), for a binary no install has
    with pytest.raises(getattr(pytest, outcome).Exception, match=r"no PostgreSQL server binary here \(initdb, no-"):
        _server_bins("initdb", "no-such-postgres-binary")


@pytest.fixture
def postgres():
    """A real PostgreSQL server on 127.0.0.1, started for this test (as the postgres user when run as root)."""
    import socket

    initdb, pg_ctl = _server_bins("initdb", "pg_ctl")
    import shutil
    import tempfile

    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # the server refuses to run as root
    data = Path(tempfile.mkdtemp(prefix="lorasweep-pg-"))  # outside pytest's tmp dirs, which only root may enter
    if as_user:
        subprocess.run(["chown", "postgres", str(data)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_postgres_storage_on_two_nodes_loses_and_duplicates_no_trial(store, postgres, two_nodes):
    """The study in a real PostgreSQL server, trials on a two-node Ray cluster, 2 at a time: every trial number
    0..5 exists once in Optuna and once in MLflow, in the same state, and nothing is left RUNNING."""
    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=6",
            "sweep.max_concurrent=2",
            *GRID_LR6,
            f"engine.storage='{postgres}'",
            f"engine.address={two_nodes}",
            "engine.log_server_host=127.0.0.1",
        ]
    )
    study = optuna.load_study(study_name=Path(s["sweep_dir"]).name, storage=postgres)
    client, _, runs = children(store, s["sweep_dir"])
    states = same_states(runs, study)
    assert sorted(states) == list(range(6))
    assert sorted(t.params["train.lr"] for t in study.trials) == sorted([0.03, 0.01, 0.003, 1e-6, 1e-7, 1e-8])
    assert set(states.values()) <= {"COMPLETE", "PRUNED"} and not (Path(s["sweep_dir"]) / "optuna.db").exists()
    assert len({r.data.tags["ray_node_id"] for r in runs}) == 2


def test_resume_records_a_trial_asked_for_but_never_opened(store, tmp_path):
    """A driver killed between asking Optuna for a trial and opening its MLflow run: resume gives that trial a
    KILLED child run, linked both ways and tagged with its phase, like any other trial the dead driver left."""
    from lorasweep import ledger

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"adapter.r": 4}, user_attrs={ledger.PHASE: ledger.CONFIRM})  # a confirmation run
    study.ask().suggest_int("adapter.r", 1, 8)
    client = mlflow.MlflowClient(store)
    parent = client.create_run(client.create_experiment("lorasweep")).info.run_id
    assert ledger.kill_running(client, parent, storage, study, "the sweep driver died while this trial ran") == 1
    (trial,) = study.trials
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert trial.state.name == "FAIL" and trial.user_attrs["killed"] is True
    assert (
        run.info.status == "KILLED"
        and run.data.tags["trial_state"] == "KILLED"
        and run.data.tags["optuna_trial"] == "0"
        and run.data.tags["phase"] == "confirm"
    )
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params == {
        "adapter.r": str(trial.params["adapter.r"])
    }


@pytest.mark.parametrize("sampler,attr", [("nsga2", "NSGAIISampler:generation"), ("cmaes", "cma:")])
def test_nsga2_and_cmaes_sweeps_sample_with_their_sampler_and_resume_by_sweep_id(sampler, attr, store):
    """Each sampler leaves its own bookkeeping on the trials it sampled (NSGA-II its generation, CMA-ES its
    state, from the second trial on: the first is its random start-up); resume=<sweep id> continues that study
    and parent run to the larger budget without rerunning a trial."""
    lr, dropout = "{kind:logfloat,low:1.0e-3,high:1.0e-2}", "{kind:float,low:0.0,high:0.1}"  # CMA-ES: 2+ floats
    space = f"+sweep.space={{train:{{lr:{lr}}},adapter:{{dropout:{dropout}}}}}"
    argv = ["sweep=smoke", "~sweep.space", space, "~sweep.sampler", f"+sweep.sampler={{name:{sampler},seed:0}}"]
    argv += ["sweep.pruner.name=none", "train.max_steps=2", "sweep.num_trials=2"]
    first = run_sweep(argv)
    sweep_id = Path(first["sweep_dir"]).name
    parent = json.loads((Path(first["sweep_dir"]) / "state.json").read_text())["parent_run_id"]
    before = {t.number: t.params for t in study_of(first["sweep_dir"]).trials}
    again = run_sweep([*argv[:-1], "sweep.num_trials=3", f"resume={sweep_id}"])
    assert again["sweep_dir"] == first["sweep_dir"] and again["counts"] == {"COMPLETE": 3}
    study = study_of(first["sweep_dir"])
    client, parent_again, runs = children(store, first["sweep_dir"])
    assert parent_again == parent and same_states(runs, study) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    assert {t.number: t.params for t in study.trials[:2]} == before
    sampled_by_it = [t.number for t in study.trials if any(k.startswith(attr) for k in t.system_attrs)]
    assert sampled_by_it == ([0, 1, 2] if sampler == "nsga2" else [1, 2]), [t.system_attrs for t in study.trials]
