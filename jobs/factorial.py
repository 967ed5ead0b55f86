"""The factorial job, run by an RQ worker."""

from __future__ import annotations

import gmpy2
from rq import get_current_job

import protocol
from jobs import events, keys

# The closed mark of a batch outlives its results by this much (seconds).
CLOSED_SLACK_S = 3600


def factorial_digits(number: int) -> str:
    """The decimal digits of ``number!``.

    GMP converts to decimal in subquadratic time; CPython's ``str(int)`` is
    quadratic (seconds for 100000!) and refuses more than 4300 digits.
    """
    return gmpy2.fac(number).digits()


def factorial(number: int) -> int:
    """Compute ``number!``, store its success message for delivery, return its digit count.

    The message is built here, once, so that servers forward it without ever
    holding the number. RQ keeps only the digit count as the job's result,
    which keeps rq-dashboard's job view light. The job's end is published in
    the same round trip as its message: the servers deliver it at once, while
    RQ does its own bookkeeping of the job (several more round trips).
    """
    job = get_current_job()
    digits = factorial_digits(number)
    ttl = job.result_ttl if job.result_ttl and job.result_ttl > 0 else None
    message = protocol.success(job.id, digits)
    pipe = job.connection.pipeline(transaction=False)
    pipe.set(keys.payload(job.id), message, ex=ttl)
    events.append(pipe, [job.id], events.FINISHED, payloads={job.id: message})
    pipe.execute()
    return len(digits)


def factorial_batch(numbers: list[int] | None = None, task_ids: list[str] | None = None) -> int:
    """Compute several small factorials in one job, each stored under its own task id.

    Soft requests that arrive together share a job, and later ones of the same
    client join it while it waits: RQ's own bookkeeping costs about a
    millisecond per job, a hundred times the work of 1000!. The members are
    read when the job runs (jobs.keys.batch_members), which closes the batch,
    so members cancelled meanwhile are left out; a batch given its members as
    arguments still runs.
    """
    job = get_current_job()
    ttl = job.result_ttl if job.result_ttl and job.result_ttl > 0 else None
    if numbers is None:
        numbers, task_ids = events.take_batch_members(job.connection, job.id, (ttl or 0) + CLOSED_SLACK_S)
    messages = {task_id: protocol.success(task_id, factorial_digits(number))
                for number, task_id in zip(numbers, task_ids)}
    pipe = job.connection.pipeline(transaction=False)
    for task_id, message in messages.items():
        pipe.set(keys.payload(task_id), message, ex=ttl)
    events.append(pipe, task_ids, events.FINISHED, payloads=messages)
    pipe.execute()
    return len(numbers)

