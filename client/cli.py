"""Ask the service for factorials from a shell, and wait for the answers.

    python -m client 5                       # prints 120
    python -m client 100000 --out f.txt      # writes the 456574 digits to f.txt
    python -m client 5 10 20 --json          # one JSON object per number, per line
    python -m client 100000 200000 --out 'fact-{n}.txt'

    python -m client 100000 --detach         # prints the task id, and leaves the job running

Progress (each job's state and elapsed time) goes to stderr; stdout holds only
results. When the connection drops (a server restart, a balancer moving it),
the client reconnects with growing pauses and asks again, by task id, for
every answer it still waits for.

Ctrl-C (SIGINT) or SIGTERM cancels every job still waited for, says on stderr
what became of each, writes the answers that came, and exits with 130 (143
for SIGTERM) within 2 s; a second one exits at once.

The API key, if the server wants one, comes from FACTORIAL_API_KEY or from
--api-key-file, never from the command line, which ``ps`` shows to everyone.

Exit status:
    0  every number got its result
    1  the server answered an error for some number
    2  bad arguments
    3  the server could not be reached, or stayed unreachable after the connection
       dropped (the answers that came are still written)
    4  some answer did not come within --timeout
  130  stopped by Ctrl-C (SIGINT); 143 by SIGTERM
  141  stdout was closed before the results were written (``| head``), as for other Unix tools
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from client import detach
from client.credentials import KEY_VARIABLE, KeyFileError, api_key, key_headers, url_carries_key
from client.progress import Progress
from client.session import CANCEL_OUTCOMES, DEFAULT_TIMEOUT_S, TIMED_OUT, Refused, Unreachable, compute
from client.stop import Stop, exit_status

DEFAULT_URL = "ws://localhost:8888/ws"
EXIT_OK, EXIT_ERROR_ANSWER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_PIPE_CLOSED = 128 + 13  # SIGPIPE's number, as a shell reports a tool it ended

__all__ = ["DEFAULT_TIMEOUT_S", "DEFAULT_URL", "main"]


def digits_of(success: dict) -> str:
    """The result's decimal digits: a JSON string for big results, a number for small ones."""
    result = success["result"]
    return result if isinstance(result, str) else str(result)


def report(jobs: list, args) -> int:
    status = EXIT_OK
    for job in jobs:
        answer = job.answer
        if answer is None and job.cancel:
            report_cancel(job, args)
            continue
        if answer is None:
            if job.missing == TIMED_OUT:
                status, code, why = max(status, EXIT_TIMEOUT), "no_answer", f"no answer within {args.timeout:g} s"
            else:
                status, code, why = max(status, EXIT_UNREACHABLE), "unreachable", f"no answer: {job.missing}"
            print(f"{job.number}!: {why}" + (f" (task {job.task_id})" if job.task_id else ""), file=sys.stderr)
            if args.json:
                print(json.dumps({"number": job.number, "task_id": job.task_id, "error": code,
                                  "elapsed_s": round(job.elapsed_s, 3)}))
            continue
        if answer["type"] == "error":
            status = max(status, EXIT_ERROR_ANSWER)
            print(f"{job.number}!: the server answered {answer.get('code')}: {answer.get('result')}", file=sys.stderr)
            if args.json:
                print(json.dumps({"number": job.number, "task_id": job.task_id, "error": answer.get("code"),
                                  "message": answer.get("result"), "elapsed_s": round(job.elapsed_s, 3)}))
            continue
        digits = digits_of(answer)
        out = args.out.replace("{n}", str(job.number)) if args.out else None
        if out:
            with open(out, "w", encoding="ascii") as file:
                file.write(digits + "\n")
        if args.json:
            line = {"number": job.number, "task_id": job.task_id, "digits": answer["digits"],
                    "elapsed_s": round(job.elapsed_s, 3)}
            line.update({"file": out} if out else {"result": digits})
            print(json.dumps(line))
        elif not out:
            print(digits)
        else:
            print(f"{job.number}!: {answer['digits']} digits written to {out}", file=sys.stderr)
    return status


