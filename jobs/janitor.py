"""Finding the jobs of workers that stopped responding, and giving each its end.

A worker may die, be paused or lose its host at any moment after it took a job
off its queue. Such a job is:

- *taken but not started*: in a LaneWorker's own taken list
  (jobs/lifecycle.py ``taken_key``; jobs/worker.py moves every job it takes
  there), in RQ's intermediate list (``rq:queue:NAME:intermediate``, where a
  stock worker of one queue moves it), or registered as started by a worker
  whose work horse never claimed it. It goes back to the front of its queue:
  computing a factorial again is safe.
- *started*: its run is lost (jobs/lifecycle.py ``run_lost``): the job goes
  back to the front of its queue and runs again, its clients hearing nothing,
  up to ``JOB_MAX_ATTEMPTS`` runs; after the last it fails saying how its
  runs ended. A lost run that comes back (a paused worker resumed) no longer
  owns the job, and its end changes nothing.

Whether a worker still holds its jobs is read from TTLs that Redis expires by
its own clock, never from timestamps written by different hosts:

- A LaneWorker (``jobs.liveness.Heartbeat``) refreshes
  ``factorial:alive:<worker>`` every ``BEAT_S`` with a TTL of ``ALIVE_TTL_S``
  and is listed in ``factorial:beating-workers``. Once its key is gone, its
  started jobs are lost runs and its taken list goes back at once.
- A stock ``rq worker`` (RQ's own class, no alive key) is judged by RQ's own
  leases: the execution key of each run (``rq:execution:<job>:<id>``) and the
  worker key (``rq:worker:<name>``), which its heartbeats keep for
  ``job_monitoring_interval`` + 60 s (90 s with RQ's defaults) while it runs a
  job. A started job whose execution key or worker key expired is a lost
  run, as for a LaneWorker, only later: at most 90 s after the worker died,
  where RQ itself would fail the job at its next maintenance (up to 10
  minutes on). Its unstarted jobs are found only where RQ holds them: a stock
  worker of several queues pops a job with BLPOP into no list, and one killed
  in that instant loses it.
- A stock worker that lives on but whose work horse died (SIGKILL, out of
  memory), or whose run RQ's own cleanup took for abandoned, has its job
  failed by RQ with no failure callback run: RQ says ``failed`` while the job
  is still ``started`` and its clients wait. Found among each queue's latest
  failures and left ``UNSTARTED_GRACE_S`` for a callback on its way, such a
  run is lost too; a horse that RQ killed past the job's time limit makes the
  job a ``timeout``.
- A job a live worker has held unstarted for ``UNSTARTED_GRACE_S`` (a live
  worker starts its job milliseconds after taking it), measured by the
  remaining TTL of a key set when it was first seen, also goes back: its
  start is fenced (jobs/lifecycle.py), so a slow worker and the next one
  cannot both run it.

Every LaneWorker's heartbeat thread and every server's delivery loop call
``run_once`` about once a second. A short lock makes it one run per round
across the deployment, and each action first claims its job with one atomic
script that removes it from its list, so two runs never act on one job.

A Redis that was stopped or paused comes back with expired keys: the alive keys
lapsed while no worker could reach it. So a process acts only once it has
itself reached Redis without a gap for ``TRUST_AFTER_S`` (more than one alive
TTL), by which time every live worker has beaten again; on stock workers' runs
only after ``STOCK_TRUST_AFTER_S``, by which time a live stock worker has
renewed its leases.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL
from rq.executions import Execution
from rq.job import JobStatus
from rq.worker import Worker

from jobs import events, keys, lifecycle, rq_schema
from jobs.lifecycle import FIELDS, RunLost, State
from jobs.routing import QUEUES, SOFT
from protocol import FIXED_TEXTS, ErrorCode
from settings import Settings

log = logging.getLogger(__name__)

BEAT_S = 1.0
# Long enough that a live worker starved of CPU for a few seconds on a busy host
# is not taken for dead; short enough that a dead one is answered within 10 s.
ALIVE_TTL_S = 5.0
UNSTARTED_GRACE_S = 3.0
# The first-seen key lives this long; its remaining TTL tells its age.
UNSTARTED_KEY_TTL_S = 60.0
RUN_EVERY_S = 1.0
# A round trip this slow, or this long without one, may hide a Redis pause
# during which alive keys lapsed: trust what Redis says only TRUST_AFTER_S later.
SLOW_ROUND_TRIP_S = 1.0
MAX_GAP_S = 3 * RUN_EVERY_S
TRUST_AFTER_S = ALIVE_TTL_S + 2 * BEAT_S
# A live stock worker renews its run's leases every job_monitoring_interval.
STOCK_TRUST_AFTER_S = DEFAULT_JOB_MONITORING_INTERVAL + 5.0

WORKER_LOST = "its worker stopped responding"
HORSE_LOST = "its work horse died"
# How many of each queue's latest failures are looked at, each round, for runs
# RQ ended under a stock worker without the job's own end (below).
RECENT_FAILURES = 100
# Marks when such a run was first seen; its remaining TTL tells how long ago.
ENDED_SEEN_PREFIX = "factorial:rq-ended:"

# Forget a dead worker only if it is still dead and holds nothing: a worker
# that resumed may have taken a job since its list was read.
_FORGET_WORKER = """
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('LLEN', KEYS[3]) == 0 then
    return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass
