"""A LaneWorker that notes in Redis which of its RQ hooks RQ called, in order (for tests/jobs/test_worker.py)."""

from jobs.worker import LaneWorker

CALLS = "test:hook-calls"


class RecordingLaneWorker(LaneWorker):
    def _note(self, name: str) -> None:
        self.connection.rpush(CALLS, name)

    def wait_for_horse(self):
        self._note("wait_for_horse")
        return super().wait_for_horse()

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        self._note("handle_work_horse_killed")
        return super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        self._note("handle_job_failure")
        return super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
