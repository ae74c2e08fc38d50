"""metric_fold and metric_aggregate: the /metrics counters and histograms, folded from
the event log

The fold (app/events/metrics_fold.py) reads the events after `metric_fold.last_event_id`
and adds what they count to `metric_aggregate`, moving the cursor in the same
transaction. New tables only: nothing existing changes, and the first fold counts the
events already in the log.

Revision ID: 0006_metrics_fold
Revises: 0005_outbox
Create Date: 2026-12-06 01:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_metrics_fold"
down_revision: str | None = "0005_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    fold = op.create_table(
        "metric_fold",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_metric_fold")),
    )
    op.create_table(
        "metric_aggregate",
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("labels", sa.String(300), nullable=False),
        sa.Column("part", sa.String(16), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "labels", "part", name=op.f("pk_metric_aggregate")),
    )
    # The row the fold locks: it exists from the start, so folds never race to make it.
    op.bulk_insert(fold, [{"name": "events", "last_event_id": 0}])


def downgrade() -> None:
    op.drop_table("metric_aggregate")
    op.drop_table("metric_fold")
