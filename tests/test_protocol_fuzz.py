"""Property-based fuzzing of protocol.parse_request: any frame is a request or a ProtocolError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

import protocol
from protocol import FactorialRequest, ProtocolError, ResultRequest, parse_request

MAX = 1_000_000
# No example database: CI starts clean, and the tree stays clean.
FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Objects that look like requests, with every field drawn from anything JSON holds.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["factorial", "result", "Factorial", "RESULT", ""]) | json_values,
        "number": st.integers(min_value=-10, max_value=MAX + 10) | json_values,
        "task_id": st.text(alphabet="0123456789abcdefABCDEF*?[]:rq", min_size=30, max_size=34) | json_values,
        "ref": st.text(max_size=140) | st.integers() | json_values,
    },
)
refs = st.none() | st.text(max_size=128) | st.integers(min_value=-(10**40) + 1, max_value=10**40 - 1)


def _parse_or_error(frame):
    try:
        return parse_request(frame, MAX)
    except ProtocolError as err:
        # Every error can be put on the wire.
        json.loads(protocol.error(err))
        return err


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_frame_is_a_request_or_a_protocol_error(frame):
    _parse_or_error(frame)


@FUZZ
@given(request_like)
def test_request_like_objects_are_a_request_or_a_protocol_error(message):
    result = _parse_or_error(json.dumps(message))
    if isinstance(result, FactorialRequest):
        assert type(result.number) is int and 0 <= result.number <= MAX
    elif isinstance(result, ResultRequest):
        assert protocol.TASK_ID_PATTERN.fullmatch(result.task_id)


@FUZZ
@given(st.integers(min_value=0, max_value=MAX), refs)
def test_valid_factorial_requests_round_trip(number, ref):
    message = {"type": "factorial", "number": number, **({"ref": ref} if ref is not None else {})}
    assert parse_request(json.dumps(message), MAX) == FactorialRequest(number, ref)


@FUZZ
@given(st.uuids().map(lambda u: u.hex), refs)
def test_valid_result_requests_round_trip(task_id, ref):
    message = {"type": "result", "task_id": task_id, **({"ref": ref} if ref is not None else {})}
    assert parse_request(json.dumps(message), MAX) == ResultRequest(task_id, ref)
