"""The contract documents validate, and agree with the code and the prose they describe.

docs/asyncapi.yaml against the AsyncAPI CLI, docs/openapi.yaml against
openapi-spec-validator; their error codes against protocol.py's ErrorCode; their
request types, message types and error codes against the tables of
docs/protocol.md and the README; and the AsyncAPI request schemas against the
server's own parser (protocol.py), frame by frame, so that the document calls
a frame malformed exactly when the server does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st
from openapi_spec_validator import validate as validate_openapi

import protocol
from protocol import ErrorCode, ProtocolError
from tests.contract.documents import ASYNCAPI_PATH, OPENAPI_PATH, ROOT, frame_contract, load, resolve
from tests.contract.wire import MALFORMED

# HTTP's own codes, which never reach an open WebSocket (docs/protocol-notes.md).
HTTP_ONLY_CODES = {"not_found", "method_not_allowed", "too_large", "bad_request", "internal_error", "unauthorized"}
# Not in the protocol's table, sent on the WebSocket all the same (docs/protocol-notes.md).
NOTES_ONLY_CODES = {"invalid_ref"}


def asyncapi_schema(name: str) -> dict:
    return load(ASYNCAPI_PATH)["components"]["schemas"][name]


def openapi_schema(name: str) -> dict:
    return load(OPENAPI_PATH)["components"]["schemas"][name]


def markdown_table_column(text: str, header: str) -> list[str]:
    """The first column's `code` values of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    values = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        values.append(re.match(r"\|\s*`([^`]+)`", line).group(1))
    return values


def test_the_openapi_document_is_valid_openapi_3_1():
    document = load(OPENAPI_PATH)
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


@pytest.mark.integration  # runs the AsyncAPI CLI, a Node process (seconds)
def test_the_asyncapi_document_passes_asyncapi_validate(tmp_path):
    cli = shutil.which("asyncapi")
    if cli is None:
        if os.environ.get("CI_REQUIRE_BROWSER"):
            pytest.fail("the asyncapi CLI is missing (npm install -g @asyncapi/cli); CI must run this test")
        pytest.skip("the asyncapi CLI is not installed (npm install -g @asyncapi/cli)")
    # No usage reporting from a test run.
    settings_file = tmp_path / "asyncapi-analytics.json"
    settings_file.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "test"}))
    env = {**os.environ, "ASYNCAPI_METRICS_CONFIG_PATH": str(settings_file), "CI": "true"}
    done = subprocess.run([cli, "validate", str(ASYNCAPI_PATH), "--fail-severity", "warn"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout, done.stdout
    assert load(ASYNCAPI_PATH)["asyncapi"].startswith("3.0")


def test_every_error_code_of_the_code_is_in_the_documents_and_no_other():
    every = {code.value for code in ErrorCode}
    assert set(openapi_schema("ErrorCode")["enum"]) == every
    assert set(asyncapi_schema("ErrorCode")["enum"]) == every - HTTP_ONLY_CODES


def test_the_protocols_tables_match_the_asyncapi_document():
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert set(markdown_table_column(text, "| code |")) == set(asyncapi_schema("ErrorCode")["enum"]) - NOTES_ONLY_CODES
    assert set(markdown_table_column(text, "| type |")) == set(frame_contract().requests)
    for outcome in asyncapi_schema("Cancelled")["properties"]["job"]["enum"]:
        assert f"`{outcome}`" in text, outcome


def test_the_readme_names_the_documents_and_the_message_types_they_hold():
    readme = (ROOT / "README.md").read_text()
    assert "docs/asyncapi.yaml" in readme and "docs/openapi.yaml" in readme
    section = readme.split("## Protocol", 1)[1].split("\n## ", 1)[0]
    for kind in frame_contract().requests:
        assert f'{{"type":"{kind}"' in section, kind
    for kind in frame_contract().server_messages:
        assert f"`{kind}`" in section, kind


def test_the_readmes_http_table_lists_only_documented_statuses():
    readme = (ROOT / "README.md").read_text()
    paths = load(OPENAPI_PATH)["paths"]
    rows = {"POST /api/factorial": paths["/api/factorial"]["post"],
            "GET /api/tasks/<task_id>": paths["/api/tasks/{task_id}"]["get"],
            "DELETE /api/tasks/<task_id>": paths["/api/tasks/{task_id}"]["delete"]}
    for line in readme.splitlines():
        for route, operation in rows.items():
            if line.startswith(f"| `{route}`"):
                for status in re.findall(r"\b([2-5]\d\d)\b", line):
                    assert status in operation["responses"], (route, status)


def test_every_operation_of_the_asyncapi_document_uses_the_channels_messages():
    document = load(ASYNCAPI_PATH)
    channel_messages = {f"#/channels/ws/messages/{name}" for name in document["channels"]["ws"]["messages"]}
    used = set()
    for operation in document["operations"].values():
        used |= {m["$ref"] for m in operation["messages"]}
        used |= {m["$ref"] for m in operation.get("reply", {}).get("messages", [])}
    assert used == channel_messages
    for pointer in used:
        assert resolve(document, pointer)["payload"]


# --- the AsyncAPI request schemas agree with the server's parser --------------------------


def server_calls_malformed(frame: str) -> bool:
    """Whether protocol.py answers this frame with an error that says the request itself is malformed."""
    try:
        protocol.parse_request(frame, max_number=1_000_000)
    except ProtocolError as err:
        return err.code.value in MALFORMED
    return False


def assert_agree(frame: str) -> None:
    undescribed = frame_contract().why_request_undescribed(frame)
    assert bool(undescribed) == server_calls_malformed(frame), (frame[:300], undescribed)


TASK_ID = "0123456789abcdef0123456789abcdef"
FRAMES = [
    '{"type":"factorial","number":5}', '{"type":"factorial","number":0,"ref":"a"}', '{"type":"factorial","number":5,"x":[1]}',
    '{"type":"factorial","number":true}', '{"type":"factorial","number":5.0}', '{"type":"factorial","number":"5"}',
    '{"type":"factorial","number":1e3}', '{"type":"factorial","number":null}', '{"type":"factorial","number":-1}',
    '{"type":"factorial","number":1000001}', '{"type":"factorial","number":' + "9" * 50 + "}",
    '{"type":"factorial","number":-' + "9" * 50 + "}", '{"type":"factorial"}', '{"number":5}', '{"type":"Factorial","number":5}',
    '{"type":5,"number":5}', f'{{"type":"result","task_id":"{TASK_ID}"}}', '{"type":"result","task_id":"nope"}',
    '{"type":"result","task_id":5}', '{"type":"result"}', '{"type":"cancel","task_id":null}',
    f'{{"type":"cancel","task_id":"{TASK_ID}","ref":-7}}', '{"type":"result","task_id":"x","ref":true}',
    '{"type":"result","task_id":"x","ref":1.5}', '{"type":"result","task_id":"x","ref":{}}',
    '{"type":"result","task_id":"x","ref":"' + "r" * 128 + '"}', '{"type":"result","task_id":"x","ref":"' + "r" * 129 + '"}',
    '{"type":"result","task_id":"x","ref":' + "9" * 40 + "}", '{"type":"result","task_id":"x","ref":' + "9" * 41 + "}",
    '{"type":"nope","ref":true}', '{', '[]', '"factorial"', '5', 'null', '', '{"type":"factorial","number":Infinity}',
]


@pytest.mark.parametrize("frame", FRAMES)
def test_the_document_calls_a_frame_malformed_exactly_when_the_server_does(frame):
    assert_agree(frame)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_frame_with_nan_or_infinity_is_not_json(constant):
    # Even in a field the server ignores: the document says JSON, and these are not.
    assert_agree('{"type":"factorial","number":5,"x":%s}' % constant)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**39, max_value=10**45),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5), st.text(min_size=127, max_size=130),
    st.just(TASK_ID), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_requests = st.dictionaries(
    st.sampled_from(["type", "number", "task_id", "ref", "other"]),
    st.one_of(st.sampled_from(["factorial", "result", "cancel", "status"]), _values),
)


@settings(max_examples=150, deadline=None)
@given(_requests)
def test_the_document_and_the_server_agree_on_generated_requests(message):
    assert_agree(json.dumps(message))
