"""What the README says about stopping the stack: Ctrl-C stops every process, and the data stays."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers import Client, free_port, wait_until
from tests.stack.test_procfile import ROOT, _http_ok, _processes_with


class Stack:
    """``honcho start`` as a terminal runs it, startable again on the same ports and data folder."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "redis"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "REDIS_DATA_DIR": str(self.data_dir),
            "SERVER_PORT": str(self.web_port),
            "RQ_DASHBOARD_PORT": str(free_port()),
        }
        self.runs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.tmp_path / f"honcho-{len(self.runs)}.log", "wb")
        honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start"], cwd=ROOT, env=self.env,
                                  start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.runs.append(honcho)
        # /healthz is 200 only once the server reaches Redis, which honcho starts alongside it:
        # a request before that is rightly answered `unavailable`.
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.web_port}/healthz"), timeout=40,
                   what="the web process, with Redis")
        return honcho

    def processes(self) -> list[int]:
        """Every process of this stack that still runs (honcho gives each a session of its own)."""
        return [pid for pid in _processes_with(f"REDIS_DATA_DIR={self.data_dir}") if _running(pid)]

    def ctrl_c(self, honcho: subprocess.Popen) -> None:
        # A terminal's Ctrl-C sends SIGINT to its foreground process group: honcho's.
        os.killpg(honcho.pid, signal.SIGINT)
        honcho.wait(30)
        wait_until(lambda: not self.processes(), timeout=30, what="every process of the stack to stop")

    def task(self, task_id: str) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/api/tasks/{task_id}", timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            return {}

    def remove(self) -> None:
        for honcho in self.runs:
            if honcho.poll() is None:
                honcho.terminate()
                try:
                    honcho.wait(30)
                except subprocess.TimeoutExpired:
                    honcho.kill()
                    honcho.wait()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def stack(tmp_path):
    made = Stack(tmp_path)
    yield made
    made.remove()


@pytest.mark.slow
@pytest.mark.gen_test(timeout=150)
async def test_ctrl_c_stops_every_process_and_results_are_still_there_at_the_next_start(stack):
    first = stack.start()
    client = await Client.connect(f"ws://127.0.0.1:{stack.web_port}/ws")
    ack, done = await client.factorial(20, timeout=40)
    assert done["result"] == "2432902008176640000"
    client.close()

    stack.ctrl_c(first)
    assert list(stack.data_dir.rglob("appendonly*")), "no append-only file in the data folder"

    second = stack.start()
    wait_until(lambda: stack.task(ack["task_id"]).get("type") == "success", timeout=20,
               what="the stored result after the restart")
    assert stack.task(ack["task_id"])["result"] == "2432902008176640000"
    stack.ctrl_c(second)
