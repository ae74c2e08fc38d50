"""HEAD wherever GET is served. HTTP asks every server for it (RFC 9110, 9.1) and
health checkers and link checkers send it, but FastAPI's routes answer only the
methods they declare. A HEAD request runs as the GET; its answer goes out with the
GET's status and headers and without a body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_headers_only(message: Message) -> None:
            # The answer ends with its headers. A streamed GET (an event stream) would
            # go on until its client left; the server tells it so once the answer is
            # complete (ASGI: `receive` then returns http.disconnect), and it stops.
            nonlocal answered
            if message["type"] != "http.response.body":
                await send(message)
            elif not answered:
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        # The server keeps its own scope, which still says HEAD: it sends no body either.
        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
