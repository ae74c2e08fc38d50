"""job.trace_context: the job's trace, so every step attempt joins it

With tracing on, creating a job stores the trace context of its `POST /jobs` span (the
W3C `traceparent`, and whatever else the configured propagators carry) and a resume
stores its own span's; the worker reads it when it claims a step, however the step
reached it (a message from the API, a retry, Beat's recovery, a continuation in the
same process). NULL with tracing off.

A nullable column without a default: on PostgreSQL adding it changes only the catalog,
whatever the table's size.

Revision ID: 0007_job_trace_context
Revises: 0006_metrics_fold
Create Date: 2026-12-06 01:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_job_trace_context"
down_revision: str | None = "0006_metrics_fold"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("trace_context", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    # In place on SQLite too (3.35+ drops a plain column): a rebuilt job table would be
    # dropped with foreign keys on, which deletes every job's steps and events through
    # their ON DELETE CASCADE.
    with op.batch_alter_table("job", recreate="never") as batch:
        batch.drop_column("trace_context")
