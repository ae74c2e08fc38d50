"""Migrations run up and down on PostgreSQL and SQLite, and match the models."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import build_engine
from app.migrate import downgrade_base, upgrade_head
from app.models import Base

TABLES = {"job", "job_step", "job_event"}


def _tables(url: str) -> set[str]:
    engine = build_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _assert_models_match(url: str) -> None:
    engine = build_engine(url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def _round_trip(url: str) -> None:
    upgrade_head(url)
    assert TABLES <= _tables(url)
    _assert_models_match(url)
    downgrade_base(url)
    assert _tables(url) == set()
    upgrade_head(url)
    assert TABLES <= _tables(url)


def test_sqlite_up_down_up(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.fixture
def scratch_postgres():
    base = os.environ.get(
        "CAO_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    name = f"cao_mig_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(plain, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        if os.environ.get("CI"):
            raise
        pytest.skip("PostgreSQL not reachable (allowed outside CI only)")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield base.rsplit("/", 1)[0] + "/" + name
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_postgresql_up_down_up(scratch_postgres):
    _round_trip(scratch_postgres)
