"""Ordered, de-duplicated, gap-filling event streams: what WebSocket and SSE send.

A stream first reads the log after the client's position (the subscription is
already open, so nothing committed meanwhile can slip between the two), then takes
live events from its hub mailbox. It sends each event once, in order: a job's stream
by `seq` (contiguous, so a jump is a gap that the log fills), the all-jobs stream by
global `id` (not contiguous for a client: other tenants' events and deleted jobs
leave holes; the hub already delivers every committed id in order). A job's stream
ends after a terminal event once nothing newer is known.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from app.events.hub import EventHub, Subscription
from app.events.wire import LOG_PAGE, WireEvent, WirePage, read_events_after, read_job_events


class EventSource(Protocol):
    """Where a stream's events come from and how they are ordered."""

    @property
    def contiguous(self) -> bool: ...

    @property
    def ends_after_terminal(self) -> bool: ...

    def position(self, event: WireEvent) -> int: ...

    async def read(self, after: int) -> WirePage: ...

    async def admits(self, event: WireEvent) -> bool: ...


@dataclass(frozen=True)
class JobEvents:
    """One job's events, by per-job `seq`."""

    job_id: uuid.UUID
    contiguous: bool = True
    ends_after_terminal: bool = True

    def position(self, event: WireEvent) -> int:
        return event.seq

    async def read(self, after: int) -> WirePage:
        return await read_job_events(self.job_id, after, LOG_PAGE)

    async def admits(self, event: WireEvent) -> bool:
        return True  # the mailbox only holds this job's events


@dataclass(frozen=True)
class AllEvents:
    """Every job's events (one tenant's, when `tenant` is set), by global `id`."""

    hub: EventHub
    tenant: str | None = None
    contiguous: bool = False
    ends_after_terminal: bool = False

    def position(self, event: WireEvent) -> int:
        return event.id

    async def read(self, after: int) -> WirePage:
        return await read_events_after(after, LOG_PAGE, self.tenant)

    async def admits(self, event: WireEvent) -> bool:
        return self.tenant is None or await self.hub.tenant_of(event.job_id) == self.tenant


class OrderedStream:
    """The events a client has not seen yet: log first, then live, each once, in order."""

    def __init__(
        self, sub: Subscription, source: EventSource, after: int, *, finished: bool = False
    ) -> None:
        self.sub = sub
        self.source = source
        # The position of the last event handed out (or skipped as not this client's).
        self.last = after
        # The position of the last event the consumer finished sending: where to resume.
        self.delivered = after
        # True when the last event sent was terminal (or the job was over at `after`).
        self._at_terminal = finished

    async def events(self, idle_after: float | None = None) -> AsyncIterator[WireEvent | None]:
        """Each event to send; None after `idle_after` seconds without one (a keep-alive).

        The subscription counts as busy from the moment an event is handed out until
        the consumer asks for the next, so the hub can spot a client that stopped reading.
        """
        loop = asyncio.get_running_loop()
        async for event in self._ordered(idle_after):
            self.sub.busy_since = loop.time()
            yield event
            self.sub.busy_since = None
            if event is not None:
                self.delivered = self.source.position(event)

    async def _ordered(self, idle_after: float | None) -> AsyncIterator[WireEvent | None]:
        async for missed in self._from_log():
            yield missed
        while not self._finished():
            event = await self.sub.next(idle_after)
            if event is None:
                yield None
                continue
            position = self.source.position(event)
            if position <= self.last:
                continue  # already sent, from the log or an earlier delivery
            if self.source.contiguous and position > self.last + 1:
                # A gap: everything up to this event is committed, so the log has it.
                async for missed in self._from_log():
                    yield missed
                continue
            admitted = await self.source.admits(event)
            self._advance(event)
            if admitted:
                yield event

    async def _from_log(self) -> AsyncIterator[WireEvent]:
        while True:
            page = await self.source.read(self.last)
            for event in page:
                if self.source.position(event) > self.last:
                    self._advance(event)
                    yield event
            if not page.more:  # a page cut short by its byte budget is not the end
                return

    def _advance(self, event: WireEvent) -> None:
        self.last = self.source.position(event)
        self._at_terminal = self.source.ends_after_terminal and event.is_terminal

    def _finished(self) -> bool:
        if not self._at_terminal:
            return False
        newest = self.sub.newest()  # a resumed job goes on
        return newest is None or self.source.position(newest) <= self.last
