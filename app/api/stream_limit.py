"""How many event streams (WebSocket and SSE) each API key holds open in this process,
and the refusal past MAX_STREAMS_PER_KEY: one key cannot take every socket and every
hub mailbox of an API process. With open access there are no keys, and no cap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.auth import Principal
from app.config import get_settings
from app.errors import GatewayError

# The WebSocket close code for a refused stream (4000-4999 are the application's; 4029
# echoes HTTP 429).
WS_TOO_MANY_STREAMS = 4029

_open: Counter[str] = Counter()


class TooManyStreams(GatewayError):
    status_code = 429
    code = "too_many_streams"
    headers = {"Retry-After": "1"}


def refusal(limit: int) -> str:
    return f"too many event streams open for this API key (MAX_STREAMS_PER_KEY={limit})"


def acquire(principal: Principal) -> Callable[[], None] | None:
    """Count one more stream for the principal's key: the function that releases it,
    or None when the key already holds MAX_STREAMS_PER_KEY streams."""
    key = principal.key_id
    if key is None:
        return _nothing
    if _open[key] >= get_settings().max_streams_per_key:
        return None
    _open[key] += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:  # once, whatever path ends the stream
            released = True
            _open[key] -= 1
            if _open[key] <= 0:
                del _open[key]

    return release


def acquire_or_raise(principal: Principal) -> Callable[[], None]:
    release = acquire(principal)
    if release is None:
        raise TooManyStreams(refusal(get_settings().max_streams_per_key))
    return release


def _nothing() -> None:
    pass


class HeldStreamingResponse(StreamingResponse):
    """A streaming answer that gives its stream slot back when it ends, however it ends
    (finished, client gone, server shutting down)."""

    def __init__(self, content: Any, *, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
