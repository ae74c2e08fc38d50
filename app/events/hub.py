"""The per-process event hub: one Redis subscription shared by every socket.

The hub keeps a cursor on the global event id and feeds each subscriber's mailbox
with every committed event in id order, exactly once. Pub/sub payloads are the
wake-up; the log is the truth:

- a payload whose id is the next one is delivered at once (SQLite numbers events at
  insert). Any other payload, without an id (PostgreSQL) or beyond the next one,
  wakes the sequencer run: number waiting events (app/events/sequencer.py) and
  deliver them straight from the database's answer when they follow the cursor;
  first read the log for the ids between (another API process numbered those); or,
  when nothing was left to number, read the log from the cursor. Runs are coalesced:
  one at a time per process, and one more afterwards if woken meanwhile;
- on every (re)subscribe, and once a second anyway, the same run happens, so events
  published while the subscription was down, or whose publish failed, still arrive
  (one read for the whole process, not one per socket);
- while the process has no subscriber, wake-ups are left to that once-a-second run
  (a new subscriber starts one), so an API process that only takes jobs does not number
  and read the log after every commit of every process;
- a payload is never delivered on its own say-so except as the very next id.

Mailboxes are bounded. A subscriber that falls too far behind, or whose socket has
not accepted a message for `MAX_SEND_STALL_S`, is stopped as slow (the socket closes
with 4008 and the client resumes with `after`); the hub itself never waits on a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from enum import StrEnum

import redis.asyncio as aioredis
import structlog

from app.events.publisher import events_channel
from app.events.sequencer import SEQUENCE_BATCH
from app.events.wire import (
    LOG_PAGE,
    WireEvent,
    read_events_after,
    read_job_tenant,
    read_latest_id,
    sequence_pending,
)

log = structlog.get_logger(__name__)

# Undelivered events a subscriber may hold before it counts as too slow.
MAX_PENDING_EVENTS = 1000
# How long one send may stay blocked (the client is not reading) before it counts as too slow.
MAX_SEND_STALL_S = 5.0
# The safety-net sequencer run (lost publishes, a Redis outage) and the stall sweep.
POLL_INTERVAL_S = 1.0
# How long a new subscriber waits for the hub to find its place in the log at start-up.
READY_TIMEOUT_S = 10.0
RECONNECT_DELAY_S = (0.1, 5.0)
_TENANT_CACHE_SIZE = 10_000
HUB_CLIENT_NAME = "cao-event-hub"


class StopReason(StrEnum):
    SLOW = "slow"
    SHUTDOWN = "shutdown"


class SubscriptionStopped(Exception):
    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"subscription stopped: {reason}")
        self.reason = reason


class HubUnavailable(Exception):
    """The hub has not found its place in the log yet (the database is unreachable)."""


@dataclass
class HubStats:
    """Counters for logs: how events reached this process and where they went."""

    subscribes: int = 0  # (re)subscriptions to Redis
    runs: int = 0  # sequencer runs
    delivered: int = 0  # events fanned out (each once, whichever way it came)
    sequenced: int = 0  # of which numbered by this process's sequencer runs
    from_log: int = 0  # of which read from the log (numbered elsewhere, or publish lost)
    slow_stopped: int = 0


class Subscription:
    """One subscriber's mailbox: events for one job (or all jobs), in hub order."""

    def __init__(self, job_id: str | None) -> None:
        self.job_id = job_id
        self.stop_reason: StopReason | None = None
        self.stopped = asyncio.Event()
        # Set by the consumer while it hands an event to its client (see stream.py).
        self.busy_since: float | None = None
        self._events: deque[WireEvent] = deque()
        self._wakeup = asyncio.Event()

    def offer(self, event: WireEvent) -> bool:
        """Queue an event without waiting; False when this subscriber is now too slow."""
        if len(self._events) >= MAX_PENDING_EVENTS:
            return False
        self._events.append(event)
        self._wakeup.set()
        return True

    def newest(self) -> WireEvent | None:
        return self._events[-1] if self._events else None

    async def next(self, timeout: float | None = None) -> WireEvent | None:
        """The next queued event; None after `timeout` seconds without one."""
        while not self._events:
            if self.stop_reason is not None:
                raise SubscriptionStopped(self.stop_reason)
            self._wakeup.clear()
            if timeout is None:
                await self._wakeup.wait()
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        if self.stop_reason is not None:
            raise SubscriptionStopped(self.stop_reason)
        return self._events.popleft()

    def stalled(self, now: float) -> bool:
        return self.busy_since is not None and now - self.busy_since > MAX_SEND_STALL_S

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._events.clear()
            self.stopped.set()
            self._wakeup.set()


