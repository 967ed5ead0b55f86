"""The Procfile's own Redis caps its memory (REDIS_MAXMEMORY) and evicts only keys with a TTL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis import Redis

from settings import Settings, SettingsError
from stack.redis import EVICTION_POLICY, maxmemory_bytes, server_command
from tests.conftest import ROOT
from tests.helpers import free_port, stop_process, wait_until


@pytest.mark.parametrize("setting, host, expected", [
    ("25%", 24 * 1024**3, 6 * 1024**3),
    ("100%", 1000, 1000),
    ("4gb", None, 4 * 1024**3),
    ("4G", None, 4 * 1000**3),
    ("512mb", None, 512 * 1024**2),
    ("10k", None, 10_000),
    ("123456", None, 123456),
    ("0", None, 0),
])
def test_maxmemory_reads_a_share_of_the_host_or_a_size_in_redis_units(setting, host, expected):
    assert maxmemory_bytes(Settings(redis_maxmemory=setting).redis_maxmemory, host) == expected


@pytest.mark.parametrize("bad", ["0%", "101%", "4 gb", "1.5gb", "-1", "lots", ""])
def test_a_bad_maxmemory_names_the_variable(bad):
    with pytest.raises(SettingsError, match="REDIS_MAXMEMORY"):
        Settings.from_env({"REDIS_MAXMEMORY": bad})


def test_the_default_is_a_quarter_of_the_host_and_evicts_only_keys_with_a_ttl():
    command = server_command(6379, ROOT / "var")
    assert command[command.index("--maxmemory-policy") + 1] == EVICTION_POLICY == "volatile-lru"
    assert int(command[command.index("--maxmemory") + 1]) == maxmemory_bytes("25%") > 0


def _pings(client: Redis) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def test_the_local_redis_runs_with_the_configured_cap_and_policy(tmp_path):
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_DATA_DIR": str(tmp_path),
           "REDIS_MAXMEMORY": "64mb", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "stack.redis"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Redis(port=port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), timeout=10, what="the local Redis")
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024**2)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
    finally:
        stop_process(process)
