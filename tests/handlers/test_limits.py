import pytest

from handlers.limits import RequestBudget
from protocol import ErrorCode, ProtocolError
from settings import Settings


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_burst_of_one_seconds_worth_then_the_steady_rate():
    clock = Clock()
    budget = RequestBudget(Settings(max_requests_per_s=10), clock)
    for _ in range(10):
        budget.admit(0)
    with pytest.raises(ProtocolError) as caught:
        budget.admit(0)
    assert caught.value.code == ErrorCode.RATE_LIMITED and "10 per second" in caught.value.text
    clock.now += 0.1
    budget.admit(0)


def test_requests_in_flight_are_capped():
    budget = RequestBudget(Settings(max_in_flight=3), Clock())
    budget.admit(2)
    with pytest.raises(ProtocolError, match="in flight"):
        budget.admit(3)
