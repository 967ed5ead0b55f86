"""Which jobs a worker runs: the service's own functions, read from JSON, and nothing else.

A job's hash names the function a worker calls (and callbacks it calls), and
RQ imports and calls whatever it names. So write access to Redis would be
code execution as the service: a job naming ``os.system``, or data that is a
pickle (RQ's default serializer unpickles it, running what it says). Jobs are
JSON here (jobs.rq_schema.SERIALIZER, which never runs code to read them),
and LaneWorker (jobs/worker.py) asks ``refusal`` before it runs a job: a job
it refuses is failed, never imported nor run.
"""

from __future__ import annotations

from rq.exceptions import DeserializationError
from rq.job import Job

from jobs.store import BATCH_JOB, FACTORIAL_JOB, ON_FAILURE

FUNCTIONS = frozenset({FACTORIAL_JOB, BATCH_JOB})
# The callbacks a job may name (to_dict's fields; "" when it names none): only the failure
# callback the service sets (jobs/store.py).
CALLBACKS = {"success_callback_name": {""}, "failure_callback_name": {"", ON_FAILURE.name},
             "stopped_callback_name": {""}}


def refusal(job: Job) -> str:
    """Why ``job`` must not run, or "" when it may. Imports and calls nothing the job names."""
    try:
        # Decodes the data with the job's serializer: JSON never runs code.
        function, instance = job.func_name, job.instance
    except DeserializationError:
        return "its data is not the service's JSON (a pickle, or damaged)"
    if function not in FUNCTIONS:
        return f"it names the function {function!r}, which is not one of the service's"
    if instance is not None:
        return "it names a method of an object, not one of the service's functions"
    # to_dict reads the callback names as stored, without importing them; meta is left out,
    # since a job's unreadable meta is kept as bytes that JSON cannot write.
    fields = job.to_dict(include_meta=False, include_result=False)
    for field, allowed in CALLBACKS.items():
        if (fields.get(field) or "") not in allowed:
            return f"it names the callback {fields[field]!r}, which is not one of the service's"
    if job.webhooks:
        return "it names webhooks, which the service never sets"
    return ""
