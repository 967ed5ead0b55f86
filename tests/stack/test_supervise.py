"""stack.supervise with real processes: a dying command comes back after growing pauses; SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from stack import supervise
from tests.conftest import ROOT
from tests.helpers import wait_until


def _supervise(*command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stack.supervise", *command], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # a group of its own, as honcho starts it


def test_a_command_that_keeps_dying_is_started_again_after_pauses_that_double(tmp_path):
    starts = tmp_path / "starts"
    crash = f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); raise SystemExit(3)"
    supervisor = _supervise(sys.executable, "-c", crash)
    try:
        wait_until(lambda: starts.exists() and len(starts.read_text().split()) >= 4, timeout=20,
                   what="four starts")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(10)
    times = [float(line) for line in starts.read_text().split()]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    first = supervise.RESTART_FIRST_S
    # 0.5 s, 1 s, 2 s, plus the time a Python takes to start and die.
    assert first <= gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[2] >= 4 * first


def test_sigterm_reaches_the_command_once_and_the_supervisor_exits_with_it(tmp_path):
    got = tmp_path / "signals"
    ready = tmp_path / "ready"
    program = (
        "import signal, sys, time\n"
        f"def on_term(*_):\n    open({str(got)!r}, 'a').write('TERM\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "while True: time.sleep(1)\n"
    )
    supervisor = _supervise(sys.executable, "-c", program)
    wait_until(ready.exists, timeout=20, what="the command to start")
    began = time.monotonic()
    os.killpg(os.getpgid(supervisor.pid), signal.SIGTERM)  # as honcho stops a process
    assert supervisor.wait(10) == 0
    assert time.monotonic() - began < 5
    assert got.read_text() == "TERM\n"
