"""The jobs as Redis holds them: enqueue, share, look up, and read their events.

Blocking calls only: the web server runs these on its own threads, never on
the IOLoop. Every method makes a fixed number of round trips, whatever the
number of jobs it handles (pipelines and ``enqueue_many``).
"""

from __future__ import annotations

import time
import uuid

from redis import Redis
from rq import Callback, Queue
from rq.job import Job
from rq.utils import utcparse

from jobs import events, keys
from jobs.states import FAILED, FINISHED, MISSING, QUEUED, STARTED, Event, JobState
from jobs.routing import QUEUES, SOFT, queue_for, timeout_for
from protocol import ErrorCode, ProtocolError
from settings import Settings

FACTORIAL_JOB = "jobs.factorial.factorial"
BATCH_JOB = events.BATCH_JOB
ON_SUCCESS = Callback("jobs.events.on_success")
ON_FAILURE = Callback("jobs.events.on_failure")

# A job's index entry (number -> job id) may outlive the job by this much; a
# stale entry is harmless, since the job's own state is checked before reuse.
INDEX_SLACK_S = 24 * 3600

# A job still "started" this long after its time limit has lost its worker:
# jobs.worker.LaneWorker ends an overrunning job HORSE_GRACE_S (0.5 s) after it.
OVERDUE_SLACK_S = 1.0
WORKER_LOST_TEXT = "the job failed: the worker running it stopped responding"

_JOB_FIELDS = ("status", "origin", "started_at", "timeout")

# RQ states that mean "not running yet" to a client.
_WAITING_STATES = {"queued", "deferred", "scheduled", "created"}


