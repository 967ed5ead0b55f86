"""The Procfile's own Redis requires the password (and user) that REDIS_URL names, without showing it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError

from tests.conftest import ROOT
from tests.helpers import free_port, stop_process, wait_until

SECRET = 'p"w \\ 9f3'  # a quote, a space and a backslash: the config file must quote them


def _pings(client: Redis) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


@pytest.mark.parametrize("user", ["", "factorial"])
def test_the_local_redis_requires_the_url_password_which_is_in_no_command_line(tmp_path, user):
    port = free_port()
    quoted = SECRET.replace("%", "%25").replace('"', "%22").replace(" ", "%20").replace("\\", "%5C")
    url = f"redis://{user}:{quoted}@127.0.0.1:{port}/0"
    env = {**os.environ, "REDIS_URL": url, "REDIS_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "stack.redis"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Redis(port=port, username=user or None, password=SECRET, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), timeout=10, what="the local Redis with its password")
        with pytest.raises((AuthenticationError, ResponseError)):
            Redis(port=port, socket_connect_timeout=0.5).set("k", "v")
        with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
            assert b"9f3" not in cmdline.read()
        assert stat.S_IMODE(os.stat(tmp_path / "users.conf").st_mode) == 0o600
    finally:
        stop_process(process)
