"""The WebSocket front door: assembles the Tornado application and serves it.

    python server.py          # settings from the environment (see settings.py)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import mimetypes
import os
import resource
import signal
import ssl
import sys

import tornado.web
import uvloop
from redis import Redis

from handlers import looplag
from handlers.api import FactorialApiHandler, TaskApiHandler
from handlers.context import ServiceContext
from handlers.delivery import ResultDelivery
from handlers.errors import NotFoundHandler, StaticFiles, log_request
from handlers.front_door import FrontDoorServer
from handlers.health import HealthHandler, MetricsHandler
from handlers.identity import ClientIdentifier
from handlers.limits import ClientCounts
from handlers.metrics import Metrics
from handlers.redis_watch import RedisWatch
from handlers.socket import FactorialSocket
from jobs import connection
from jobs.gateway import JobGateway
from jobs.quota import QuotaStore
from jobs.store import JobStore
from settings import Settings
from stack import web_processes

log = logging.getLogger("server")

STATIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# The contract documents, served as they are in docs/ (README: "Protocol").
DOCS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs")
mimetypes.add_type("application/yaml", ".yaml")  # RFC 9512; Python's table has no entry for it
# Connections waiting to be accepted; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 16384
# Python's defaults (700, 10, 10) run a full collection every ~70,000 net
# allocations, and one full collection walks every live object: 0.9 s with
# 10,000 connections open (measured with the loop lag probe). Here a full one
# comes every ~5,000,000, and a middle one walks at most ~25,000 objects.
GC_THRESHOLDS = (5_000, 5, 200)


def connect_redis(settings: Settings) -> Redis:
    # Replies stay bytes: results are forwarded exactly as the worker stored them.
    return connection.connect(
        settings,
        socket_connect_timeout=2,
        # Longer than the delivery loop's blocking read of the event stream,
        # and than a submit's WAIT for replicas.
        socket_timeout=max(5, 2 * settings.delivery_wait_ms / 1000, 1 + settings.redis_replica_timeout_ms / 1000),
        retry_on_timeout=False,
    )


def make_context(settings: Settings) -> ServiceContext:
    metrics = Metrics()
    redis = connect_redis(settings)
    quota = QuotaStore(redis, settings) if QuotaStore.wanted(settings) else None
    counts = ClientCounts(enabled=quota is not None)
    jobs = JobGateway(JobStore(redis, settings), on_internal_error=metrics.internal_error, quota=quota, counts=counts)
    return ServiceContext(settings, jobs, ResultDelivery(jobs, settings), metrics, ClientIdentifier(settings),
                          counts=counts)


def make_app(settings: Settings, context: ServiceContext | None = None) -> tornado.web.Application:
    """The application; call ``app.context.delivery.start()`` on the IOLoop that serves it."""
    context = context or make_context(settings)
    # Whether this process reaches Redis: fails requests fast, closes WebSockets with 1013, answers /healthz.
    watch = RedisWatch(settings, context.jobs.outage)
    app = tornado.web.Application(
        [
            (r"/ws", FactorialSocket, {"context": context, "watch": watch}),
            (r"/()", StaticFiles, {"path": STATIC_PATH, "default_filename": "index.html"}),
            (r"/(asyncapi\.yaml|openapi\.yaml)", StaticFiles, {"path": DOCS_PATH}),
            (r"/api/factorial", FactorialApiHandler, {"context": context}),
            # Any id, even an empty one or one with a slash, is a task id: unknown_task_id, as on /ws.
            (r"/api/tasks/(.*)", TaskApiHandler, {"context": context}),
            (r"/healthz", HealthHandler, {"context": context, "watch": watch}),
            (r"/metrics", MetricsHandler, {"context": context}),
        ],
        static_path=STATIC_PATH,  # also serves /favicon.ico from static/
        static_handler_class=StaticFiles,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        websocket_max_message_size=settings.max_frame_bytes,
        # A connection that answers no ping within the timeout is closed (handlers/socket.py).
        websocket_ping_interval=settings.websocket_ping_interval_s,
        websocket_ping_timeout=settings.websocket_ping_timeout_s,
    )
    app.context = context
    app.redis_watch = watch
    return app


def raise_open_file_limit() -> None:
    """Allow as many open sockets as the system lets this process have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    return context


async def serve(settings: Settings, slot: int = 0) -> None:
    """Serve until SIGTERM or SIGINT, then drain: see handlers/drain.py."""
    raise_open_file_limit()
    app = make_app(settings)
    # A few new connections start per loop pass (handlers/pacing.py), with
    # limits on bodies, slow headers and connections (handlers/front_door.py).
    # No xheaders: Tornado would believe X-Forwarded-For and X-Real-IP from
    # anyone; handlers/identity.py believes only TRUSTED_PROXIES.
    server = FrontDoorServer(app, settings, ssl_options=ssl_context(settings))
    server.listen(
        settings.server_port,
        settings.server_host,
        backlog=LISTEN_BACKLOG,
        # Several processes of this host listen on the same port (stack/web_processes.py).
        reuse_port=True,
    )
    app.context.delivery.start()
    looplag.start(settings.loop_lag_port + slot if settings.loop_lag_port else 0)
    scheme = "wss" if settings.tls else "ws"
    log.info("Serving %s://%s:%d/ws (Redis at %s)", scheme, settings.server_host or "0.0.0.0",
             settings.server_port, connection.describe(settings))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("Draining: no new connections; closing %d WebSockets once answered", app.context.drain.open_sockets)
    server.stop()
    left = await app.context.drain.close_all(settings.drain_timeout_s)
    try:
        # In-flight HTTP requests finish; idle keep-alive connections close.
        await asyncio.wait_for(server.close_all_connections(), settings.drain_timeout_s)
    except asyncio.TimeoutError:
        left += 1
    await app.context.delivery.close()
    app.redis_watch.stop()
    await loop.run_in_executor(None, app.context.jobs.close)
    log.info("Drained%s", f" ({left} connections did not close in time)" if left else "")


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never rescan what exists at startup."""
    gc.collect()
    gc.freeze()  # modules, classes, settings: they live as long as the process
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_gc()
    processes = settings.web_processes or os.cpu_count() or 1
    if processes == 1:
        run(serve(settings), settings.event_loop)
    else:
        sys.exit(web_processes.run(processes, lambda slot: run(serve(settings, slot), settings.event_loop)))


def run(main_coroutine, event_loop: str = "uvloop"):
    """Run the server's coroutine on the chosen event loop (settings.EVENT_LOOPS); the two compared in docs/performance.md."""
    if event_loop == "uvloop":
        return uvloop.run(main_coroutine)
    return asyncio.run(main_coroutine)


if __name__ == "__main__":
    main()