def new_task_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, redis: Redis, settings: Settings):
        # ``redis`` must not decode responses: payloads stay bytes end to end.
        self.redis = redis
        self.settings = settings
        self.queues = {name: Queue(name, connection=redis) for name in QUEUES}

    # --- submitting -------------------------------------------------------

    def submit(self, numbers: list[int]) -> dict[int, JobState | ProtocolError]:
        """Give every number a job: the one already computing or computed, or a new one."""
        wanted = list(dict.fromkeys(numbers))
        if not wanted:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for number in wanted:
            pipe.get(keys.by_number(number))
        for queue in self.queues.values():
            pipe.llen(queue.key)
        replies = pipe.execute()
        known_ids = replies[: len(wanted)]
        queue_lengths = dict(zip(self.queues, replies[len(wanted) :]))

        ids = [raw.decode() for raw in known_ids if raw]
        states = self.states(ids)
        answers: dict[int, JobState | ProtocolError] = {}
        to_enqueue: dict[str, list[int]] = {name: [] for name in self.queues}
        for number, raw in zip(wanted, known_ids):
            state = states.get(raw.decode()) if raw else None
            if state is not None and state.status in (QUEUED, STARTED, FINISHED):
                answers[number] = state
            else:
                to_enqueue[queue_for(number, self.settings)].append(number)

        pipe = self.redis.pipeline(transaction=False)
        for name, numbers_for_queue in to_enqueue.items():
            jobs = _chunks(numbers_for_queue, self.settings.soft_batch_size if name == SOFT else 1)
            room = max(self.settings.max_queue_length - queue_lengths[name], 0)
            for refused in jobs[room:]:
                for number in refused:
                    answers[number] = ProtocolError(
                        ErrorCode.BUSY,
                        f"the {name} queue is full ({self.settings.max_queue_length} jobs); please retry later",
                    )
            if jobs[:room]:
                answers.update(self._enqueue(name, jobs[:room], pipe))
        pipe.execute()
        return answers

    def _enqueue(self, queue_name: str, jobs: list[list[int]], pipe) -> dict[int, JobState]:
        """Add one RQ job per list of numbers; every number gets a task id of its own."""
        timeout = timeout_for(queue_name, self.settings)
        index_ttl = self.settings.result_ttl_s + timeout + INDEX_SLACK_S
        datas = []
        answers = {}
        for numbers in jobs:
            task_ids = [new_task_id() for _ in numbers]
            if len(numbers) == 1:
                job_id, function, args = task_ids[0], FACTORIAL_JOB, (numbers[0],)
                description = f"factorial({numbers[0]})"
            else:
                job_id, function, args = new_task_id(), BATCH_JOB, (numbers, task_ids)
                description = f"factorial of {len(numbers)} numbers ({numbers[0]}, ..., {numbers[-1]})"
                for task_id in task_ids:
                    pipe.set(keys.task_job(task_id), job_id, ex=index_ttl)
            datas.append(
                Queue.prepare_data(
                    function,
                    args=args,
                    timeout=timeout,
                    result_ttl=self.settings.result_ttl_s,
                    failure_ttl=self.settings.failure_ttl_s,
                    job_id=job_id,
                    description=description,
                    on_success=ON_SUCCESS,
                    on_failure=ON_FAILURE,
                )
            )
            for number, task_id in zip(numbers, task_ids):
                pipe.set(keys.by_number(number), task_id, ex=index_ttl)
                answers[number] = JobState(task_id, QUEUED, queue_name)
        self.queues[queue_name].enqueue_many(datas, pipeline=pipe)
        return answers

    # --- looking up -------------------------------------------------------

    def states(self, task_ids: list[str]) -> dict[str, JobState]:
        """The state of each task: one round trip, two when some belong to batch jobs
        that have not finished (plus one per failed job)."""
        task_ids = list(dict.fromkeys(task_ids))
        if not task_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.get(keys.payload(task_id))
            pipe.get(keys.task_job(task_id))
            pipe.hmget(Job.key_for(task_id), *_JOB_FIELDS)
        replies = pipe.execute()
        payloads = dict(zip(task_ids, replies[0::3]))
        job_ids = {t: (batch.decode() if batch else t) for t, batch in zip(task_ids, replies[1::3])}
        fields = dict(zip(task_ids, replies[2::3]))

        in_batches = [t for t in task_ids if not payloads[t] and job_ids[t] != t]
        if in_batches:
            pipe = self.redis.pipeline(transaction=False)
            for task_id in in_batches:
                pipe.hmget(Job.key_for(job_ids[task_id]), *_JOB_FIELDS)
            fields.update(zip(in_batches, pipe.execute()))
        return {t: self._state(t, job_ids[t], payloads[t], fields[t]) for t in task_ids}

    def _state(self, task_id: str, job_id: str, payload: bytes | None, fields: list) -> JobState:
        status, origin, started_at, timeout = fields
        queue = origin.decode() if origin else ""
        status = status.decode() if status else ""
        if payload:
            return JobState(task_id, FINISHED, queue, payload)
        if status in _WAITING_STATES:
            return JobState(task_id, QUEUED, queue)
        if status == STARTED and _overdue(started_at, timeout):
            # Its worker died with it (nobody else fails it for minutes):
            # report it failed, so waiting clients hear and a new request
            # for the same number starts a new job.
            return JobState(task_id, FAILED, queue, error=ProtocolError(
                ErrorCode.JOB_FAILED, WORKER_LOST_TEXT, task_id=task_id))
        if status == STARTED:
            return JobState(task_id, STARTED, queue)
        if status in ("failed", "stopped", "canceled"):
            return JobState(task_id, FAILED, queue, error=self._failure(task_id, job_id, status))
        # No job, or a finished one whose result has expired.
        return JobState(task_id, MISSING, queue)

    def _failure(self, task_id: str, job_id: str, status: str) -> ProtocolError:
        if status != "failed":
            return ProtocolError(ErrorCode.JOB_FAILED, f"the job was {status}", task_id=task_id)
        latest = Job(job_id, connection=self.redis).latest_result()
        code, text = events.describe_failure_text(latest.exc_string if latest else "")
        return ProtocolError(code, text, task_id=task_id)

    def payloads(self, task_ids: list[str]) -> dict[str, bytes]:
        """The success messages of finished jobs, in one round trip."""
        if not task_ids:
            return {}
        values = self.redis.mget([keys.payload(task_id) for task_id in task_ids])
        return {task_id: value for task_id, value in zip(task_ids, values) if value}

    # --- events -----------------------------------------------------------

    def events_cursor(self) -> str:
        """The id of the newest event, so a reader starts after it."""
        newest = self.redis.xrevrange(keys.EVENTS_STREAM, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def read_events(self, cursor: str, block_ms: int, count: int = 10_000) -> tuple[str, list[Event]]:
        """Events after ``cursor``, waiting up to ``block_ms`` for the first one."""
        reply = self.redis.xread({keys.EVENTS_STREAM: cursor}, count=count, block=block_ms or None)
        found = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                found.append(
                    Event(
                        fields.get(b"id", b"").decode(),
                        fields.get(b"state", b"").decode(),
                        fields.get(b"code", b"").decode(),
                        fields.get(b"text", b"").decode(errors="replace"),
                    )
                )
        return cursor, found


def _overdue(started_at: bytes | None, timeout: bytes | None) -> bool:
    """Whether a started job has run past its time limit plus OVERDUE_SLACK_S.

    Compares the worker's clock (RQ's ``started_at``, UTC) with this one's, so
    the hosts' clocks must agree to well within a second (NTP).
    """
    if not started_at or not timeout:
        return False
    try:
        limit = float(timeout)
        started = utcparse(started_at.decode())
    except ValueError:
        return False
    if limit <= 0:
        return False
    return time.time() - started.timestamp() > limit + OVERDUE_SLACK_S


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]

