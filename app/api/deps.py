"""Request dependencies as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from app.auth import OPEN_ACCESS, Principal
from app.catalog import Catalog, current_catalog
from app.config import Settings, get_settings
from app.db import session_scope


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def get_principal() -> Principal:
    """The caller of an HTTP request (API keys arrive with the auth work)."""
    return OPEN_ACCESS


def get_ws_principal() -> Principal:
    """The caller of a WebSocket (same keys as HTTP; browsers may pass ?api_key=)."""
    return OPEN_ACCESS


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(current_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
WsPrincipalDep = Annotated[Principal, Depends(get_ws_principal)]
