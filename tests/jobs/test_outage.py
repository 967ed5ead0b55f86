"""A Redis outage is logged once when it starts, then at doubling, capped intervals, and once when it ends."""

import logging

from jobs.outage import OutageLog

log = logging.getLogger("test.outage")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog) -> list[tuple[float, str]]:
    return [(r.created_at, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_an_outage_of_five_minutes_with_a_failure_every_half_second_logs_a_dozen_lines(caplog):
    clock = Clock()
    outage = OutageLog(log, first_repeat_s=1.0, max_repeat_s=60.0, clock=clock)

    def stamp(record):  # the fake clock's time, in seconds since the outage began
        record.created_at = clock.now - 1000.0
        return True

    log.addFilter(stamp)
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            for _ in range(600):  # 300 s of failures, two a second (the delivery loop's retry pace)
                outage.failed(ConnectionError("Connection refused"))
                clock.now += 0.5
            outage.succeeded(clock.now)
            outage.succeeded(clock.now)  # only the first success after an outage is news
    finally:
        log.removeFilter(stamp)
    lines = warnings(caplog)
    logged_at = [at for at, _ in lines]
    assert lines[0] == (0.0, "Redis unreachable: Connection refused")
    assert all("still unreachable" in text for _, text in lines[1:-1])
    assert lines[-1][1] == "Redis reachable again after 300.0 s (calls failed: 600)"
    # Reminders 1, 2, 4, ... 32, then every 60 s: the gaps double, then stay capped.
    gaps = [b - a for a, b in zip(logged_at[:-2], logged_at[1:-1])]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert "after 3 s (calls failed: 7)" in lines[2][1]


def test_a_call_that_began_before_the_latest_failure_does_not_end_the_outage(caplog):
    clock = Clock()
    outage = OutageLog(log, clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        began = clock.now
        clock.now += 0.1
        outage.failed(TimeoutError("Timeout reading from socket"))
        clock.now += 0.1
        outage.succeeded(began)  # a slow call from before the outage
        assert outage.down
        outage.succeeded(clock.now)
        assert not outage.down
        # A second outage starts the count and the intervals afresh.
        outage.failed(ConnectionError("Connection refused"))
    texts = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert texts == ["Redis unreachable: Timeout reading from socket",
                     "Redis reachable again after 0.1 s (calls failed: 1)",
                     "Redis unreachable: Connection refused"]


def test_the_last_call_that_reached_redis_is_remembered_by_when_it_began():
    clock = Clock()
    outage = OutageLog(log, clock=clock)
    assert outage.last_reached is None
    outage.succeeded(began=990.0)
    outage.failed(ConnectionError("refused"))
    # A long call that began earlier and ends now does not move the time back.
    outage.succeeded(began=980.0)
    assert outage.last_reached == 990.0
    clock.now = 1005.0
    outage.succeeded()
    assert outage.last_reached == 1005.0
