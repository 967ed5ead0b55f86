"""The job lifecycle's scripts under random interleavings, on a real Redis.

A seeded random schedule drives the real scripts (submit, dispatch, cancel,
and a worker's and the janitor's transitions, jobs/lifecycle.py) the way
servers, workers and janitors interleave them, including late ends from runs
that lost their job. After every step it checks what must always hold:

- one final answer per task: once a task reads finished, failed or cancelled,
  it reads the same for ever after (results here never expire);
- a settled job never changes, whatever a late or lost run does;
- every count equals what the lists hold: the pending count of a queue is the
  length of its clients' lists together, the ring of clients holds exactly
  the clients with a non-empty list, and no list holds a job that is not
  pending (nor an RQ queue one that is not queued).
"""

from __future__ import annotations

import random
import uuid

import pytest
from redis import Redis

from jobs import events, keys, lifecycle, rq_schema
from jobs.lifecycle import FIELDS, RunLost, State
from jobs.routing import QUEUES
from jobs.states import FAILED, FINISHED, JobState
from jobs.store import JobStore
from settings import Settings

CLIENTS = ("alice", "bob", "carol")
NUMBERS = (3, 4, 5, 6, 7, 8, *range(2001, 2011))  # soft ones share batches, hard ones are one job each
STEPS = 250


def _store(redis_url: str) -> JobStore:
    return JobStore(Redis.from_url(redis_url), Settings(
        redis_url=redis_url, soft_batch_size=3, queued_jobs_per_worker=1, max_queue_length=1000,
        client_max_queued=6, result_ttl_s=3600, failure_ttl_s=3600))


