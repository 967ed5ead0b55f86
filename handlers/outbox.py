"""What one WebSocket connection is owed: frames written as fast as its socket takes them, within a budget.

Tornado buffers every write without limit, and a client that asks for a big
result again and again without reading would have the server hold every copy
(measured: 55 MB to 658 MB of RSS in 6 s, 200 copies of 100000! a second).
So frames go to Tornado only while its buffer holds less than
``HIGH_WATER_BYTES``; the rest wait here, in order, each holding a reference
to its message rather than a copy of it (the same stored result owed to many
requests is held once, and its copy with each one's ``ref`` is made when that
frame is written). When what waits here and what Tornado holds together pass
``CLIENT_MAX_UNSENT_BYTES``, the connection does not take what it is sent,
and is closed with 1008 (protocol: Transport).

A client may open ``CLIENT_MAX_CONNECTIONS`` connections, each owed up to
that budget; ``ClientUnsent`` adds what all of one client's connections in
this process are owed, and past ``CLIENT_MAX_UNSENT_BYTES_TOTAL`` the
connection that is sent more is closed the same way.

No Tornado here: the handler gives a ``write`` that returns the write's
future (or None once the connection is closed), and the future's end says
the socket took the frame.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol

from protocol import with_ref

# RFC 6455 section 7.4.1: 1008 "policy violation", for a connection that does
# not take what it is sent. The reason must fit a close frame (123 bytes).
UNREAD_CLOSE_CODE = 1008
UNREAD_CLOSE_TEXT = "not reading: unsent bytes over CLIENT_MAX_UNSENT_BYTES; reconnect and ask again by task_id"
# Tornado's buffer is kept under this (or half the budget, if smaller): enough
# to keep a fast socket busy between two loop passes.
HIGH_WATER_BYTES = 4 * 1024 * 1024
# What a waiting frame costs beside its message: its place in the queue, its ref.
ENTRY_BYTES = 128


class Written(Protocol):
    def add_done_callback(self, callback: Callable[["Written"], None]) -> None: ...


class ClientShare:
    """What the connections of one client in this process are owed together, against a budget."""

    def __init__(self, limit: int):
        self.limit = limit  # bytes; 0: no limit
        self.bytes = 0
        self.connections = 0

    @property
    def over(self) -> bool:
        return bool(self.limit) and self.bytes > self.limit


class ClientUnsent:
    """Each client's ``ClientShare`` in this process, kept while it has a connection."""

    def __init__(self, limit: int):
        self.limit = limit
        self._shares: dict[str, ClientShare] = {}

    def join(self, client: str) -> ClientShare:
        share = self._shares.get(client)
        if share is None:
            share = self._shares[client] = ClientShare(self.limit)
        share.connections += 1
        return share

    def leave(self, client: str, share: ClientShare) -> None:
        share.connections -= 1
        if not share.connections and self._shares.get(client) is share:
            del self._shares[client]

    def __contains__(self, client: str) -> bool:
        return client in self._shares

    def owed_to(self, client: str) -> int:
        share = self._shares.get(client)
        return share.bytes if share else 0


class Outbox:
    def __init__(self, limit: int, write: Callable[[bytes | str], Written | None],
                 buffer_empty: Callable[[], bool], emptied: Callable[[], None] = lambda: None,
                 share: ClientShare | None = None):
        self.limit = limit  # bytes; 0: no limit
        # The client's, which this connection's unsent bytes are added to (None: counted alone).
        self.share = share if share is not None else ClientShare(0)
        self.high_water = min(HIGH_WATER_BYTES, limit // 2) if limit else HIGH_WATER_BYTES
        self._write = write
        # Tornado's public word that its write buffer holds nothing (IOStream.writing()).
        self._buffer_empty = buffer_empty
        # Called when the last frame that had to wait went to Tornado (never from send()).
        self._emptied = emptied
        # Bytes given to Tornado since its buffer was last seen empty, whose write has not ended.
        self._written = 0
        self._generation = 0  # how many times the buffer was seen empty
        self._waiting: deque[tuple[bytes | str, object]] = deque()
        self._held: dict[int, list] = {}  # id(message) -> [message, frames waiting with it]
        self._held_bytes = 0
        self.closed = False

    # --- what the handler asks -------------------------------------------------

    def send(self, message: bytes | str, ref=None) -> int:
        """Owe the peer ``message`` (with ``ref`` added, protocol.with_ref); return its size, 0 once closed."""
        if self.closed:
            return 0
        held = self._held.get(id(message))
        if held is None:
            self._held[id(message)] = [message, 1]
            self._count_held(len(message) + ENTRY_BYTES)
        else:
            held[1] += 1
            self._count_held(ENTRY_BYTES)
        self._waiting.append((message, ref))
        self.flush()
        return 0 if self.closed else len(message)

    @property
    def unsent(self) -> int:
        """Bytes owed and not taken by the socket: in Tornado's buffer, and waiting here."""
        return self._in_buffer() + self._held_bytes

    @property
    def over_limit(self) -> bool:
        """Whether the peer is owed more than the budget, or its client more than the client's. What
        Tornado holds of one connection alone never passes the connection's budget: a frame goes there
        only when there is room, or, if bigger than the room, into an empty buffer. It counts toward
        the client's, though: each connection's Tornado buffer may hold up to ``HIGH_WATER_BYTES``."""
        if self.share.over:
            return True  # the client's connections together: Tornado's buffers count too
        return bool(self.limit) and self._held_bytes > 0 and self.unsent > self.limit

    @property
    def empty(self) -> bool:
        """Nothing waits here (Tornado may still be sending)."""
        return not self._waiting

    def drop(self) -> None:
        """The connection is closed: forget everything owed."""
        self.closed = True
        self._waiting.clear()
        self._held.clear()
        self._count_held(-self._held_bytes)
        self._count_written(-self._written)

    # --- moving frames to Tornado ---------------------------------------------

    def flush(self) -> None:
        """Write waiting frames while Tornado's buffer has room."""
        while self._waiting and not self.closed:
            message, ref = self._waiting[0]
            buffered = self._in_buffer()
            if buffered and buffered + len(message) > self.high_water:
                return  # the next write's end calls flush again
            self._waiting.popleft()
            self._release(message)
            frame = with_ref(message, ref)
            written = self._write(frame)
            if written is None:
                self.drop()
                return
            size = len(frame)
            self._count_written(size)
            written.add_done_callback(lambda _, size=size, seen=self._generation: self._taken(size, seen))

    def _taken(self, size: int, generation: int) -> None:
        """A write ended: the socket took the frame (or the connection closed and dropped it)."""
        if generation == self._generation and not self.closed:  # else it stopped counting already
            self._count_written(-size)
        if self._waiting and not self.closed:
            self.flush()
            if not self._waiting and not self.closed:
                self._emptied()

    def _in_buffer(self) -> int:
        """Bytes Tornado holds, or a little more: never less."""
        if self._buffer_empty():
            # The socket took everything handed over so far, though the writes'
            # futures end only a loop pass or two later: none of it counts now.
            self._count_written(-self._written)
            self._generation += 1
        return self._written

    def _release(self, message) -> None:
        held = self._held[id(message)]
        held[1] -= 1
        self._count_held(-ENTRY_BYTES)
        if not held[1]:
            del self._held[id(message)]
            self._count_held(-len(message))

    # Every change of what this connection is owed goes through these two, so its client's share follows.

    def _count_held(self, delta: int) -> None:
        self._held_bytes += delta
        self.share.bytes += delta

    def _count_written(self, delta: int) -> None:
        self._written += delta
        self.share.bytes += delta
