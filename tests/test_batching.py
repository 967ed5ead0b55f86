"""Soft requests that arrive together share an RQ job, and each keeps its own task id."""

import pytest

from jobs.factorial import factorial_digits
from jobs.store import _chunks
from tests.conftest import WorkerProcess
from tests.helpers import Client


def test_chunks_split_in_order_and_keep_every_item():
    assert _chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert _chunks([], 3) == []


@pytest.mark.gen_test(timeout=60)
async def test_requests_sent_together_share_jobs_but_not_task_ids(ws_url, redis_url, redis_client):
    client = await Client.connect(ws_url)
    numbers = list(range(500, 590))  # within MAX_IN_FLIGHT (100)
    for i, n in enumerate(numbers):
        await client.send({"type": "factorial", "number": n, "ref": i})
    acks = [await client.receive() for _ in numbers]
    assert [a["ref"] for a in acks] == list(range(len(numbers)))
    task_ids = {a["task_id"] for a in acks}
    assert len(task_ids) == len(numbers)
    # No worker yet: every job is still queued, fewer jobs than requests.
    jobs = redis_client.llen("rq:queue:soft")
    assert 2 <= jobs <= len(numbers) // 10

    # A member of a batch can be looked up by its own id from another connection.
    other = await Client.connect(ws_url)
    status = await other.ask({"type": "result", "task_id": acks[7]["task_id"]})
    assert status == {"type": "status", "task_id": acks[7]["task_id"], "status": "queued"}

    worker = WorkerProcess(redis_url).start()
    try:
        results = {}
        while len(results) < len(numbers):
            message = await client.receive(30)
            assert message["type"] == "success", message
            results[message["ref"]] = message
        for i, n in enumerate(numbers):
            assert results[i]["task_id"] == acks[i]["task_id"]
            assert results[i]["result"] == factorial_digits(n)
        pushed = await other.receive(30)
        assert pushed["task_id"] == acks[7]["task_id"] and pushed["result"] == factorial_digits(numbers[7])
        again = await other.ask({"type": "result", "task_id": acks[80]["task_id"]})
        assert again["type"] == "success" and again["result"] == factorial_digits(numbers[80])
    finally:
        worker.stop()
