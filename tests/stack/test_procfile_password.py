"""``honcho start`` without REDIS_URL: the Procfile's own Redis gets a password made on first start, kept in a
private file, read by every process and shown by none; the next start uses the same one."""

from __future__ import annotations

import socket
import stat
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError

from tests.helpers import Client, free_port, wait_until
from tests.stack.test_procfile_stop import Stack


class OwnRedisStack(Stack):
    """The stack as a user starts it who set no REDIS_URL; only its port and files are the test's own."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        for name in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_PASSWORD_FILE"):
            self.env.pop(name, None)
        self.redis_port = free_port()
        self.dashboard_port = int(self.env["RQ_DASHBOARD_PORT"])
        self.password_file = tmp_path / "secrets" / "redis-password"
        self.env.update(REDIS_LOCAL_PORT=str(self.redis_port), REDIS_PASSWORD_FILE=str(self.password_file))


@pytest.fixture
def own_redis_stack(tmp_path):
    made = OwnRedisStack(tmp_path)
    yield made
    made.remove()


def _page(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""


def _everything_readable_in(folder: str, pids: list[int]) -> list[bytes]:
    """``folder`` (cmdline or environ) of each process that can be read."""
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/{folder}").read_bytes())
        except OSError:
            continue
    return found


def _unauthenticated_reply(port: int, command: bytes) -> bytes:
    """Redis's first reply line to ``command`` sent on a new connection with no AUTH."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(command)
        return connection.makefile("rb").readline()


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


@pytest.mark.slow
@pytest.mark.gen_test(timeout=180)
async def test_without_redis_url_the_stack_makes_a_password_uses_it_everywhere_and_keeps_it(own_redis_stack):
    stack = own_redis_stack
    first = stack.start()  # /healthz 200: the server reached Redis and a worker serves each queue
    password = stack.password_file.read_text().strip()
    assert len(password) >= 32
    assert stat.S_IMODE(stack.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.password_file.parent.stat().st_mode) == 0o700
    made_at = stack.password_file.stat().st_mtime_ns

    assert _unauthenticated_reply(stack.redis_port, b"SET k v\r\n").startswith(b"-NOAUTH")
    with pytest.raises(AuthenticationError):
        Redis(port=stack.redis_port, socket_connect_timeout=1).set("k", "v")
    with pytest.raises((AuthenticationError, ResponseError)):
        Redis(port=stack.redis_port, password="not-" + password, socket_connect_timeout=1).ping()
    redis = Redis(port=stack.redis_port, password=password, socket_connect_timeout=1)
    redis.set("written-before-the-restart", "still here", ex=3600)

    client = await Client.connect(f"ws://127.0.0.1:{stack.web_port}/ws")
    ack, done = await client.factorial(5, timeout=40)
    assert ack["queue"] == "soft" and done["result"] == 120
    client.close()

    dashboard = f"http://127.0.0.1:{stack.dashboard_port}"
    wait_until(lambda: _page(dashboard + "/0/data/queues.json")[0] == 200, timeout=40, what="rq-dashboard on Redis")

    # Nowhere to be seen: no command line on this machine, no environment of the stack, no page, no log line.
    secret = password.encode()
    assert not [line for line in _everything_readable_in("cmdline", _all_pids()) if secret in line]
    assert stack.processes() and not [env for env in _everything_readable_in("environ", stack.processes())
                                      if secret in env]
    pages = [_page(f"http://127.0.0.1:{stack.web_port}{path}")[1] for path in ("/healthz", "/metrics")]
    pages += [_page(dashboard + path)[1] for path in ("/", "/0/view/workers", "/0/data/queues.json")]
    assert all(pages) and not [page for page in pages if password in page]
    stack.ctrl_c(first)
    assert password not in (stack.tmp_path / "honcho-0.log").read_text(errors="replace")

    second = stack.start()
    assert stack.password_file.read_text().strip() == password
    assert stack.password_file.stat().st_mtime_ns == made_at
    assert Redis(port=stack.redis_port, password=password).get("written-before-the-restart") == b"still here"
    client = await Client.connect(f"ws://127.0.0.1:{stack.web_port}/ws")
    _, done = await client.factorial(6, timeout=40)
    assert done["result"] == 720
    client.close()
    stack.ctrl_c(second)
    assert password not in (stack.tmp_path / "honcho-1.log").read_text(errors="replace")
