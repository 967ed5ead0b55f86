"""The contract documents, docs/asyncapi.yaml and docs/openapi.yaml, as validators of frames and responses.

Pure: no sockets. tests/contract/wire.py holds every frame and response the
tests see against these; tests/contract/test_documents.py checks the documents
themselves.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import yaml
from jsonschema import Draft7Validator, Draft202012Validator, validators

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_PATH = ROOT / "docs" / "asyncapi.yaml"
OPENAPI_PATH = ROOT / "docs" / "openapi.yaml"


def _is_integer_literal(checker, instance) -> bool:
    # The protocol's integers are JSON integer literals: 5.0 and 1e3 are refused by the
    # server, though JSON Schema counts them integers. json.loads makes those floats.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _strict(validator_class):
    checker = validator_class.TYPE_CHECKER.redefine("integer", _is_integer_literal)
    return validators.extend(validator_class, type_checker=checker)


StrictDraft7 = _strict(Draft7Validator)
StrictDraft202012 = _strict(Draft202012Validator)


@functools.cache
def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def resolve(document: dict, pointer: str) -> dict:
    """The object at a local ``#/a/b`` reference, following references on the way."""
    node = document
    for part in pointer.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
        while isinstance(node, dict) and "$ref" in node and len(node) == 1:
            node = resolve(document, node["$ref"])
    return node


def inlined(document: dict, node):
    """``node`` with every local reference replaced by what it names (the documents have no cycles).

    A validator of an inlined schema resolves nothing while it validates: several times faster
    per frame than one that follows references through a registry (measured: 0.9 ms against
    4.5 ms on the loaded machine).
    """
    if isinstance(node, dict):
        if "$ref" in node:
            named = inlined(document, resolve(document, node["$ref"]))
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            # OpenAPI 3.1 (JSON Schema 2020-12) applies keywords beside a reference too.
            return {"allOf": [named, inlined(document, siblings)]} if siblings else named
        return {key: inlined(document, value) for key, value in node.items()}
    if isinstance(node, list):
        return [inlined(document, value) for value in node]
    return node


def _why(validator, instance) -> str | None:
    """None when ``instance`` is valid, else the most relevant error in one line."""
    if validator.is_valid(instance):
        return None
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), str(e.message)))
    error = errors[-1]
    where = "/".join(map(str, error.absolute_path)) or "(the message)"
    return f"{where}: {error.message[:300]}"


_ISSUED_TASK_ID = re.compile(r'"task_id":"[0-9a-f]{32}"')


def parse_frame(frame: str | bytes | dict):
    """A frame as JSON (a dict passed to write_message is already one); ValueError if it is not JSON text."""
    if isinstance(frame, dict):
        return frame
    if isinstance(frame, bytes):
        raise ValueError("a binary frame")
    return json.loads(frame, parse_constant=_not_json)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def shown(frame, limit: int = 200) -> str:
    text = frame if isinstance(frame, str) else repr(frame)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class FrameContract:
    """docs/asyncapi.yaml: the requests a client may send, and the messages the server may send, by ``type``."""

    def __init__(self, document: dict):
        self.document = document
        self.requests: dict[str, list] = {}
        self.server_messages: dict[str, list] = {}
        for operation in document["operations"].values():
            incoming = operation["action"] == "receive"
            for message_ref in operation["messages"]:
                self._add(self.requests if incoming else self.server_messages, message_ref)
            for message_ref in operation.get("reply", {}).get("messages", []):
                self._add(self.server_messages, message_ref)
        self._verdicts: dict[tuple[str, bool], str | None] = {}
        channel = next(iter(document["channels"].values()))
        self.close_codes = {int(code) for code in channel["x-close-codes"]}

    def _add(self, by_type: dict, message_ref: dict) -> None:
        schema = inlined(self.document, resolve(self.document, self._message_pointer(message_ref["$ref"]) + "/payload"))
        kind = schema["properties"]["type"]["const"]
        if all(existing.schema != schema for existing in by_type.get(kind, [])):
            by_type.setdefault(kind, []).append(StrictDraft7(schema))

    def _message_pointer(self, pointer: str) -> str:
        """The components/messages pointer a channel's message reference leads to."""
        node = resolve(self.document, pointer.rsplit("/", 1)[0])  # the channel's messages
        entry = node[pointer.rsplit("/", 1)[1]]
        return entry["$ref"] if "$ref" in entry else pointer

    def why_request_undescribed(self, frame) -> str | None:
        return self._why_cached(frame, True) if isinstance(frame, str) else self._why(self.requests, frame, "request")

    def why_message_undescribed(self, frame) -> str | None:
        if isinstance(frame, str):
            return self._why_cached(frame, False)
        return self._why(self.server_messages, frame, "server message")

    def _why_cached(self, frame: str, request: bool) -> str | None:
        """The verdict on a text frame; frames that differ only in task ids of the issued form share one.

        Validating takes up to a millisecond on a busy machine, and the suite's sessions send many
        frames alike. The verdict does not depend on which issued id a frame names.
        """
        by_type, what = (self.requests, "request") if request else (self.server_messages, "server message")
        if len(frame) > 4096 or "\x00" in frame:  # a raw NUL: no JSON text, and the placeholder below
            return self._why(by_type, frame, what)
        key = (_ISSUED_TASK_ID.sub('"task_id":"\x00"', frame), request)
        if key not in self._verdicts:
            if len(self._verdicts) > 8192:
                self._verdicts.clear()
            self._verdicts[key] = self._why(by_type, frame, what)
        return self._verdicts[key]

    @staticmethod
    def _why(by_type: dict, frame, what: str) -> str | None:
        try:
            message = parse_frame(frame)
        except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays, as for the server
            return f"not a JSON text frame ({str(exc)[:100]})"
        if not isinstance(message, dict):
            return "not a JSON object"
        candidates = by_type.get(message.get("type")) if isinstance(message.get("type"), str) else None
        if not candidates:
            return f"no {what} has type {message.get('type')!r}"
        reasons = [_why(validator, message) for validator in candidates]
        return None if None in reasons else "; ".join(reasons)


