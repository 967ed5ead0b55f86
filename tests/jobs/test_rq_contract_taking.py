"""The RQ code paths the taking of jobs and the judging of stock workers rely on, held against the pinned RQ.

LaneWorker replaces RQ's wait for a job (``dequeue_job_and_maintain_ttl``) and
its registration of a run (``prepare_execution``); the janitor reads RQ's
leases on a stock worker's run (jobs/worker.py, jobs/janitor.py). The table of
overrides is in tests/jobs/test_rq_contract.py; here, what each relies on.
"""

from __future__ import annotations

import inspect

import rq.executions
from rq.cli import helpers as cli_helpers
from rq.defaults import DEFAULT_JOB_MONITORING_INTERVAL
from rq.executions import Execution
from rq.queue import Queue
from rq.worker import Worker

from jobs import janitor


def test_the_work_loop_takes_each_job_through_dequeue_job_and_maintain_ttl_then_executes_it():
    source = inspect.getsource(Worker.work)
    assert "result = self.dequeue_job_and_maintain_ttl(timeout, max_idle_time)" in source
    assert source.index("dequeue_job_and_maintain_ttl(") < source.index("self.execute_job(job, queue)")


def test_rqs_wait_for_a_job_does_what_lanes_copy_does_and_takes_jobs_only_through_dequeue_any():
    """LaneWorker's copy of the loop keeps each of these; only the take differs. A new step in RQ's
    loop (or a second way to take a job) fails here, to be copied or weighed."""
    source = inspect.getsource(Worker.dequeue_job_and_maintain_ttl)
    for step in ("self.set_state(WorkerStatus.IDLE)", "self.heartbeat()", "self.run_maintenance_tasks()",
                 "timeout = min(timeout, idle_time_left)", "self.reorder_queues(reference_queue=queue)",
                 "job.redis_server_version = self.get_redis_server_version()", "except DequeueTimeout:",
                 "self.max_connection_wait_time"):
        assert step in source, step
    assert source.count("self.queue_class.dequeue_any(") == 1
    # One queue: RQ moves the job into a list (BLMOVE); several: BLPOP, into none. LaneWorker does neither.
    dequeue_any = inspect.getsource(Queue.dequeue_any)
    assert "cls.lmove(" in dequeue_any and "cls.lpop(" in dequeue_any


def test_prepare_execution_is_what_lanes_override_writes_plus_the_taken_list():
    assert "return prepare_execution(self, job)" in inspect.getsource(Worker.prepare_execution)
    source = inspect.getsource(rq.executions.prepare_execution)
    for step in ("Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=worker.name)",
                 "worker.executions[execution.id] = execution",
                 "worker.set_state(WorkerStatus.BUSY, pipeline=pipeline)", "pipeline.execute()"):
        assert step in source, step
    # Registered in the started registry by the same transaction.
    assert "started_job_registry.add_execution(" in inspect.getsource(Execution.create)


def test_a_stock_workers_run_is_leased_by_ttls_its_heartbeats_renew_every_job_monitoring_interval():
    # The execution key and the worker key expire unless the worker's monitor renews them.
    assert "connection.expire(self.key, ttl)" in inspect.getsource(Execution.save)
    heartbeat = inspect.getsource(Execution.heartbeat)
    assert "expire(self.key, ttl)" in heartbeat
    maintain = inspect.getsource(Worker.maintain_heartbeats)
    assert "worker_ttl = self.job_monitoring_interval + 60" in maintain
    assert "execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)" in maintain
    assert "int(min(remaining_execution_time, self.job_monitoring_interval)) + 60" in inspect.getsource(
        Worker.get_heartbeat_ttl)
    assert "connection.expire(self.key, timeout)" in inspect.getsource(Worker.heartbeat)
    assert Worker.redis_worker_namespace_prefix == "rq:worker:"
    assert Execution(id="e", job_id="j", connection=None).key == "rq:execution:j:e"
    # The janitor waits for live stock workers to have renewed their leases after a gap.
    assert janitor.STOCK_TRUST_AFTER_S > DEFAULT_JOB_MONITORING_INTERVAL == 30


def test_rqs_command_line_reads_the_worker_class_and_config_module_from_the_environment():
    """What .env sets: RQ_WORKER_CLASS and RQ_CONFIG, a module whose REDIS_URL or SENTINEL RQ connects with."""
    source = inspect.getsource(cli_helpers)
    assert "'--worker-class', '-w', envvar='RQ_WORKER_CLASS'" in source
    assert "click.option('--config', '-c', envvar='RQ_CONFIG'" in source
    redis_from_config = inspect.getsource(cli_helpers.get_redis_from_config)
    assert "settings.get('REDIS_URL')" in redis_from_config and "settings.get('SENTINEL')" in redis_from_config
