"""Names of the Redis keys the service owns, beside RQ's own ``rq:*`` keys."""

# Stream of job events (started, finished, failed), read by every server.
EVENTS_STREAM = "factorial:events"
# Keep roughly this many events; a server that falls further behind than that
# still finds its jobs' ends in its periodic sweep. An entry carries at most
# 4 KB of small results (jobs/events.py), so the stream stays under about 60 MB.
EVENTS_MAXLEN = 10_000


def payload(task_id: str) -> str:
    """The finished job's success message, exactly as it goes on the wire."""
    return f"factorial:payload:{task_id}"


def by_number(number: int) -> str:
    """The id of the job that computes (or computed) ``number!``, for sharing it."""
    return f"factorial:by-number:{number}"


def task_job(task_id: str) -> str:
    """The id of the batch job that computes a task, for tasks that share one."""
    return f"factorial:task-job:{task_id}"


def batch_members(job_id: str) -> str:
    """The members of a batch job, one ``number:task_id`` entry each, read by the job when it runs.

    The list, not the job's arguments, holds them, so that the submit script
    can leave out numbers another server already computes, and a cancel can
    take one member out of a batch that has not started.
    """
    return f"factorial:batch:{job_id}"


def open_batch(queue: str, client: str = "") -> str:
    """The id of ``client``'s newest batch job for ``queue``, which later requests may join until it starts."""
    return f"factorial:open-batch:{queue}:{client}"


def batch_closed(job_id: str) -> str:
    """Set by a batch job as it reads its members: from then on no request joins it."""
    return f"factorial:batch-closed:{job_id}"


# Names of the workers that keep an alive key (jobs.worker.LaneWorker): only
# their jobs are judged by it; a stock ``rq worker`` keeps none.
BEATING_WORKERS = "factorial:beating-workers"
# Held by whichever process runs the orphan recovery this round (jobs/janitor.py).
JANITOR_LOCK = "factorial:janitor-lock"


def worker_alive(worker_name: str) -> str:
    """Exists while the worker ``worker_name`` beats; Redis expires it when the beats stop."""
    return f"factorial:alive:{worker_name}"


def unstarted(job_id: str) -> str:
    """Set when a job was first seen taken off its queue but not started; its TTL measures how long ago."""
    return f"factorial:unstarted:{job_id}"


def requeues(job_id: str) -> str:
    """How often a job was put back on its queue after losing its worker."""
    return f"factorial:requeues:{job_id}"


# Fair scheduling (jobs/lua/dispatch_lib.lua): jobs wait in one list per
# client and queue until the dispatcher moves them, round robin across
# clients, into the RQ queue.


def pending(queue: str, client: str = "") -> str:
    """The jobs ``client`` has waiting for ``queue`` (without ``client``: the prefix of these lists)."""
    return f"factorial:pending:{queue}:{client}"


def pending_clients(queue: str) -> str:
    """The clients with jobs waiting for ``queue``, in the order they get their next turn."""
    return f"factorial:pending-clients:{queue}"


def pending_count(queue: str) -> str:
    """How many jobs wait for ``queue`` in all clients' lists together."""
    return f"factorial:pending-count:{queue}"


def http_holders(task_id: str) -> str:
    """The clients (identities) whose HTTP POST waits for a task until their DELETE or its result expires."""
    return f"factorial:http-holders:{task_id}"


# Tasks whose last waiter on some server left (its connection closed): each
# is stopped once its keys.left mark expires and still no one waits for it.
ABANDON_CANDIDATES = "factorial:abandon-candidates"


def left(task_id: str) -> str:
    """Set, for ABANDON_GRACE_S, when a task's last waiter on a server left; Redis expires it."""
    return f"factorial:left:{task_id}"


def cancelled(task_id: str) -> str:
    """Set when a task was cancelled and its job stopped: a lookup answers ``cancelled``."""
    return f"factorial:cancelled:{task_id}"


# The servers that may be waiting for jobs (cancel asks each of them).
WAITING_SERVERS = "factorial:waiting-servers"


def waits_of(server_id: str) -> str:
    """The task ids a server's connections wait for; Redis expires it when the server stops refreshing it."""
    return f"factorial:waits:{server_id}"
