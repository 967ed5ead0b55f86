"""``/healthz`` and ``/metrics`` against a real Redis and a real rq worker."""

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests.helpers import Client, free_port


def samples(body: bytes) -> dict:
    """{(name, frozenset(labels)): value} of a Prometheus text page."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_200_with_a_worker_on_each_queue(http_client, base_url, worker):
    response = await http_client.fetch(base_url + "/healthz")
    health = json.loads(response.body)
    assert response.code == 200 and health["ok"] is True and health["redis"] is True
    assert health["queues"]["soft"]["workers"] == 1 and health["queues"]["hard"]["workers"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_503_without_workers(http_client, base_url, redis_url):
    response = await http_client.fetch(base_url + "/healthz", raise_error=False)
    health = json.loads(response.body)
    assert response.code == 503 and health["ok"] is False and health["redis"] is True
    assert health["queues"]["soft"]["workers"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_503_when_redis_is_unreachable(http_client, base_url, app):
    app.context.jobs.store.redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    response = await http_client.fetch(base_url + "/healthz", raise_error=False)
    health = json.loads(response.body)
    assert response.code == 503 and health["redis"] is False and health["ok"] is False
    # Told, without Redis's address.
    assert health["error"] == "Redis cannot be reached" and "127.0.0.1" not in response.body.decode()
    # Metrics still answer, without queue lengths.
    response = await http_client.fetch(base_url + "/metrics")
    assert response.code == 200 and b"factorial_open_connections" in response.body


@pytest.mark.gen_test(timeout=30)
async def test_metrics_count_connections_jobs_deliveries_and_latency(http_client, base_url, ws_url, worker):
    client = await Client.connect(ws_url)
    ack, done = await client.factorial(5)
    assert done["result"] == 120
    again, _ = await client.factorial(5)  # answered from the stored result
    assert again["status"] == "finished"
    waiting = await client.ask({"type": "factorial", "number": 10**6})  # stays running while we scrape

    response = await http_client.fetch(base_url + "/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.body)
    assert found[("factorial_open_connections", frozenset())] == 1
    accepted = {labels: v for (name, labels), v in found.items() if name == "factorial_jobs_accepted_total"}
    assert accepted[frozenset({("queue", "soft"), ("status", "finished")})] == 1
    assert sum(v for labels, v in accepted.items() if ("queue", "soft") in labels) == 2
    assert sum(v for labels, v in accepted.items() if ("queue", "hard") in labels) == 1
    assert found[("factorial_results_delivered_total", frozenset({("outcome", "success")}))] == 2
    assert found[("factorial_request_latency_seconds_count", frozenset())] == 2
    assert 0 < found[("factorial_request_latency_seconds_sum", frozenset())] < 10
    assert found[("factorial_waiting_jobs", frozenset())] == 1
    assert ("factorial_queue_length", frozenset({("queue", "hard")})) in found
    assert waiting["queue"] == "hard"
    client.close()


@pytest.mark.gen_test(timeout=30)
async def test_metrics_serve_the_standard_process_metrics(http_client, base_url, app):
    response = await http_client.fetch(base_url + "/metrics")
    found = samples(response.body)
    assert found[("process_resident_memory_bytes", frozenset())] > 1_000_000
    assert found[("process_open_fds", frozenset())] > 0
    assert ("process_cpu_seconds_total", frozenset()) in found
    assert any(name == "python_info" for name, _ in found)
    assert any(name == "python_gc_objects_collected_total" for name, _ in found)
