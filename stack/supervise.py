"""Runs a command, and runs it again after a growing pause whenever it dies.

    python -m stack.supervise python server.py

honcho stops every process of the Procfile as soon as one of them exits, so
one crashed worker or server would take the whole stack down. Started through
this, a process that dies is restarted after RESTART_FIRST_S, the pause
doubling up to RESTART_MAX_S while it keeps dying within STABLE_S of its
start; honcho only sees this supervisor. Told to stop (SIGTERM, SIGINT), it
passes the signal on once, waits for its command and exits with its status.

The command runs in a session of its own, so a signal sent to this
supervisor's process group (as honcho sends) reaches it once, from here; and
it gets SIGTERM if the supervisor itself dies. In production, systemd does
this job (deploy/systemd/).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time

log = logging.getLogger("stack.supervise")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 10.0
# A command that ran this long before dying starts again after the first pause.
STABLE_S = 30.0
# How long a stopping command may take before it is killed.
STOP_GRACE_S = 20.0


class RestartPause:
    """The pause before restarting a process that died: RESTART_FIRST_S, doubling up to
    RESTART_MAX_S while it keeps dying within STABLE_S of its start."""

    def __init__(self) -> None:
        self.next_s = RESTART_FIRST_S

    def after(self, ran_s: float) -> float:
        """The pause to take now, for a process that ran ``ran_s`` seconds before dying."""
        if ran_s >= STABLE_S:
            self.next_s = RESTART_FIRST_S
        pause, self.next_s = self.next_s, min(self.next_s * 2, RESTART_MAX_S)
        return pause


class Supervisor:
    def __init__(self, command: list[str]):
        self.command = command
        self.child: subprocess.Popen | None = None
        self.stopping = False

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        pause = RestartPause()
        while not self.stopping:
            began = time.monotonic()
            self.child = subprocess.Popen(self.command, start_new_session=True, preexec_fn=die_with_parent)
            code = self._wait()
            if self.stopping:
                return code
            seconds = pause.after(time.monotonic() - began)
            log.warning("%s exited with %s; starting it again in %.1f s", self.command[0], code, seconds)
            self._sleep(seconds)
        return 0

    def _wait(self) -> int:
        while True:
            try:
                return self.child.wait(STOP_GRACE_S if self.stopping else None)
            except subprocess.TimeoutExpired:
                self.child.kill()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))


# prctl(2): have the kernel send a signal to this process when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Ask Linux for SIGTERM when this process's parent dies; False if it refused."""
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m stack.supervise COMMAND [ARG...]")
    logging.basicConfig(level="INFO", format="%(name)s: %(message)s")
    supervisor = Supervisor(sys.argv[1:])
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
