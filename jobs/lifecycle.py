"""The one owner of a job's life: its states, the transitions allowed between
them, and the only code that writes them.

    (none) ─submit─▶ pending ─dispatch─▶ queued ─start─▶ started ─end─▶ finished | failed
                        │                  │ ▲              │
                        └──── cancel ──────┴─┼──────────────┴──▶ cancelled
                                             └─ run lost (worker killed, paused, cut off)

A job waits in its client's pending list (``pending``) until the dispatcher
gives it its turn in the RQ queue (``queued``). A worker's run claims it
(``started``) under a run id, RQ's execution id. Only that run may end it:
every end is checked against the run that owns the job and written in the same
Lua step (a fencing token), so a run that lost its job (paused past its lease,
cut off, declared dead) changes nothing a client can see. A run lost to a
fault outside the job sends the job back to the front of its queue, up to
``JOB_MAX_ATTEMPTS`` runs in all; after the last, the job fails saying how
its runs ended. ``finished``, ``failed`` and ``cancelled`` are final.

The state lives in the job's RQ hash, in fields of the service's own (RQ's
``status`` field is RQ's, for rq-dashboard).

Why not RQ's own calls for these moves: ``Job.cancel`` and ``Job.requeue``
each run as separate round trips that check nothing the service knows (whose
turn it is, which run owns the job, who still waits), so a cancel could race
a dispatch or a late run's end could undo a requeue; ``Retry`` is returned by
a job that ran to its end, while a lost run never returns; and RQ enqueues
straight onto the queue, while the service's jobs first wait for their
client's turn. So each move is one Lua step that checks and writes together,
on RQ's schema through jobs/rq_schema.py, and RQ's Python API does the rest
(creating the job's hash, running it, recording its result and registries). The table below is the only
description of the transitions: the Lua scripts get it in their preamble
(jobs/scripts.py) and refuse, and log, any move it does not list.
"""

from __future__ import annotations

import json
import logging
import weakref
from enum import Enum

from redis import Redis

from jobs import keys, rq_schema

log = logging.getLogger(__name__)


class State(str, Enum):
    """A job's state; the values are the ones stored."""

    NONE = ""  # not made yet
    PENDING = "pending"  # accepted, waiting for its client's turn
    QUEUED = "queued"  # in its RQ queue (or taken off it, not yet started)
    STARTED = "started"  # a run owns it
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({State.FINISHED, State.FAILED, State.CANCELLED})

# The allowed transitions: from -> the states it may move to.
TRANSITIONS: dict[State, frozenset[State]] = {
    # none -> started: a job enqueued straight with RQ, not through the service.
    State.NONE: frozenset({State.PENDING, State.STARTED}),
    State.PENDING: frozenset({State.QUEUED, State.CANCELLED}),
    # queued -> queued: taken off the queue by a worker that died before it
    # started the job, and put back.
    State.QUEUED: frozenset({State.QUEUED, State.STARTED, State.CANCELLED}),
    # started -> queued: its run was lost to a fault outside the job.
    State.STARTED: frozenset({State.FINISHED, State.FAILED, State.QUEUED, State.CANCELLED}),
    State.FINISHED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}


# How a failed job ended is stored as the protocol's error code (protocol.ErrorCode:
# timeout, job_failed), which is what every lookup and push answers.


class CancelOutcome(str, Enum):
    """What a cancel did to the job (protocol: ``cancelled``'s ``job``, plus ``unknown``)."""

    STOPPED = "stopped"
    CONTINUES = "continues"
    ENDED = "ended"
    UNKNOWN = "unknown"
    # Inside the service only: the job runs, and the caller tells its worker
    # to stop it; the client hears "stopped".
    STOP = "stop"


class RunLost(str, Enum):
    """What became of a job whose run was lost (``Lifecycle.run_lost``)."""

    REQUEUED = "requeued"
    FAILED = "failed"  # that was its last allowed run
    NOT_OWNED = ""  # the run no longer owned the job: nothing was changed


