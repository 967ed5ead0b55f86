"""The benchmark runs end to end in quick mode and every answer it checked was exact.

Timings are not asserted here (the machine is shared); ``python -m bench``
reports them. This checks that the benchmark still works and that scale out
(submit on one server, look up on another) holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_benchmark_runs_and_every_answer_is_exact(tmp_path):
    out = tmp_path / "bench.json"
    # Its own session, so a hung run can be stopped with everything it started.
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["measure"]): r for r in report["rows"]}
    scenarios = {scenario for scenario, _ in rows}
    for prefix in ("latency", "throughput", "big result", "hot key", "held connections", "scale out"):
        assert any(s.startswith(prefix) for s in scenarios), prefix

    throughput = [r for r in report["rows"] if r["scenario"].startswith("throughput") and r["unit"] == "jobs/s"]
    assert throughput and all(r["note"].startswith("lost 0;") for r in throughput)
    hot = next(r for r in report["rows"] if r["scenario"].startswith("hot key"))
    assert hot["note"].startswith("jobs 1, exact 100/100"), hot["note"]
    held = next(r for r in report["rows"] if r["measure"] == "answered exactly")
    assert held["value"] == held["floor"] == 1000
    scale_out = next(r for r in report["rows"] if r["scenario"].startswith("scale out"))
    assert scale_out["met"] is True
    assert report["machine"]["cores"] >= 1
    assert "| scenario" in stdout
