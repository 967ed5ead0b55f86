"""Job events on a Redis stream, so servers learn of a job's end without polling it.

The worker appends an event when a job starts, finishes or fails; every server
reads the stream once per delivery tick. Events are hints: a work horse killed
with SIGKILL sends none, and the servers' periodic sweep finds those ends.
"""

from __future__ import annotations

from rq.timeouts import JobTimeoutException

from jobs import keys
from jobs.states import FAILED, FINISHED, STARTED  # noqa: F401 - the event names
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


def publish(connection, job, state: str, code: str = "", text: str = "") -> None:
    """Append ``job``'s event, one entry naming each of its tasks, in one round trip."""
    pipe = connection.pipeline(transaction=False)
    append(pipe, task_ids_of(job), state, code, text)
    pipe.execute()


def append(pipe, task_ids: list[str], state: str, code: str = "", text: str = "",
           payloads: dict[str, bytes] | None = None) -> None:
    """Queue on ``pipe`` the event of a job whose tasks are ``task_ids``.

    One entry per job, not per task: a batch of 50 costs the stream, and
    every server reading it, one entry. Small success messages (``payloads``)
    travel in the entry too, up to INLINE_PAYLOAD_BYTES each and
    INLINE_ENTRY_BYTES in all, so a server delivers them without another
    round trip; the stored message (keys.payload) stays the reference.
    """
    fields: dict[str, str | bytes] = {"ids": ",".join(task_ids), "state": state}
    if code:
        fields["code"] = code
        fields["text"] = text
    room = INLINE_ENTRY_BYTES
    for task_id, payload in (payloads or {}).items():
        if len(payload) <= min(INLINE_PAYLOAD_BYTES, room):
            fields[INLINE_PREFIX + task_id] = payload
            room -= len(payload)
    pipe.xadd(keys.EVENTS_STREAM, fields, maxlen=keys.EVENTS_MAXLEN, approximate=True)


# A success message this small travels in its job's event (``append``).
INLINE_PAYLOAD_BYTES = 512
INLINE_ENTRY_BYTES = 4096
INLINE_PREFIX = "payload:"


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


def describe_failure_text(exc_string: str) -> tuple[ErrorCode, str]:
    """Like ``describe_failure``, from the traceback text RQ stores for a failed job."""
    if "JobTimeoutException" in (exc_string or ""):
        return ErrorCode.TIMEOUT, FIXED_TEXTS[ErrorCode.TIMEOUT]
    lines = [line.strip() for line in (exc_string or "").strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown reason"
    return ErrorCode.JOB_FAILED, f"the job failed: {reason[:300]}"


def on_success(job, connection, result, *args, **kwargs) -> None:
    """RQ success callback, for jobs enqueued with it.

    The job functions (jobs/factorial.py) publish their own end, in the round
    trip that stores their results, so new jobs are enqueued without it; a
    job that has both publishes its end twice, and the second is ignored.
    """
    publish(connection, job, FINISHED)


def on_failure(job, connection, exc_type, exc_value, traceback, *args, **kwargs) -> None:
    """RQ failure callback."""
    code, text = describe_failure(exc_type, exc_value)
    publish(connection, job, FAILED, code.value, text)