class EventHub:
    """Tails the event log for this process and fans it out to subscribers."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._channel = events_channel(redis_url)
        self._by_job: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._all_jobs: set[Subscription] = set()
        self._cursor = 0
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._run_again = False
        self._tasks: list[asyncio.Task[None]] = []
        self._tenants: dict[str, str | None] = {}
        self._tenant_reads: dict[str, asyncio.Task[str | None]] = {}
        self.stats = HubStats()

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="cao-event-hub")]

    async def stop(self) -> None:
        for task in [*self._tasks, *filter(None, [self._runner])]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in self._subscribers():
            sub.stop(StopReason.SHUTDOWN)
        log.info("event hub stopped", **asdict(self.stats))

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str | None) -> AsyncIterator[Subscription]:
        """A mailbox for one job's events (or every job's with None) until the block ends."""
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
        except TimeoutError as exc:
            raise HubUnavailable("the event log is not reachable yet") from exc
        sub = Subscription(job_id)
        targets = self._all_jobs if job_id is None else self._by_job[job_id]
        targets.add(sub)
        self._wake()  # the cursor may be up to a poll behind while nobody listened
        try:
            yield sub
        finally:
            self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if sub.job_id is None:
            self._all_jobs.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    def _subscribers(self) -> list[Subscription]:
        return [*self._all_jobs, *(s for subs in self._by_job.values() for s in subs)]

    async def _run(self) -> None:
        delay = RECONNECT_DELAY_S[0]
        while not self._ready.is_set():
            try:
                self._cursor = await read_latest_id()
                self._ready.set()
            except Exception as exc:
                log.warning("event hub cannot read the log yet", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_S[1])
        log.info("event hub tailing the log", after_id=self._cursor, channel=self._channel)
        await asyncio.gather(self._listen_forever(), self._poll_forever())

    # --- Redis: the fast path --------------------------------------------------------

    async def _listen_forever(self) -> None:
        delay = RECONNECT_DELAY_S[0]
        while True:
            subscribed_before = self.stats.subscribes
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever was published meanwhile is read from the log on resubscribe.
                log.warning("event subscription lost; reconnecting", error=str(exc))
            if self.stats.subscribes > subscribed_before:
                delay = RECONNECT_DELAY_S[0]  # it worked for a while: retry promptly
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_S[1])

    async def _listen(self) -> None:
        client = aioredis.Redis.from_url(
            self._redis_url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=10,
            client_name=HUB_CLIENT_NAME,  # findable in CLIENT LIST
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=POLL_INTERVAL_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # A first subscribe or redis-py's silent reconnect: anything published
                    # while we were not listening is in the log.
                    self.stats.subscribes += 1
                    self._wake()
                elif message["type"] == "message":
                    self._on_payload(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    def _on_payload(self, data: bytes | str) -> None:
        try:
            event = WireEvent.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed event payload ignored", error=str(exc))
            return
        if event is not None and event.id <= self._cursor:
            return
        if event is not None and event.id == self._cursor + 1:
            self._deliver(event)
            return
        if not self._all_jobs and not self._by_job:
            # Nobody here to deliver to: the poll numbers and reads the log once a second,
            # instead of a run per wake-up (one per commit of every API process: with two
            # processes creating jobs, that work cost more than the creates themselves).
            return
        self._wake()

    # --- the sequencer and the log: the truth ------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self._stop_stalled()
            self._wake()

    def _wake(self) -> None:
        """Have a sequencer run soon: now if none is running, else right after it."""
        self._run_again = True
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_while_woken(), name="cao-event-runs")

    async def _run_while_woken(self) -> None:
        while self._run_again:
            self._run_again = False
            try:
                full = await self._sequence_and_deliver()
            except Exception as exc:
                # The next wake-up or poll retries; until then SQLite payloads keep flowing.
                log.warning("event sequencing or log read failed", error=str(exc))
                return
            self._run_again |= full  # a backlog: one batch per run, back to back

    async def _sequence_and_deliver(self) -> bool:
        """One run: number what waits, deliver everything committed up to it in id order.
        True when the batch was full (more may be waiting)."""
        numbered = await sequence_pending()
        self.stats.runs += 1
        fresh = [event for event in numbered if event.id > self._cursor]
        if not fresh:
            # Nothing was left to number here: another process numbered what woke us.
            await self._catch_up()
        else:
            if fresh[0].id > self._cursor + 1:
                await self._catch_up(before_id=fresh[0].id)
            for event in fresh:
                if event.id > self._cursor:
                    self.stats.sequenced += 1
                    self._deliver(event)
        return len(numbered) >= SEQUENCE_BATCH

    async def _catch_up(self, before_id: int | None = None) -> None:
        """Deliver every committed event after the cursor (and before `before_id`)."""
        while True:
            page = await read_events_after(self._cursor, LOG_PAGE, before_id=before_id)
            for event in page:
                if event.id > self._cursor:
                    self.stats.from_log += 1
                    self._deliver(event)
            if not page.more:  # a page cut at its byte budget is not the end
                return

    def _deliver(self, event: WireEvent) -> None:
        self._cursor = event.id
        self.stats.delivered += 1
        too_slow = [
            sub
            for subs in (self._by_job.get(event.job_id, ()), self._all_jobs)
            for sub in subs
            if not sub.offer(event)
        ]
        for sub in too_slow:
            self._stop_slow(sub, "mailbox full")

    def _stop_stalled(self) -> None:
        now = asyncio.get_running_loop().time()
        for sub in self._subscribers():
            if sub.stalled(now):
                self._stop_slow(sub, "send stalled")

    def _stop_slow(self, sub: Subscription, why: str) -> None:
        log.info("slow subscriber stopped", job_id=sub.job_id, why=why)
        self.stats.slow_stopped += 1
        sub.stop(StopReason.SLOW)
        self._forget(sub)

    # --- tenants of jobs, for tenant-scoped all-jobs streams --------------------------

    async def tenant_of(self, job_id: str) -> str | None:
        """The job's tenant (cached: it never changes); None for a job that is gone."""
        if job_id in self._tenants:
            return self._tenants[job_id]
        read = self._tenant_reads.get(job_id)
        if read is None:
            read = asyncio.create_task(read_job_tenant(uuid.UUID(job_id)))
            self._tenant_reads[job_id] = read
            read.add_done_callback(lambda task: self._remember_tenant(job_id, task))
        return await asyncio.shield(read)

    def _remember_tenant(self, job_id: str, task: asyncio.Task[str | None]) -> None:
        self._tenant_reads.pop(job_id, None)
        if task.cancelled() or task.exception() is not None:
            return
        if len(self._tenants) >= _TENANT_CACHE_SIZE:
            del self._tenants[next(iter(self._tenants))]
        self._tenants[job_id] = task.result()


_hub: EventHub | None = None


def start_hub(redis_url: str) -> EventHub:
    """Start this process's hub (the API lifespan does, once)."""
    global _hub
    if _hub is None:
        _hub = EventHub(redis_url)
        _hub.start()
    return _hub


async def stop_hub() -> None:
    global _hub
    if _hub is not None:
        await _hub.stop()
    _hub = None


def get_hub() -> EventHub:
    if _hub is None:
        raise RuntimeError("event hub not started: the API lifespan starts it")
    return _hub