class Model:
    """The workers' side of the schedule: jobs taken, runs under way, runs that lost their job."""

    def __init__(self, store: JobStore, rng: random.Random):
        self.store, self.redis, self.rng = store, store.redis, rng
        self.runs = lifecycle.of(self.redis)
        self.running: dict[str, tuple[str, str]] = {}  # job id -> (run, queue)
        self.lost: list[tuple[str, str]] = []  # (job id, run) of runs that no longer own their job
        self.acked: set[str] = set()
        self.settled: dict[str, tuple] = {}  # task id -> its final answer, once it has one
        self.turns_given = 0  # steps after which some job held a turn in another client's list

    # --- what clients do ------------------------------------------------------

    def submit(self) -> None:
        numbers = self.rng.sample(NUMBERS, self.rng.randint(1, 3))
        client = self.rng.choice(CLIENTS)
        holds = {(n, client) for n in numbers if self.rng.random() < 0.3}
        for state in self.store.submit(numbers, [client] * len(numbers), holds).values():
            if isinstance(state, JobState):  # not refused (rate_limited: CLIENT_MAX_QUEUED)
                self.acked.add(state.task_id)

    def cancel(self) -> None:
        if self.acked:
            task_id = self.rng.choice(sorted(self.acked))
            holder = self.rng.choice(("",) + CLIENTS)
            self.store.cancel(task_id, "server-1", others_here=self.rng.random() < 0.2, holder=holder)

    # --- what workers and the janitor do ---------------------------------------

    def take_and_start(self) -> None:
        queue = self.rng.choice(QUEUES)
        job_id = self.redis.lpop(rq_schema.queue_key(queue))
        if job_id is None:
            return
        job_id = job_id.decode()
        run = uuid.uuid4().hex
        if self.runs.start(job_id, run, [job_id], publish=queue != "soft", worker="w"):
            self.running[job_id] = (run, queue)

    def end(self) -> None:
        if not self.running:
            return
        job_id = self.rng.choice(sorted(self.running))
        run, queue = self.running.pop(job_id)
        task_ids = _task_ids(self.redis, job_id)
        if self.rng.random() < 0.8:
            self.runs.finish(job_id, run, {t: f"ok:{t}".encode() for t in task_ids}, 3600)
        else:
            self.runs.fail(job_id, run, task_ids, "job_failed", "the job failed: boom", 3600)

    def lose_run(self) -> None:
        """The janitor finds the run's worker dead (it may be merely paused)."""
        if not self.running:
            return
        job_id = self.rng.choice(sorted(self.running))
        run, queue = self.running.pop(job_id)
        outcome = self.runs.run_lost(job_id, run, queue, "its worker stopped responding", _task_ids(self.redis, job_id),
                                     max_runs=2, ttl=3600)
        assert outcome in (RunLost.REQUEUED, RunLost.FAILED, RunLost.NOT_OWNED)
        self.lost.append((job_id, run))

    def late_end(self) -> None:
        """A run that lost its job ends after all: it must change nothing."""
        if not self.lost:
            return
        job_id, run = self.rng.choice(self.lost)
        task_ids = _task_ids(self.redis, job_id)
        assert not self.runs.finish(job_id, run, {t: b"late" for t in task_ids}, 3600)
        assert not self.runs.fail(job_id, run, task_ids, "job_failed", "late", 3600)

    # --- what must hold -------------------------------------------------------

    def check(self) -> None:
        states = self.store.states(sorted(self.acked))
        for task_id, state in states.items():
            final = state.final_answer()
            if state.status in (FINISHED, FAILED):
                answer = (state.status, final if isinstance(final, bytes) else (final.code, final.text))
                assert answer[1] != b"late", task_id
                assert self.settled.setdefault(task_id, answer) == answer, (task_id, self.settled[task_id], answer)
            else:
                assert task_id not in self.settled, (task_id, "was settled, now", state.status)
        for name in QUEUES:
            self._check_lists(name)

    def _check_lists(self, name: str) -> None:
        r = self.redis
        clients = [c.decode() for c in r.lrange(keys.pending_clients(name), 0, -1)]
        lists = {c: [j.decode() for j in r.lrange(keys.pending(name, c), 0, -1)] for c in CLIENTS}
        assert len(clients) == len(set(clients)), clients
        assert set(clients) == {c for c, jobs in lists.items() if jobs}, (clients, lists)
        assert int(r.get(keys.pending_count(name)) or 0) == sum(map(len, lists.values()))
        for jobs in lists.values():
            for job_id in jobs:
                assert _state(r, job_id) == State.PENDING.value, (job_id, _state(r, job_id))
        # RQ's deferred registry (what rq-dashboard shows) lists each pending job once.
        deferred = {j.decode() for j in r.zrange(rq_schema.deferred_registry_key(name), 0, -1)}
        assert deferred == {j for jobs in lists.values() for j in jobs}, (deferred, lists)
        for job_id in r.lrange(rq_schema.queue_key(name), 0, -1):
            assert _state(r, job_id.decode()) == State.QUEUED.value


def _state(redis: Redis, job_id: str) -> str:
    raw = redis.hget(rq_schema.JOB_PREFIX + job_id, FIELDS["state"])
    return raw.decode() if raw else ""


def _task_ids(redis: Redis, job_id: str) -> list[str]:
    return events.batch_members(redis, job_id)[1] or [job_id]


@pytest.mark.parametrize("seed", range(4))
def test_random_interleavings_keep_one_answer_per_task_and_counts_true(redis_url, redis_client, seed):
    redis_client.flushdb()
    rng = random.Random(seed)
    model = Model(_store(redis_url), rng)
    actions = [model.submit] * 4 + [model.store.dispatch] * 2 + [model.take_and_start] * 3 + [model.end] * 2 + [
        model.lose_run, model.late_end, model.cancel, model.cancel]
    for _ in range(STEPS):
        rng.choice(actions)()
        model.check()
        model.turns_given += bool(model.redis.keys("rq:job:*") and any(
            model.redis.hget(k, FIELDS["tickets"]) for k in model.redis.keys("rq:job:*")))
    # Everything left runs to its end: every task gets its one answer.
    for _ in range(STEPS):
        model.store.dispatch()
        model.take_and_start()
        model.end()
        model.check()
    assert model.settled, "the schedule settled nothing: it tests nothing"
    assert model.turns_given, "no request joined another client's pending job: the schedule misses a case"
    assert len(model.settled) == len(model.acked) or any(
        model.store.states([t])[t].status in ("queued", "started") for t in model.acked - model.settled.keys())
