"""What a sweep prints about its dashboard, checked in a real browser: no per-trial links to the sweep's own log
server (gone when the sweep ends); last lines that open the sweep afterwards, in MLflow's Model-training view, on
this sweep's runs only; and the lean UI server `make ui` starts (one process, loopback only)."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest

from lorasweep import logserver
from lorasweep.cli import main

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dom(url: str, tmp_path: Path, must: str) -> str:
    """The page's DOM after the UI has rendered, as headless Chromium sees it. The page loads its runs over the
    network, which virtual time does not wait for on a loaded machine: read again until `must` shows, at most 5
    times, and return the last DOM either way (the caller's assertions say what was missing)."""
    for attempt in range(5):
        profile = tmp_path / f"chromium-{attempt}"
        page = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                f"--virtual-time-budget={15000 * (attempt + 1)}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
        if must in page:
            break
    return page


def test_sweep_prints_no_dead_links_and_its_last_lines_open_its_runs_in_model_training(store, tmp_path, capsys):
    if CHROMIUM is None:  # .ci/run installs it: in CI its absence is a failure, elsewhere a skip
        why = "no chromium here to load the MLflow UI in: apt-get install chromium"
        pytest.fail(why) if os.environ.get("CI") or os.environ.get("LORASWEEP_CI") else pytest.skip(why)
    # A run of another sweep in the same experiment: the printed URL must not show it.
    mlflow.set_experiment("lorasweep")
    with mlflow.start_run(run_name="other-sweep-run", tags={"sweep_id": "other-sweep"}):
        pass
    argv = ["sweep", "sweep=smoke", "sweep.num_trials=2", "sweep.pruner.name=none", "train.max_steps=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    printed_before_the_end = out.split("open this sweep")[0]
    assert "View run" not in out and "View experiment" not in out and "http://" not in printed_before_the_end

    # The end-of-sweep printout: counts, the ranked trials, the paired comparison of the top two, the rerun command,
    # the leaderboard, then how to open it.
    sweep_dir = next(Path("sweeps_out").glob("smoke-*")).resolve()
    tail = out.strip().splitlines()[-10:]
    assert re.fullmatch(r"\[sweep\] finished in \d+s: complete 2", tail[0]), tail
    assert [line.split(".")[0] for line in tail[1:3]] == ["  1", "  2"], tail
    assert tail.pop(3).startswith("eval_loss on the same 8 eval rows, winner trial "), tail
    assert tail[3].startswith("best: ") and "rerun: lorasweep trial sweep=smoke" in tail[3], tail
    assert tail[4].startswith("best adapter: ")
    assert tail[5] == f"leaderboard: sweeps_out/{sweep_dir.name}/leaderboard.md", tail
    assert tail[6] == "open this sweep (after it has ended too):"
    ui_cmd, url = re.fullmatch(r"  mlflow: make ui STORE=(\S+)   then open (\S+)", tail[7]).groups()
    db = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert ui_cmd == db and url.startswith("http://127.0.0.1:5000/#/experiments/"), tail[7]
    optuna_url = re.fullmatch(r"  optuna: optuna-dashboard (\S+) --host 127.0.0.1 .*", tail[8]).group(1)
    assert optuna.load_study(study_name=sweep_dir.name, storage=optuna_url).trials  # the dashboard's study is there

    # `make ui`'s server (`python -m lorasweep.logserver ui STORE PORT`), after the sweep: one process, loopback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorasweep.logserver", "ui", ui_cmd, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        logserver.wait(proc, f"http://127.0.0.1:{port}")
        assert psutil.Process(proc.pid).children(recursive=True) == []  # no job runner, no workers, no consumers
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == "LISTEN"}
        assert {a.ip for a in listening} == {"127.0.0.1"}, listening

        client = mlflow.MlflowClient(db)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], f"tags.sweep_id = '{sweep_dir.name}'"
        )
        names = sorted(r.info.run_name for r in runs)
        assert len(names) == 3 and sweep_dir.name in names  # the parent and its 2 trials

        page = dom(url.replace(":5000/", f":{port}/"), tmp_path, "matching runs")
        # The Model-training runs table, filtered to this sweep: its parent and trials, not the other sweep's run.
        assert "<strong>3</strong> matching runs" in page, page[-3000:]
        assert sweep_dir.name in page and "other-sweep-run" not in page
        assert "Detect issues" not in page and "Judges" not in page  # the GenAI overview's pop-up and side bar
        # Negative control: the same experiment without workflowType opens on the GenAI overview, not on runs.
        bare = url.replace(":5000/", f":{port}/").split("/runs?")[0]
        genai = dom(bare, tmp_path, "Sessions")  # the GenAI side bar; its "Detect issues" pop-up may come late
        assert "Sessions" in genai and "Judges" in genai and "matching runs" not in genai
    finally:
        logserver.stop(proc)
