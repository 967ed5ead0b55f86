"""Runs ``python -m bench`` as a user would, for the tests of this folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import ROOT


def run_bench(*args: str, timeout: float) -> tuple[int, str, str]:
    """``python -m bench *args``: (exit code, stdout, stderr). In a session of its own, so that a run
    past ``timeout`` is stopped with everything it started."""
    process = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr
