"""The README's wscat session, with the real ``wscat``, against the served app and a real worker."""

import json
import os
import re
import shutil
import subprocess
import threading

import pytest

from tests.conftest import ROOT
from tests.helpers import wait_until

# Set in CI: a missing wscat fails the suite instead of skipping this test.
REQUIRED = os.environ.get("CI_REQUIRE_BROWSER") == "1"


def readme_wscat_session() -> tuple[str, str]:
    """The wscat command's URL and the request typed at its prompt, as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    url = re.search(r"^\$ wscat -c (\S+)$", readme, re.M).group(1)
    request = re.search(r"^> (\{.*\})$", readme, re.M).group(1)
    return url, request


def test_the_readme_wscat_session_gets_the_ack_and_120(served_app, worker):
    if shutil.which("wscat") is None:
        if REQUIRED:
            pytest.fail("wscat is not installed (npm install -g wscat) and CI_REQUIRE_BROWSER=1")
        pytest.skip("wscat is not installed (npm install -g wscat)")
    url, request = readme_wscat_session()
    assert url == "ws://localhost:8888/ws"
    url = url.replace("localhost:8888", f"localhost:{served_app.port}")

    # stdin stays open: wscat quits as soon as its input ends.
    process = subprocess.Popen(["wscat", "--no-color", "-c", url, "-x", request, "-w", "15"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any('"success"' in line for line in lines) or process.poll() is not None,
                   timeout=20, what="wscat to print the success")
    finally:
        process.kill()
        process.wait()
        reader.join(5)

    messages = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(messages) == 2, lines
    ack, done = messages
    assert ack["type"] == "result" and ack["queue"] == "soft" and ack["status"] in ("queued", "started", "finished")
    assert done == {"type": "success", "task_id": ack["task_id"], "result": 120, "digits": 3}


def _read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
