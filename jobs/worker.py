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

Where RQ's work loop meets an unreachable Redis outside its wait for a job,
it ends the process ("found an unhandled exception, quitting"). Here the
calls that only report the worker's own state (heartbeats, state, the
suspension check, maintenance) log the outage and go on, and a job that an
outage interrupted is settled once Redis answers again: left alone if its
end was recorded, else put back at the front of its queue (a factorial is
safe to compute twice), so its client still gets the answer. The worker keeps
its process throughout and takes its next job when Redis is back.

A thread (jobs/liveness.py) keeps the worker's alive key, which Redis expires
ALIVE_TTL_S after the worker's last beat; the janitor (jobs/janitor.py) uses
it to recover the jobs of workers that died.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import resolve_serializer
from rq.worker import SimpleWorker, Worker, WorkerStatus

from jobs import events, lifecycle, rq_schema, runnable
from jobs.janitor import Janitor
from jobs.lifecycle import RunLost
from jobs.liveness import Heartbeat
from jobs.outage import OUTAGE_ERRORS, out_of_memory
from jobs.routing import SOFT
from protocol import FIXED_TEXTS, ErrorCode
from settings import Settings

# A horse still running this long after its job's time limit is killed.
HORSE_GRACE_S = 0.5
# How often the parent looks at its horse where it cannot wait for its exit, seconds.
HORSE_POLL_S = 0.05
# RQ's record of an overrunning job's failure (the client hears ``timeout``).
OVERRUN_TEXT = "rq.timeouts.JobTimeoutException: Job exceeded its {timeout} s time limit; work horse killed"
# How a run interrupted by a Redis outage ended, in a failed job's text.
OUTAGE_END = "interrupted by a Redis outage"
# Waiting for Redis to answer again: the first pause and the longest, seconds.
RECONNECT_FIRST_S = 0.25
RECONNECT_MAX_S = 4.0
# A worker of several queues waits on the first one (in RQ's order) this long
# at a time, then looks at all of them again: a job arriving on another queue
# waits at most this long for an idle worker.
WAIT_SLICE_S = 0.1
MIN_WAIT_S = 0.01
# A worker's beat renews its keys for minutes (worker_ttl + 60 s): once per
# this many seconds is plenty. `rq suspend` is noticed within the other.
BEAT_EVERY_S = 1.0
SUSPENSION_CHECK_EVERY_S = 1.0


