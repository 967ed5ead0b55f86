"""rq-dashboard reads every job as JSON: none of its pages unpickles what Redis holds.

rq-dashboard's ``--json`` (stack/dashboard.py passes it) reaches only the
reads that take its configured serializer: queue and registry listings and a
job's data page. Its job page, delete, requeue and worker list fetch jobs with
RQ's default serializer, which is pickle: opening a job would unpickle the
job's ``meta`` (the worker list, the data of the job a worker runs), so
whoever can write to Redis could run code as the dashboard. RQ has no public
setting for its default serializer, so the dashboard process makes it the
service's (jobs.rq_schema.SERIALIZER), here, the one place, before it serves
anything (stack/dashboard_config.py calls ``read_jobs_as_json``).
tests/stack/test_dashboard.py fails if RQ's default stops being the class
patched here, or if a pickle still runs in the dashboard.
"""

from __future__ import annotations

from rq import serializers

from jobs.rq_schema import SERIALIZER


def read_jobs_as_json() -> None:
    """Make RQ's default serializer (pickle) the service's JSON one, in this process."""
    default = serializers.resolve_serializer(None)  # what RQ uses when given no serializer
    default.dumps = staticmethod(SERIALIZER.dumps)
    default.loads = staticmethod(SERIALIZER.loads)
