"""Runs rq-dashboard for the service's Redis, private unless protected.

    python -m stack.dashboard

It binds to 127.0.0.1:9181. The dashboard can delete and requeue jobs, so it
refuses to listen on any other address (``RQ_DASHBOARD_BIND``) unless
``RQ_DASHBOARD_USERNAME`` and ``RQ_DASHBOARD_PASSWORD`` are both set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def command(environ) -> list[str]:
    """The rq-dashboard command line for this environment; SystemExit if it would be unsafe."""
    bind = environ.get("RQ_DASHBOARD_BIND", "127.0.0.1")
    port = environ.get("RQ_DASHBOARD_PORT", "9181")
    username = environ.get("RQ_DASHBOARD_USERNAME", "")
    password = environ.get("RQ_DASHBOARD_PASSWORD", "")
    if bind not in LOOPBACK and not (username and password):
        raise SystemExit(
            f"refusing to serve rq-dashboard on {bind} without a login: "
            "set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD, or bind to 127.0.0.1"
        )
    from settings import Settings
    from stack.dashboard_config import unsupported

    why = unsupported(Settings.from_env(environ))
    if why:
        raise SystemExit(f"cannot run rq-dashboard: {why}")
    # Credentials travel in the environment and the config module, not on the
    # command line, where any local user could read them in the process list.
    return ["rq-dashboard", "--bind", bind, "--port", port, "--config", "stack.dashboard_config"]


def program(name: str = "rq-dashboard") -> list[str]:
    """How to run ``name``: the script beside this interpreter (a virtualenv's bin), else this
    interpreter running its module.

    Not looked up on PATH: systemd's default PATH (deploy/systemd/factorial-dashboard.service)
    and an unactivated virtualenv do not hold the virtualenv's bin.
    """
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", name.replace("-", "_")]


def main() -> None:
    argv = command(os.environ)
    argv = program(argv[0]) + argv[1:]
    # rq-dashboard imports its --config module: let it find this project's.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.execve(argv[0], argv + sys.argv[1:], {**os.environ, "PYTHONPATH": path})


if __name__ == "__main__":
    main()
