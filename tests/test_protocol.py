"""The wire protocol as pure functions, case by case from PROTOCOL.md."""

import json

import pytest

import protocol
from protocol import CancelRequest, ErrorCode, FactorialRequest, ProtocolError, ResultRequest, parse_request

MAX = 1_000_000
TASK_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "frame, expected",
    [
        ('{"type": "factorial", "number": 5}', FactorialRequest(5)),
        ('{"type": "factorial", "number": 0}', FactorialRequest(0)),
        ('{"type": "factorial", "number": 1000000}', FactorialRequest(1_000_000)),
        ('{"type": "factorial", "number": 7, "ref": "a"}', FactorialRequest(7, "a")),
        ('{"type": "factorial", "number": 7, "ref": 42}', FactorialRequest(7, 42)),
        ('{"type": "factorial", "number": 7, "ref": "' + "x" * 128 + '"}', FactorialRequest(7, "x" * 128)),
        ('{"type": "result", "task_id": "%s"}' % TASK_ID, ResultRequest(TASK_ID)),
        ('{"type": "result", "task_id": "%s", "ref": -1}' % TASK_ID, ResultRequest(TASK_ID, -1)),
        ('{"type": "cancel", "task_id": "%s", "ref": "c"}' % TASK_ID, CancelRequest(TASK_ID, "c")),
    ],
)
def test_valid_requests_parse(frame, expected):
    assert parse_request(frame, MAX) == expected


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", ErrorCode.BAD_JSON),
        ("", ErrorCode.BAD_JSON),
        ("[1, 2]", ErrorCode.BAD_JSON),
        ('"factorial"', ErrorCode.BAD_JSON),
        ("null", ErrorCode.BAD_JSON),
        (b'{"type": "factorial", "number": 5}', ErrorCode.BAD_JSON),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.BAD_JSON),
        ("{}", ErrorCode.UNKNOWN_TYPE),
        ('{"type": "Factorial", "number": 5}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "sum", "number": 5}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": null}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "factorial"}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": true}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": 5.0}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": "5"}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": 1e3}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": null}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": -1}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": NaN}', ErrorCode.BAD_JSON),  # not JSON (RFC 8259)
        ('{"type": "factorial", "number": [5]}', ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": -' + "9" * 5000 + "}", ErrorCode.INVALID_NUMBER),
        ('{"type": "factorial", "number": 1000001}', ErrorCode.NUMBER_TOO_LARGE),
        ('{"type": "factorial", "number": ' + "9" * 5000 + "}", ErrorCode.NUMBER_TOO_LARGE),
        ('{"type": "result"}', ErrorCode.INVALID_TASK_ID),
        ('{"type": "cancel"}', ErrorCode.INVALID_TASK_ID),
        ('{"type": "cancel", "task_id": "rq:queue:hard"}', ErrorCode.UNKNOWN_TASK_ID),
        ('{"type": "result", "task_id": 5}', ErrorCode.INVALID_TASK_ID),
        ('{"type": "result", "task_id": 1' + "0" * 40 + '}', ErrorCode.INVALID_TASK_ID),  # kept as text, still a number
        ('{"type": "result", "task_id": null}', ErrorCode.INVALID_TASK_ID),
        ('{"type": "result", "task_id": "rq:queue:soft"}', ErrorCode.UNKNOWN_TASK_ID),
        ('{"type": "result", "task_id": "*"}', ErrorCode.UNKNOWN_TASK_ID),
        ('{"type": "result", "task_id": "%s"}' % TASK_ID.upper(), ErrorCode.UNKNOWN_TASK_ID),
        ('{"type": "factorial", "number": 5, "ref": true}', ErrorCode.INVALID_REF),
        ('{"type": "factorial", "number": 5, "ref": 1.5}', ErrorCode.INVALID_REF),
        ('{"type": "factorial", "number": 5, "ref": "' + "x" * 129 + '"}', ErrorCode.INVALID_REF),
        ('{"type": "factorial", "number": 5, "ref": ' + "7" * 5000 + "}", ErrorCode.INVALID_REF),
    ],
)
def test_bad_requests_raise_their_error_code(frame, code):
    with pytest.raises(ProtocolError) as caught:
        parse_request(frame, MAX)
    assert caught.value.code == code


def test_fixed_texts_are_kept_from_the_old_service():
    assert ProtocolError(ErrorCode.BAD_JSON).text == "JSON decode error"
    assert ProtocolError(ErrorCode.UNKNOWN_TYPE).text == "Unknown task"
    assert ProtocolError(ErrorCode.TIMEOUT).text == "Timeout error"


def test_a_valid_ref_is_echoed_in_errors_about_the_rest_of_the_request():
    with pytest.raises(ProtocolError) as caught:
        parse_request('{"type": "factorial", "number": -3, "ref": "r1"}', MAX)
    message = json.loads(protocol.error(caught.value))
    assert message == {"type": "error", "code": "invalid_number", "result": "number must not be negative",
                       "ref": "r1"}


def test_number_too_large_names_the_limit():
    with pytest.raises(ProtocolError) as caught:
        parse_request('{"type": "factorial", "number": 11}', 10)
    assert "10" in caught.value.text


def test_acknowledgement_shape():
    assert json.loads(protocol.ack(TASK_ID, "queued", "soft")) == {
        "type": "result", "task_id": TASK_ID, "status": "queued", "queue": "soft"}
    assert json.loads(protocol.ack(TASK_ID, "finished", "hard", ref=3))["ref"] == 3


def test_status_and_error_shapes():
    assert json.loads(protocol.status(TASK_ID, "started", "x")) == {
        "type": "status", "task_id": TASK_ID, "status": "started", "ref": "x"}
    err = ProtocolError(ErrorCode.TIMEOUT, task_id=TASK_ID)
    assert json.loads(protocol.error(err)) == {
        "type": "error", "code": "timeout", "result": "Timeout error", "task_id": TASK_ID}


@pytest.mark.parametrize(
    "digits, expected",
    [
        ("120", 120),
        ("9007199254740991", 9007199254740991),  # 2**53 - 1: still a number
        ("9007199254740992", "9007199254740992"),  # 2**53: a string
        ("6402373705728000", 6402373705728000),  # 18!
        ("121645100408832000", "121645100408832000"),  # 19!
        ("1" + "0" * 5000, "1" + "0" * 5000),
    ],
)
def test_success_is_a_number_up_to_2_53_minus_1_and_a_string_above(digits, expected):
    message = json.loads(protocol.success(TASK_ID, digits))
    assert message == {"type": "success", "task_id": TASK_ID, "result": expected, "digits": len(digits)}
    assert type(message["result"]) is type(expected)


@pytest.mark.parametrize("ref", ["abc", 7, "quote\" and \\ and \ud800", -5])
def test_ref_is_added_to_a_finished_message_without_reparsing(ref):
    payload = protocol.success(TASK_ID, "120")
    assert json.loads(protocol.with_ref(payload, ref)) == {**json.loads(payload), "ref": ref}
    assert protocol.with_ref(payload, None) is payload
