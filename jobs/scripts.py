"""The service's Lua scripts (jobs/lua/), each of which Redis runs as one atomic step."""

from __future__ import annotations

from pathlib import Path

from redis import Redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"


def load(redis: Redis, *names: str) -> Script:
    """The scripts ``jobs/lua/NAME.lua`` joined in this order, as one script callable on ``redis``.

    Redis has no include: a script that uses another's functions is sent
    with that one's text in front. Sent once, then run by its hash.
    """
    return redis.register_script("\n".join((LUA_DIR / f"{name}.lua").read_text() for name in names))
