"""job_step.claim_token: the delivery whose claim started the step's current run

A claim is one autocommitted statement. When its answer is lost (the connection drops
after the commit), the worker asks again whether the step is RUNNING under its own
token: only that delivery, not a duplicate of the same message, goes on to the call.

A nullable column without a default: on PostgreSQL adding it changes only the catalog,
whatever the table's size.

Revision ID: 0004_step_claim_token
Revises: 0003_live_step_index
Create Date: 2026-11-25 01:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_step_claim_token"
down_revision: str | None = "0003_live_step_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_step", sa.Column("claim_token", sa.String(32), nullable=True))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; batch mode does that for it.
    with op.batch_alter_table("job_step") as batch:
        batch.drop_column("claim_token")
