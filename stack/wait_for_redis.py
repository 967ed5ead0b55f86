"""Waits until Redis answers, then becomes the given command.

    python -m stack.wait_for_redis rq worker soft hard

``rq worker`` exits at once when Redis is not up yet, so processes that need
Redis start after this wait. stack/supervise.py does not wait for Redis: the
Procfile runs this under it, so the wait comes again with every restart.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from jobs.connection import describe
from settings import Settings
from stack.redis import answers

WAIT_S = 30.0


def wait_for_redis() -> None:
    """Return once Redis answers; SystemExit if it does not within WAIT_S."""
    settings = Settings.from_env()
    deadline = time.monotonic() + WAIT_S
    while not answers(settings):
        if time.monotonic() > deadline:
            raise SystemExit(f"Redis at {describe(settings)} did not answer within {WAIT_S:.0f} s")
        time.sleep(0.1)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m stack.wait_for_redis COMMAND [ARG...]")
    wait_for_redis()
    command = sys.argv[1:]
    executable = shutil.which(command[0]) or command[0]
    os.execv(executable, command)


if __name__ == "__main__":
    main()
