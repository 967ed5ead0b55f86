"""The project's RQ worker: soft jobs in-process, hard jobs in forked work horses.

    rq worker soft hard -w jobs.worker.LaneWorker

The stock worker forks a work horse for every job, about 10 ms each, while a
soft job takes microseconds: so soft jobs run in the worker's own process
(as RQ's SimpleWorker does), and hard jobs keep the forked horse, which can
be killed when it overruns its time limit.
"""

from __future__ import annotations

from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker, Worker

from jobs import events
from jobs.routing import SOFT


class LaneWorker(Worker):
    def execute_job(self, job: Job, queue: Queue) -> None:
        if queue.name == SOFT:
            SimpleWorker.execute_job(self, job, queue)
        else:
            super().execute_job(job, queue)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.origin == SOFT:
            # In-process jobs send no heartbeats while they run (no monitor loop).
            return SimpleWorker.get_heartbeat_ttl(self, job, working_time)
        return super().get_heartbeat_ttl(job, working_time)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if job.origin != SOFT:
            # Hard jobs run long enough for a client to care that they started.
            events.publish(self.connection, job.id, events.STARTED)
