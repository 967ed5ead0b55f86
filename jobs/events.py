"""Job events on a Redis stream, so servers learn of a job's end without polling it.

An event is appended in the same Lua step as the transition it announces
(jobs/lua/lifecycle.lua): a job's start (hard jobs), its end. Every server
reads the stream once per delivery tick. Events are hints: the servers'
periodic sweep of the jobs they wait for finds any end they missed.
"""

from __future__ import annotations

from rq.defaults import DEFAULT_FAILURE_TTL
from rq.timeouts import JobTimeoutException

from jobs import keys, lifecycle
from jobs.lifecycle import INLINE_PREFIX
from protocol import ErrorCode, FIXED_TEXTS


BATCH_JOB = "jobs.factorial.factorial_batch"


def batch_members(connection, job_id: str) -> tuple[list[int], list[str]]:
    """The numbers of a batch job and their task ids, as the submit script listed them."""
    return _parse_members(connection.lrange(keys.batch_members(job_id), 0, -1))


def take_batch_members(connection, job_id: str, ttl_s: int) -> tuple[list[int], list[str]]:
    """A batch job's members as it starts, closing the batch to later requests in the same step.

    The submit script adds a request to a client's waiting batch job unless
    that job's closed mark exists (jobs/lua/submit.lua); reading the list and
    setting the mark in one transaction means that no member joins after the
    job has read its list. The mark outlives the job (``ttl_s``).
    """
    pipe = connection.pipeline(transaction=True)
    pipe.set(keys.batch_closed(job_id), 1, ex=ttl_s)
    pipe.lrange(keys.batch_members(job_id), 0, -1)
    return _parse_members(pipe.execute()[1])


def _parse_members(entries) -> tuple[list[int], list[str]]:
    numbers, task_ids = [], []
    for entry in entries:
        number, task_id = entry.decode().split(":", 1)
        numbers.append(int(number))
        task_ids.append(task_id)
    return numbers, task_ids


def task_ids_of(job) -> list[str]:
    """The tasks a job computes: its own id, or its members' for a batch job."""
    if job.func_name == BATCH_JOB:
        if job.args:  # a batch enqueued with its members as arguments
            return list(job.args[1])
        return batch_members(job.connection, job.id)[1]
    return [job.id]


def task_ids_in(fields: dict) -> list[str]:
    """The tasks an event entry names (``ids``; a single ``id`` is read too)."""
    raw = fields.get(b"ids") or fields.get(b"id") or b""
    return [task_id for task_id in raw.decode().split(",") if task_id]


def inline_payload(fields: dict, task_id: str) -> bytes | None:
    """The success message an event entry carries for ``task_id``, if it was small enough to."""
    return fields.get((INLINE_PREFIX + task_id).encode())


def describe_failure(exc_type, exc_value) -> tuple[ErrorCode, str]:
    """The protocol's error code and text for an exception that ended a job."""
    if exc_type is not None and issubclass(exc_type, JobTimeoutException):
        return ErrorCode.TIMEOUT, FIXED_TEXTS[ErrorCode.TIMEOUT]
    name = getattr(exc_type, "__name__", "error")
    return ErrorCode.JOB_FAILED, f"the job failed: {name}: {exc_value}"


def on_failure(job, connection, exc_type, exc_value, traceback, *args, **kwargs) -> None:
    """RQ failure callback: the job raised (or ran past its time limit in-process).

    Ends the job under the run executing it (jobs/lifecycle.py); a run that no
    longer owns the job changes nothing.
    """
    code, text = describe_failure(exc_type, exc_value)
    lifecycle.of(connection).fail(job.id, lifecycle.current_run(job.id), task_ids_of(job), code.value, text,
                                  job.failure_ttl or DEFAULT_FAILURE_TTL)
