"""``python -m client`` stopped by real signals, ``--detach``, and the API key options, against ``server.py``.

Numbers above SOFT_MAX_NUMBER go to the hard queue, which no worker serves
in these tests: their jobs stay queued for as long as a test needs them to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from jobs import keys
from tests.conftest import ROOT, ServedApp
from tests.helpers import wait_until

STOP_WITHIN_S = 2.0  # the promise: the client has exited this long after the signal
TASK_ID_LENGTH = 32


class RunningClient:
    """``python -m client ARGS`` as a subprocess, its stdout and stderr read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        environment = {name: value for name, value in os.environ.items() if name != "FACTORIAL_API_KEY"}
        self.process = subprocess.Popen([sys.executable, "-m", "client", *args], cwd=ROOT, text=True,
                                        env={**environment, **(env or {})},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=lambda: self.stdout.extend(self.process.stdout), daemon=True),
                         threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    def wait_for(self, *texts: str, timeout: float = 20) -> None:
        """Wait until every text appears in a line of stderr (the progress lines)."""
        wait_until(lambda: all(any(text in line for line in self.stderr) for text in texts)
                   or self.process.poll() is not None, timeout=timeout, what=f"{texts} on stderr ({self.stderr})")
        assert self.process.poll() is None, f"the client exited early: {self.stderr}"

    def signal(self, signum: int, timeout: float = 10) -> float:
        """Send ``signum``; return the seconds until the client had exited."""
        sent_at = time.monotonic()
        self.process.send_signal(signum)
        self.process.wait(timeout)
        took = time.monotonic() - sent_at
        self.finish()
        return took

    def finish(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def json_lines(self) -> dict[int, dict]:
        return {line["number"]: line for line in map(json.loads, self.stdout)}

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_client(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> RunningClient:
    client = RunningClient(*args, env=env)
    try:
        client.finish(timeout)
    finally:
        client.kill()
    return client


def lookup(server: ServedApp, task_id: str) -> dict:
    """``GET /api/tasks/<task_id>``: what the HTTP API says about a task."""
    with urllib.request.urlopen(f"{server.http_url}/api/tasks/{task_id}", timeout=5) as response:
        return json.loads(response.read())


def rq_status(redis_client, task_id: str) -> bytes | None:
    job_id = (redis_client.get(keys.task_job(task_id)) or task_id.encode()).decode()
    return redis_client.hget(f"rq:job:{job_id}", "status")


@pytest.fixture
def server(served_app):
    return served_app


@pytest.fixture
def clients():
    """Clients a test starts: killed at its end if they still run."""
    started: list[RunningClient] = []
    yield lambda *args, **kwargs: started.append(RunningClient(*args, **kwargs)) or started[-1]
    for client in started:
        client.kill()


def test_ctrl_c_cancels_the_waiting_jobs_writes_what_came_and_exits_130_within_2_s(
        server, make_worker, redis_client, clients):
    make_worker(queues=("soft",))
    client = clients("5", "3001", "3002", "--json", "--url", server.ws_url)
    client.wait_for("5!: done after", "3001!: queued after", "3002!: queued after")
    took = client.signal(signal.SIGINT)
    assert client.process.returncode == 130, client.stderr_text
    assert took < STOP_WITHIN_S, took
    lines = client.json_lines()
    assert lines[5]["result"] == "120"  # what came is written
    for number in (3001, 3002):
        assert f"{number}!: cancelled (job stopped)\n" in client.stderr
        assert lines[number]["error"] == "cancelled" and lines[number]["cancel"] == "stopped"
        task_id = lines[number]["task_id"]
        assert lookup(server, task_id)["code"] == "cancelled"
        assert rq_status(redis_client, task_id) == b"canceled"


def test_sigterm_exits_143_and_a_job_another_client_waits_for_goes_on(server, redis_client, clients):
    other = clients("3001", "--url", server.ws_url)
    other.wait_for("3001!: queued after")
    client = clients("3001", "3002", "--json", "--url", server.ws_url)
    client.wait_for("3001!: queued after", "3002!: queued after")

    took = client.signal(signal.SIGTERM)
    assert client.process.returncode == 143, client.stderr_text
    assert took < STOP_WITHIN_S, took
    assert "3001!: cancelled (still computed for others)\n" in client.stderr
    assert "3002!: cancelled (job stopped)\n" in client.stderr
    lines = client.json_lines()
    shared, alone = lines[3001]["task_id"], lines[3002]["task_id"]
    assert lines[3001]["cancel"] == "continues" and lines[3002]["cancel"] == "stopped"
    assert lookup(server, shared) == {"type": "status", "task_id": shared, "status": "queued"}
    assert rq_status(redis_client, shared) == b"queued"
    assert lookup(server, alone)["code"] == "cancelled" and rq_status(redis_client, alone) == b"canceled"

    # The last one waiting stops it.
    took = other.signal(signal.SIGTERM)
    assert other.process.returncode == 143 and took < STOP_WITHIN_S, (took, other.stderr_text)
    assert "3001!: cancelled (job stopped)\n" in other.stderr
    assert lookup(server, shared)["code"] == "cancelled" and rq_status(redis_client, shared) == b"canceled"


@pytest.fixture
def frozen(server):
    """Freeze the server with SIGSTOP (it takes frames but answers none); thawed before it is stopped."""
    yield lambda: server.process.send_signal(signal.SIGSTOP)
    server.process.send_signal(signal.SIGCONT)


def test_a_server_that_does_not_answer_the_cancels_still_has_the_client_out_within_2_s(server, frozen, clients):
    client = clients("3001", "--json", "--url", server.ws_url)
    client.wait_for("3001!: queued after")
    frozen()
    took = client.signal(signal.SIGINT)
    assert client.process.returncode == 130 and took < STOP_WITHIN_S, (took, client.stderr_text)
    line = client.json_lines()[3001]
    assert line["cancel"] == "no_answer" and len(line["task_id"]) == TASK_ID_LENGTH
    assert f"3001!: cancel sent, no answer within 1.2 s (task {line['task_id']})\n" in client.stderr


def test_a_second_ctrl_c_exits_at_once(server, frozen, clients):
    client = clients("3001", "--url", server.ws_url)
    client.wait_for("3001!: queued after")
    frozen()  # the first Ctrl-C's cancel gets no answer: the client would wait 1.2 s for it
    client.process.send_signal(signal.SIGINT)
    client.wait_for("stopping: cancelling 1 job(s)", timeout=STOP_WITHIN_S)
    took = client.signal(signal.SIGINT)
    assert client.process.returncode == 130, client.stderr_text
    # "At once": not the 1.2 s it would wait for the cancel's answer; the rest is a loaded machine's slack.
    assert took < 1.0, took
    assert "stopped again: exiting without waiting for the cancels' answers\n" in client.stderr


def test_detach_prints_one_task_id_per_number_and_leaves_the_jobs_running(server, make_worker):
    started = time.monotonic()
    client = run_client("7", "3000", "--detach", "--url", server.ws_url)
    assert client.process.returncode == 0, client.stderr_text
    assert time.monotonic() - started < 10
    task_ids = [line.strip() for line in client.stdout]
    assert len(task_ids) == 2 and all(len(task_id) == TASK_ID_LENGTH for task_id in task_ids)
    assert all(lookup(server, task_id)["type"] == "status" for task_id in task_ids)  # queued: no worker yet

    make_worker()
    wait_until(lambda: all(lookup(server, task_id)["type"] == "success" for task_id in task_ids), timeout=30,
               what="the detached jobs to end")
    seven, three_thousand = (lookup(server, task_id) for task_id in task_ids)
    assert seven["result"] == 5040 and three_thousand["digits"] == 9131


def test_detach_reports_a_refused_number_on_stderr_and_exits_1(server):
    client = run_client("5", "2000000", "--detach", "--json", "--url", server.ws_url)
    assert client.process.returncode == 1
    [line] = client.json_lines().values()
    assert line["number"] == 5 and len(line["task_id"]) == TASK_ID_LENGTH and line["queue"] == "soft"
    assert "2000000!: the server answered number_too_large" in client.stderr_text


def test_the_api_key_comes_from_the_environment_or_a_file(make_server, tmp_path, make_worker):
    server = make_server(api_keys="alice:s3cret/+key", api_keys_required="true")
    make_worker()
    refused = run_client("5", "--url", server.ws_url)
    assert refused.process.returncode == 1 and refused.stdout == []
    assert "refused the connection (HTTP 401): an API key is required" in refused.stderr_text
    assert "set $FACTORIAL_API_KEY or --api-key-file" in refused.stderr_text

    from_env = run_client("5", "--url", server.ws_url, env={"FACTORIAL_API_KEY": "s3cret/+key"})
    assert from_env.process.returncode == 0 and from_env.stdout == ["120\n"], from_env.stderr_text

    key_file = tmp_path / "key"
    key_file.write_text("s3cret/+key\n")
    key_file.chmod(0o600)
    from_file = run_client("6", "--api-key-file", str(key_file), "--url", server.ws_url)
    assert from_file.process.returncode == 0 and from_file.stdout == ["720\n"], from_file.stderr_text
    # The file wins over the environment.
    both = run_client("6", "--api-key-file", str(key_file), "--url", server.ws_url,
                      env={"FACTORIAL_API_KEY": "wrong"})
    assert both.process.returncode == 0, both.stderr_text

    wrong = run_client("5", "--url", server.ws_url, env={"FACTORIAL_API_KEY": "wrong"})
    assert wrong.process.returncode == 1 and "this API key is not known here" in wrong.stderr_text

    detached = run_client("7", "--detach", "--url", server.ws_url, env={"FACTORIAL_API_KEY": "s3cret/+key"})
    assert detached.process.returncode == 0 and len(detached.stdout[0].strip()) == TASK_ID_LENGTH
    refused = run_client("7", "--detach", "--url", server.ws_url)
    assert refused.process.returncode == 1 and "refused the request (HTTP 401)" in refused.stderr_text

    # A key in --url works, as for a browser, but is visible in ps: the client says so.
    in_url = run_client("5", "-q", "--url", server.ws_url + "?api_key=s3cret%2F%2Bkey")
    assert in_url.process.returncode == 0 and "a key in --url is shown by ps" in in_url.stderr_text

    missing = run_client("5", "--api-key-file", str(tmp_path / "nothing"), "--url", server.ws_url)
    assert missing.process.returncode == 2 and "cannot read the API key file" in missing.stderr_text
