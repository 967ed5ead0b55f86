"""The benchmark runs end to end in quick mode and every answer it checked was exact.

Timings are not asserted here (the machine is shared); ``python -m bench``
reports them. This checks that the benchmark still works and that scale out
(submit on one server, look up on another) holds.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_benchmark_runs_and_every_answer_is_exact(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
    assert "| scenario" in done.stdout
