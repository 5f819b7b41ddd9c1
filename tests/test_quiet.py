"""bitsandbytes' offline hub-kernel lookup logs a failure that is none; lorasweep drops that record and no other."""

import logging
import os
import subprocess
import sys

import pytest

import lorasweep  # noqa: F401  (installs the filter)

LINE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _import_bitsandbytes(first: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-c", f"{first}import bitsandbytes"], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout + p.stderr


def test_importing_bitsandbytes_offline_through_lorasweep_prints_no_kernel_failure():
    bare = _import_bitsandbytes("")
    if LINE not in bare:  # the lookup happens on CPUs with AVX512-BF16 only
        pytest.skip("bitsandbytes looks for no hub kernel on this CPU (no AVX512-BF16): nothing to silence")
    quiet = _import_bitsandbytes("import lorasweep; ")
    assert LINE not in quiet and "Skipping publisher trust check" not in quiet, quiet


def test_a_kernel_failure_for_another_reason_is_still_logged(caplog):
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning(f"{LINE}: %s. Please make sure ...", "HTTP 500 from the Hub")
        offline = "not in the local cache and Hugging Face Hub is in offline mode"
        log.warning(f"{LINE}: %s. Please make sure ...", offline)
        log.warning("another warning of the same logger")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == [f"{LINE}: HTTP 500 from the Hub. Please make sure ...", "another warning of the same logger"]
