"""job_step: Beat's status index covers live steps only

`ix_job_step_status_queued_at` indexed every step. PostgreSQL could then plan the
step changes workers prepare (a step named by primary key, its status checked with a
bound value) through it: on tables without statistics, a generic plan that reads
every step in that status. The partial index holds only the steps Beat looks for
(waiting to start or running), which such a plan cannot use, and it stays as small as
the live work however many finished steps the table keeps.

On PostgreSQL both indexes are built and dropped concurrently, so that writers go on
during the deploy.

Revision ID: 0003_live_step_index
Revises: 0002_event_sequencer
Create Date: 2026-11-24 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_live_step_index"
down_revision: str | None = "0002_event_sequencer"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The live statuses as of this revision (app/statuses.py LIVE_STEP).
_LIVE = sa.text("status IN ('QUEUED', 'WAITING_FOR_SLOT', 'RETRYING', 'RUNNING')")
_OLD, _NEW = "ix_job_step_status_queued_at", "ix_job_step_live_status_queued_at"


def _swap(create: str, drop: str, where: sa.TextClause | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(create, "job_step", ["status", "queued_at"], sqlite_where=where)
        op.drop_index(drop, table_name="job_step")
        return
    with op.get_context().autocommit_block():
        op.create_index(
            create,
            "job_step",
            ["status", "queued_at"],
            postgresql_where=where,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index(drop, table_name="job_step", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _swap(_NEW, _OLD, _LIVE)


def downgrade() -> None:
    _swap(_OLD, _NEW, None)
