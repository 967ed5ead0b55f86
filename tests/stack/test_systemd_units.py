"""deploy/systemd/: one unit per Procfile process, each restarted on failure, each valid to systemd."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
# Procfile process -> its unit.
UNIT_OF = {"redis": "factorial-redis", "web": "factorial-web", "hard_worker": "factorial-hard-worker",
           "soft_worker": "factorial-soft-worker", "dashboard": "factorial-dashboard"}


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / f"{name}.service")
    return parser


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_every_procfile_process_has_a_unit_restarted_on_failure_that_runs_the_same_program():
    procfile = _procfile()
    assert set(procfile) == set(UNIT_OF)
    for process, unit_name in UNIT_OF.items():
        service = _unit(unit_name)["Service"]
        assert service["Restart"] == "on-failure", unit_name
        # The Procfile wraps commands in launchers (stack.supervise, stack.wait_for_redis): the unit
        # runs what they run, with systemd restarting it instead.
        program = service["ExecStart"].replace("/opt/factorial/.venv/bin/", "")
        wanted = procfile[process].split(" stack.wait_for_redis ")[-1].split(" stack.supervise ")[-1]
        assert program == wanted, (unit_name, program, wanted)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_every_unit(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/factorial/.venv/bin", venv_bin).replace("/opt/factorial", str(ROOT))
        (tmp_path / unit.name).write_text(text)
        done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)], capture_output=True,
                              text=True, timeout=60)
        # Silent when it finds nothing wrong (unknown keys, bad values, missing programs).
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (unit.name, done.stdout, done.stderr)


def test_each_procfile_worker_serves_one_queue_and_together_they_serve_every_queue():
    # A worker of several queues takes a job with BLPOP, which holds it in no
    # list until the job starts: killed in between, the worker loses it. One
    # queue per worker means RQ's LMOVE into a list the janitor watches.
    from jobs.routing import QUEUES

    served = []
    for process, command in _procfile().items():
        words = command.split()
        if "rq" in words and words[words.index("rq") + 1] == "worker":
            queues = words[words.index("worker") + 1 : words.index("--worker-class")]
            assert len(queues) == 1, (process, queues)
            served += queues
    assert sorted(served) == sorted(QUEUES)
