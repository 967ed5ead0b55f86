"""How many requests each client has in flight on this server: one counter, one ticket per request.

A request is in flight from its arrival until its final answer is delivered:
at once for most; for a ``factorial`` whose job is still to end, when the
delivery loop sends its end (handlers/delivery.py), or when the request is
cancelled or its connection closes. An HTTP POST's accepted job counts until
it ends or its client's DELETE. Each request holds one ``Ticket``; ending it
again does nothing, so a count is taken back exactly once and cannot drift.

The per-client totals are what this server writes to Redis for
CLIENT_MAX_IN_FLIGHT (handlers/limits.py ``ClientCounts``, jobs/quota.py);
the per-connection ones are what MAX_IN_FLIGHT bounds (``RequestBudget``).
Lives on the IOLoop.
"""

from __future__ import annotations

from typing import Callable, Hashable


class Ticket:
    """One request in flight, of ``client`` (on connection ``owner``, or None over HTTP)."""

    __slots__ = ("_counter", "client", "owner", "ended")

    def __init__(self, counter: "InFlight", client: str, owner: Hashable | None):
        self._counter = counter
        self.client = client
        self.owner = owner
        self.ended = False

    def end(self) -> None:
        """Its final answer was delivered, or it was cancelled, or its connection closed; later calls do nothing."""
        if not self.ended:
            self.ended = True
            self._counter._ended(self)


class InFlight:
    """This process's requests in flight, per client and per connection."""

    def __init__(self, on_change: Callable[[str], None] = lambda client: None):
        # Told the client of every change, so its new count reaches Redis with the next exchange.
        self.on_change = on_change
        self._of_client: dict[str, int] = {}
        self._of_owner: dict[Hashable, set[Ticket]] = {}

    def start(self, client: str, owner: Hashable | None = None) -> Ticket:
        """Count one more request of ``client`` (arrived on connection ``owner``); end the ticket when it is done."""
        ticket = Ticket(self, client, owner)
        self._of_client[client] = self._of_client.get(client, 0) + 1
        if owner is not None:
            self._of_owner.setdefault(owner, set()).add(ticket)
        self.on_change(client)
        return ticket

    def of_client(self, client: str) -> int:
        return self._of_client.get(client, 0)

    def of(self, owner: Hashable) -> int:
        """Requests in flight on connection ``owner``: a task asked for three times counts three."""
        return len(self._of_owner.get(owner, ()))

    def clients(self) -> set[str]:
        """The clients with any request in flight here."""
        return set(self._of_client)

    def any(self) -> bool:
        """Whether any request is in flight here (without building ``clients()``)."""
        return bool(self._of_client)

    def end_all(self, owner: Hashable) -> None:
        """End every request of connection ``owner`` (it closed)."""
        for ticket in list(self._of_owner.get(owner, ())):
            ticket.end()

    def _ended(self, ticket: Ticket) -> None:
        left = self._of_client[ticket.client] - 1
        if left:
            self._of_client[ticket.client] = left
        else:
            del self._of_client[ticket.client]
        if ticket.owner is not None:
            tickets = self._of_owner[ticket.owner]
            tickets.discard(ticket)
            if not tickets:
                del self._of_owner[ticket.owner]
        self.on_change(ticket.client)
