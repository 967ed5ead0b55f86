"""The abuse soak (``python -m bench -s abuse``) runs end to end for a few seconds.

Its figures are not asserted (the machine is shared; the 10-minute run is in
docs/reliability.md). This checks that every client ran, that the samples
and the table are there, and the outcomes the soak exists to show: no
foreign cancel stopped the normal client's jobs, and nothing made it fail.
"""

from __future__ import annotations

import json

import pytest

from tests.bench import run_bench

pytestmark = pytest.mark.slow


def test_a_short_abuse_soak_runs_and_no_foreign_cancel_stops_the_normal_clients_jobs(tmp_path):
    out = tmp_path / "abuse.json"
    code, stdout, stderr = run_bench("-s", "abuse", "--minutes", "0.25", "--every", "3", "--json", str(out), timeout=120)
    assert code == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    samples = report["samples"]
    assert len(samples) >= 4
    assert all(s["server_rss_mb"] > 0 and s["redis_used_mb"] > 0 for s in samples)
    assert any(s["five_p95_ms"] is not None for s in samples)
    counts = report["summary"]["counts"]
    for what in ("non-reader requests", "refill acknowledged", "victim asked", "foreign same task_id"):
        assert counts.get(what, 0) > 0, (what, counts)
    assert sum(v for k, v in counts.items() if k.startswith("post-delete ")) > 0, counts
    # A foreign cancel or DELETE never stops a job someone else waits for.
    assert not any(k.startswith("foreign") and k.endswith("stopped") for k in counts), counts
    assert not any(k.startswith("normal error") for k in counts), counts
    # Each victim job ended in its success (the last may still be on its way).
    assert counts.get("victim success", 0) >= counts["victim asked"] - 1, counts
    assert out.with_suffix(".md").read_text().startswith("abuse soak")
    assert "| t (s) | server RSS (MB)" in stdout
