"""A job as a client sees it: the status names, its state at one moment, and
the one rule that turns a state into the client's final answer.

The socket handler, the HTTP API and the delivery loop all answer through
``JobState.final_answer``, so a job reads the same on every interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import ErrorCode, ProtocolError, unknown_task

QUEUED = "queued"
STARTED = "started"
FINISHED = "finished"
FAILED = "failed"
# No such job, or its result has expired.
MISSING = "missing"


@dataclass(frozen=True)
class JobState:
    """What a client may learn of a job at one moment."""

    task_id: str
    status: str  # one of QUEUED, STARTED, FINISHED, FAILED, MISSING
    queue: str = ""
    payload: bytes | None = None  # the success message, when finished
    error: ProtocolError | None = None  # when failed

    def final_answer(self) -> bytes | ProtocolError | None:
        """The success message or the error this state ends with; None while the job is pending."""
        if self.status == FINISHED:
            return self.payload
        if self.status == FAILED:
            return self.error
        if self.status == MISSING:
            return unknown_task(self.task_id)
        return None


@dataclass(frozen=True)
class Event:
    """One entry of the job event stream: a job started, finished or failed."""

    task_id: str
    state: str  # STARTED, FINISHED or FAILED
    code: str = ""
    text: str = ""
    payload: bytes | None = None  # a finished job's success message, when small enough to come with the event

    def job_state(self, payload: bytes | None = None) -> JobState:
        """The state this event announces (``payload``: the success message, for a finished job)."""
        if self.state == FAILED:
            try:
                code = ErrorCode(self.code)
            except ValueError:
                code = ErrorCode.JOB_FAILED
            return JobState(self.task_id, FAILED, error=ProtocolError(code, self.text, task_id=self.task_id))
        return JobState(self.task_id, self.state, payload=payload)
