"""Migrations run up and down on PostgreSQL and SQLite, match the models and keep data."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import build_engine
from app.migrate import alembic_config, downgrade_base, upgrade_head
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


# The tables as revision 0001 made them (the models describe head).
_JOB_COLUMNS = (
    "tenant feature_name status progress current_step total_steps input_data context recipe "
    "last_seq created_at updated_at"
)
_JOB = sa.table("job", sa.column("id", sa.Uuid()), *map(sa.column, _JOB_COLUMNS.split()))
_EVENT_COLUMNS = "ingest_id id seq type feature_name progress ts data"
_EVENT = sa.table(
    "job_event", sa.column("job_id", sa.Uuid()), *map(sa.column, _EVENT_COLUMNS.split())
)


def _event_ids_survive_0002(url: str) -> None:
    """Upgrading keeps every event's id; downgrading numbers the events still without
    one after the others, and new events go on from there."""
    command.upgrade(alembic_config(url), "0001_initial")
    engine = build_engine(url)
    job_id = uuid.uuid4()

    def add_event(connection: sa.Connection, seq: int) -> None:
        connection.execute(
            sa.insert(_EVENT).values(
                job_id=job_id,
                seq=seq,
                type="JOB_RESUMED",
                feature_name="f",
                progress=0,
                ts=sa.func.current_timestamp(),
                data="{}",
            )
        )

    def stored(*columns: str) -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            query = sa.select(*(_EVENT.c[c] for c in columns)).order_by(_EVENT.c.seq)
            return [tuple(row) for row in connection.execute(query)]

    try:
        with engine.begin() as connection:
            now = sa.func.current_timestamp()
            connection.execute(
                sa.insert(_JOB).values(
                    id=job_id,
                    tenant="t",
                    feature_name="f",
                    status="RUNNING",
                    progress=0,
                    current_step=0,
                    total_steps=1,
                    input_data="{}",
                    context="{}",
                    recipe="{}",
                    last_seq=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            for seq in (1, 2, 3):
                add_event(connection, seq)
            connection.execute(sa.delete(_EVENT).where(_EVENT.c.seq == 2))

        upgrade_head(url)
        assert stored("ingest_id", "id", "seq") == [(1, 1, 1), (3, 3, 3)]
        with engine.begin() as connection:
            add_event(connection, 4)  # as a PostgreSQL writer does: no id yet
        assert stored("ingest_id", "id", "seq")[-1] == (4, None, 4)

        command.downgrade(alembic_config(url), "0001_initial")
        assert stored("id", "seq") == [(1, 1), (3, 3), (4, 4)]
        with engine.begin() as connection:
            add_event(connection, 5)
        assert stored("id", "seq")[-1] == (5, 5)
    finally:
        engine.dispose()
    downgrade_base(url)


def test_sqlite_up_down_up(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_sqlite_event_ids_survive_the_sequencer_migration(tmp_path):
    _event_ids_survive_0002(f"sqlite:///{tmp_path / 'm.db'}")


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


def test_postgresql_event_ids_survive_the_sequencer_migration(scratch_postgres):
    _event_ids_survive_0002(scratch_postgres)


def test_postgresql_plans_a_step_change_by_primary_key_without_statistics(scratch_postgres):
    """Workers change a step named by its primary key, checking its status with a bound
    value, and PostgreSQL keeps a generic plan for such a statement once psycopg has
    prepared it. On a new database (no statistics yet) that plan must still find the
    step by primary key: through an index on status it would read every step in that
    status (a whole backlog of PENDING steps) for each change."""
    upgrade_head(scratch_postgres)
    with psycopg.connect(scratch_postgres.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(
            "PREPARE change_step(uuid, int, int, text, text) AS UPDATE job_step SET status = $5"
            " WHERE job_id = $1 AND step_index = $2 AND fence = $3 AND status = $4"
        )
        explain = "EXPLAIN EXECUTE change_step(gen_random_uuid(), 1, 0, 'PENDING', 'RUNNING')"
        plan = "\n".join(row[0] for row in conn.execute(explain))
    assert "using pk_job_step" in plan, plan
    assert "status_queued_at" not in plan, plan
