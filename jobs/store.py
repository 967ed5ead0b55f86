"""The jobs as Redis holds them: enqueue, share, look up, and read their events.

Blocking calls only: the web server runs these on its own threads, never on
the IOLoop. Every method makes a fixed number of round trips, whatever the
number of jobs it handles (pipelines and Lua scripts).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Collection, NamedTuple, Sequence

from redis import Redis
from redis.exceptions import NoScriptError
from rq import Callback, Queue
from rq.command import send_command
from rq.job import Job, JobStatus

from jobs import events, keys, rq_schema, scripts
from jobs.lifecycle import FIELDS, CancelOutcome, State
from jobs.outage import NotReplicated
from jobs.states import FAILED, FINISHED, MISSING, QUEUED, STARTED, Event, JobState
from jobs.routing import QUEUES, SOFT, queue_for, timeout_for
from protocol import ErrorCode, ProtocolError
from settings import Settings

FACTORIAL_JOB = "jobs.factorial.factorial"
BATCH_JOB = events.BATCH_JOB
ON_FAILURE = Callback("jobs.events.on_failure")

# A job's index entry (number -> job id) may outlive the job by this much; a
# stale entry is harmless, since the job's own state is checked before reuse.
INDEX_SLACK_S = 24 * 3600

# What a lookup reads of a job's hash: its state (jobs/lifecycle.py), queue, and a failure's answer.
_JOB_FIELDS = (FIELDS["state"], rq_schema.ORIGIN_FIELD, FIELDS["code"], FIELDS["text"])

# Lifecycle states that mean "not running yet" to a client.
_WAITING_STATES = {State.PENDING.value, State.QUEUED.value}


# The client of requests that name none (tests, tools).
ANONYMOUS = "anonymous"


def new_task_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, redis: Redis, settings: Settings):
        # ``redis`` must not decode responses: payloads stay bytes end to end.
        self.redis = redis
        self.settings = settings
        self.queues = {name: Queue(name, connection=redis, serializer=rq_schema.SERIALIZER) for name in QUEUES}
        self._submit_script = scripts.load(redis, "lifecycle", "dispatch_lib", "submit")
        self._dispatch_script = scripts.load(redis, "lifecycle", "dispatch_lib", "dispatch")
        self._cancel_script = scripts.load(redis, "lifecycle", "dispatch_lib", "cancel_lib", "cancel")
        self._abandon_script = scripts.load(redis, "lifecycle", "dispatch_lib", "cancel_lib", "abandon")
        # What the dispatcher needs to know of each queue (jobs/lua/dispatch_lib.lua).
        self._dispatch_queues = {
            name: {
                "queue_key": queue.key,
                "pending": keys.pending(name),
                "clients": keys.pending_clients(name),
                "count": keys.pending_count(name),
                "workers": rq_schema.workers_key(name),
                "deferred": rq_schema.deferred_registry_key(name),
                # Batch jobs that later requests may join (jobs/lua/submit.lua).
                "batch_size": settings.soft_batch_size if name == SOFT else 0,
                "open": keys.open_batch(name),
            }
            for name, queue in self.queues.items()
        }

    # --- cancelling ---------------------------------------------------------

    def cancel(self, task_id: str, server_id: str, others_here: bool, holder: str = "") -> str:
        """Cancel a task for one connection of server ``server_id``: stopped, continues, ended or unknown.

        A cancel only withdraws the canceller's own wait. ``holder``: the
        client of an HTTP DELETE, which withdraws that client's hold (from its
        POST); a client that holds none changes nothing. The job is stopped
        only when no one else waits for it: no HTTP holder, no other
        connection of this server (``others_here``), none of another live
        server (shared with ``sync_waits_and_read_events``). A queued job is taken off its
        queue or pending list; a running one's worker is told to stop it.
        """
        spec = {"task_id": task_id, **self._cancel_spec(server_id, others_here, holder)}
        outcome, job_id, *worker = (value.decode() for value in self._cancel_script(
            args=[json.dumps(spec)], client=self.redis))
        if outcome == CancelOutcome.STOP:
            self._stop_running(job_id, worker[0] if worker else "")
            outcome = CancelOutcome.STOPPED.value
        return outcome

    def _cancel_spec(self, server_id: str, others_here: bool, holder: str) -> dict:
        return {
            "server": server_id, "others_here": others_here, "holder": holder,
            "ttl": self.settings.cancelled_ttl_s,  # how long a stopped job reads as cancelled
            "prefix": {"payload": keys.payload(""), "task_job": keys.task_job(""),
                       "batch": keys.batch_members(""), "cancelled": keys.cancelled(""), "waits": keys.waits_of(""),
                       "holders": keys.http_holders("")},
            "servers_key": keys.WAITING_SERVERS,
            "queues": self._dispatch_queues,
        }

    def _stop_running(self, job_id: str, worker: str) -> None:
        # Addressed to the worker the run belongs to (RQ's own lookup of it,
        # send_stop_job_command, reads a field RQ sets only once the horse runs).
        if worker:
            send_command(self.redis, worker, "stop-job", job_id=job_id)

    def stop_abandoned(self, count: int = 200) -> int:
        """Stop the jobs no one has waited for since ABANDON_GRACE_S (jobs/lua/abandon.lua); how many."""
        spec = {**self._cancel_spec("", False, ""), "candidates": keys.ABANDON_CANDIDATES,
                "left_prefix": keys.left(""), "count": count}
        stopped, *running = self._abandon_script(args=[json.dumps(spec)], client=self.redis)
        for job_id, worker in zip(running[0::2], running[1::2]):
            self._stop_running(job_id.decode(), worker.decode())
        return stopped

    def dispatch(self) -> int:
        """Move waiting jobs into the RQ queues that have room, round robin across clients; return how many."""
        return self._dispatch_script(args=[self._dispatch_spec()], client=self.redis)

    def _dispatch_spec(self) -> str:
        return json.dumps({"queues": self._dispatch_queues, "per_worker": self.settings.queued_jobs_per_worker})

    def jobs_waiting(self) -> dict[str, int]:
        """Jobs waiting per queue: in its RQ queue and waiting for their turn (RQ's deferred registry),
        counted as rq-dashboard counts them."""
        pipe = self.redis.pipeline(transaction=False)
        for name, queue in self.queues.items():
            pipe.llen(queue.key)
            pipe.zcard(rq_schema.deferred_registry_key(name))
        replies = pipe.execute()
        return {name: replies[2 * i] + replies[2 * i + 1] for i, name in enumerate(self.queues)}

    # --- submitting -------------------------------------------------------

    def submit(self, numbers: list[int], clients: Sequence[str] = (),
               holds: Collection[tuple[int, str]] = ()) -> dict[int, JobState | ProtocolError]:
        """Give every number a job: the one already computing or computed, or a new one.

        ``holds``: (number, client) pairs of HTTP requests: the client holds a
        wait on the number's task (keys.http_holders) until its DELETE or the
        result expires, so another client's cancel does not stop the job.

        ``clients[i]`` names who asked for ``numbers[i]`` (default: one
        anonymous client): a new job waits in its client's pending list, for
        its turn among the clients (jobs/lua/dispatch_lib.lua). A number asked
        by several clients at once is the first one's job.

        One round trip, a Lua script (jobs/lua/submit.lua), whatever the number
        of requests: it reads each number's index entry and claims it for a new
        job in one atomic step, so however many servers get a number at once,
        it gets one job. A started job is shared as it is: if its worker dies,
        the janitor (jobs/janitor.py) puts it back at the front of its queue
        within seconds and it runs again, its waiters hearing nothing, up to
        JOB_MAX_ATTEMPTS runs (jobs/lifecycle.py ``run_lost``).
        """
        clients = list(clients[: len(numbers)]) + [ANONYMOUS] * (len(numbers) - len(clients))
        wanted: dict[int, str] = {}
        for number, client in zip(numbers, clients):
            wanted.setdefault(number, client)
        if not wanted:
            return {}
        return self._claim([(number, client, "") for number, client in wanted.items()], holds)

    def _claim(self, numbers: list[tuple[int, str, str]],
               holds: Collection[tuple[int, str]] = ()) -> dict[int, JobState | ProtocolError]:
        """Run the submit script for (number, client, stale task id or "") triples."""
        # A batch holds one client's numbers only: it waits for that client's turn.
        groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for number, client, stale in numbers:
            groups.setdefault((queue_for(number, self.settings), client), []).append((number, stale))
        jobs, fields = [], []
        for (name, client), members in groups.items():
            for chunk in _chunks(members, self.settings.soft_batch_size if name == SOFT else 1):
                jobs.append(self._new_job(name, client, chunk, fields))
        spec = {
            "prefix": {"payload": keys.payload(""), "task_job": keys.task_job(""), "by_number": keys.by_number(""),
                       "batch": keys.batch_members(""), "cancelled": keys.cancelled(""),
                       "closed": keys.batch_closed(""), "holders": keys.http_holders("")},
            "holds": _holds_by_number(holds),
            "max_queued": self.settings.client_max_queued,
            "queues_key": Queue.redis_queues_keys,
            "max_waiting": self.settings.max_queue_length,
            "queues": self._dispatch_queues,
            "per_worker": self.settings.queued_jobs_per_worker,
            "jobs": jobs,
        }
        flat = self._run_submit_script([json.dumps(spec), *fields])
        members = [int(m[0]) for job in jobs for m in job["members"]]
        answers: dict[int, JobState | ProtocolError] = {}
        for i, number in enumerate(members):
            task_id, status, queue = (value.decode() for value in flat[4 * i : 4 * i + 3])
            payload = flat[4 * i + 3]
            if status == "busy":
                answers[number] = ProtocolError(
                    ErrorCode.BUSY,
                    f"the {queue} queue is full ({self.settings.max_queue_length} jobs); please retry later",
                )
            elif status == "limited":
                answers[number] = ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"this client has {self.settings.client_max_queued} jobs waiting to start "
                    "(CLIENT_MAX_QUEUED); retry once some have started",
                )
            else:
                answers[number] = JobState(task_id, status, queue, payload or None)
        return answers

    def _run_submit_script(self, args: list) -> list:
        """Run the submit script; with ``redis_min_replicas``, also WAIT for that many replicas.

        WAIT counts the writes of the connection it is sent on, so it goes in
        the same pipeline as the script. Too few replicas within the timeout
        raises ``NotReplicated``: the client hears ``unavailable`` rather than
        an acknowledgement the primary's loss could undo.
        """
        wanted = self.settings.redis_min_replicas
        if not wanted:
            return self._submit_script(args=args, client=self.redis)
        pipe = self.redis.pipeline(transaction=False)
        self._submit_script(args=args, client=pipe)
        pipe.wait(wanted, self.settings.redis_replica_timeout_ms)
        flat, replicas = pipe.execute()
        if replicas < wanted:
            raise NotReplicated(f"new jobs reached {replicas} of the {wanted} replicas required "
                                f"within {self.settings.redis_replica_timeout_ms} ms")
        return flat

    def _new_job(self, queue_name: str, client: str, members: list[tuple[int, str]], fields: list) -> dict:
        """The submit script's description of a job for ``members``, its RQ hash appended to ``fields``.

        The script may leave some numbers out (another job has them); the job
        is only made if at least one is left.
        """
        timeout = timeout_for(queue_name, self.settings)
        task_ids = [new_task_id() for _ in members]
        batch = len(members) > 1
        if batch:
            job_id, function, args = new_task_id(), BATCH_JOB, ()
            description = f"factorial of a batch of up to {len(members)} numbers"
        else:
            job_id, function, args = task_ids[0], FACTORIAL_JOB, (members[0][0],)
            description = f"factorial({members[0][0]})"
        queue = self.queues[queue_name]
        job = queue.create_job(
            function,
            args=args,
            timeout=timeout,
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.failure_ttl_s,
            job_id=job_id,
            description=description,
            status=JobStatus.QUEUED,
            # No success callback: the job functions publish their own end.
            on_failure=ON_FAILURE,
        )
        job.origin = queue_name
        job.enqueued_at = datetime.now(timezone.utc)  # as RQ's enqueue stamps it
        mapping = job.to_dict()
        mapping["status"] = JobStatus.QUEUED.value
        first = len(fields) + 2  # ARGV is 1-based, and ARGV[1] is the spec
        for field, value in mapping.items():
            fields += [field, value]
        return {
            "queue": queue_name,
            "client": client,
            "job_id": job_id,
            "batch": batch,
            "ttl": self.settings.result_ttl_s + timeout + INDEX_SLACK_S,
            "fields": [first, 2 * len(mapping)],
            "members": [[str(n), task_id, stale] for (n, stale), task_id in zip(members, task_ids)],
        }

    # --- looking up -------------------------------------------------------

    def states(self, task_ids: list[str]) -> dict[str, JobState]:
        """The state of each task: one round trip, two when some belong to batch jobs
        that have not finished (plus one per failed job, and one when a job
        ended while it was being read)."""
        task_ids = list(dict.fromkeys(task_ids))
        if not task_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.get(keys.payload(task_id))
            pipe.get(keys.task_job(task_id))
            pipe.hmget(Job.key_for(task_id), *_JOB_FIELDS)
            pipe.exists(keys.cancelled(task_id))
        replies = pipe.execute()
        payloads = dict(zip(task_ids, replies[0::4]))
        job_ids = {t: (batch.decode() if batch else t) for t, batch in zip(task_ids, replies[1::4])}
        fields = dict(zip(task_ids, replies[2::4]))
        cancelled = {t for t, mark in zip(task_ids, replies[3::4]) if mark}

        in_batches = [t for t in task_ids if not payloads[t] and job_ids[t] != t]
        if in_batches:
            pipe = self.redis.pipeline(transaction=False)
            for task_id in in_batches:
                pipe.hmget(Job.key_for(job_ids[task_id]), *_JOB_FIELDS)
            fields.update(zip(in_batches, pipe.execute()))
        # A job that ended between the payload read and its status read looks
        # "finished" without a payload: read those payloads again rather than
        # call the task unknown (the worker stores the payload before RQ marks
        # the job finished, so it is there now unless it expired).
        late = [t for t in task_ids if not payloads[t] and fields[t][0] == State.FINISHED.value.encode()]
        if late:
            payloads.update(self.payloads(late))
        return {t: (_cancelled(t, fields[t]) if t in cancelled and not payloads[t]
                    else self._state(t, job_ids[t], payloads[t], fields[t])) for t in task_ids}

    def _state(self, task_id: str, job_id: str, payload: bytes | None, fields: list) -> JobState:
        state, origin, code, text = (value.decode(errors="replace") if value else "" for value in fields)
        if payload:
            return JobState(task_id, FINISHED, origin, payload)
        if state in _WAITING_STATES:
            return JobState(task_id, QUEUED, origin)
        # A run lost to a fault goes back to "queued" (jobs/lifecycle.py): until
        # then the job reads as started.
        if state == State.STARTED:
            return JobState(task_id, STARTED, origin)
        if state == State.CANCELLED:
            return _cancelled(task_id, fields)
        if state == State.FAILED:
            try:
                error_code = ErrorCode(code)
            except ValueError:
                error_code = ErrorCode.JOB_FAILED
            return JobState(task_id, FAILED, origin, error=ProtocolError(error_code, text, task_id=task_id))
        # No job, or a finished one whose result has expired.
        return JobState(task_id, MISSING, origin)

    def payloads(self, task_ids: list[str]) -> dict[str, bytes]:
        """The success messages of finished jobs, in one round trip."""
        if not task_ids:
            return {}
        values = self.redis.mget([keys.payload(task_id) for task_id in task_ids])
        return {task_id: value for task_id, value in zip(task_ids, values) if value}

    # --- events -----------------------------------------------------------

    def events_cursor(self) -> str:
        """The id of the newest event, so a reader starts after it."""
        newest = self.redis.xrevrange(keys.EVENTS_STREAM, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def read_events(self, cursor: str, block_ms: int, count: int = 10_000) -> tuple[str, list[Event]]:
        """Events after ``cursor``, waiting up to ``block_ms`` for the first one (one ``XREAD``)."""
        reply = self.redis.xread({keys.EVENTS_STREAM: cursor}, count=count, block=block_ms or None)
        return _events_after(cursor, reply)

    def sync_waits_and_read_events(self, cursor: str, block_ms: int, waits: "tuple[str, Waits] | None" = None,
                                   dispatch: bool = False, count: int = 10_000) -> tuple[str, list[Event]]:
        """A delivery tick's one round trip: write this server's waits, feed the RQ queues, then ``read_events``.

        ``waits``: (server id, changes) to the tasks that server's connections
        wait for, which a cancel on any server reads (jobs/lua/cancel.lua),
        written to an entry that expires ``ttl_s`` after the last write, so a
        server that dies stops counting. ``dispatch``: run the dispatcher
        (``dispatch()``) first. All in one pipeline with the read: one round
        trip per tick. The dispatch script goes by its hash, as redis-py's own
        pipelined scripts would after one more round trip to check that Redis
        has it; when Redis has lost it (a restart), ``dispatch()`` loads it
        again and the round trip is made anew.
        """
        if waits is None and not dispatch:
            return self.read_events(cursor, block_ms, count)
        pipe = self.redis.pipeline(transaction=False)
        if waits is not None:
            _queue_waits(pipe, *waits)
        if dispatch:
            pipe.evalsha(self._dispatch_script.sha, 0, self._dispatch_spec())
        pipe.xread({keys.EVENTS_STREAM: cursor}, count=count, block=block_ms or None)
        try:
            reply = pipe.execute()[-1]
        except NoScriptError:
            self.dispatch()
            return self.sync_waits_and_read_events(cursor, block_ms, waits, count=count)
        return _events_after(cursor, reply)


class Waits(NamedTuple):
    """Changes to the tasks one server's connections wait for (``everything``: the whole set, or None)."""

    added: set[str]
    removed: set[str]
    everything: set[str] | None
    ttl_s: float
    # Tasks whose last waiter here left (its connection closed), and how long
    # before their job is stopped if no one waits for it by then (0: never).
    left: set[str] = frozenset()
    grace_s: float = 0.0


def _queue_waits(pipe, server_id: str, waits: Waits) -> None:
    """Queue the commands that share ``waits`` on ``pipe`` (not a transaction).

    A cancel script runs between any two of them; each leaves a set it may
    read: the whole set is built aside and renamed into place in one step.
    """
    key = keys.waits_of(server_id)
    added, removed = waits.added, waits.removed
    pipe.sadd(keys.WAITING_SERVERS, server_id)
    # Outlives every member's waits; cancel.lua prunes members whose waits expired.
    pipe.pexpire(keys.WAITING_SERVERS, int(waits.ttl_s * 1000))
    if waits.everything is not None:
        added, removed = set(), set()
        if waits.everything:
            fresh = key + ":new"
            pipe.delete(fresh)
            pipe.sadd(fresh, *waits.everything)
            pipe.rename(fresh, key)
        else:
            pipe.delete(key)
    if added:
        pipe.sadd(key, *added)
    if removed:
        pipe.srem(key, *removed)
    pipe.pexpire(key, int(waits.ttl_s * 1000))
    if waits.left and waits.grace_s > 0:
        grace_ms = int(waits.grace_s * 1000)
        for task_id in waits.left:
            pipe.set(keys.left(task_id), 1, px=grace_ms)  # the latest leave restarts the grace
        pipe.sadd(keys.ABANDON_CANDIDATES, *waits.left)
        pipe.pexpire(keys.ABANDON_CANDIDATES, grace_ms + 60_000)


def _events_after(cursor: str, reply) -> tuple[str, list[Event]]:
    """An ``XREAD`` reply as the new cursor and its events (one per task of each entry)."""
    found = []
    for _stream, entries in reply or ():
        for entry_id, fields in entries:
            cursor = entry_id.decode()
            state = fields.get(b"state", b"").decode()
            code = fields.get(b"code", b"").decode()
            text = fields.get(b"text", b"").decode(errors="replace")
            found.extend(Event(task_id, state, code, text, events.inline_payload(fields, task_id))
                         for task_id in events.task_ids_in(fields))
    return cursor, found


def _cancelled(task_id: str, fields: list) -> JobState:
    """A task whose job a cancel stopped (protocol: a later lookup gets ``cancelled``)."""
    queue = fields[1].decode() if isinstance(fields[1], bytes) else (fields[1] or "")
    return JobState(task_id, FAILED, queue, error=ProtocolError(
        ErrorCode.CANCELLED, "the job was cancelled: no one else was waiting for it", task_id=task_id))


def _holds_by_number(holds: Collection[tuple[int, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for number, client in holds:
        found.setdefault(str(number), []).append(client)
    return found


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]

