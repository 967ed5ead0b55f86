"""RQ's Redis schema, as far as the service touches it outside RQ's public API.

The Lua scripts (jobs/lua/) run inside Redis, where RQ's Python API cannot
reach: to put a job on a queue in the same atomic step that decides it may go
there, they write RQ's keys and fields themselves. Every name they use comes
from here, handed to them in their preamble (jobs/scripts.py), so a change of
RQ's schema is met in one place. tests/jobs/test_rq_schema.py holds each name
against the pinned RQ and fails when RQ changes it.
"""

from __future__ import annotations

from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import DeferredJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

# How every job's data, meta and result are stored: JSON, never pickles, so
# that whoever can write to Redis cannot make a process that reads a job run
# code by unpickling it. Every Queue and Job the service makes, LaneWorker and
# rq-dashboard (``--json``) use this one; RQ's command line names it by
# SERIALIZER_PATH (``rq worker --serializer jobs.rq_schema.SERIALIZER``).
SERIALIZER = JSONSerializer
SERIALIZER_PATH = "jobs.rq_schema.SERIALIZER"

# Prefix of a job's hash (``rq:job:<id>``).
JOB_PREFIX = Job.redis_job_namespace_prefix
# Prefix of a queue's list of job ids (``rq:queue:<name>``).
QUEUE_PREFIX = Queue.redis_queue_namespace_prefix
# The set of every queue's key, which RQ's tools (rq-dashboard, `rq info`) list.
QUEUES_KEY = Queue.redis_queues_keys
# The set of workers listening on a queue (RQ's worker registration). RQ
# exposes no public name for it; the dispatcher counts its members to keep a
# queue about one job per worker long.
WORKERS_BY_QUEUE = "rq:workers:%s"
# A job's status field and the values the scripts write or read.
STATUS_FIELD = "status"
ORIGIN_FIELD = "origin"
QUEUED = JobStatus.QUEUED.value
STARTED = JobStatus.STARTED.value
CANCELED = JobStatus.CANCELED.value


def queue_key(name: str) -> str:
    return QUEUE_PREFIX + name


def intermediate_key(name: str) -> str:
    """Where RQ's worker of one queue holds a job it took until the job starts (LMOVE)."""
    return IntermediateQueue.get_intermediate_queue_key(queue_key(name))


def started_registry_key(name: str) -> str:
    return StartedJobRegistry.key_template.format(name)


def deferred_registry_key(name: str) -> str:
    """RQ's registry of jobs "waiting for something before they can be queued": the service's
    jobs waiting for their client's turn are listed there, so rq-dashboard shows the backlog."""
    return DeferredJobRegistry.key_template.format(name)


def workers_key(name: str) -> str:
    return WORKERS_BY_QUEUE % name


def lua_names() -> dict:
    """The names the Lua scripts need, as their preamble's ``RQ`` table."""
    return {
        "job_prefix": JOB_PREFIX,
        "queue_prefix": QUEUE_PREFIX,
        "queues_key": QUEUES_KEY,
        "status": STATUS_FIELD,
        "origin": ORIGIN_FIELD,
        "queued": QUEUED,
        "started": STARTED,
        "canceled": CANCELED,
    }
