"""Log server: one lean MLflow tracking server per sweep, for a local sqlite store, that dies with its driver.

sqlite takes one writer at a time; a single server process serialises every trial's writes, so none is lost to
'database is locked'. `mlflow server` starts a uvicorn child, a job runner and huey consumers (10 processes,
~2.3 GB here); a sweep needs only the tracking API, so this runs MLflow's own app in one uvicorn process with job
execution off. It exits when its driver dies, however the driver dies: PR_SET_PDEATHSIG, and a watchdog on the
parent pid for where that signal is not delivered.

`make ui` serves a store the same lean way, in the foreground (`python -m lorasweep.logserver ui STORE`), on
127.0.0.1 only: the dashboard of sweeps that have ended.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from lorasweep import sweepdir
from lorasweep.lifeline import die_with_parent


def start(
    backend_uri: str, artifact_root: Path, sweep_dir: Path, host: str = "127.0.0.1"
) -> tuple[subprocess.Popen, str]:
    """Start the server (returns at once: the caller does other start-up work meanwhile, then calls wait)."""
    stop_stale(sweep_dir)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    log = open(sweep_dir / sweepdir.SERVER_LOG, "ab")
    cmd = [
        sys.executable,
        "-m",
        "lorasweep.logserver",
        backend_uri,
        str(artifact_root),
        host,
        str(port),
        str(os.getpid()),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    log.close()
    (sweep_dir / sweepdir.SERVER_PID).write_text(str(proc.pid))
    return proc, f"http://{host}:{port}"


def wait(proc: subprocess.Popen, url: str, timeout_s: float = 300) -> None:
    """Until the server answers a tracking request; a server that exits is an error naming its log. MLflow's server
    opens its store on the first such request (~1.5 s), so this makes it happen while the workers still start."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get?experiment_id=0", timeout=60):
                return
        except urllib.error.HTTPError:  # an answer all the same (e.g. a store without experiment 0)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the MLflow log server exited (code {proc.returncode}); see {sweepdir.SERVER_LOG}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow log server did not answer on {url} within {timeout_s:.0f} s")
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_stale(sweep_dir: Path) -> None:
    """A server an earlier driver of this sweep left behind (resume after a crash) is stopped first."""
    pid_file = sweep_dir / sweepdir.SERVER_PID
    if not pid_file.exists():
        return
    try:
        p = psutil.Process(int(pid_file.read_text()))
        if "lorasweep.logserver" in " ".join(p.cmdline()):
            p.terminate()
            p.wait(timeout=15)
    except (psutil.Error, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


@contextmanager
def serving(backend_uri: str, artifact_root: Path, sweep_dir: Path, host: str = "127.0.0.1") -> Iterator[str]:
    proc, url = start(backend_uri, artifact_root, sweep_dir, host)
    try:
        wait(proc, url)
        yield url
    finally:
        stop(proc)


def _serve(backend_uri: str, artifact_root: str, host: str, port: int, parent: int | None) -> None:
    """MLflow's app in this one process; with parent, only as long as that process lives."""
    from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR, BACKEND_STORE_URI_ENV_VAR

    # What `mlflow server` hands its workers, set before MLflow's app reads it.
    os.environ[BACKEND_STORE_URI_ENV_VAR] = backend_uri
    os.environ[ARTIFACT_ROOT_ENV_VAR] = artifact_root
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"

    def watchdog() -> None:
        while os.getppid() == parent and psutil.pid_exists(parent):
            time.sleep(0.5)
        os._exit(0)

    if parent is not None:
        threading.Thread(target=watchdog, daemon=True).start()
    import uvicorn
    from mlflow.server.fastapi_app import app

    uvicorn.run(app, host=host, port=port, workers=1, log_level="warning", access_log=False)


def ui(backend_uri: str, port: int = 5000) -> None:
    """The MLflow UI over a store, lean, on loopback, until Ctrl-C. New artifacts would go under ./mlruns, as the
    sweep's own server puts them; runs already logged keep their own artifact location."""
    print(f"MLflow UI over {backend_uri}: http://127.0.0.1:{port}/#/experiments (Ctrl-C stops it)", flush=True)
    _serve(backend_uri, str(Path("mlruns").resolve()), "127.0.0.1", port, None)


if __name__ == "__main__":
    if sys.argv[1] == "ui":  # python -m lorasweep.logserver ui STORE [PORT]
        ui(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5000)
    else:
        uri, root, h, p, ppid = sys.argv[1:6]
        _serve(uri, root, h, int(p), int(ppid))
