"""A worker's heartbeat: its alive key, kept by a thread, and its turn at orphan recovery.

RQ's own worker heartbeat lives 60 s or more and is refreshed only between
Redis calls of the main loop, which may block for minutes (waiting for a job,
watching a horse). This thread refreshes ``factorial:alive:<worker>`` every
``BEAT_S`` with a TTL of ``ALIVE_TTL_S`` whatever the main thread does, so a
worker that dies (or whose host does) is noticed by the key's expiry, in
Redis's own time. It also runs the janitor (jobs/janitor.py) each beat, so
workers recover each other's jobs with no server running.

A forked work horse has no copy of this thread: only the worker's main
process beats, and the janitor judges a job by the worker that took it.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis

from jobs import keys
from jobs.janitor import ALIVE_TTL_S, BEAT_S, Janitor
from jobs.outage import OUTAGE_ERRORS

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, connection: Redis, worker_name: str, janitor: Janitor | None = None):
        self.connection = connection
        self.worker_name = worker_name
        self.janitor = janitor
        # Monotonic time of the last beat that could not reach Redis (0: none yet).
        self.last_outage = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        pipe = self.connection.pipeline(transaction=False)
        pipe.set(keys.worker_alive(self.worker_name), 1, px=int(ALIVE_TTL_S * 1000))
        # Again each beat: a paused worker declared dead joins again when it resumes.
        pipe.sadd(keys.BEATING_WORKERS, self.worker_name)
        pipe.execute()

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating, and say so at once: the janitor then settles at its next
        round any job a cold shutdown left, and forgets this worker."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * BEAT_S)
        self.connection.delete(keys.worker_alive(self.worker_name))

    def outage_since(self, moment: float) -> bool:
        """Whether a beat failed to reach Redis at or after ``moment`` (monotonic)."""
        return self.last_outage >= moment

    def _run(self) -> None:
        while not self._stopped.wait(BEAT_S):
            try:
                self.beat()
                if self.janitor is not None:
                    self.janitor.run_once()
            except OUTAGE_ERRORS as exc:
                self.last_outage = time.monotonic()
                log.warning("Heartbeat could not reach Redis (%s); retrying in %.0f s", exc, BEAT_S)
            except Exception:  # noqa: BLE001 - a bug here must not stop the beats
                log.exception("Heartbeat or orphan recovery failed")