# The job hash fields the service owns.
FIELDS = {
    "state": "factorial_state",
    "run": "factorial_run",  # the run (RQ execution id) that owns a started job
    "runs": "factorial_runs",  # how many runs have started it
    "ends": "factorial_ends",  # how each lost run ended, "; "-separated
    "code": "factorial_code",  # a failed job's protocol error code
    "text": "factorial_text",  # ... and its text
    "client": "factorial_client",  # who made it: whose pending list it waits in
    "worker": "factorial_worker",  # the worker whose run owns a started job (a cancel tells it to stop)
    "tickets": "factorial_tickets",  # other clients that asked for a pending job: a turn each, "\n"-separated
}


def lua_preamble() -> str:
    """The constants every Lua script starts with: this table, the field and key names, RQ's names."""
    lc = {
        "state": {s.name: s.value for s in State},
        "allowed": {frm.value: {to.value: True for to in tos} for frm, tos in TRANSITIONS.items()},
        "final": {s.value: True for s in FINAL},
        "field": FIELDS,
        "outcome": {o.name: o.value for o in CancelOutcome},
        "payload_prefix": keys.payload(""),
        "task_job_prefix": keys.task_job(""),
        "batch_prefix": keys.batch_members(""),
        "holders_prefix": keys.http_holders(""),
        "stream": keys.EVENTS_STREAM,
        "maxlen": keys.EVENTS_MAXLEN,
        "inline_payload": INLINE_PAYLOAD_BYTES,
        "inline_entry": INLINE_ENTRY_BYTES,
        "inline_prefix": INLINE_PREFIX,
    }
    return (f"local LC = cjson.decode({_lua_string(json.dumps(lc))})\n"
            f"local RQ = cjson.decode({_lua_string(json.dumps(rq_schema.lua_names()))})\n")


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


# A success message this small travels in its job's event, so a server
# delivers it without another round trip; the stored message stays the reference.
INLINE_PAYLOAD_BYTES = 512
INLINE_ENTRY_BYTES = 4096
INLINE_PREFIX = "payload:"


# --- the run a worker process is executing -----------------------------------
#
# Set by the project's worker before it runs a job (jobs/worker.py), read by
# the job functions (jobs/factorial.py) to end the job under that run. A job
# run by a worker that sets none (the stock ``rq worker``) claims a run itself.

_current_run: tuple[str, str] | None = None  # (job id, run)


def set_current_run(job_id: str | None, run: str | None = None) -> None:
    global _current_run
    _current_run = (job_id, run) if job_id and run else None


def current_run(job_id: str) -> str | None:
    """The run executing ``job_id`` in this process, if one was set for it."""
    if _current_run is not None and _current_run[0] == job_id:
        return _current_run[1]
    return None


