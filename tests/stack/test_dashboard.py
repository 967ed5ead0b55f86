"""The Procfile's rq-dashboard, run as the Procfile runs it, shows the queues and the worker."""

import http.client
import json
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from jobs import rq_schema
from jobs.store import JobStore
from settings import Settings
from tests.conftest import ROOT
from tests.helpers import free_port, stop_process, wait_until
from tests.jobs.test_foreign_jobs import TouchOnUnpickling


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} process in the Procfile")


def fetch_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except OSError:
        return None


@pytest.fixture
def dashboard(redis_url):
    assert procfile_command("dashboard").endswith("python -m stack.dashboard")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_DASHBOARD_PORT": str(port), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "stack.dashboard"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: fetch_json(base + "/0/data/queues.json") is not None or process.poll() is not None,
                   timeout=30, what="rq-dashboard to answer")
        assert process.poll() is None, "rq-dashboard exited at start"
        yield base
    finally:
        stop_process(process)


def test_the_dashboard_shows_the_soft_and_hard_queues_and_the_worker(redis_url, redis_client, worker, dashboard):
    # A queue is listed once a job has been put on it: one per queue, via the server's own store.
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    store.submit([5, 5000])

    queues = {q["name"]: q for q in fetch_json(dashboard + "/0/data/queues.json")["queues"]}
    assert {"soft", "hard"} <= set(queues)

    workers = fetch_json(dashboard + "/0/data/workers.json")["workers"]
    assert len(workers) == 1 and sorted(workers[0]["queues"]) == ["hard", "soft"]
    assert workers[0]["pid"] == worker.process.pid


def test_the_dashboard_counts_every_job_waiting_for_its_turn_as_the_service_does(redis_url, redis_client, dashboard):
    # No worker: 60 hard jobs of one client, 5 of another; one of each client's
    # turns is in the RQ queue, the rest wait in their clients' lists.
    redis_client.flushdb()
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    store.submit(list(range(40_000, 40_060)), ["heavy"] * 60)
    store.submit(list(range(41_000, 41_005)), ["light"] * 5)
    waiting = store.jobs_waiting()["hard"]
    assert waiting == 65

    hard = {q["name"]: q for q in fetch_json(dashboard + "/0/data/queues.json")["queues"]}["hard"]
    assert hard["count"] + hard["deferred_job_registry_count"] == waiting, hard
    assert hard["deferred_job_registry_count"] >= 60
    # Each waiting job's page opens: the registry lists jobs RQ knows.
    listed = fetch_json(dashboard + "/0/data/jobs/hard/deferred/100/asc/1.json")
    assert listed is not None and len(listed["jobs"]) == hard["deferred_job_registry_count"], listed
    # A cancel takes a waiting job out of the dashboard's count at once.
    first = store.submit([40_059], ["heavy"])[40_059].task_id
    assert store.cancel(first, "server-1", others_here=False) == "stopped"
    hard = {q["name"]: q for q in fetch_json(dashboard + "/0/data/queues.json")["queues"]}["hard"]
    assert hard["count"] + hard["deferred_job_registry_count"] == store.jobs_waiting()["hard"] == 64


def fetch_status(url) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_dashboard_reads_jobs_as_json_and_unpickles_nothing(redis_url, redis_client, dashboard, tmp_path):
    """Jobs are JSON (jobs.rq_schema.SERIALIZER): the dashboard shows the service's, and opening a job whose
    meta is a pickle (written by anyone who can write to Redis) runs nothing (stack/dashboard_json.py)."""
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    task_id = store.submit([5000])[5000].task_id
    shown = fetch_json(f"{dashboard}/0/data/job/{task_id}.json")
    assert shown["description"] == "factorial(5000)" and shown["origin"] == "hard", shown

    marker = tmp_path / "unpickled"
    redis_client.hset(rq_schema.JOB_PREFIX + task_id, "meta", pickle.dumps(TouchOnUnpickling(marker)))
    # rq-dashboard's job page and its requeue fetch the job with RQ's default serializer, not --json's.
    assert fetch_status(f"{dashboard}/0/view/job/{task_id}") == 200
    fetch_status(f"{dashboard}/0/data/job/{task_id}.json")  # an error page: JSON cannot show the raw meta
    request = urllib.request.Request(f"{dashboard}/job/{task_id}/requeue", method="POST")
    fetch_status(request)
    assert not marker.exists()


def test_the_dashboards_default_serializer_is_the_one_its_config_module_makes_json(redis_url):
    """stack/dashboard_json.py changes RQ's default serializer class in the dashboard's process: this fails
    if rq-dashboard or RQ stop using that class, or if its pickle still loads."""
    check = (
        "import pickle, rq_dashboard.web as web\n"
        "from rq.serializers import DefaultSerializer, resolve_serializer\n"
        "assert web.Config.serializer is DefaultSerializer is resolve_serializer(None)\n"
        "import stack.dashboard_config\n"
        "from jobs.rq_schema import SERIALIZER\n"
        "assert resolve_serializer(None).loads(SERIALIZER.dumps([1])) == [1]\n"
        "assert resolve_serializer(None).dumps({'a': 1}) == SERIALIZER.dumps({'a': 1})\n"
        "try:\n"
        "    resolve_serializer(None).loads(pickle.dumps(object))\n"
        "except ValueError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr


def _status(method: str, url: str, headers: dict) -> int:
    """The status of one request sent with exactly these headers (a Host of another name too)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.request(method, parts.path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_dashboard_refuses_what_another_site_makes_a_browser_send(redis_url, redis_client, dashboard):
    """Emptying a queue from another site's page (CSRF), or through a name of another site that resolves to
    127.0.0.1 (DNS rebinding), is refused with 403 and empties nothing; the dashboard's own page and a script
    still can (stack/dashboard_guard.py)."""
    redis_client.flushdb()
    store = JobStore(redis_client, Settings(redis_url=redis_url))
    store.submit(list(range(42_000, 42_003)), ["one"] * 3)
    hard_count = lambda: {q["name"]: q for q in fetch_json(dashboard + "/0/data/queues.json")["queues"]}["hard"]["count"]
    assert hard_count() == 1
    empty = dashboard + "/queue/hard/queued/empty"
    host = {"Host": dashboard.removeprefix("http://")}

    assert _status("POST", empty, {**host, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}) == 403
    assert _status("POST", empty, {**host, "Origin": "null"}) == 403  # a sandboxed frame, a form from a file
    assert _status("POST", empty, {**host, "Sec-Fetch-Site": "same-site"}) == 403  # another port or subdomain
    assert _status("POST", empty, {"Host": "evil.example:9181", "Origin": "http://evil.example:9181",
                                   "Sec-Fetch-Site": "same-origin"}) == 403
    assert _status("GET", dashboard + "/requeue/hard", {**host, "Sec-Fetch-Site": "cross-site"}) == 403
    assert _status("GET", dashboard + "/0/data/queues.json", {"Host": "rebound.example"}) == 403
    assert hard_count() == 1  # nothing was emptied

    # Browsing to the dashboard from a link elsewhere still shows it.
    assert _status("GET", dashboard + "/", {**host, "Sec-Fetch-Site": "cross-site"}) == 200
    # The dashboard's own page, as a browser sends it, may empty the queue.
    assert _status("POST", empty, {**host, "Origin": dashboard, "Sec-Fetch-Site": "same-origin"}) == 200
    wait_until(lambda: hard_count() == 0, timeout=10, what="the queue emptied by the dashboard's own request")
