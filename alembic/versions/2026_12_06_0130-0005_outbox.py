"""job_step.unsent_fence and unsent_due_at: steps whose delivery the broker refused

When the broker does not take a step's delivery after the commit that made the step
runnable, the step is marked with the fence of that delivery and when it is due, so
that whichever process finds the broker back sends it (app/jobs/outbox.py), and the
stuck-job check does not count the outage against the job. A partial index holds the
marked steps only: empty while the broker answers.

Nullable columns without a default: on PostgreSQL adding them changes only the
catalog, whatever the table's size; the index is built and dropped concurrently.

Revision ID: 0005_outbox
Revises: 0004_step_claim_token
Create Date: 2026-12-06 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox"
down_revision: str | None = "0004_step_claim_token"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_job_step_unsent_due_at"
_UNSENT = sa.text("unsent_fence IS NOT NULL")


def upgrade() -> None:
    op.add_column("job_step", sa.Column("unsent_fence", sa.Integer(), nullable=True))
    op.add_column("job_step", sa.Column("unsent_due_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(_INDEX, "job_step", ["unsent_due_at"], sqlite_where=_UNSENT)
        return
    with op.get_context().autocommit_block():
        op.create_index(
            _INDEX,
            "job_step",
            ["unsent_due_at"],
            postgresql_where=_UNSENT,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(_INDEX, table_name="job_step")
    else:
        with op.get_context().autocommit_block():
            op.drop_index(
                _INDEX, table_name="job_step", postgresql_concurrently=True, if_exists=True
            )
    # SQLite rebuilds the table to drop a column; batch mode does that for it.
    with op.batch_alter_table("job_step") as batch:
        batch.drop_column("unsent_due_at")
        batch.drop_column("unsent_fence")
