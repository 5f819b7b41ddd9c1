"""Sweeps for real: Ray Tune + Optuna storage + MLflow in tmp dirs, on the smoke sweep (tiny_llama, a few steps)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from lorasweep.sweep import run_sweep

pytestmark = pytest.mark.slow


def children(store: str, parent: str):
    client = mlflow.MlflowClient(store)
    exp = client.get_run(parent).info.experiment_id
    return client, client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def parent_of(out: Path) -> str:
    return json.loads((Path(out) / "state.json").read_text())["parent_run_id"]


def test_four_concurrent_trials_lose_no_metric_and_a_failure_is_recorded(store):
    """4 trials at once against the default local store, packed 4 to one (Ray-counted) GPU by gpus_per_trial=auto;
    vera + LoRA+ is refused inside its trial, and the rest go on."""
    from lorasweep.config import compose
    from lorasweep.estimate import estimate

    need_gb = estimate(compose(["sweep=smoke"]))["memory"]["total"]["bytes"] / 2**30
    s = run_sweep(["sweep=smoke", "sweep.num_trials=4", "sweep.max_concurrent=4", "engine.num_cpus=4",
                   "engine.num_gpus=1", "engine.gpus_per_trial=auto", f"engine.gpu_memory_gb={need_gb / 0.2:.3f}",
                   "sweep.pruner.name=none", "adapter.loraplus_ratio=4", "~sweep.sampler", "+sweep.sampler={name:grid}",
                   "~sweep.space", "+sweep.space={adapter:{variant:{kind:grid,values:[lora,vera]},r:{kind:grid,values:[2,4]}}}"])
    client, runs = children(store, parent_of(s["sweep_dir"]))
    assert len(runs) == 4
    started = [r for r in runs if "gpu_share" in r.data.tags]
    assert started and all(r.data.tags["gpu_share"] == "0.25" for r in started)  # need/GPU = 0.2 -> a quarter
    states = sorted(r.data.tags["trial_state"] for r in runs)
    failed = [r for r in runs if r.data.tags["trial_state"] == "FAILED"]
    ok = [r for r in runs if r.data.tags["trial_state"] == "COMPLETE"]
    assert len(failed) == len(ok) == 2, states  # the grid: vera at r=2 and r=4 fail, lora runs
    for r in failed:
        assert r.info.status == "FAILED"
        assert "adapter.loraplus_ratio=4 is not allowed: 1 with variant 'vera'" in r.data.tags["failure_reason"]
    for r in ok:  # every step of every concurrent trial reached the store
        assert r.info.status == "FINISHED" and r.data.params["adapter.variant"] == "lora"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")] == [2, 4]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [2, 4]
        assert "trainable_params" in r.data.metrics and r.data.params["model.name"] == "tiny_llama"
    # Params are named and typed alike across children, so the compare view lines them up.
    assert len({frozenset(r.data.params) for r in ok}) == 1
    assert s["counts"] == {"COMPLETE": len(ok), "FAILED": len(failed)}
    # The parent holds the sweep: its config, leaderboard, plot, best trial.
    parent = client.get_run(parent_of(s["sweep_dir"]))
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "leaderboard.csv", "leaderboard.md", "objective.png"} <= arts
    assert parent.data.tags["best_run_id"] == s["best_run_id"] and parent.info.status == "FINISHED"
    assert s["best_command"].startswith("lorasweep trial sweep=smoke")
    assert parent.data.tags["command"].startswith("lorasweep sweep sweep=smoke ")  # the report's provenance line
    study = optuna.load_study(study_name=Path(s["sweep_dir"]).name, storage=f"sqlite:///{s['sweep_dir']}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == sorted("FAIL" if x == "FAILED" else x for x in states)


def test_pruned_trials_are_pruned_in_optuna_and_mlflow(store):
    """Trial 1 trains with a useless LR; later ones are stopped at their first eval once worse than the median."""
    s = run_sweep(["sweep=smoke", "sweep.num_trials=4", "train.max_steps=6", "train.eval_every=2",
                   "+sweep.pruner.n_warmup_steps=0",
                   "sweep.sampler.seed=3"])
    client, runs = children(store, parent_of(s["sweep_dir"]))
    study = optuna.load_study(study_name=Path(s["sweep_dir"]).name, storage=f"sqlite:///{s['sweep_dir']}/optuna.db")
    pruned_mlflow = {r.info.run_id for r in runs if r.data.tags["trial_state"] == "PRUNED"}
    pruned_optuna = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned_mlflow) == len(pruned_optuna) >= 1
    for r in runs:
        if r.info.run_id in pruned_mlflow:
            assert r.info.status == "FINISHED"
            assert max(m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")) < 6


def test_reconcile_records_a_trial_killed_before_its_mlflow_run_began(store, tmp_path):
    """A driver can die after Optuna handed out a trial but before the trial's MLflow run exists: on resume that
    trial still gets a KILLED child with its config, beside the KILLED child of the trial that had started."""
    import shlex

    from lorasweep.config import compose
    from lorasweep.space import parse_sweep, suggest, to_overrides
    from lorasweep.sweep import reconcile

    spec = parse_sweep(compose(["sweep=smoke"]))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", sampler=optuna.samplers.RandomSampler(seed=0))
    started, unstarted = study.ask(), study.ask()
    configs = [suggest(t, spec) for t in (started, unstarted)]
    finished = study.ask()
    suggest(finished, spec)
    study.tell(finished, 1.0)
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("lorasweep")
    parent = client.create_run(exp).info.run_id
    reordered = shlex.join(to_overrides(configs[0], spec)[::-1])  # Ray's config may list the keys in another order
    client.create_run(exp, tags={"mlflow.parentRunId": parent, "overrides": reordered})

    assert reconcile(client, parent, study, spec) == 1          # the finished trial counts against the budget
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 2 and all(r.info.status == "KILLED" and r.data.tags["trial_state"] == "KILLED" for r in runs)
    late = [r for r in runs if r.data.tags["failure_reason"].endswith("before its MLflow run started")]
    assert len(late) == 1 and late[0].data.tags["optuna_trial"] == str(unstarted.number)
    assert late[0].data.tags["overrides"] == shlex.join(to_overrides(configs[1], spec))
    assert late[0].data.params == {k: str(v) for k, v in configs[1].items()}   # derived alpha included
    assert "adapter.alpha" in late[0].data.params and "alpha_mult" not in late[0].data.params
    states = {t.number: (t.state, t.user_attrs.get("killed")) for t in study.trials}
    assert states[started.number] == states[unstarted.number] == (optuna.trial.TrialState.FAIL, True)


def test_kill_driver_then_resume(store, tmp_path):
    """SIGKILL the driver mid-sweep; resume=true finishes the budget without rerunning finished trials."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    cmd = [sys.executable, "-m", "lorasweep.cli", "sweep", "sweep=smoke", "sweep.num_trials=4", "sweep.pruner.name=none"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    db = None
    deadline = time.time() + 400
    while time.time() < deadline:  # wait for one finished trial and one running
        dbs = list(tmp_path.glob("sweeps_out/smoke-*/optuna.db"))
        if dbs:
            db = dbs[0]
            try:
                st = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
                states = [t.state for t in st.trials]
                if states.count(optuna.trial.TrialState.COMPLETE) >= 1 and optuna.trial.TrialState.RUNNING in states:
                    break
            except (KeyError, Exception):
                pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    import psutil

    def leftovers():  # the driver's MLflow log server and its workers share its process group
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(tmp_path) in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    assert leftovers() == []
    assert db is not None
    before = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    finished_before = {t.number for t in before.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert finished_before

    p = subprocess.run([*cmd, "resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    after = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
    complete = [t for t in after.trials if t.state == optuna.trial.TrialState.COMPLETE]
    killed = [t for t in after.trials if t.user_attrs.get("killed")]
    assert killed and all(t.state == optuna.trial.TrialState.FAIL for t in killed)
    assert len(complete) == 4  # the budget, with the trials finished before the kill kept, not rerun
    assert finished_before <= {t.number for t in complete}
    client, runs = children(store, parent_of(db.parent))
    by_state = {}
    for r in runs:
        by_state.setdefault(r.data.tags.get("trial_state"), []).append(r)
    assert len(by_state["COMPLETE"]) == 4 and len(by_state["KILLED"]) == len(killed)
    assert all(r.info.status == "KILLED" for r in by_state["KILLED"])
    assert client.get_run(parent_of(db.parent)).info.status == "FINISHED"
    assert leftovers() == []  # a finished sweep stops its log server


def test_two_node_cluster(store):
    """A small sweep on a Ray cluster of two nodes (one machine), joined through engine.address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        s = run_sweep(["sweep=smoke", "sweep.num_trials=2", "sweep.max_concurrent=2", "sweep.pruner.name=none",
                       f"engine.address={cluster.address}"])
    finally:
        cluster.shutdown()
    assert s["counts"] == {"COMPLETE": 2}


def test_time_limit_stops_the_sweep_and_records_cut_trials(store):
    """Trials Ray cuts at sweep.time_limit_s end KILLED with that reason: nothing is left RUNNING."""
    s = run_sweep(["sweep=smoke", "sweep.num_trials=3", "sweep.pruner.name=none", "sweep.time_limit_s=15",
                   "train.max_steps=400", "train.eval_every=200"])
    client, runs = children(store, parent_of(s["sweep_dir"]))
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    cut = [r for r in runs if r.data.tags.get("trial_state") == "KILLED"]
    assert cut and all("sweep.time_limit_s=15" in r.data.tags["failure_reason"] for r in cut)
