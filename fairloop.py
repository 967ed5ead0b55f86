"""An asyncio event loop that takes at most ``MAX_READY`` ready sockets per pass.

asyncio asks epoll for every ready socket at once and runs all their handlers
before it looks at its timers again: when 10,000 clients connect or send at
the same moment, one pass handles them all and the loop answers nothing else
for a second. Capped, a pass handles a slice; epoll is level-triggered, so
the sockets left over are simply reported again in the next pass (the kernel
puts them at the back of its ready list, so no socket waits for long).
"""

from __future__ import annotations

import asyncio
import math
import selectors

# About 64 handshakes or requests, roughly 10-30 ms of work, per pass.
MAX_READY = 64


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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector loop with the capped epoll selector where there is epoll, else the default loop."""
    if hasattr(selectors, "EpollSelector"):
        return asyncio.SelectorEventLoop(FairEpollSelector())
    return asyncio.new_event_loop()
