"""Several server processes on one port: a parent that starts them, restarts them, and passes signals on.

Each child binds the port itself with ``SO_REUSEPORT``, so the kernel spreads
new connections over the children's own accept queues. The parent holds no
socket and no Redis connection: it forks the children, forwards SIGTERM,
SIGINT and SIGHUP to them, restarts one that dies (with a growing pause if
they keep dying at once) and exits when every child has exited after a
signal. A child whose parent dies gets SIGTERM from the kernel, so no server
outlives its supervisor.

Not ``tornado.process.fork_processes`` (Tornado 6.x), whose parent only forks
and waits: it handles no signal, so a SIGTERM from systemd or honcho kills the
parent alone and leaves the children serving, orphaned, and it would restart
any child a signal ended, including every child being stopped. It restarts at
once, with no pause, and gives up after 100 restarts counted over the whole
life of the process rather than in a row; a child that exits 0 is not
restarted. Making it do the above would take more code than this module.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from stack.supervise import RestartPause, die_with_parent

log = logging.getLogger("web_processes")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A child that exits within this many seconds of its start failed to start.
QUICK_EXIT_S = 5.0
# After this many quick exits in a row the supervisor gives up (a busy port, bad settings).
MAX_QUICK_EXITS = 5


def run(count: int, serve_one: Callable[[int], int]) -> int:
    """Run ``serve_one(slot)`` in ``count`` child processes until a signal; return the exit code."""
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, started at)
    stopping = False

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)

    def start(slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(slot, parent, serve_one))
        children[pid] = (slot, time.monotonic())

    for slot in range(count):
        start(slot)
    log.info("Supervising %d server processes: %s", count, " ".join(map(str, children)))

    quick_exits = 0
    pause = RestartPause()
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        slot, started = children.pop(pid)
        exit_code = os.waitstatus_to_exitcode(status)
        if stopping:
            code = code or (exit_code if exit_code > 0 else 0)
            continue
        quick_exits = quick_exits + 1 if time.monotonic() - started < QUICK_EXIT_S else 0
        if quick_exits >= MAX_QUICK_EXITS:
            log.error("Server processes keep exiting at start (last: %s); stopping", exit_code)
            forward(signal.SIGTERM, None)
            code = 1
            continue
        seconds = pause.after(time.monotonic() - started)
        log.warning("Server process %d exited (%s); starting another in %.1f s", pid, exit_code, seconds)
        time.sleep(seconds)
        if not stopping:
            start(slot)
    return code


def _child(slot: int, parent: int, serve_one: Callable[[int], int]) -> int:
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    _die_with(parent)
    try:
        return serve_one(slot) or 0
    except BaseException:  # noqa: BLE001 - report it; os._exit skips the interpreter's own report
        log.exception("Server process %d failed", os.getpid())
        return 1


def _die_with(parent: int) -> None:
    if not die_with_parent():
        log.warning("prctl(PR_SET_PDEATHSIG) failed: this process may outlive its supervisor")
    if os.getppid() != parent:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
