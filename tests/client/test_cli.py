"""``python -m client`` as a subprocess, against the served app with a real worker."""

import asyncio
import json
import os
import sys
import time

import pytest

from client.cli import DEFAULT_TIMEOUT_S
from jobs.factorial import factorial_digits
from tests.conftest import ROOT
from tests.helpers import free_port


async def run_client(*args, timeout=60):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    # The app is served on this test's IOLoop, so wait without blocking it.
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.gen_test(timeout=90)
async def test_writes_the_exact_digits_to_a_file_and_shows_progress(ws_url, worker, tmp_path):
    out = tmp_path / "f.txt"
    code, stdout, stderr = await run_client("100000", "--out", str(out), "--url", ws_url)
    assert code == 0, stderr
    digits = out.read_text().strip()
    assert len(digits) == 456574 and digits == factorial_digits(100000)
    assert stdout == ""
    # Progress: the states it went through, with elapsed times.
    assert "100000!: queued after" in stderr or "100000!: started after" in stderr
    assert "100000!: done after" in stderr and "456574 digits written to" in stderr


@pytest.mark.gen_test(timeout=60)
async def test_several_numbers_as_json_lines(ws_url, worker):
    code, stdout, stderr = await run_client("5", "0", "25", "--json", "--url", ws_url)
    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [(line["number"], line["result"], line["digits"]) for line in lines] == [
        (5, "120", 3), (0, "1", 1), (25, factorial_digits(25), 26)]
    assert all(len(line["task_id"]) == 32 and line["elapsed_s"] >= 0 for line in lines)


@pytest.mark.gen_test(timeout=60)
async def test_plain_output_is_the_digits_one_line_per_number(ws_url, worker):
    code, stdout, _ = await run_client("5", "7", "--url", ws_url)
    assert code == 0 and stdout.splitlines() == ["120", "5040"]


@pytest.mark.gen_test(timeout=60)
async def test_an_error_answer_is_reported_with_a_non_zero_exit(ws_url, worker):
    code, stdout, stderr = await run_client("5", "2000000", "--json", "--url", ws_url)
    assert code == 1
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[0]["result"] == "120"
    assert lines[1]["number"] == 2000000 and lines[1]["error"] == "number_too_large"
    assert "2000000!: the server answered number_too_large" in stderr


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_server_is_a_clear_message_and_exit_3():
    url = f"ws://127.0.0.1:{free_port()}/ws"
    code, stdout, stderr = await run_client("5", "--url", url)
    assert code == 3 and stdout == ""
    assert f"cannot connect to {url}" in stderr and "is the server running?" in stderr


@pytest.mark.gen_test(timeout=30)
async def test_several_numbers_need_a_file_name_pattern_and_bad_arguments_exit_2(tmp_path):
    code, _, stderr = await run_client("5", "6", "--out", str(tmp_path / "f.txt"))
    assert code == 2 and "{n}" in stderr
    code, _, stderr = await run_client("five")
    assert code == 2 and "invalid int value" in stderr


@pytest.mark.gen_test(timeout=30)
async def test_help_names_the_timeout_default_and_every_exit_status():
    code, stdout, _ = await run_client("--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert f"(default {DEFAULT_TIMEOUT_S:g}; 0 waits for ever)" in text
    assert ("exit status: 0 every result came, 1 the server answered an error, 2 bad arguments, "
            "3 the server could not be reached, 4 an answer did not come within --timeout") in text


@pytest.mark.gen_test(timeout=30)
async def test_an_answer_that_does_not_come_within_the_timeout_exits_4(ws_url, redis_url):
    # No worker: the job stays queued, and its answer never comes.
    started = time.monotonic()
    code, stdout, stderr = await run_client("9", "--timeout", "1", "--json", "--url", ws_url)
    assert code == 4 and time.monotonic() - started < 15
    line = json.loads(stdout)
    assert line["number"] == 9 and line["error"] == "no_answer" and len(line["task_id"]) == 32
    assert f"9!: no answer within 1 s (task {line['task_id']})" in stderr


@pytest.mark.gen_test(timeout=60)
async def test_a_closed_output_pipe_ends_it_quietly(ws_url, worker):
    # The shell's `python -m client 2000 | head -c 1`: the reader leaves after one byte.
    read_fd, write_fd = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client", "2000", "--url", ws_url, cwd=ROOT,
        stdout=write_fd, stderr=asyncio.subprocess.PIPE)
    os.close(write_fd)
    os.close(read_fd)  # before a single digit is written: every write fails with EPIPE
    _, stderr = await asyncio.wait_for(process.communicate(), 50)
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr.decode() and "BrokenPipeError" not in stderr.decode()


@pytest.mark.gen_test(timeout=60)
async def test_the_readme_pipe_into_head_prints_one_digit_and_no_traceback(ws_url, worker):
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", f'{sys.executable} -m client 2000 -q --url {ws_url} | head -c 1; echo " ${{PIPESTATUS[0]}}"',
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 50)
    # Whether head leaves before the digits are written (141) or after (0), nothing on stderr;
    # the test above makes the closed pipe certain.
    assert stdout.decode() in ("3 0\n", "3 141\n") and stderr == b""

