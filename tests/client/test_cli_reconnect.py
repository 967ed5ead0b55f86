"""The CLI keeps its pending jobs across a server restart: it reconnects and asks again by task id."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from jobs.factorial import factorial_digits
from tests.conftest import ROOT
from tests.helpers import stop_process, wait_until

NUMBERS = [7, 3000, 8, 20]

pytestmark = pytest.mark.slow


def test_pending_jobs_survive_a_server_restart_with_one_answer_each(make_server, redis_client, make_worker):
    server = make_server()
    worker = client = None
    stderr_lines: list[str] = []
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "client", *map(str, NUMBERS), "--json", "--url", server.ws_url],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: stderr_lines.extend(client.stderr), daemon=True)
        reader.start()
        # No worker yet: every job is acknowledged and stays queued.
        wait_until(lambda: sum("queued after" in line for line in stderr_lines) == len(NUMBERS), timeout=20,
                   what=f"every acknowledgement (stderr: {stderr_lines})")
        jobs_before = set(redis_client.keys("rq:job:*"))

        server.stop()
        # The jobs end while no server is up; the new one finds them by task id.
        make_worker()
        server = make_server(port=server.port)

        stdout, _ = client.communicate(timeout=60)
        reader.join(5)
        assert client.returncode == 0, stderr_lines
        lines = [json.loads(line) for line in stdout.splitlines()]
        # One final answer per number, exact, under the task id of the first acknowledgement.
        assert [line["number"] for line in lines] == NUMBERS
        assert all(line["result"] == factorial_digits(line["number"]) for line in lines)
        assert {f"rq:job:{line['task_id']}".encode() for line in lines if line["number"] == 3000} <= jobs_before
        assert set(redis_client.keys("rq:job:*")) == jobs_before, "a job was enqueued again"
        # The server drains on SIGTERM: it closes with 1012 ("service restart").
        assert any("connection lost (1012); reconnecting in" in line for line in stderr_lines), stderr_lines
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()


def test_a_server_that_stays_down_ends_the_client_with_exit_3_and_the_answers_it_had(make_server, make_worker,
                                                                                       redis_client):
    server = make_server()
    client = None
    try:
        worker = make_worker()
        stored = subprocess.run([sys.executable, "-m", "client", "5", "-q", "--url", server.ws_url], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert stored.returncode == 0 and stored.stdout == "120\n"
        worker.stop()  # no worker from here on
        # 5! is answered from its stored result; 9! stays queued, with no worker.
        client = subprocess.Popen([sys.executable, "-m", "client", "5", "9", "--json", "--url", server.ws_url],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: redis_client.llen("rq:queue:soft") == 1, timeout=20, what="9! to be queued")
        server.stop()
        # 8 tries, pauses doubling from 0.25 s up to 8 s: about 30 s at most.
        stdout, stderr = client.communicate(timeout=60)
        assert client.returncode == 3, stderr
        five, nine = (json.loads(line) for line in stdout.splitlines())
        assert five["result"] == "120"
        assert nine["number"] == 9 and nine["error"] == "unreachable" and len(nine["task_id"]) == 32
        assert "9!: no answer: the connection to" in stderr and "8 tries to reconnect failed" in stderr
        assert stderr.count("reconnecting in") == 8
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
