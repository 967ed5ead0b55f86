"""The factorial job, run by an RQ worker."""

from __future__ import annotations

import logging
import uuid

import gmpy2
from rq import get_current_job

import protocol
from jobs import events, lifecycle

log = logging.getLogger(__name__)

# The closed mark of a batch outlives its results by this much (seconds).
CLOSED_SLACK_S = 3600


def factorial_digits(number: int) -> str:
    """The decimal digits of ``number!``.

    GMP converts to decimal in subquadratic time; CPython's ``str(int)`` is
    quadratic (seconds for 100000!) and refuses more than 4300 digits.
    """
    return gmpy2.fac(number).digits()


def factorial(number: int) -> int:
    """Compute ``number!``, end the job with its success message, return its digit count.

    The message is built here, once, so that servers forward it without ever
    holding the number. RQ keeps only the digit count as the job's result,
    which keeps rq-dashboard's job view light. The message is stored and the
    job's end published in one step, and only while this run still owns the
    job (jobs/lifecycle.py): the run of a worker that was taken for lost
    changes nothing.
    """
    job = get_current_job()
    run = _own_run(job, [job.id])
    if run is None:
        return 0  # cancelled, or another run has it: nothing to compute
    digits = factorial_digits(number)
    _finish(job, run, {job.id: protocol.success(job.id, digits)})
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
    ttl = _result_ttl(job)
    if numbers is None:
        numbers, task_ids = events.take_batch_members(job.connection, job.id, (ttl or 0) + CLOSED_SLACK_S)
    run = _own_run(job, task_ids)
    if run is None:
        return 0
    messages = {task_id: protocol.success(task_id, factorial_digits(number))
                for number, task_id in zip(numbers, task_ids)}
    _finish(job, run, messages)
    return len(numbers)


def _result_ttl(job) -> int | None:
    return job.result_ttl if job.result_ttl and job.result_ttl > 0 else None


def _own_run(job, task_ids: list[str]) -> str | None:
    """The run this job executes under: the worker's (jobs/worker.py), or, under a
    worker that names none (the stock ``rq worker``), one claimed here. None if
    the job may not start (cancelled meanwhile)."""
    run = lifecycle.current_run(job.id)
    if run is not None:
        return run
    run = uuid.uuid4().hex
    if not lifecycle.of(job.connection).start(job.id, run, task_ids, publish=False):
        return None
    lifecycle.set_current_run(job.id, run)
    return run


def _finish(job, run: str, messages: dict[str, bytes]) -> None:
    if not lifecycle.of(job.connection).finish(job.id, run, messages, _result_ttl(job)):
        log.warning("Job %s: this run no longer owns the job; its result was not stored", job.id)