class LaneWorker(Worker):
    # RQ's wait for a job retries an unreachable Redis after 1 s, doubling the
    # pause up to this (RQ's default is 60 s: a minute of idling after an outage).
    max_connection_wait_time = RECONNECT_MAX_S

    _horse_deadline: float | None = None
    _overran_job_id: str | None = None
    _killed_job_id: str | None = None
    _beats: Heartbeat | None = None
    _job_began = 0.0
    _settled_job_id: str | None = None
    _last_outage = -1.0

    def __init__(self, queues, *args, serializer=None, **kwargs):
        """RQ's worker, reading and writing jobs with the service's serializer (JSON) whatever it is given.

        ``rq worker`` passes RQ's default (pickle) unless told ``--serializer``,
        and the project's ``.env`` can name the worker class but not the
        serializer: a pickle read from Redis would run code as this process.
        """
        given = resolve_serializer(serializer)
        super().__init__(queues, *args, serializer=rq_schema.SERIALIZER, **kwargs)
        if serializer is not None and given is not rq_schema.SERIALIZER:
            self.log.info("Worker %s: jobs are read as JSON (%s), not with %s", self.name,
                          rq_schema.SERIALIZER_PATH, getattr(given, "__qualname__", given))
        # Queues made by the caller (``rq worker`` makes them with its --serializer): the same, in JSON.
        self.queues = [q if q.serializer is rq_schema.SERIALIZER else
                       self.queue_class(q.name, connection=q.connection, job_class=self.job_class,
                                        serializer=rq_schema.SERIALIZER, death_penalty_class=self.death_penalty_class)
                       for q in self.queues]
        self._ordered_queues = self.queues[:]

    # --- alive key ---------------------------------------------------------------

    _settings: Settings | None = None
    _lifecycle: lifecycle.Lifecycle | None = None
    _killed_how = ""

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def lifecycle(self) -> lifecycle.Lifecycle:
        if self._lifecycle is None:
            self._lifecycle = lifecycle.of(self.connection)
        return self._lifecycle

    def register_birth(self) -> None:
        super().register_birth()
        self._beats = Heartbeat(self.connection, self.name, Janitor(self.connection, settings=self.settings))
        self._beats.start()

    def register_death(self) -> None:
        # A stop that came while a job was taken but not started: put it back first.
        self._tolerating_outage(self._put_back_taken)
        if self._beats is not None:
            self._tolerating_outage(self._beats.stop)
        self._tolerating_outage(super().register_death)

    # --- taking a job: always from a list into a list --------------------------------
    #
    # RQ's worker of one queue moves a job with BLMOVE into the queue's
    # intermediate list; of several, it pops it with BLPOP, which holds it in
    # no list until the worker registers it as started: a worker killed in
    # between loses the job. Here every take moves the job into this worker's
    # own taken list (jobs/lifecycle.py ``taken_key``) in one Redis step, and
    # registering the run takes it out in the same transaction, so a job is
    # always in a queue, this list or the started registry. The janitor puts
    # back what a dead worker's list holds (jobs/janitor.py).
    #
    # Redis cannot block on several lists and move what comes into another
    # list (BLPOP and BLMPOP hold the job nowhere; BLMOVE watches one list).
    # So one Lua step (``take``) moves the first job of the first non-empty
    # queue, in RQ's order; when they are all empty, a BLMOVE waits on the
    # first queue for WAIT_SLICE_S, and the step is tried again. A job on the
    # first queue is taken the instant it arrives, one on another within
    # WAIT_SLICE_S; an idle worker of several queues costs two round trips per
    # slice. A wake-up list pushed by every enqueuer would cost nothing idle,
    # but RQ's own enqueue (and rq-dashboard's requeue) never push it. A
    # worker of one queue waits with one BLMOVE, as RQ's does.

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ's wait for a job (beats, maintenance, idle limit, reconnecting), taking it with ``_take``."""
        result = None
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        connection_wait_time = 1.0
        idle_since = time.monotonic()
        idle_time_left = max_idle_time
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                if timeout is not None and idle_time_left is not None:
                    timeout = min(timeout, idle_time_left)
                result = self._take(timeout)
                if result is not None:
                    job, queue = result
                    self.reorder_queues(reference_queue=queue)
                    job.redis_server_version = self.get_redis_server_version()
                    what = job.description if self.log_job_description else job.id
                    self.log.info("Worker %s: %s: %s", self.name, queue.name, what)
                break
            except DequeueTimeout:
                if max_idle_time is not None:
                    idle_time_left = math.ceil(max_idle_time - (time.monotonic() - idle_since))
                    if idle_time_left <= 0:
                        break
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                if isinstance(exc, ResponseError) and not out_of_memory(exc):
                    raise
                # A Redis at its maxmemory refuses even the move of a job it
                # would not make: wait as for an outage, never quit.
                self.log.error("Worker %s: Redis cannot be used (%s); retrying in %d seconds...",
                               self.name, exc, connection_wait_time)
                time.sleep(connection_wait_time)
                connection_wait_time = min(connection_wait_time * self.exponential_backoff_factor,
                                           self.max_connection_wait_time)
        self.heartbeat()
        return result

    def _take(self, timeout: float | None) -> tuple[Job, Queue] | None:
        """The next job, moved into this worker's taken list: None at once when there is none and
        ``timeout`` is None (burst), DequeueTimeout when none came within ``timeout`` seconds."""
        queues = list(self._ordered_queues)
        deadline = None if timeout is None else time.monotonic() + timeout
        taken = lifecycle.taken_key(self.name)
        while True:
            got = None
            if deadline is None or len(queues) > 1:
                got = self.lifecycle.take(self.name, [q.name for q in queues])
            if got is None:
                if deadline is None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining < MIN_WAIT_S:  # Redis reads a wait under 1 ms as "for ever"
                    raise DequeueTimeout(timeout, ",".join(q.key for q in queues))
                wait = remaining if len(queues) == 1 else min(WAIT_SLICE_S, remaining)
                job_id = self.connection.blmove(queues[0].key, taken, wait, "LEFT", "RIGHT")
                if job_id is None:
                    continue
                got = (queues[0].name, job_id.decode())
            name, job_id = got
            queue = next(q for q in queues if q.name == name)
            try:
                return self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer), queue
            except NoSuchJobError:
                self.connection.lrem(taken, 0, job_id)  # deleted while it waited: nothing to run
            except Exception as exc:
                # Unreadable: dropped, as RQ's own dequeue drops it. An outage goes on to the wait
                # for a job, which rides it out; a hash the service did not write does not end the
                # worker (RQ's dequeue would), which goes on to the next job.
                self.connection.lrem(taken, 0, job_id)
                if isinstance(exc, OUTAGE_ERRORS):
                    raise
                self.log.warning("Job %s cannot be read (%s: %s); dropped, not run", job_id,
                                 type(exc).__name__, exc)

    def _put_back_taken(self) -> None:
        for raw in self.connection.lrange(lifecycle.taken_key(self.name), 0, -1):
            if self.lifecycle.put_back_taken(raw.decode(), self.name):
                self.log.info("Job %s was taken but not started; put back at the front of its queue",
                              raw.decode())

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's (rq.executions.prepare_execution), with the job leaving this worker's taken list in the
        transaction that registers its run in the started registry: never in both, never in neither."""
        with self.connection.pipeline() as pipeline:
            execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipeline,
                                         worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            pipeline.lrem(lifecycle.taken_key(self.name), 0, job.id)
            pipeline.execute()
        return execution

    # --- going on through a Redis outage -----------------------------------------

    def _tolerating_outage(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            self._last_outage = time.monotonic()
            self.log.warning("Redis unreachable during %s (%s); going on", call.__name__, exc)
            return None
        except ResponseError as exc:
            if not out_of_memory(exc):
                raise
            # The worker's own bookkeeping, refused by a Redis at its maxmemory: the next one goes through.
            self.log.warning("Redis at its maxmemory refused %s; going on", call.__name__)
            return None

    # --- fewer round trips per job -------------------------------------------------
    #
    # RQ's loop beats three times per job (before its wait for a job, after
    # taking one, after running it), three round trips each, writes the idle
    # state twice and checks for `rq suspend` once: about half of a soft job's
    # round trips. A beat renews the worker's keys for worker_ttl + 60 s, so
    # here one is sent only when the last one is older than BEAT_EVERY_S or
    # was shorter than asked (a job's own beat sets the job's TTL), and in one
    # round trip; the idle state is written only when it changes, with the beat
    # that is due; suspension is looked at every SUSPENSION_CHECK_EVERY_S.

    _beat_at = -1e9  # monotonic time of the last beat sent, and the TTL it gave
    _beat_ttl = 0
    _state_written: str | None = None
    _suspension_checked_at = -1e9

    def heartbeat(self, timeout=None, pipeline=None):
        timeout = timeout or self.worker_ttl + 60
        if pipeline is not None:  # queued on a caller's pipeline, which sends it
            self._beat_at, self._beat_ttl = time.monotonic(), timeout
            return super().heartbeat(timeout, pipeline)
        if self._beat_due(timeout) and self._tolerating_outage(self._send, lambda p: self.heartbeat(timeout, p)) is None:
            self._beat_at = -1e9  # not sent: the next call sends it
        return None

    def _beat_due(self, timeout: int) -> bool:
        return time.monotonic() - self._beat_at >= BEAT_EVERY_S or self._beat_ttl < timeout

    def set_state(self, state, pipeline=None):
        if pipeline is not None:
            self._state_written = state
            return super().set_state(state, pipeline)
        if state == self._state_written:
            return None

        def write(pipe):
            super(LaneWorker, self).set_state(state, pipe)
            if self._beat_due(self.worker_ttl + 60):
                self.heartbeat(pipeline=pipe)

        self._state_written = state
        if self._tolerating_outage(self._send, write) is None:
            self._state_written = None  # not written: write it next time
        return None

    def _send(self, queue_commands) -> bool:
        """Queue commands on a pipeline and send them in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        queue_commands(pipe)
        pipe.execute()
        return True

    def check_for_suspension(self, burst: bool):
        if time.monotonic() - self._suspension_checked_at < SUSPENSION_CHECK_EVERY_S:
            return None
        self._suspension_checked_at = time.monotonic()
        return self._tolerating_outage(super().check_for_suspension, burst)

    def run_maintenance_tasks(self):
        return self._tolerating_outage(super().run_maintenance_tasks)

    def maintain_heartbeats(self, job: Job, execution):
        # Called while the horse runs: an outage must not end the watch on it.
        return self._tolerating_outage(super().maintain_heartbeats, job, execution)

    def _outage_during_job(self) -> bool:
        beats_missed = self._beats is not None and self._beats.outage_since(self._job_began)
        return beats_missed or self._last_outage >= self._job_began

    def wait_for_redis(self) -> None:
        """Return once Redis answers, pausing longer after each failed try (up to RECONNECT_MAX_S).

        Unbounded on purpose: a worker without its Redis has nothing else to do,
        and a supervisor that restarted it would only wait the same way.
        """
        pause = RECONNECT_FIRST_S
        while True:
            try:
                self.connection.ping()
                return
            except OUTAGE_ERRORS as exc:
                self.log.warning("Redis unreachable (%s); trying again in %.2f s", exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)

    def settle_interrupted(self, job: Job, queue: Queue, execution) -> None:
        """After an outage during ``job`` (its horse gone): run it again unless its end was recorded.

        Tried again until Redis lets it through: a Redis that comes back only
        briefly must not end the worker either.
        """
        self._settled_job_id = job.id
        while True:
            self.wait_for_redis()
            try:
                outcome = self._run_lost(job, queue, execution, OUTAGE_END)
                break
            except OUTAGE_ERRORS as exc:
                self.log.warning("Redis unreachable again while settling job %s (%s)", job.id, exc)
        if outcome == RunLost.REQUEUED:
            self.log.warning("Job %s was interrupted by a Redis outage; requeued at the front of %s",
                             job.id, queue.name)

    def _run_lost(self, job: Job, queue: Queue, execution, how: str) -> RunLost:
        """This worker's run of ``job`` ended by a fault outside the job (jobs/lifecycle.py)."""
        outcome = self.lifecycle.run_lost(
            job.id, execution.id, queue.name, how, events.task_ids_of(job) if job.origin == SOFT else [job.id],
            self.settings.job_max_attempts, self.settings.failure_ttl_s, entry=execution.composite_key)
        if outcome != RunLost.FAILED:
            # Requeued, or no longer this run's: RQ must not record it as failed.
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
        return outcome

    # --- running a job -------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Claim the job for this run (jobs/lifecycle.py), then run it: soft in-process, hard in a horse.

        Replaces RQ's own ``execute_job`` (prepare, run, set idle) to claim
        the job between the first two: a job cancelled while it was queued,
        or claimed by another run, is not run at all; nor is a job that is not
        one of the service's (jobs/runnable.py).
        """
        why = runnable.refusal(job)
        if why:
            self._refuse(job, queue, why)
            return
        self._job_began = time.monotonic()
        self._settled_job_id = None
        execution = None
        try:
            execution = self.prepare_execution(job)
            lifecycle.set_current_run(job.id, execution.id)
            hard = queue.name != SOFT
            if not self.lifecycle.start(job.id, execution.id, [job.id] if hard else [], publish=hard,
                                        worker=self.name):
                self.log.info("Job %s was not run: cancelled, or run by another worker", job.id)
                with self.connection.pipeline() as pipe:
                    self.cleanup_execution(job, pipeline=pipe, execution=execution)
                    pipe.lrem(queue.intermediate_queue_key, 0, job.id)
                    pipe.execute()
                self.set_state(WorkerStatus.IDLE)
                return
            if hard:
                self.fork_work_horse(job, queue)
                self.monitor_work_horse(job, queue, execution)
            else:
                self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
        except OUTAGE_ERRORS as exc:
            self._last_outage = time.monotonic()
            self.log.warning("Redis unreachable while running job %s (%s)", job.id, exc)
            self._end_horse()
            if execution is not None:
                self.settle_interrupted(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
            return
        finally:
            lifecycle.set_current_run(None)
        if self._outage_during_job() and self._settled_job_id != job.id:
            # Its end may not have reached Redis (RQ logs a failed write and goes on).
            self.settle_interrupted(job, queue, execution)

    def _refuse(self, job: Job, queue: Queue, why: str) -> None:
        """Fail a job this worker must not run, through the lifecycle, importing and running nothing it names.

        RQ's failure handling then records it as failed (its registry, for
        rq-dashboard) with the service's failure TTL, no retry and no webhook,
        whatever the job's hash asks for.
        """
        self.log.warning("Job %s refused, not run: %s", job.id, why)
        text = f"the job was refused by its worker: {why}"
        job.webhooks, job.retries_left, job.failure_ttl = [], None, self.settings.failure_ttl_s
        try:
            execution = self.prepare_execution(job)
            if self.lifecycle.start(job.id, execution.id, [], publish=False, worker=self.name):
                self.lifecycle.fail(job.id, execution.id, [job.id], ErrorCode.JOB_FAILED.value, text,
                                    self.settings.failure_ttl_s)
                self.handle_job_failure(job, queue, exc_string=text, execution=execution)
            else:  # cancelled meanwhile, or another run's: nothing to fail
                with self.connection.pipeline() as pipe:
                    self.cleanup_execution(job, pipeline=pipe, execution=execution)
                    pipe.execute()
        except OUTAGE_ERRORS as exc:
            # Left where the janitor finds it (taken list, or a run with no lease): refused again then.
            self._last_outage = time.monotonic()
            self.log.warning("Redis unreachable while refusing job %s (%s)", job.id, exc)
        self.set_state(WorkerStatus.IDLE)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # A soft job runs in this process: there is no horse, and RQ's
        # kill_horse would then kill this process's whole group. A soft job
        # takes milliseconds; a cancel of one lets it end (its end is refused).
        if not self.horse_pid:
            self.log.info("No work horse to kill (a soft job runs in-process); the job is left to end")
            return
        try:
            if os.getpgid(self.horse_pid) == os.getpgid(0):
                # Forked, but not yet in a group of its own (RQ's horse calls
                # setpgrp first thing): killing its group would kill ours. It
                # has no children yet, so the horse alone is enough.
                os.kill(self.horse_pid, sig)
                return
        except ProcessLookupError:
            return  # already gone
        super().kill_horse(sig)

    def _end_horse(self) -> None:
        """Make sure no horse still runs the job before it is put back."""
        if not self.horse_pid:
            return
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.killpg(self.horse_pid, signal.SIGKILL)
            os.waitpid(self.horse_pid, 0)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.origin == SOFT:
            # In-process jobs send no heartbeats while they run (no monitor loop).
            return SimpleWorker.get_heartbeat_ttl(self, job, working_time)
        return super().get_heartbeat_ttl(job, working_time)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # Always: RQ removes a job from its intermediate list only for one-queue
        # workers, and a job left there after it started would look orphaned.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    # --- holding a hard job's time limit (in the parent) ------------------------

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        super().fork_work_horse(job, queue)
        if self._stopped_job_id == job.id:
            # A cancel's stop-job command came between the job's start and its fork.
            self.kill_horse()
        has_limit = job.timeout is not None and job.timeout > 0
        self._horse_deadline = time.monotonic() + job.timeout + HORSE_GRACE_S if has_limit else None
        self._horse_job_id = job.id
        self._overran_job_id = None

    def wait_for_horse(self):
        """Wait for the horse to exit, killing it once it overruns its job's time limit.

        RQ calls this under its own SIGALRM of ``job_monitoring_interval``
        (heartbeats happen between calls), so it may be interrupted and called
        again; the deadline stays the one set at fork time.

        The one override of RQ's horse watch: RQ has no hook to end an
        overrunning horse sooner than 60 s past its limit, and this relies on
        RQ's ``monitor_work_horse`` waiting through this method and treating a
        killed horse as a failed job (handle_work_horse_killed, then
        handle_job_failure). tests/jobs/test_worker.py fails if RQ stops doing so.
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
                    wait_for_exit(self.horse_pid, remaining)
                    continue
                self.log.warning("Job %s overran its time limit; killing its work horse", self._horse_job_id)
                self._overran_job_id = self._horse_job_id
                self.kill_horse(signal.SIGKILL)
                self._horse_deadline = None
                return os.wait4(self.horse_pid, 0)
            return None, None, None

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:
        # Called by RQ's monitor, in the parent, before it fails the job.
        self._killed_job_id = job.id
        self._killed_how = _how_it_ended(ret_val)
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string="", execution=None):
        """RQ's end of a run that did not return: a killed horse is a lost run, an overrun a timeout.

        The job's own exceptions were already recorded by its failure
        callback, in the horse (jobs/events.py on_failure).
        """
        killed = self._killed_job_id == job.id and execution is not None
        overran = killed and self._overran_job_id == job.id
        self._killed_job_id = self._overran_job_id = None
        if overran:
            exc_string = OVERRUN_TEXT.format(timeout=job.timeout)
            self.lifecycle.fail(job.id, execution.id, [job.id], ErrorCode.TIMEOUT.value,
                                FIXED_TEXTS[ErrorCode.TIMEOUT], self.settings.failure_ttl_s)
        elif killed:
            # Killed from outside the job (a signal, the out-of-memory killer), or
            # its horse lost Redis: run it again, up to JOB_MAX_ATTEMPTS runs.
            how = OUTAGE_END if self._outage_during_job() else self._killed_how
            self._settled_job_id = job.id
            if self._run_lost(job, queue, execution, how) != RunLost.FAILED:
                return
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)


def _how_it_ended(wait_status: int | None) -> str:
    """A horse's end in words, from its wait status."""
    if wait_status is None:
        return "its work horse vanished"
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"its work horse was killed by {name}"
    return f"its work horse exited with status {os.waitstatus_to_exitcode(wait_status)}"


def wait_for_exit(pid: int, timeout: float | None) -> None:
    """Return when process ``pid`` exits or ``timeout`` seconds pass (None: no limit).

    A pidfd becomes readable when its process exits, so a finished job is
    noticed at once rather than at the next poll.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the process is already reaped
        time.sleep(HORSE_POLL_S if timeout is None else min(timeout, HORSE_POLL_S))
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
