"""Event stream clients for the tests and the fan-out benchmark, over real sockets.

`SocketRecorder` keeps every message a WebSocket receives with its arrival time and
how the socket closed; `StalledSocket` opens a WebSocket and then stops reading,
like a frozen dashboard; `latencies` turns recordings into commit-to-receipt delays.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

EVENT_FIELDS = {
    "id",
    "seq",
    "type",
    "job_id",
    "feature_name",
    "step_index",
    "step_name",
    "attempt",
    "progress",
    "ts",
    "data",
}
TERMINAL = {"JOB_COMPLETED", "JOB_ERROR", "JOB_CANCELLED"}


def ws_url(api_url: str, path: str) -> str:
    return "ws" + api_url.removeprefix("http") + path


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


class SocketRecorder:
    """One WebSocket: each message with its arrival time (epoch seconds) and the close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.connected_at: float | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.connected = asyncio.Event()  # set on WS_CONNECTED

    async def run(self, until: Callable[[dict[str, Any]], bool] | None = None) -> SocketRecorder:
        """Read until the server closes, or until `until(message)` says enough."""
        async with connect(
            self.url, compression=None, proxy=None, max_size=None, open_timeout=60
        ) as ws:
            self.connected_at = time.time()
            try:
                async for raw in ws:
                    body = json.loads(raw)
                    self.received.append((time.time(), body))
                    if body.get("type") == "WS_CONNECTED":
                        self.connected.set()
                    if until is not None and until(body):
                        break
            except ConnectionClosed:
                pass
        self.close_code = ws.close_code
        self.close_reason = ws.close_reason or ""
        return self

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [body for _, body in self.received]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [body for body in self.messages if body.get("type") != "WS_CONNECTED"]


async def submit_many(api_url: str, feature: str, count: int, at_once: int = 8) -> list[str]:
    """Create `count` jobs, a few requests at a time (many at once stall job creation)."""
    limit = asyncio.Semaphore(at_once)
    body = {"feature_name": feature, "input_data": {"prompt": "events"}}
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:

        async def create() -> str:
            async with limit:
                response = await client.post("/api/v1/jobs", json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["job_id"])

        return list(await asyncio.gather(*(create() for _ in range(count))))


def latencies(recorders: Iterable[SocketRecorder]) -> list[float]:
    """Commit-to-receipt delays of the events each socket received live (committed
    after it connected), in seconds; back-filled history is not a delivery delay."""
    delays = []
    for recorder in recorders:
        start = recorder.connected_at or 0.0
        for at, body in recorder.received:
            if "ts" in body and body.get("type") != "WS_CONNECTED":
                committed = epoch(body["ts"])
                if committed >= start:
                    delays.append(at - committed)
    return delays


def read_sse(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events from a response's lines: each as {"id", "event", "data"}.
    Comments (keep-alives) and `retry:` are skipped, as an EventSource does."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name in ("id", "event", "data"):
                fields[name] = value.removeprefix(" ")


def latency_summary(delays: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds, and how many deliveries were measured."""
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "max_ms": round(max(delays) * 1000, 1),
        "deliveries": len(delays),
    }


class StalledSocket:
    """A WebSocket client that completes the handshake and then stops reading.

    Its receive buffer is tiny, so the server's writes back up after a few megabytes
    at most; `drain()` later reads everything that was sent, up to the close frame.
    """

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        parsed = parse_uri(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((parsed.host, parsed.port))
        self.protocol.send_request(self.protocol.connect())
        for chunk in self.protocol.data_to_send():
            self.sock.sendall(chunk)

    def drain(self, timeout: float = 60.0) -> tuple[list[dict[str, Any]], int | None, str]:
        """Read to the server's close: (messages, close code, close reason)."""
        self.sock.settimeout(timeout)
        messages: list[dict[str, Any]] = []
        while self.protocol.close_rcvd is None:
            data = self.sock.recv(1 << 20)
            if not data:
                break
            self.protocol.receive_data(data)
            for item in self.protocol.events_received():
                if isinstance(item, Frame) and item.opcode is Opcode.TEXT:
                    messages.append(json.loads(bytes(item.data)))
        self.sock.close()
        close = self.protocol.close_rcvd
        return messages, (close.code if close else None), (close.reason if close else "")


class FanOut:
    """Many sockets on one API at once: some on single jobs, some on `/ws` (every job).

    `start()` returns once every socket has its WS_CONNECTED; `finish()` once each
    per-job socket was closed by the server and each `/ws` socket saw `jobs` jobs end.
    """

    def __init__(
        self, api_url: str, job_targets: list[str], all_jobs_sockets: int, after_id: int, jobs: int
    ) -> None:
        self.job_sockets = [SocketRecorder(ws_url(api_url, f"/ws/{job}")) for job in job_targets]
        self.all_sockets = [
            SocketRecorder(ws_url(api_url, f"/ws?after={after_id}"))
            for _ in range(all_jobs_sockets)
        ]
        self._jobs = jobs
        self._tasks: list[asyncio.Task[SocketRecorder]] = []

    def _all_jobs_done(self) -> Callable[[dict[str, Any]], bool]:
        # Only jobs created after `after_id` count: older ones are not this run's.
        created: set[str] = set()
        ended: set[str] = set()

        def seen_enough(body: dict[str, Any]) -> bool:
            if body.get("type") == "JOB_CREATED":
                created.add(body["job_id"])
            elif body.get("type") in TERMINAL and body["job_id"] in created:
                ended.add(body["job_id"])
            return len(ended) >= self._jobs

        return seen_enough

    async def start(self, timeout: float = 60.0) -> None:
        self._tasks = [asyncio.create_task(r.run()) for r in self.job_sockets]
        self._tasks += [
            asyncio.create_task(r.run(until=self._all_jobs_done())) for r in self.all_sockets
        ]
        everyone = [*self.job_sockets, *self.all_sockets]
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in everyone)), timeout)

    async def finish(self, timeout: float = 120.0) -> None:
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    @property
    def recorders(self) -> list[SocketRecorder]:
        return [*self.job_sockets, *self.all_sockets]

    def delivered(self) -> int:
        return sum(len(r.events) for r in self.recorders)
