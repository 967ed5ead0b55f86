"""The no-queue ceiling: a WebSocket server that answers the protocol's frames from memory.

    python -m bench.ceiling --port 8899

It parses each frame with the service's own ``protocol.parse_request`` and
answers a factorial request with the same two frames the service sends (the
acknowledgement, then the success message), with no Redis, no queue and no
worker: each ``n!`` is computed once, kept as its finished success message
under one task id, and written again for every later request, as the
service does for a shared job. What the benchmark client and the loopback
allow, measured by the same client, is then the ceiling every service figure
is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid

import tornado.web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

import protocol
from handlers import looplag
from jobs.factorial import factorial_digits
from jobs.routing import queue_for
from protocol import FactorialRequest, ProtocolError
from server import raise_open_file_limit, run, tune_gc
from settings import Settings

log = logging.getLogger("bench.ceiling")


class Answers:
    """Each number's task id and finished success message, made once."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._by_number: dict[int, tuple[str, bytes]] = {}

    def get(self, number: int) -> tuple[str, bytes]:
        found = self._by_number.get(number)
        if found is None:
            task_id = uuid.uuid4().hex
            found = self._by_number[number] = (task_id, protocol.success(task_id, factorial_digits(number)))
        return found

    def queue(self, number: int) -> str:
        return queue_for(number, self.settings)


class CeilingSocket(WebSocketHandler):
    def initialize(self, answers: Answers) -> None:
        self.answers = answers

    def open(self) -> None:
        self.set_nodelay(True)

    def on_message(self, frame) -> None:
        try:
            request = protocol.parse_request(frame, self.answers.settings.max_number)
        except ProtocolError as err:
            self._send(protocol.error(err))
            return
        if not isinstance(request, FactorialRequest):
            self._send(protocol.error(protocol.unknown_task(request.task_id), request.ref))
            return
        task_id, payload = self.answers.get(request.number)
        self._send(protocol.ack(task_id, "queued", self.answers.queue(request.number), request.ref))
        self._send(protocol.with_ref(payload, request.ref))

    def _send(self, frame) -> None:
        try:
            self.write_message(frame)
        except WebSocketClosedError:
            pass


def make_app(answers: Answers | None = None) -> tornado.web.Application:
    answers = answers or Answers()
    return tornado.web.Application([(r"/ws", CeilingSocket, {"answers": answers})],
                                   websocket_max_message_size=answers.settings.max_frame_bytes)


async def serve(port: int, host: str, precompute: tuple[int, ...], settings: Settings, probe_port: int = 0) -> None:
    # What the service's server.py does for itself too: as many sockets as
    # allowed, and the same garbage collector settings.
    raise_open_file_limit()
    answers = Answers(settings)
    # Every soft answer is ready before the first request: "nothing cached"
    # is said of the service; the ceiling is the best any server could do.
    for number in (*range(answers.settings.soft_max_number + 1), *precompute):
        answers.get(number)
    tune_gc()
    make_app(answers).listen(port, host, backlog=16384)
    # The benchmark's servers run the loop lag probe: so does the ceiling, at the same cost.
    looplag.start(probe_port)
    log.info("ceiling at ws://%s:%d/ws", host, port)
    await asyncio.Event().wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--probe-port", type=int, default=0, help="serve the loop lag probe here (0: off)")
    parser.add_argument("--precompute", type=int, action="append", default=[],
                        help="also make this n! before listening (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    settings = Settings.from_env()
    # The service's event loop (EVENT_LOOP), so that the two differ only by the queue.
    run(serve(args.port, args.host, tuple(args.precompute), settings, args.probe_port), settings.event_loop)


if __name__ == "__main__":
    main()
