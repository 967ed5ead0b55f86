"""Keeping the IOLoop responsive: an asyncio event loop that takes at most
``MAX_READY`` ready sockets per pass, at most ``MAX_ACCEPTS`` new connections,
and a garbage collector that seldom stops the world.

asyncio asks epoll for every ready socket at once and runs all their handlers
before it looks at its timers again: when 10,000 clients connect or send at
the same moment, one pass handles them all and the loop answers nothing else
for a second. Capped, a pass handles a slice; epoll is level-triggered, so
the sockets left over are simply reported again in the next pass (the kernel
puts them at the back of its ready list, so no socket waits for long).
"""

from __future__ import annotations

import asyncio
import gc
import math
import selectors

import tornado.netutil

# About 32 handshakes or requests, roughly 10-30 ms of work, per pass.
MAX_READY = 32
# Connections tornado accepts in one go, each handshake run at once.
MAX_ACCEPTS = 8
# Python's defaults (700, 10, 10) run a full collection every ~70,000 net
# allocations, and one full collection walks every live object: 0.9 s with
# 10,000 connections open (measured with the loop lag probe). Here a full one
# comes every ~5,000,000, and a middle one walks at most ~25,000 objects
# (at (10_000, 10) it walked 100,000: 52 ms).
GC_THRESHOLDS = (5_000, 5, 200)


if hasattr(selectors, "EpollSelector"):

    class FairEpollSelector(selectors.EpollSelector):
        def select(self, timeout=None):
            # selectors.EpollSelector.select, with maxevents capped.
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                timeout = math.ceil(timeout * 1e3) * 1e-3
            ready = []
            try:
                fd_event_list = self._selector.poll(timeout, max(min(len(self._fd_to_key), MAX_READY), 1))
            except InterruptedError:
                return ready
            for fd, event in fd_event_list:
                events = 0
                if event & ~selectors.select.EPOLLIN:
                    events |= selectors.EVENT_WRITE
                if event & ~selectors.select.EPOLLOUT:
                    events |= selectors.EVENT_READ
                key = self._key_from_fd(fd)
                if key:
                    ready.append((key, events & key.events))
            return ready


def limit_accepts() -> None:
    """Make tornado accept at most ``MAX_ACCEPTS`` connections per pass, not 128.

    Tornado's accept handler takes up to ``tornado.netutil._DEFAULT_BACKLOG``
    waiting connections and runs each one's handshake before it returns, about
    2 ms apiece on a busy machine: 128 of them hold the loop a quarter of a
    second in a connection storm. The listen backlog itself is set by ``listen``.
    """
    tornado.netutil._DEFAULT_BACKLOG = MAX_ACCEPTS


def tune_gc() -> None:
    """Collect cyclic garbage less often, and never rescan what exists at startup."""
    gc.collect()
    gc.freeze()  # modules, classes, settings: they live as long as the process
    gc.set_threshold(*GC_THRESHOLDS)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector loop with the capped epoll selector where there is epoll, else the default loop."""
    if hasattr(selectors, "EpollSelector"):
        return asyncio.SelectorEventLoop(FairEpollSelector())
    return asyncio.new_event_loop()
