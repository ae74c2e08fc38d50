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
    return OPEN_ACCESS


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(current_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
