"""The CLI keeps its pending jobs across a server restart: it reconnects and asks again by task id."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from jobs.factorial import factorial_digits
from tests.conftest import ROOT, ServedApp, WorkerProcess
from tests.helpers import stop_process, wait_until

NUMBERS = [7, 3000, 8, 20]


def test_pending_jobs_survive_a_server_restart_with_one_answer_each(redis_url, redis_client):
    server = ServedApp(redis_url).start()
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
        worker = WorkerProcess(redis_url).start()
        server = ServedApp(redis_url, port=server.port).start()

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
        server.stop()
        if worker:
            worker.stop()


def test_a_server_that_stays_down_ends_the_client_with_exit_3_within_its_bounded_retries(redis_url):
    server = ServedApp(redis_url).start()
    client = None
    try:
        client = subprocess.Popen([sys.executable, "-m", "client", "9", "--url", server.ws_url],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: redis_client_len(redis_url) == 1, timeout=20, what="the job to be queued")
        stop_process(server.process)
        # 8 tries, pauses doubling from 0.25 s up to 8 s: about 30 s at most.
        _, stderr = client.communicate(timeout=60)
        assert client.returncode == 3, stderr
        assert "tries to reconnect failed" in stderr and stderr.count("reconnecting in") == 8
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
        server.stop()


def redis_client_len(redis_url: str) -> int:
    from redis import Redis

    with Redis.from_url(redis_url) as redis:
        return redis.llen("rq:queue:soft")
