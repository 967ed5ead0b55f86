"""The service's Lua scripts (jobs/lua/), each of which Redis runs as one atomic step."""

from __future__ import annotations

from pathlib import Path

from redis import Redis
from redis.commands.core import Script

from jobs.lifecycle import lua_preamble

LUA_DIR = Path(__file__).resolve().parent / "lua"


def load(redis: Redis, *names: str) -> Script:
    """The scripts ``jobs/lua/NAME.lua`` joined in this order, as one script callable on ``redis``.

    Redis has no include: a script that uses another's functions is sent
    with that one's text in front. Every script starts with the job
    lifecycle's constants (jobs.lifecycle.lua_preamble): its transition
    table, and the names of the keys and of RQ's schema. Sent once, then run
    by its hash.
    """
    sources = [(LUA_DIR / f"{name}.lua").read_text() for name in names]
    return redis.register_script("\n".join([lua_preamble(), *sources]))
