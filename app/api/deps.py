"""Request dependencies as Annotated aliases: the request's transaction, who the caller
is, the settings and catalog, and the job the caller names.

The request's session commits when the endpoint returns (rolls back when it raises),
so routers never commit. HTTP callers present a key as `Authorization: Bearer <key>`
or `X-API-Key`; a WebSocket takes the same headers or `?api_key=` (browsers cannot
set headers). A WebSocket with no or an unknown key is accepted and closed with 4401,
so clients see why rather than a bare handshake failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, WebSocket
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import Principal, authenticate
from app.catalog import Catalog, current_catalog
from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import Forbidden, Unauthorized
from app.jobs.service import get_job_or_404
from app.models import Job

WS_UNAUTHORIZED = 4401

_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def get_session() -> Iterator[Session]:
    """The request's transaction: committed once the endpoint returns, rolled back if
    it raises (see SessionDep for when)."""
    with session_scope() as session:
        yield session


# The dependencies below that neither block nor wait are `async def`: FastAPI runs a
# plain `def` dependency in its thread pool, and each such hop costs a request more
# CPU than the work itself (a key lookup, a cached catalog).


async def get_principal(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The caller of an HTTP request; 401 in the envelope when the key is missing or unknown."""
    return authenticate(bearer.credentials if bearer else api_key)


async def get_catalog() -> Catalog:
    """The live catalog (a file check at most once a second; a reload when it changed)."""
    return current_catalog()


async def require_operator(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_operator:
        raise Forbidden("this action needs an operator API key", code="operator_required")
    return principal


class WebSocketDenied(Exception):
    """Raised while opening a WebSocket; `close_denied_websocket` turns it into a close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def close_denied_websocket(websocket: WebSocket, exc: Exception) -> None:
    """Exception handler: accept, then close with the policy code and the reason."""
    assert isinstance(exc, WebSocketDenied)
    # Closing before accept would surface as a bare HTTP 403 without the reason.
    await websocket.accept()
    await websocket.close(code=exc.code, reason=exc.reason[:120])


def _presented_ws_key(websocket: WebSocket) -> str | None:
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")


def get_ws_principal(websocket: WebSocket) -> Principal:
    """The caller of a WebSocket; a refused key closes it with 4401."""
    try:
        return authenticate(_presented_ws_key(websocket))
    except Unauthorized as exc:
        raise WebSocketDenied(WS_UNAUTHORIZED, exc.message) from exc


# scope="function": commit when the endpoint returns, before the response is sent, so
# a caller never reads its answer before the change is visible, nor gets a success
# for a transaction that then fails to commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
WsPrincipalDep = Annotated[Principal, Depends(get_ws_principal)]


def job_for_principal(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Job:
    """The job at `{job_id}` if the caller may see it (a client: its own tenant's);
    404 job_not_found otherwise, the same for another tenant's job as for none."""
    return get_job_or_404(session, job_id, principal.tenant_scope)


JobForPrincipalDep = Annotated[Job, Depends(job_for_principal)]
