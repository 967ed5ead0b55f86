"""Finding the jobs of workers that stopped responding, and giving each its end.

A worker may die, be paused or lose its host at any moment after it took a job
off its queue. Such a job is:

- *taken but not started*: in RQ's intermediate list
  (``rq:queue:NAME:intermediate``) and not started, or registered as started by
  a worker whose work horse never marked it so. It goes back to the front of
  its queue: computing a factorial again is safe.
- *started*: its run is lost (jobs/lifecycle.py ``run_lost``): the job goes
  back to the front of its queue and runs again, its clients hearing nothing,
  up to ``JOB_MAX_ATTEMPTS`` runs; after the last it fails saying how its
  runs ended. A lost run that comes back (a paused worker resumed) no longer
  owns the job, and its end changes nothing.

Liveness comes from TTLs that Redis expires by its own clock, never from
comparing timestamps written by different hosts: ``jobs.liveness.Heartbeat``
refreshes ``factorial:alive:<worker>`` every ``BEAT_S`` with a TTL of
``ALIVE_TTL_S``. A started job whose worker beats (is in
``factorial:beating-workers``) and whose alive key is gone is orphaned. A job
taken off a queue is orphaned when it stays unstarted for ``UNSTARTED_GRACE_S``,
measured by the remaining TTL of a key set when it was first seen so: a live
worker starts its job milliseconds after taking it.

Every LaneWorker's heartbeat thread and every server's delivery loop call
``run_once`` about once a second. A short lock makes it one run per round
across the deployment, and each action first claims its job with one atomic
script that removes it from RQ's lists, so two runs never act on one job.

A Redis that was stopped or paused comes back with expired keys: the alive keys
lapsed while no worker could reach it. So a process acts only once it has
itself reached Redis without a gap for ``TRUST_AFTER_S`` (more than one alive
TTL), by which time every live worker has beaten again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue
from rq.executions import Execution

from jobs import events, keys, lifecycle
from jobs.lifecycle import RunLost
from jobs.routing import QUEUES, SOFT
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

WORKER_LOST = "its worker stopped responding"


@dataclass
class Recovery:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Janitor:
    """One process's share of orphan recovery; ``run_once`` raises Redis's connection errors."""

    def __init__(self, redis: Redis, queue_names=QUEUES, settings: Settings | None = None):
        # ``redis`` must not decode responses (RQ's job hashes hold pickles).
        self.redis = redis
        self.settings = settings or Settings.from_env()
        self.queues = [Queue(name, connection=redis) for name in queue_names]
        self.lifecycle = lifecycle.of(redis)
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

    @property
    def trusted(self) -> bool:
        return self._contact_since is not None and time.monotonic() - self._contact_since >= TRUST_AFTER_S

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
        entries = {q.name: [e.decode() for e in replies[1 + 2 * i]] for i, q in enumerate(self.queues)}
        taken = {q.name: [j.decode() for j in replies[2 + 2 * i]] for i, q in enumerate(self.queues)}

        pipe = self.redis.pipeline(transaction=False)
        for name in beating:
            pipe.exists(keys.worker_alive(name))
        all_entries = [(q, entry) for q in self.queues for entry in entries[q.name]]
        for _, entry in all_entries:
            pipe.hget(Execution.from_composite_key(entry, self.redis).key, "worker_name")
        replies = pipe.execute()
        dead = {name for name, alive in zip(beating, replies) if not alive}
        runners = [(raw or b"").decode() for raw in replies[len(beating):]]

        recovery = Recovery()
        started_ids: set[str] = set()
        for (queue, entry), runner in zip(all_entries, runners):
            job_id = Execution.from_composite_key(entry, self.redis).job_id
            started_ids.add(job_id)
            if runner in dead:
                self._claim(queue, job_id, entry, recovery)
        self._put_back_unstarted(taken, started_ids, recovery)
        if dead:
            # Every job they held was claimed above: forget them.
            self.redis.srem(keys.BEATING_WORKERS, *dead)
        return recovery

    def _put_back_unstarted(self, taken: dict[str, list[str]], started_ids: set[str], recovery: Recovery) -> None:
        candidates = [(q, job_id) for q in self.queues for job_id in taken[q.name] if job_id not in started_ids]
        if not candidates and not started_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        ttl_ms = int(UNSTARTED_KEY_TTL_S * 1000)
        for _, job_id in candidates:
            pipe.set(keys.unstarted(job_id), 1, nx=True, px=ttl_ms)
            pipe.pttl(keys.unstarted(job_id))
        for job_id in started_ids:
            # Started after all: a later stay in the list is measured afresh.
            pipe.delete(keys.unstarted(job_id))
        replies = pipe.execute()
        for index, (queue, job_id) in enumerate(candidates):
            remaining_ms = replies[2 * index + 1]
            if remaining_ms is not None and remaining_ms >= 0 and ttl_ms - remaining_ms >= UNSTARTED_GRACE_S * 1000:
                self._claim(queue, job_id, "", recovery)
                self.redis.delete(keys.unstarted(job_id))

    def _claim(self, queue: Queue, job_id: str, entry: str, recovery: Recovery) -> None:
        if not entry:
            if self.lifecycle.put_back_unstarted(job_id, queue.name):
                log.warning("Job %s was taken off %s by a worker that stopped responding before starting it; "
                            "requeued", job_id, queue.name)
                recovery.requeued.append(job_id)
            return
        execution = Execution.from_composite_key(entry, self.redis)
        task_ids = _task_ids(self.redis, job_id) if queue.name == SOFT else [job_id]
        outcome = self.lifecycle.run_lost(job_id, execution.id, queue.name, WORKER_LOST, task_ids,
                                          self.settings.job_max_attempts, self.settings.failure_ttl_s, entry=entry)
        if outcome == RunLost.REQUEUED:
            log.warning("Job %s on %s: %s; requeued to run again", job_id, queue.name, WORKER_LOST)
            recovery.requeued.append(job_id)
        elif outcome == RunLost.FAILED:
            log.warning("Job %s on %s: %s on its last allowed run; failed", job_id, queue.name, WORKER_LOST)
            recovery.failed.append(job_id)


def _task_ids(redis: Redis, job_id: str) -> list[str]:
    """The tasks of a soft job: a batch's members, or the job itself."""
    numbers, task_ids = events.batch_members(redis, job_id)
    return task_ids or [job_id]
