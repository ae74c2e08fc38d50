"""Exception handlers and the body-size guard: every error leaves in one envelope."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import structlog
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import (
    RequestValidationError,
    ValidationException,
    WebSocketRequestValidationError,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import Utf8JSONResponse as JSONResponse
from app.errors import GatewayError, error_envelope
from app.logs import first_line

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _validation_details(exc: ValidationException) -> list[dict[str, Any]]:
    return [
        {"loc": list(item.get("loc", ())), "msg": item.get("msg", ""), "type": item.get("type")}
        for item in exc.errors()
    ]


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(item["type"] == "json_invalid" for item in details):
        return JSONResponse(
            error_envelope("invalid_json", "request body is not valid JSON", details),
            status_code=400,
        )
    return JSONResponse(_validation_envelope(details), status_code=422)


def _validation_envelope(details: list[dict[str, Any]]) -> dict[str, Any]:
    summary = "; ".join(
        f"{'.'.join(str(p) for p in item['loc'] if p != 'body') or 'body'}: {item['msg']}"
        for item in details
    )
    return error_envelope("validation_error", summary or "invalid request", details)


async def _websocket_validation_error(websocket: WebSocket, exc: Exception) -> None:
    """A WebSocket's bad parameter (`?after=-1`): refused at the handshake with 422 and
    the envelope, like any request's, where the server can answer the handshake over
    HTTP (uvicorn can); otherwise closed with 1008 and the summary as the reason."""
    assert isinstance(exc, WebSocketRequestValidationError)
    envelope = _validation_envelope(_validation_details(exc))
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(envelope, status_code=422))
    else:
        reason = envelope["error"]["message"][:120]  # a close reason is at most 123 bytes
        await websocket.close(code=WS_1008_POLICY_VIOLATION, reason=reason)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allow_header(request, headers)}
    return JSONResponse(
        error_envelope(code, str(exc.detail)), status_code=exc.status_code, headers=headers
    )


def _allow_header(request: Request, headers: Mapping[str, str] | None) -> str:
    """The documented methods of the path, else (a path outside the document, like
    /metrics) the router's own; with HEAD wherever GET is (app/api/head.py)."""
    methods = _allowed_methods(request) or {
        method.strip() for method in (headers or {}).get("Allow", "").split(",") if method.strip()
    }
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _allowed_methods(request: Request) -> set[str]:
    """The methods the API documents at this path. The router's own 405 names the
    methods of the first route whose path matched, which at /jobs/resume is
    /jobs/{job_id} (GET): a client told `Allow: GET` there would never find the POST.
    As OpenAPI reads paths, a concrete path is matched before a templated one."""
    matches = [
        (template.count("{"), operations)
        for template, operations in request.app.openapi()["paths"].items()
        if _path_pattern(template).fullmatch(request.url.path)
    ]
    fewest = min((parameters for parameters, _ in matches), default=0)
    return {method.upper() for parameters, ops in matches if parameters == fewest for method in ops}


@lru_cache(maxsize=256)
def _path_pattern(template: str) -> re.Pattern[str]:
    """/jobs/{job_id} as a pattern: each parameter one path segment."""
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database unreachable, or busy past its timeouts: a 503 the client may retry
    (nothing was committed), not a 500. Any other database error is unexpected."""
    unavailable = isinstance(exc, OperationalError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not unavailable:
        return await _unexpected(request, exc)
    log.warning("database unavailable", error=first_line(exc))
    return JSONResponse(
        error_envelope("database_unavailable", "the database is unavailable; retry shortly"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", error=str(exc))
    return JSONResponse(error_envelope("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WebSocketRequestValidationError, _websocket_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, _unexpected)


class BodySizeLimit:
    """Rejects request bodies over the limit with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        rejected = False

        async def limited_receive() -> Message:
            # Past the limit we answer 413 ourselves and tell the app the client left.
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            error_envelope(
                "payload_too_large", f"request body is larger than {self.max_bytes} bytes"
            ),
            status_code=413,
        )
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
