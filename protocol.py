"""The wire protocol (docs/protocol.md): parsing requests and building messages.

Pure functions only: no sockets, no Redis, no Tornado. Big results never pass
through here as ints; the worker hands over their decimal digits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Union

# The largest integer a browser's JSON.parse holds exactly (2**53 - 1). Larger
# results travel as a string of digits.
MAX_SAFE_INTEGER_DIGITS = "9007199254740991"
MAX_REF_LENGTH = 128
# Task ids are uuid4 hex strings; anything else cannot name a job, so it is
# refused before it reaches Redis (no key names, no glob patterns).
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class ErrorCode(str, Enum):
    """Error codes, one per row of the protocol's error table."""

    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_NUMBER = "invalid_number"
    NUMBER_TOO_LARGE = "number_too_large"
    INVALID_TASK_ID = "invalid_task_id"
    UNKNOWN_TASK_ID = "unknown_task_id"
    TIMEOUT = "timeout"
    JOB_FAILED = "job_failed"
    RATE_LIMITED = "rate_limited"
    CANCELLED = "cancelled"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    # Not in the protocol's table: a "ref" that is neither a string of at most
    # 128 characters nor an integer. Documented in docs/protocol-notes.md.
    INVALID_REF = "invalid_ref"
    # Not in the protocol's table either: HTTP's own errors, which the WebSocket
    # never sees, in the same message shape (docs/protocol-notes.md).
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    INTERNAL_ERROR = "internal_error"
    # Not in the table either, and never sent on an open WebSocket: the answer
    # (HTTP 401) to a handshake or an API request with a wrong API key, or none
    # when keys are required. Documented in docs/protocol-notes.md.
    UNAUTHORIZED = "unauthorized"


# Texts kept word for word from the service this one replaces.
FIXED_TEXTS = {
    ErrorCode.BAD_JSON: "JSON decode error",
    ErrorCode.UNKNOWN_TYPE: "Unknown task",
    ErrorCode.TIMEOUT: "Timeout error",
}


class ProtocolError(Exception):
    """A request that gets an ``error`` message instead of an answer."""

    def __init__(self, code: ErrorCode, text: str | None = None, *, ref=None, task_id: str | None = None):
        self.code = code
        self.text = text if text is not None else FIXED_TEXTS[code]
        self.ref = ref
        self.task_id = task_id
        super().__init__(f"{code.value}: {self.text}")

    def with_ref(self, ref) -> "ProtocolError":
        """The same error, answering the request that carried ``ref``."""
        return ProtocolError(self.code, self.text, ref=ref, task_id=self.task_id)


def unknown_task(task_id: str) -> ProtocolError:
    """The error for an id that names no job (never did, or its result expired)."""
    shown = task_id if len(task_id) <= 64 else task_id[:61] + "..."
    return ProtocolError(
        ErrorCode.UNKNOWN_TASK_ID, f"no task with id {shown!r} (unknown, or its result expired)", task_id=task_id
    )


@dataclass(frozen=True)
class FactorialRequest:
    number: int
    ref: Union[str, int, None] = None


@dataclass(frozen=True)
class ResultRequest:
    task_id: str
    ref: Union[str, int, None] = None


@dataclass(frozen=True)
class CancelRequest:
    task_id: str
    ref: Union[str, int, None] = None


Request = Union[FactorialRequest, ResultRequest, CancelRequest]


class _LongIntLiteral(str):
    """An integer literal too long to be a valid number or ref; kept as text.

    Python refuses to turn more than 4300 digits into an int, and no valid
    field needs more than a few, so such literals are never converted.
    """


def _parse_int(literal: str):
    if len(literal.lstrip("-")) > 40:
        return _LongIntLiteral(literal)
    return int(literal)


def _refuse_constant(name: str):
    """NaN, Infinity and -Infinity: Python's decoder takes them, JSON (RFC 8259) does not."""
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with arguments builds a decoder per call.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_refuse_constant)


def decode(text: Union[str, bytes]) -> dict:
    """One JSON object from a frame or body, with the protocol's strictness; else ``bad_json``.

    Binary frames are not text (protocol: "Text frames only"); over-long
    integer literals stay text (see ``_LongIntLiteral``).
    """
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.BAD_JSON)
    try:
        message = _DECODER.decode(text)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays exhaust the decoder's stack.
        raise ProtocolError(ErrorCode.BAD_JSON) from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_JSON)
    return message


def parse_request(frame: Union[str, bytes], max_number: int) -> Request:
    """Turn one incoming frame into a request, or raise ``ProtocolError``."""
    return parse_message(decode(frame), max_number)


