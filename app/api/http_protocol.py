"""The API's HTTP/1.1 protocol: uvicorn's httptools one (a parser in C: a request's
parsing costs a fraction of what the pure-Python h11 one takes), with a deadline for
each request.

uvicorn bounds an idle keep-alive connection, but not a request arriving slowly: a
client that sends a header line (or a body byte) now and then holds its socket for
ever. Here a request's headers and body must all arrive within
HTTP_REQUEST_TIMEOUT_S of the connection opening (its first request) or of their
first byte (a later one; uvicorn's keep-alive timeout bounds the wait before it);
past that the connection is closed. A WebSocket upgrade leaves this
protocol, and the deadline with it. `cao api` passes it to uvicorn by name
(`--http app.api.http_protocol:RequestDeadlineProtocol` for plain uvicorn).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import get_settings


class RequestDeadlineProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._timeout_s = get_settings().http_request_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        if self._deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is in
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("request not received within HTTP_REQUEST_TIMEOUT_S; closing")
            self.transport.close()