def report_cancel(job, args) -> None:
    """One line on stderr for a job a stop left without an answer: what the cancel did."""
    if job.cancel in CANCEL_OUTCOMES:
        print(f"{job.number}!: cancelled ({CANCEL_OUTCOMES[job.cancel]})", file=sys.stderr)
    else:
        print(f"{job.number}!: {job.missing}" + (f" (task {job.task_id})" if job.task_id else ""), file=sys.stderr)
    if args.json:
        print(json.dumps({"number": job.number, "task_id": job.task_id, "error": "cancelled", "cancel": job.cancel,
                          "elapsed_s": round(job.elapsed_s, 3)}))


def report_detached(numbers: list[int], answers: list[dict], args) -> int:
    """The task ids, one line per number on stdout; refusals on stderr."""
    status = EXIT_OK
    for number, answer in zip(numbers, answers):
        if answer.get("type") != "result":
            status = EXIT_ERROR_ANSWER
            print(f"{number}!: the server answered {answer.get('code')}: {answer.get('result')}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"number": number, "task_id": answer["task_id"], "status": answer.get("status"),
                              "queue": answer.get("queue")}))
        else:
            print(answer["task_id"])
    return status


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Compute factorials on the service.",
        epilog="exit status: 0 every result came, 1 the server answered an error, 2 bad arguments, "
               "3 the server could not be reached, 4 an answer did not come within --timeout, "
               "130 stopped by Ctrl-C, 143 by SIGTERM (the jobs still waited for are cancelled first). "
               f"The API key, if the server wants one, is read from ${KEY_VARIABLE} or --api-key-file.",
    )
    parser.add_argument("numbers", nargs="+", type=int, metavar="N", help="the numbers whose factorials to compute")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service's WebSocket (default {DEFAULT_URL})")
    parser.add_argument("--out", metavar="FILE",
                        help="write the digits to FILE instead of stdout; with several numbers, FILE must contain {n}")
    parser.add_argument("--json", action="store_true", help="print one JSON object per number, per line")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="stop waiting for answers S seconds after asking, reconnects included "
                             f"(default {DEFAULT_TIMEOUT_S:g}; 0 waits for ever)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--detach", action="store_true",
                        help="only ask: print one task id per number (with --json, one JSON object) and exit, "
                             "leaving the jobs running; look the results up later by task id")
    parser.add_argument("--api-key-file", metavar="PATH",
                        help=f"read the API key from the first line of PATH (default: ${KEY_VARIABLE}, if set)")
    args = parser.parse_args(argv)
    if args.out and len(args.numbers) > 1 and "{n}" not in args.out:
        parser.error("with several numbers, --out needs {n} in the file name, e.g. --out 'fact-{n}.txt'")
    if args.detach and args.out:
        parser.error("--detach prints task ids and waits for no result: --out has nothing to write")
    return args


def main(argv=None) -> None:
    stop = Stop()
    stop.install()  # before anything is asked: until the loop listens, a signal ends the client at once
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        headers = key_headers(api_key(args.api_key_file))
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if url_carries_key(args.url):
        print(f"warning: a key in --url is shown by ps to every user of this host; use ${KEY_VARIABLE} "
              "or --api-key-file", file=sys.stderr)
    try:
        if args.detach:
            answers = asyncio.run(detach.submit(args.url, args.numbers, headers))
        else:
            jobs = asyncio.run(compute(args.url, args.numbers, lambda jobs: Progress(jobs, quiet=args.quiet),
                                       args.timeout, headers, stop))
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
    except Refused as exc:
        print(f"error: {exc}; set ${KEY_VARIABLE} or --api-key-file", file=sys.stderr)
        sys.exit(EXIT_ERROR_ANSWER)
    try:
        status = report_detached(args.numbers, answers, args) if args.detach else report(jobs, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader has gone (``| head``): stop quietly. Python would try to
        # flush stdout again at exit and complain, so point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_PIPE_CLOSED)
    sys.exit(exit_status(stop.signum) if stop.requested else status)
