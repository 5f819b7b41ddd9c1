"""Lifeline: every process a sweep's driver starts dies with the driver, however the driver dies (kill -9 included).

The log server asks the kernel for that itself (PR_SET_PDEATHSIG). A local Ray's raylet and workers share its fate
too, but its dashboard and runtime-env agents outlive a killed driver by about a minute. So a tiny watcher, tied to
the driver the same way, holds the pids the driver started and kills what is left of them when the driver is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil


def die_with_parent() -> None:
    """preexec_fn: the kernel sends this child SIGTERM when the thread that started it exits."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lorasweep.lifeline", str(os.getpid())], stdin=subprocess.PIPE,
                            text=True, preexec_fn=die_with_parent)


def hold(watcher: subprocess.Popen) -> None:
    """Hand the watcher every process the driver has started so far (it ignores those it already holds)."""
    lines = [f"{p.pid} {p.create_time()}\n" for p in psutil.Process().children(recursive=True) if p.pid != watcher.pid]
    try:
        watcher.stdin.write("".join(lines))
        watcher.stdin.flush()
    except (BrokenPipeError, ValueError, psutil.Error):
        pass


def stop(watcher: subprocess.Popen) -> None:
    """A driver that ends normally has stopped what it started; the watcher just goes."""
    watcher.kill()
    watcher.wait()


def _watch(parent: int) -> None:
    held: dict[int, float] = {}

    def read() -> None:
        for line in sys.stdin:
            pid, created = line.split()
            held[int(pid)] = float(created)

    def reap(*_) -> None:
        for pid, created in list(held.items()):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 1e-3:  # the same process, not a reused pid
                    p.kill()
            except psutil.Error:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, reap)
    threading.Thread(target=read, daemon=True).start()
    while os.getppid() == parent:  # where the death signal is not delivered
        time.sleep(0.5)
    reap()


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