@functools.cache
def frame_contract() -> FrameContract:
    return FrameContract(load(ASYNCAPI_PATH))


class ResponseContract:
    """docs/openapi.yaml: the status, media type, required headers and body of each documented response."""

    def __init__(self, document: dict):
        self.document = document
        self.paths = []
        for template, item in document["paths"].items():
            # A path parameter is any text, slashes too, as the server's routes take it.
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", ".*", re.escape(template)) + "$")
            self.paths.append((pattern, template, item))
        self._validators: dict[str, object] = {}

    def why_undescribed(self, method: str, path: str, status: int, headers, body: bytes | None) -> str | None:
        """None when the document describes this response (or says nothing of the path), else why not."""
        found = next(((template, item) for pattern, template, item in self.paths if pattern.match(path)), None)
        if found is None:
            return None  # not a route of the document (another program's, or a path no route serves)
        template, item = found
        operation = item.get(method.lower())
        if operation is None:
            if method.upper() == "HEAD":
                return None
            if status != 405:
                return f"{method} {template} is not documented, and got {status}, not 405"
            return self._why_body(f"{method} {template}", "#/components/schemas/Error", "application/json",
                                  headers, body)
        pointer = f"#/paths/{template.replace('~', '~0').replace('/', '~1')}/{method.lower()}/responses"
        responses = operation["responses"]
        key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
        if key not in responses:
            return f"{method} {template} answered {status}, which the document does not list ({', '.join(responses)})"
        response = resolve(self.document, f"{pointer}/{key}")
        for name, header in response.get("headers", {}).items():
            header = resolve(self.document, header["$ref"]) if "$ref" in header else header
            value = headers.get(name)
            if value is None:
                if header.get("required"):
                    return f"{method} {template} {status}: no {name} header"
                continue
            why = _why(self._validator(header["schema"]), value)
            if why:
                return f"{method} {template} {status}: header {name}: {value!r}: {why}"
        content = response.get("content")
        if not content:
            return None
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type not in content:
            return f"{method} {template} {status}: Content-Type {media_type!r}, not one of {list(content)}"
        if media_type != "application/json":
            return None
        # The schema by its pointer, so that its own references resolve within the document.
        base = responses[key]["$ref"] if "$ref" in responses[key] else f"{pointer}/{key}"
        schema_pointer = f"{base}/content/application~1json/schema"
        return self._why_body(f"{method} {template} {status}", schema_pointer, media_type, headers, body)

    def _why_body(self, what: str, schema_pointer: str, media_type: str, headers, body: bytes | None) -> str | None:
        if body is None:
            return None
        try:
            message = json.loads(body)
        except ValueError:
            return f"{what}: the body is not JSON: {shown(body)}"
        why = _why(self._validator(schema_pointer), message)
        return f"{what}: {why}: {shown(body.decode(errors='replace'))}" if why else None

    def _validator(self, schema):
        """A validator of a schema given by its pointer into the document, or inline (a header's)."""
        key = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            root = inlined(self.document, resolve(self.document, schema) if isinstance(schema, str) else schema)
            self._validators[key] = StrictDraft202012(root)
        return self._validators[key]


@functools.cache
def response_contract() -> ResponseContract:
    return ResponseContract(load(OPENAPI_PATH))
