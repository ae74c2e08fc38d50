"""job_event: insertion key `ingest_id`; global `id` given by the sequencer

Writers no longer take a global lock to get commit-ordered ids: each event gets an
`ingest_id` (the new primary key) at insert, and `id` stays NULL on PostgreSQL until
the sequencer numbers committed events (app/events/sequencer.py). Existing events
keep their ids; `ingest_id` starts from them, and the old id sequence counts on.

Revision ID: 0002_event_sequencer
Revises: 0001_initial
Create Date: 2026-11-24 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_event_sequencer"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UNSEQUENCED = sa.text("id IS NULL")

# Downgrade: give every event still waiting for its id one, after the others, in
# insertion order, the way the sequencer would have.
_NUMBER_UNSEQUENCED = """
UPDATE job_event AS e SET id = base.top + batch.n
FROM (SELECT coalesce(max(id), 0) AS top FROM job_event) AS base,
     (SELECT ingest_id, row_number() OVER (ORDER BY ingest_id) AS n
      FROM job_event WHERE id IS NULL) AS batch
WHERE e.ingest_id = batch.ingest_id
"""


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    # Renaming keeps the primary key, its index and (PostgreSQL) the serial default.
    with op.batch_alter_table("job_event", schema=None) as batch_op:
        batch_op.alter_column(
            "id", new_column_name="ingest_id", existing_type=_BIG_ID, existing_nullable=False
        )
    if _postgresql():
        op.execute("ALTER SEQUENCE job_event_id_seq RENAME TO job_event_ingest_id_seq")
    with op.batch_alter_table("job_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE job_event SET id = ingest_id")
    with op.batch_alter_table("job_event", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_job_event_id"), ["id"])
        batch_op.create_index(
            "ix_job_event_unsequenced",
            ["ingest_id"],
            unique=False,
            postgresql_where=_UNSEQUENCED,
            sqlite_where=_UNSEQUENCED,
        )


def downgrade() -> None:
    # Client-visible ids survive; the insertion key goes.
    if _postgresql():
        op.execute(_NUMBER_UNSEQUENCED)
    with op.batch_alter_table("job_event", schema=None) as batch_op:
        batch_op.drop_index("ix_job_event_unsequenced")
        batch_op.drop_constraint(batch_op.f("uq_job_event_id"), type_="unique")
    if _postgresql():
        op.execute("ALTER TABLE job_event DROP CONSTRAINT pk_job_event")
        op.execute("ALTER TABLE job_event DROP COLUMN ingest_id")  # drops its sequence too
        op.execute("ALTER TABLE job_event ALTER COLUMN id SET NOT NULL")
        op.execute("ALTER TABLE job_event ADD CONSTRAINT pk_job_event PRIMARY KEY (id)")
        op.execute("CREATE SEQUENCE job_event_id_seq OWNED BY job_event.id")
        op.execute(
            "SELECT setval('job_event_id_seq', coalesce((SELECT max(id) FROM job_event), 0) + 1,"
            " false)"
        )
        op.execute("ALTER TABLE job_event ALTER COLUMN id SET DEFAULT nextval('job_event_id_seq')")
        return
    # SQLite: rebuild the table with `id` as its INTEGER PRIMARY KEY (every id is set).
    with op.batch_alter_table("job_event", schema=None, recreate="always") as batch_op:
        batch_op.drop_column("ingest_id")
        batch_op.alter_column(
            "id",
            existing_type=sa.BigInteger(),
            type_=_BIG_ID,
            nullable=False,
            autoincrement=True,
        )
        batch_op.create_primary_key("pk_job_event", ["id"])
