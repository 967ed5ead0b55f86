"""Runs rq-dashboard for the service's Redis, private unless protected.

    python -m stack.dashboard

It binds to 127.0.0.1:9181. The dashboard can delete and requeue jobs, so it
refuses to listen on any other address (``RQ_DASHBOARD_BIND``) unless
``RQ_DASHBOARD_USERNAME`` and ``RQ_DASHBOARD_PASSWORD`` are both set.
"""

from __future__ import annotations

import os
import shutil
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


def main() -> None:
    argv = command(os.environ)
    # rq-dashboard imports its --config module: let it find this project's.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.execve(shutil.which(argv[0]) or argv[0], argv + sys.argv[1:], {**os.environ, "PYTHONPATH": path})


if __name__ == "__main__":
    main()
