"""The benchmark runs end to end in quick mode and every answer it checked was exact.

Timings are not asserted here (the machine is shared); ``python -m bench``
reports them. This checks that the benchmark still works, that it measures the
no-queue ceiling beside the service, that scale out (submit on one server,
look up on another) holds, and that its results stay out of the tracked tree.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from bench.__main__ import RESULTS
from tests.bench import run_bench
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_quick_benchmark_runs_and_every_answer_is_exact(tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_bench("--quick", "--json", str(out), timeout=180)
    assert code == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["measure"]): r for r in report["rows"]}
    scenarios = {scenario for scenario, _ in rows}
    for prefix in ("5!, 1 client, nothing cached", "100 clients", "100000! end to end", "hot key",
                   "1000 connections", "scale out"):
        assert any(s.startswith(prefix) for s in scenarios), prefix

    throughput = [r for r in report["rows"] if r["unit"] == "jobs/s" and "distinct small n" in r["scenario"]]
    assert len(throughput) == 2 and all(r["note"].startswith("lost 0;") for r in throughput)
    # The ceiling answered the same requests, and every figure is set against it.
    assert all(r["ceiling"] > 0 and r["to_ceiling"] == r["value"] / r["ceiling"] for r in throughput)
    latency = rows[("5!, 1 client, nothing cached", "p50")]
    assert latency["ceiling"] > 0 and latency["floor"] > 0 and latency["floor_name"].startswith("RQ direct")
    hot = next(r for r in report["rows"] if r["scenario"].startswith("hot key"))
    assert hot["note"].startswith("jobs 1, exact 100/100"), hot["note"]
    assert hot["ceiling"] > 0
    held = next(r for r in report["rows"] if r["measure"] == "answered exactly")
    assert held["value"] == held["floor"] == 1000
    scale_out = next(r for r in report["rows"] if r["scenario"].startswith("scale out"))
    assert scale_out["met"] is True
    assert report["machine"]["cores"] >= 1 and report["commit"] and report["date"]
    assert "| scenario" in stdout and "x ceiling" in stdout


def test_results_are_saved_where_git_ignores_them():
    relative = RESULTS.relative_to(ROOT)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(relative)], cwd=ROOT)
    assert ignored.returncode == 0, f"{relative} would dirty the checkout"
    tracked = subprocess.run(["git", "ls-files", "bench"], cwd=ROOT, capture_output=True, text=True).stdout
    assert not [path for path in tracked.splitlines() if path.endswith(".json")], tracked
