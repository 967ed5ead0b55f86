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

from settings import Settings

ROOT = Path(__file__).resolve().parent.parent

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOGIN_VARIABLES = ("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD")


def command(settings: Settings) -> list[str]:
    """The rq-dashboard command line for these settings; SystemExit if it would be unsafe."""
    bind = settings.rq_dashboard_bind
    if bind not in LOOPBACK and not (settings.rq_dashboard_username and settings.rq_dashboard_password):
        raise SystemExit(
            f"refusing to serve rq-dashboard on {bind} without a login: "
            "set RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD, or bind to 127.0.0.1"
        )
    from stack.dashboard_config import unsupported

    why = unsupported(settings)
    if why:
        raise SystemExit(f"cannot run rq-dashboard: {why}")
    # Credentials travel in the environment and the config module, not on the
    # command line, where any local user could read them in the process list.
    return ["rq-dashboard", "--bind", bind, "--port", str(settings.rq_dashboard_port),
            "--config", "stack.dashboard_config", "--json"]  # jobs are JSON (jobs.rq_schema.SERIALIZER)


def login(settings: Settings) -> dict[str, str]:
    """The login rq-dashboard asks for, in the environment variables it reads it from (none: no login)."""
    if not settings.rq_dashboard_username:  # settings.py has both or neither
        return {}
    return {"RQ_DASHBOARD_USERNAME": settings.rq_dashboard_username,
            "RQ_DASHBOARD_PASSWORD": settings.rq_dashboard_password}


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
    settings = Settings.from_env()
    argv = command(settings)
    argv = program(argv[0]) + argv[1:]
    # rq-dashboard imports its --config module: let it find this project's. It
    # reads its login from the environment only: pass on the one settings.py read.
    environment = {name: value for name, value in os.environ.items() if name not in LOGIN_VARIABLES}
    path = os.pathsep.join(p for p in (str(ROOT), environment.get("PYTHONPATH", "")) if p)
    os.execve(argv[0], argv + sys.argv[1:], {**environment, **login(settings), "PYTHONPATH": path})


if __name__ == "__main__":
    main()