def parse_message(message: dict, max_number: int) -> Request:
    """Turn one decoded JSON object into a request, or raise ``ProtocolError``."""
    ref = _parse_ref(message)
    kind = message.get("type")
    if kind == "factorial":
        return FactorialRequest(_parse_number(message, max_number, ref), ref)
    if kind == "result":
        return ResultRequest(_parse_task_id(message, ref), ref)
    if kind == "cancel":
        return CancelRequest(_parse_task_id(message, ref), ref)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, ref=ref)


def _parse_ref(message: dict):
    if "ref" not in message:
        return None
    ref = message["ref"]
    # bool is a subclass of int, so true would pass isinstance(ref, int).
    if isinstance(ref, bool) or isinstance(ref, _LongIntLiteral):
        raise ProtocolError(ErrorCode.INVALID_REF, "ref must be a string of at most 128 characters or an integer")
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH:
        return ref
    raise ProtocolError(ErrorCode.INVALID_REF, "ref must be a string of at most 128 characters or an integer")


def _parse_number(message: dict, max_number: int, ref) -> int:
    if "number" not in message:
        raise ProtocolError(ErrorCode.INVALID_NUMBER, "number is missing", ref=ref)
    number = message["number"]
    if isinstance(number, _LongIntLiteral):
        if number.startswith("-"):
            raise ProtocolError(ErrorCode.INVALID_NUMBER, "number must not be negative", ref=ref)
        raise ProtocolError(ErrorCode.NUMBER_TOO_LARGE, f"number must be at most {max_number}", ref=ref)
    # bool is a subclass of int, so true would pass isinstance(number, int).
    if isinstance(number, bool) or not isinstance(number, int):
        raise ProtocolError(
            ErrorCode.INVALID_NUMBER, f"number must be a JSON integer, not {_json_kind(number)}", ref=ref
        )
    if number < 0:
        raise ProtocolError(ErrorCode.INVALID_NUMBER, "number must not be negative", ref=ref)
    if number > max_number:
        raise ProtocolError(ErrorCode.NUMBER_TOO_LARGE, f"number must be at most {max_number}", ref=ref)
    return number


def _parse_task_id(message: dict, ref) -> str:
    task_id = message.get("task_id")
    if not isinstance(task_id, str) or isinstance(task_id, _LongIntLiteral):  # a long number is kept as text
        raise ProtocolError(ErrorCode.INVALID_TASK_ID, "task_id must be a string", ref=ref)
    if not TASK_ID_PATTERN.fullmatch(task_id):
        raise unknown_task(task_id).with_ref(ref)
    return task_id


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, dict)):
        return "an array or object"
    return type(value).__name__


# --- Outgoing messages -------------------------------------------------------


def _dumps(message: dict) -> str:
    # ASCII escapes keep a lone surrogate from a client's ref encodable.
    return json.dumps(message, separators=(",", ":"))


def _with_ref(message: dict, ref) -> dict:
    if ref is not None:
        message["ref"] = ref
    return message


def ack(task_id: str, status: str, queue: str, ref=None) -> str:
    return _dumps(_with_ref({"type": "result", "task_id": task_id, "status": status, "queue": queue}, ref))


def status(task_id: str, state: str, ref=None) -> str:
    return _dumps(_with_ref({"type": "status", "task_id": task_id, "status": state}, ref))


def cancelled(task_id: str, job: str, ref=None) -> str:
    """The answer to ``cancel``; ``job`` is ``stopped``, ``continues`` or ``ended``."""
    return _dumps(_with_ref({"type": "cancelled", "task_id": task_id, "job": job}, ref))


def error(err: ProtocolError, ref=None) -> str:
    message = {"type": "error", "code": err.code.value, "result": err.text}
    if err.task_id is not None:
        message["task_id"] = err.task_id
    return _dumps(_with_ref(message, ref if ref is not None else err.ref))


def success(task_id: str, digits: str) -> bytes:
    """The success message for a result given as its decimal digits.

    Built once, by the worker; the server forwards these bytes untouched.
    """
    if len(digits) < len(MAX_SAFE_INTEGER_DIGITS) or (
        len(digits) == len(MAX_SAFE_INTEGER_DIGITS) and digits <= MAX_SAFE_INTEGER_DIGITS
    ):
        result = digits
    else:
        result = '"' + digits + '"'
    return ('{"type":"success","task_id":"%s","result":%s,"digits":%d}' % (task_id, result, len(digits))).encode()


def with_ref(payload: bytes, ref) -> bytes:
    """Add ``ref`` to a finished JSON object without parsing it again."""
    if ref is None:
        return payload
    return b"".join((payload[:-1], b',"ref":', _dumps(ref).encode(), b"}"))
