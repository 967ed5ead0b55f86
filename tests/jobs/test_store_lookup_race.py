"""A job that ends while its state is being read is reported finished, never unknown."""

from redis import Redis
import protocol
from jobs import keys, lifecycle
from jobs.factorial import factorial_digits
from jobs.store import JobStore
from settings import Settings


def _finish_after_first_read(store: JobStore, finish) -> None:
    """Make the worker's finish land right after the store's first pipeline: the race, made certain."""
    pipeline = store.redis.pipeline
    calls = []

    def racing_pipeline(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_then_finish(*a, **kw):
            replies = execute(*a, **kw)
            calls.append(1)
            if len(calls) == 1:
                finish()
            return replies

        pipe.execute = execute_then_finish
        return pipe

    store.redis.pipeline = racing_pipeline


def test_a_batch_job_that_ends_between_the_two_reads_is_finished(redis_url, redis_client):
    store = JobStore(Redis.from_url(redis_url), Settings(redis_url=redis_url))
    answers = store.submit([7, 8])
    task_id = answers[7].task_id
    batch_id = redis_client.get(keys.task_job(task_id)).decode()
    assert batch_id != task_id

    # What a worker does: claims the job under its run, then ends it with its results (jobs/lifecycle.py).
    runs = lifecycle.of(redis_client)
    store.dispatch()
    assert runs.start(batch_id, "run-1", [], publish=False)

    def finish():
        assert runs.finish(batch_id, "run-1", {state.task_id: protocol.success(state.task_id, factorial_digits(n))
                                               for n, state in answers.items()}, None)

    _finish_after_first_read(store, finish)
    state = store.states([task_id])[task_id]
    assert state.status == "finished"
    assert state.payload == protocol.success(task_id, "5040")