class Recovery:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """One entry of a started registry, with what tells whether its worker still holds it."""

    queue: Queue
    entry: str
    job_id: str
    execution_id: str
    leased: bool  # its execution key lives: RQ's lease on the run, renewed by its worker
    runner: str  # the worker named by its execution (or by the job, once that expired)
    state: str  # the job's lifecycle state
    run: str  # the run that owns the job
    owner: str  # that run's worker ("" for a run a job function claimed itself: a stock worker's)


class Janitor:
    """One process's share of orphan recovery; ``run_once`` raises Redis's connection errors."""

    def __init__(self, redis: Redis, queue_names=QUEUES, settings: Settings | None = None):
        # ``redis`` must not decode responses (RQ's job hashes hold zlib-compressed data).
        self.redis = redis
        self.settings = settings or Settings.from_env()
        self.queues = [Queue(name, connection=redis, serializer=rq_schema.SERIALIZER) for name in queue_names]
        self.lifecycle = lifecycle.of(redis)
        self._forget_worker = redis.register_script(_FORGET_WORKER)
        self._token = uuid.uuid4().hex
        self._contact_since: float | None = None
        self._last_contact: float | None = None

    # --- when to act ------------------------------------------------------

    def _note_round_trip(self, sent: float) -> None:
        now = time.monotonic()
        gap = sent - self._last_contact if self._last_contact is not None else None
        if gap is None or gap > MAX_GAP_S or now - sent > SLOW_ROUND_TRIP_S:
            self._contact_since = now
        self._last_contact = now

    def _lost_contact(self) -> None:
        self._contact_since = self._last_contact = None

    def _trusted_for(self, seconds: float) -> bool:
        return self._contact_since is not None and time.monotonic() - self._contact_since >= seconds

    @property
    def trusted(self) -> bool:
        return self._trusted_for(TRUST_AFTER_S)

    def run_once(self) -> Recovery | None:
        """Recover what is orphaned, if this round is this process's; None when it is not."""
        sent = time.monotonic()
        try:
            if not self.trusted:
                self.redis.ping()
                self._note_round_trip(sent)
                return None
            got_lock = self.redis.set(keys.JANITOR_LOCK, self._token, nx=True, px=int(RUN_EVERY_S * 900))
            self._note_round_trip(sent)
            if not got_lock or not self.trusted:
                return None
            return self._recover()
        except Exception:
            self._lost_contact()
            raise

    # --- what to do -------------------------------------------------------

    def _recover(self) -> Recovery:
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(keys.BEATING_WORKERS)
        for queue in self.queues:
            pipe.zrange(queue.started_job_registry.key, 0, -1)
            pipe.lrange(queue.intermediate_queue_key, 0, -1)
        replies = pipe.execute()
        beating = sorted(member.decode() for member in replies[0])
        entries = [(q, e.decode()) for i, q in enumerate(self.queues) for e in replies[1 + 2 * i]]
        in_intermediate = {q.name: [j.decode() for j in replies[2 + 2 * i]] for i, q in enumerate(self.queues)}

        pipe = self.redis.pipeline(transaction=False)
        for name in beating:
            pipe.exists(keys.worker_alive(name))
            pipe.lrange(lifecycle.taken_key(name), 0, -1)
        for _, entry in entries:
            execution = Execution.from_composite_key(entry, self.redis)
            pipe.hget(execution.key, "worker_name")
            pipe.hmget(rq_schema.JOB_PREFIX + execution.job_id,
                       [FIELDS["state"], FIELDS["run"], FIELDS["worker"], "worker_name"])
        replies = pipe.execute()
        dead = {name for i, name in enumerate(beating) if not replies[2 * i]}
        taken = {name: [j.decode() for j in replies[2 * i + 1]] for i, name in enumerate(beating)}
        runs = [_run(queue, entry, *replies[2 * len(beating) + 2 * i: 2 * len(beating) + 2 * i + 2], self.redis)
                for i, (queue, entry) in enumerate(entries)]

        recovery = Recovery()
        started_ids = {run.job_id for run in runs}
        stock = [run for run in runs if run.runner not in beating]
        for run in runs:
            if run.runner in dead:
                self._claim(run.queue, run.job_id, run.entry, recovery, run.execution_id)
        if stock and self._trusted_for(STOCK_TRUST_AFTER_S):
            self._recover_stock_runs(stock, recovery)
        for name in dead:
            for job_id in taken[name]:
                if job_id not in started_ids and self.lifecycle.put_back_taken(job_id, name):
                    log.warning("Job %s was taken by worker %s, which stopped responding before starting it; "
                                "requeued", job_id, name)
                    recovery.requeued.append(job_id)
        held = [(job_id, q, "") for q in self.queues for job_id in in_intermediate[q.name]]
        held += [(job_id, None, name) for name in beating if name not in dead for job_id in taken[name]]
        self._put_back_unstarted([h for h in held if h[0] not in started_ids], started_ids, recovery)
        self._recover_runs_rq_ended(recovery)  # RQ's record of a failure, which no pause of Redis fakes
        for name in dead:
            # Every job it held was claimed above: forget it, unless it took one since.
            self._forget_worker(keys=[keys.BEATING_WORKERS, keys.worker_alive(name), lifecycle.taken_key(name)],
                                args=[name])
        return recovery

    def _recover_stock_runs(self, runs: list[_Run], recovery: Recovery) -> None:
        """Started jobs of workers without an alive key, whose RQ leases expired."""
        runners = sorted({run.runner for run in runs if run.leased and run.runner})
        pipe = self.redis.pipeline(transaction=False)
        for runner in runners:
            pipe.exists(Worker.redis_worker_namespace_prefix + runner)
        registered = {runner for runner, exists in zip(runners, pipe.execute()) if exists}
        for run in runs:
            if run.state not in (State.STARTED.value, State.QUEUED.value):
                continue  # not the service's job, or already ended: RQ's own cleanup has it
            if run.leased and run.runner in registered:
                continue
            # A run a job function claimed (jobs/factorial.py) is known by the job's run, not its execution.
            run_id = run.run if run.state == State.STARTED.value and not run.owner else run.execution_id
            if not self._claim(run.queue, run.job_id, run.entry, recovery, run_id):
                # Not that run's any more, and its lease is gone: a leftover entry.
                self.redis.zrem(run.queue.started_job_registry.key, run.entry)

    def _recover_runs_rq_ended(self, recovery: Recovery) -> None:
        """Runs that RQ ended under a stock worker without the job's own end: its work horse died
        (SIGKILL, out of memory) or RQ's cleanup took it for abandoned. RQ failed the job, but
        no failure callback ran in the run, so the job is still ``started`` and its clients wait:
        the run is lost (it runs again), or, if its horse was killed past the job's time limit,
        the job is a timeout. Left for UNSTARTED_GRACE_S first, for a callback still on its way."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrevrange(queue.failed_job_registry.key, 0, RECENT_FAILURES - 1)
        failed = [(q, j.decode()) for q, ids in zip(self.queues, pipe.execute()) for j in ids]
        if not failed:
            return
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id in failed:
            pipe.hmget(rq_schema.JOB_PREFIX + job_id, [FIELDS["state"], FIELDS["run"], FIELDS["worker"],
                                                       rq_schema.STATUS_FIELD, "started_at", "ended_at", "timeout"])
        ended = []
        for (queue, job_id), fields in zip(failed, pipe.execute()):
            state, run, owner, status, started_at, ended_at, timeout = ((v or b"").decode() for v in fields)
            if state == State.STARTED.value and status == JobStatus.FAILED.value and run and not owner:
                ended.append((queue, job_id, run, _overran(started_at, ended_at, timeout)))
        if not ended:
            return
        ttl_ms = int(UNSTARTED_KEY_TTL_S * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id, _, _ in ended:
            pipe.set(ENDED_SEEN_PREFIX + job_id, 1, nx=True, px=ttl_ms)
            pipe.pttl(ENDED_SEEN_PREFIX + job_id)
        ages = [ttl_ms - remaining for remaining in pipe.execute()[1::2]]
        for (queue, job_id, run, overran), age_ms in zip(ended, ages):
            if age_ms < UNSTARTED_GRACE_S * 1000:
                continue
            task_ids = _task_ids(self.redis, job_id) if queue.name == SOFT else [job_id]
            if overran:
                if self.lifecycle.fail(job_id, run, task_ids, ErrorCode.TIMEOUT.value,
                                       FIXED_TEXTS[ErrorCode.TIMEOUT], self.settings.failure_ttl_s):
                    log.warning("Job %s on %s: its work horse was killed past its time limit; timeout",
                                job_id, queue.name)
                    recovery.failed.append(job_id)
            else:
                outcome = self.lifecycle.run_lost(job_id, run, queue.name, HORSE_LOST, task_ids,
                                                  self.settings.job_max_attempts, self.settings.failure_ttl_s)
                if outcome == RunLost.REQUEUED:
                    # Queued again: no longer one of RQ's failures.
                    self.redis.zrem(queue.failed_job_registry.key, job_id)
                    log.warning("Job %s on %s: %s; requeued to run again", job_id, queue.name, HORSE_LOST)
                    recovery.requeued.append(job_id)
                elif outcome == RunLost.FAILED:
                    recovery.failed.append(job_id)
            self.redis.delete(ENDED_SEEN_PREFIX + job_id)

    def _put_back_unstarted(self, held: list[tuple[str, Queue | None, str]], started_ids: set[str],
                            recovery: Recovery) -> None:
        """Jobs held unstarted (in an intermediate list, or a live worker's taken list) for the grace."""
        if not held and not started_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        ttl_ms = int(UNSTARTED_KEY_TTL_S * 1000)
        for job_id, _, _ in held:
            pipe.set(keys.unstarted(job_id), 1, nx=True, px=ttl_ms)
            pipe.pttl(keys.unstarted(job_id))
        for job_id in started_ids:
            # Started after all: a later stay in a list is measured afresh.
            pipe.delete(keys.unstarted(job_id))
        replies = pipe.execute()
        for index, (job_id, queue, worker) in enumerate(held):
            remaining_ms = replies[2 * index + 1]
            if remaining_ms is None or remaining_ms < 0 or ttl_ms - remaining_ms < UNSTARTED_GRACE_S * 1000:
                continue
            if queue is not None and self.lifecycle.put_back_unstarted(job_id, queue.name):
                log.warning("Job %s was taken off %s by a worker that stopped responding before starting it; "
                            "requeued", job_id, queue.name)
                recovery.requeued.append(job_id)
            elif queue is None and self.lifecycle.put_back_taken(job_id, worker):
                log.warning("Job %s was held unstarted by worker %s for %.0f s; requeued", job_id, worker,
                            UNSTARTED_GRACE_S)
                recovery.requeued.append(job_id)
            self.redis.delete(keys.unstarted(job_id))

    def _claim(self, queue: Queue, job_id: str, entry: str, recovery: Recovery, run: str) -> bool:
        """Settle one lost run; False if it no longer owned its job (nothing was changed)."""
        task_ids = _task_ids(self.redis, job_id) if queue.name == SOFT else [job_id]
        outcome = self.lifecycle.run_lost(job_id, run, queue.name, WORKER_LOST, task_ids,
                                          self.settings.job_max_attempts, self.settings.failure_ttl_s, entry=entry)
        if outcome == RunLost.REQUEUED:
            log.warning("Job %s on %s: %s; requeued to run again", job_id, queue.name, WORKER_LOST)
            recovery.requeued.append(job_id)
        elif outcome == RunLost.FAILED:
            log.warning("Job %s on %s: %s on its last allowed run; failed", job_id, queue.name, WORKER_LOST)
            recovery.failed.append(job_id)
        return outcome != RunLost.NOT_OWNED


def _run(queue: Queue, entry: str, execution_worker, job_fields, redis: Redis) -> _Run:
    execution = Execution.from_composite_key(entry, redis)
    state, run, owner, job_worker = ((raw or b"").decode() for raw in job_fields)
    return _Run(queue=queue, entry=entry, job_id=execution.job_id, execution_id=execution.id,
                leased=execution_worker is not None,
                runner=(execution_worker or b"").decode() or job_worker,
                state=state, run=run, owner=owner)


def _overran(started_at: str, ended_at: str, timeout: str) -> bool:
    """Whether a run RQ ended lasted longer than the job's time limit (RQ kills an overrunning
    horse 60 s past it). Both times were written by the one worker that ran it."""
    if not (started_at and ended_at and timeout.lstrip("-").isdigit()) or int(timeout) <= 0:
        return False
    # RQ writes its times in ISO 8601 with a Z (rq.utils.utcformat).
    ended, started = datetime.datetime.fromisoformat(ended_at), datetime.datetime.fromisoformat(started_at)
    return (ended - started).total_seconds() > int(timeout)


def _task_ids(redis: Redis, job_id: str) -> list[str]:
    """The tasks of a soft job: a batch's members, or the job itself."""
    numbers, task_ids = events.batch_members(redis, job_id)
    return task_ids or [job_id]
