"""The job function and its routing, without a queue."""

import math

import pytest

from jobs.events import describe_failure
from jobs.factorial import factorial_digits
from jobs.routing import HARD, SOFT, queue_for, timeout_for
from protocol import ErrorCode
from rq.timeouts import JobTimeoutException
from settings import Settings


@pytest.mark.parametrize("n", [0, 1, 5, 20, 170, 1000])
def test_digits_match_python(n):
    assert factorial_digits(n) == str(math.factorial(n))


def test_100000_factorial_has_456574_digits():
    digits = factorial_digits(100_000)
    assert len(digits) == 456_574
    assert digits.startswith("28242294079603478742934215780245355184774949260912")
    assert digits.endswith("0" * 24_999)


@pytest.mark.parametrize("n, queue", [(0, SOFT), (1000, SOFT), (1001, HARD), (1_000_000, HARD)])
def test_routing_at_the_boundary(n, queue):
    assert queue_for(n, Settings()) == queue


def test_each_queue_has_its_time_limit():
    s = Settings(soft_timeout_s=3, hard_timeout_s=9)
    assert (timeout_for(SOFT, s), timeout_for(HARD, s)) == (3, 9)


def test_timeouts_are_told_apart_from_other_failures():
    assert describe_failure(JobTimeoutException, JobTimeoutException("x"))[0] == ErrorCode.TIMEOUT
    code, text = describe_failure(MemoryError, MemoryError())
    assert code == ErrorCode.JOB_FAILED and "MemoryError" in text
