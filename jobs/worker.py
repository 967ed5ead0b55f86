"""The project's RQ worker: soft jobs in-process, hard jobs in forked work horses.

    rq worker soft hard -w jobs.worker.LaneWorker

The stock worker forks a work horse for every job, about 10 ms each, while a
soft job takes microseconds: so soft jobs run in the worker's own process
(as RQ's SimpleWorker does), where RQ's SIGALRM time limit interrupts them;
that is enough because soft jobs are short Python-interruptible work.

Hard jobs keep the forked horse, and this worker holds their time limit
itself. RQ's horse enforces it with SIGALRM, which cannot interrupt GMP: a
horse busy in ``gmpy2.fac`` runs on, and the stock parent only kills it 60 s
past its limit. Here the parent waits for the horse until that deadline and kills its process group
``HORSE_GRACE_S`` after the limit, fails the job as a timeout and publishes the
job's end, so its client hears ``timeout`` at once and the worker moves on.
A horse that dies any other way (SIGKILL, out of memory) gets its failure
event published here too, since RQ runs no failure callback for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker, Worker

from jobs import events
from jobs.routing import SOFT

# A horse still running this long after its job's time limit is killed.
HORSE_GRACE_S = 0.5
# How often the parent looks at its horse where it cannot wait for its exit, seconds.
HORSE_POLL_S = 0.05
# Stored as the failure of an overrunning job: events.describe_failure_text
# maps the name JobTimeoutException to the protocol's ``timeout``.
OVERRUN_TEXT = "rq.timeouts.JobTimeoutException: Job exceeded its {timeout} s time limit; work horse killed"


class LaneWorker(Worker):
    _horse_deadline: float | None = None
    _overran_job_id: str | None = None
    _killed_job_id: str | None = None

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
            events.publish(self.connection, job, events.STARTED)

    # --- holding a hard job's time limit (in the parent) ------------------------

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        super().fork_work_horse(job, queue)
        has_limit = job.timeout is not None and job.timeout > 0
        self._horse_deadline = time.monotonic() + job.timeout + HORSE_GRACE_S if has_limit else None
        self._horse_job_id = job.id
        self._overran_job_id = None

    def wait_for_horse(self):
        """Wait for the horse to exit, killing it once it overruns its job's time limit.

        RQ calls this under its own SIGALRM of ``job_monitoring_interval``
        (heartbeats happen between calls), so it may be interrupted and called
        again; the deadline stays the one set at fork time.
        """
        if not self.horse_pid:
            # No horse: wait4(0) would mean "any child", and killing would hit our own group.
            return None, None, None
        while True:
            with contextlib.suppress(ChildProcessError):
                pid, status, rusage = os.wait4(self.horse_pid, os.WNOHANG)
                if pid:
                    self._horse_deadline = None
                    return pid, status, rusage
                deadline = self._horse_deadline
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is None or remaining > 0:
                    self._sleep_until_horse_exits(remaining)
                    continue
                self.log.warning("Job %s overran its time limit; killing its work horse", self._horse_job_id)
                self._overran_job_id = self._horse_job_id
                self.kill_horse(signal.SIGKILL)
                self._horse_deadline = None
                return os.wait4(self.horse_pid, 0)
            return None, None, None

    def _sleep_until_horse_exits(self, timeout: float | None) -> None:
        """Return when the horse exits or ``timeout`` seconds pass (None: no limit).

        A pidfd becomes readable when its process exits, so a finished job is
        noticed at once rather than at the next poll.
        """
        try:
            pidfd = os.pidfd_open(self.horse_pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or the horse is already reaped
            time.sleep(HORSE_POLL_S if timeout is None else min(timeout, HORSE_POLL_S))
            return
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        # Called by RQ's monitor, in the parent, before it fails the job.
        self._killed_job_id = job.id
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        killed = self._killed_job_id == job.id
        overran = killed and self._overran_job_id == job.id
        if overran:
            exc_string = OVERRUN_TEXT.format(timeout=job.timeout)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if killed:
            # RQ runs no failure callback for a killed horse: tell the servers here.
            self._killed_job_id = self._overran_job_id = None
            code, text = events.describe_failure_text(exc_string)
            try:
                events.publish(self.connection, job, events.FAILED, code.value, text)
            except Exception:  # noqa: BLE001 - the servers' sweep still finds the failure
                self.log.exception("Could not publish the failure of job %s", job.id)
