"""EVENT_LOOP picks the server's event loop; a bad value is refused by name."""

import asyncio

import pytest
import uvloop

from server import run
from settings import Settings, SettingsError


async def _loop_class() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default_and_asyncio_can_be_chosen():
    assert Settings().event_loop == "uvloop"
    assert issubclass(run(_loop_class(), Settings().event_loop), uvloop.Loop)
    standard = Settings.from_env({"EVENT_LOOP": "asyncio"}).event_loop
    assert not issubclass(run(_loop_class(), standard), uvloop.Loop)


def test_an_unknown_event_loop_is_refused_by_name():
    with pytest.raises(SettingsError, match="EVENT_LOOP='trio'"):
        Settings.from_env({"EVENT_LOOP": "trio"})