class Lifecycle:
    """The transitions a worker, a job function or the janitor makes, each one Lua step.

    Blocking calls: never on the IOLoop.
    """

    def __init__(self, redis: Redis):
        from jobs import scripts  # jobs.scripts prepends lua_preamble()

        self.redis = redis
        self._script = scripts.load(redis, "lifecycle", "lifecycle_ops")

    def _op(self, spec: dict, *blobs: bytes):
        reply = self._script(args=[json.dumps(spec), *blobs], client=self.redis)
        if isinstance(reply, bytes):
            reply = reply.decode()
        if reply in (0, "", None) or reply is False:
            log.warning("Job %s: %s refused (run %s does not own it, or its state allows no such move)",
                        spec.get("job_id"), spec["op"], spec.get("run") or "-")
        return reply

    def start(self, job_id: str, run: str, task_ids: list[str], publish: bool, worker: str = "") -> bool:
        """Claim a queued job for ``run`` of ``worker``; ``publish``: tell the servers it started."""
        return bool(self._op({"op": "start", "job_id": job_id, "run": run, "task_ids": task_ids,
                              "publish": publish, "worker": worker}))

    def finish(self, job_id: str, run: str, payloads: dict[str, bytes], ttl: int | None) -> bool:
        """End ``run``'s job with its tasks' success messages; False (nothing written) if it lost the job."""
        task_ids = list(payloads)
        return bool(self._op({"op": "finish", "job_id": job_id, "run": run, "task_ids": task_ids,
                              "ttl": ttl or 0}, *payloads.values()))

    def fail(self, job_id: str, run: str | None, task_ids: list[str], code: str, text: str, ttl: int) -> bool:
        """Fail ``run``'s job (a timeout, an error it raised); False if the run lost it."""
        return bool(self._op({"op": "fail", "job_id": job_id, "run": run or "", "task_ids": task_ids,
                              "code": code, "text": text, "ttl": ttl}))

    def run_lost(self, job_id: str, run: str, queue: str, how: str, task_ids: list[str],
                 max_runs: int, ttl: int, entry: str = "") -> RunLost:
        """``run`` ended by a fault outside the job: back to the front of its queue, or failed after its last run.

        ``entry``: the run's member of RQ's started registry, removed in the same step.
        """
        reply = self._op({"op": "run_lost", "job_id": job_id, "run": run, "queue": queue, "how": how,
                          "task_ids": task_ids, "max_runs": max_runs, "ttl": ttl, "entry": entry,
                          "queue_key": rq_schema.queue_key(queue),
                          "intermediate": rq_schema.intermediate_key(queue),
                          "started_registry": rq_schema.started_registry_key(queue)})
        return RunLost(reply or "")

    def take(self, worker: str, queues: list[str]) -> tuple[str, str] | None:
        """Move the next job of the first non-empty of ``queues`` (in this order) into ``worker``'s
        taken list, in one step: (queue name, job id), or None when they are all empty.

        The job is never in flight outside a list: a worker killed right after
        this leaves it where the janitor finds it (jobs/janitor.py).
        """
        reply = self._script(args=[json.dumps({"op": "take", "job_id": "", "taken": taken_key(worker),
                                               "queue_keys": [rq_schema.queue_key(q) for q in queues]})],
                             client=self.redis)
        if not reply:
            return None
        queue_key, job_id = (part.decode() if isinstance(part, bytes) else part for part in reply)
        return queue_key[len(rq_schema.QUEUE_PREFIX):], job_id

    def put_back_taken(self, job_id: str, worker: str) -> bool:
        """A job in ``worker``'s taken list that the worker will not start: out of the list and,
        if still queued, back to the front of its queue (once). False if it was no longer in the
        list (started meanwhile, or put back by another janitor) or not requeued (cancelled, ended)."""
        reply = self._script(args=[json.dumps({"op": "put_back_taken", "job_id": job_id,
                                               "taken": taken_key(worker)})], client=self.redis)
        return reply == 1

    def put_back_unstarted(self, job_id: str, queue: str) -> bool:
        """A job taken off ``queue`` by a worker that did not start it: back to the front."""
        return bool(self._op({"op": "put_back", "job_id": job_id, "queue_key": rq_schema.queue_key(queue),
                              "intermediate": rq_schema.intermediate_key(queue)}))


# A LaneWorker's taken list: the jobs it moved off its queues and has not
# registered as started yet (at most one, for milliseconds). Queued work, so
# without a TTL; the janitor empties the list of a worker that died.
TAKEN_PREFIX = "factorial:taken:"


def taken_key(worker: str) -> str:
    return TAKEN_PREFIX + worker


_by_connection: "weakref.WeakKeyDictionary[Redis, Lifecycle]" = weakref.WeakKeyDictionary()


def of(connection: Redis) -> Lifecycle:
    """The ``Lifecycle`` of ``connection``, made once (its script text is built once)."""
    found = _by_connection.get(connection)
    if found is None:
        found = _by_connection[connection] = Lifecycle(connection)
    return found
