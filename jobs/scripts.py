"""The service's Lua scripts (jobs/lua/), each of which Redis runs as one atomic step."""

from __future__ import annotations

from pathlib import Path

from redis import Redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).resolve().parent / "lua"


def load(redis: Redis, name: str) -> Script:
    """The script ``jobs/lua/NAME.lua``, callable on ``redis`` (sent once, then run by its hash)."""
    return redis.register_script((LUA_DIR / f"{name}.lua").read_text())
