"""What the service relies on in RQ beyond its public API: each name and hook, held against the pinned RQ.

A change of RQ under any of them fails here first, with the name that moved:
jobs/rq_schema.py (the names the Lua scripts write) and jobs/worker.py (the
methods LaneWorker overrides, and the RQ code paths that call them).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
from pathlib import Path

import pytest
import rq
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.worker import SimpleWorker, Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from jobs import lifecycle, rq_schema
from jobs.lifecycle import FIELDS, FINAL, TRANSITIONS, State
from jobs.scripts import LUA_DIR
from jobs.worker import LaneWorker

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_rq_is_the_minor_version_the_code_is_written_for():
    pinned = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("rq==")]
    assert pinned == [f"rq=={rq.__version__}"]
    assert rq.__version__.startswith("3.0."), rq.__version__
    assert "rq>=3.0,<3.1" in (ROOT / "requirements.in").read_text()


def test_the_schema_names_the_scripts_write_are_rqs():
    assert rq_schema.JOB_PREFIX == "rq:job:" == Job.redis_job_namespace_prefix
    assert rq_schema.queue_key("hard") == Queue("hard", connection=_NoRedis()).key
    assert rq_schema.intermediate_key("hard") == IntermediateQueue.get_intermediate_queue_key("rq:queue:hard")
    assert rq_schema.started_registry_key("hard") == StartedJobRegistry.key_template.format("hard") == "rq:wip:hard"
    assert rq_schema.WORKERS_BY_QUEUE == WORKERS_BY_QUEUE_KEY
    assert rq_schema.QUEUES_KEY == Queue.redis_queues_keys == "rq:queues"
    assert (rq_schema.QUEUED, rq_schema.STARTED, rq_schema.CANCELED) == (
        JobStatus.QUEUED.value, JobStatus.STARTED.value, JobStatus.CANCELED.value)
    # The status and origin fields, as RQ writes a job's hash.
    mapping = Job.create("jobs.factorial.factorial", args=(5,), connection=_NoRedis(), origin="soft",
                         status=JobStatus.QUEUED).to_dict()
    assert mapping[rq_schema.STATUS_FIELD] == "queued" and mapping[rq_schema.ORIGIN_FIELD] == "soft"
    # None of the service's own fields is one of RQ's.
    assert not set(FIELDS.values()) & set(mapping)


class _NoRedis:
    """Enough of a connection for RQ objects that are only named, never sent."""

    def __getattr__(self, name):
        raise AssertionError(f"no Redis call expected ({name})")


# LaneWorker's overrides: the RQ method each replaces, with the parameters RQ calls it with.
OVERRIDES = {
    "register_birth": [], "register_death": [],
    "heartbeat": ["timeout", "pipeline"], "set_state": ["state", "pipeline"],
    "check_for_suspension": ["burst"], "run_maintenance_tasks": [],
    "maintain_heartbeats": ["job", "execution"],
    "dequeue_job_and_maintain_ttl": ["timeout", "max_idle_time"], "prepare_execution": ["job"],
    "execute_job": ["job", "queue"], "kill_horse": ["sig"],
    "get_heartbeat_ttl": ["job", "working_time"],
    "prepare_job_execution": ["job", "remove_from_intermediate_queue"],
    "fork_work_horse": ["job", "queue"], "wait_for_horse": [],
    "handle_work_horse_killed": ["job", "retpid", "ret_val", "rusage"],
    "handle_job_failure": ["job", "queue", "started_job_registry", "exc_string", "execution"],
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_each_override_replaces_an_rq_method_called_the_same_way(name):
    assert name in vars(LaneWorker), f"LaneWorker no longer overrides {name}: drop it from this table"
    rq_params = [p for p in inspect.signature(getattr(Worker, name)).parameters if p != "self"]
    ours = [p for p in inspect.signature(getattr(LaneWorker, name)).parameters if p != "self"]
    assert rq_params == OVERRIDES[name] == ours, (name, rq_params, ours)


def test_the_rq_code_paths_the_overrides_rely_on_still_call_them():
    monitor = inspect.getsource(Worker.monitor_work_horse)
    # Waiting for the horse through wait_for_horse, a killed horse reported, then failed.
    for call in ("self.wait_for_horse()", "self.handle_work_horse_killed(", "self.handle_job_failure("):
        assert call in monitor, call
    # The horse's job: prepare_job_execution before the job runs.
    assert "self.prepare_job_execution(" in inspect.getsource(Worker.perform_job)
    # What LaneWorker.execute_job does in place of RQ's: prepare, run, idle.
    for cls in (Worker, SimpleWorker):
        source = inspect.getsource(cls.execute_job)
        assert "self.prepare_execution(job)" in source and "self.set_state(WorkerStatus.IDLE)" in source
    # A stop-job command ends in kill_horse, which LaneWorker guards for in-process jobs.
    from rq.command import handle_stop_job_command
    assert "worker.kill_horse()" in inspect.getsource(handle_stop_job_command)


def test_what_the_json_only_worker_relies_on_in_rq():
    """LaneWorker.__init__ and jobs/runnable.py: no pickle read, nothing a job names imported before it is allowed."""
    from rq.cli import main as rq_command
    from rq.exceptions import DeserializationError
    from rq.serializers import DefaultSerializer, resolve_serializer

    # Worker(queues, ..., serializer=...) builds its queues with the queue class, given the serializer.
    assert "serializer" in inspect.signature(Worker.__init__).parameters
    assert "serializer=self.serializer" in inspect.getsource(Worker.__init__)
    assert {"name", "connection", "job_class", "serializer", "death_penalty_class"} <= set(
        inspect.signature(Queue.__init__).parameters)
    # `rq worker --serializer` takes a dotted path; without it, RQ reads pickles.
    [option] = [p for p in rq_command.commands["worker"].params if "--serializer" in p.opts]
    assert option.envvar is None  # no variable for it: the .env file cannot set it, so LaneWorker does
    assert resolve_serializer(rq_schema.SERIALIZER_PATH) is rq_schema.SERIALIZER
    assert resolve_serializer(None) is DefaultSerializer
    # A job's data is read only when asked for (fetching it runs nothing), and unreadable data
    # is a DeserializationError; the callback names come out of to_dict as stored, unimported.
    job = Job(connection=_NoRedis(), serializer=rq_schema.SERIALIZER)
    job.data = b"\x80\x05not json"
    with pytest.raises(DeserializationError):
        job.func_name
    assert "self.data = " in inspect.getsource(Job.restore) and "loads(self.data)" not in inspect.getsource(
        Job.restore)
    mapping = Job.create("jobs.factorial.factorial", args=(5,), connection=_NoRedis(),
                         on_failure=rq.Callback("jobs.events.on_failure")).to_dict(include_meta=False)
    assert mapping["failure_callback_name"] == "jobs.events.on_failure"
    assert mapping["success_callback_name"] == mapping["stopped_callback_name"] == ""
    # A job's function is imported only by Job.func, which perform() calls: after LaneWorker's check.
    assert "import_attribute(func_name)" in inspect.getsource(Job.func.fget)


def test_a_soft_worker_with_no_horse_does_not_kill_its_own_process_group(redis_client):
    worker = LaneWorker(["soft"], connection=redis_client)
    assert not worker.horse_pid
    worker.kill_horse(signal.SIGKILL)  # RQ's own would killpg(getpgid(0)): this test's process too
    assert os.getpid()


# --- the transition table, in Python and in the Lua scripts ------------------------------


def test_the_lua_scripts_get_the_one_transition_table(redis_client):
    dump = redis_client.eval(lifecycle.lua_preamble() + "return cjson.encode({LC.state, LC.allowed, LC.final, LC.field, "
                                                        "LC.outcome})", 0)
    states, allowed, final, fields, outcomes = json.loads(dump)
    assert outcomes == {o.name: o.value for o in lifecycle.CancelOutcome}
    assert states == {s.name: s.value for s in State}
    assert {frm: sorted(tos) for frm, tos in allowed.items()} == {
        frm.value: sorted(t.value for t in tos) for frm, tos in TRANSITIONS.items()}
    assert final == {s.value: True for s in FINAL}
    assert fields == FIELDS


def test_the_cancel_scripts_answer_only_the_outcomes_of_the_table():
    for name in ("cancel_lib.lua", "abandon.lua"):
        text = (LUA_DIR / name).read_text()
        assert not re.search(r"'(stopped|continues|ended|unknown|stop)'", text), name
        assert "LC.outcome." in text


def test_every_state_write_in_the_scripts_goes_through_the_table():
    """Only lifecycle.lua's lc_move writes the state field; the other scripts call it."""
    writers = {path.name for path in LUA_DIR.glob("*.lua")
               if re.search(r"HSET'[^)]*(LC_F|F)\.state\b", path.read_text())}
    assert writers == {"lifecycle.lua"}, writers


def test_a_move_the_table_does_not_allow_is_refused_and_changes_nothing(redis_client):
    runs = lifecycle.of(redis_client)
    job_key = rq_schema.JOB_PREFIX + "model-job"
    redis_client.hset(job_key, mapping={FIELDS["state"]: State.FINISHED.value, FIELDS["run"]: "r1"})
    # finished -> started (a second start), finished -> failed, finished -> queued (a lost run): all refused.
    assert not runs.start("model-job", "r2", [], publish=False)
    assert not runs.fail("model-job", "r1", ["model-job"], "job_failed", "late", 60)
    assert runs.run_lost("model-job", "r1", "hard", "lost", ["model-job"], 3, 60) == lifecycle.RunLost.NOT_OWNED
    assert redis_client.hget(job_key, FIELDS["state"]) == b"finished"
    redis_client.delete(job_key)


def test_rqs_stored_times_read_as_iso_8601():
    """The janitor reads a run's started_at and ended_at with datetime.fromisoformat."""
    from datetime import datetime

    from rq.utils import now, utcformat, utcparse

    stamp = utcformat(now())
    assert datetime.fromisoformat(stamp) == utcparse(stamp)
