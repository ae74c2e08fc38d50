"""ORM models: job, job_step and job_event (singular tables, *_at timestamps, UUID keys),
and the metrics folded from the event log (metric_fold, metric_aggregate)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.statuses import LIVE_STEP

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# What the columns can hold, for inputs that reach a query (API parameters, bodies):
# larger numbers cannot even be bound, and PostgreSQL text has no NUL character.
INTEGER_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1
TEXT_WITHOUT_NUL = r"^[^\x00]*$"
ERROR_CODE_LENGTH = 64

# SQLite only auto-increments a plain INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Job(Base):
    __tablename__ = "job"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    feature_name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    input_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Outputs of completed steps by step name: the `context` each step receives.
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The recipe this job started with: a snapshot of each step's service spec and
    # weight, `{"steps": [{"name", "service", "weight"}, ...]}`, plus `"rerun": N` once an
    # operator has rerun the job N times (app/jobs/operator_actions.py).
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    retryable: Mapped[bool | None] = mapped_column(Boolean)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The last event seq handed out for this job; bumped under the row lock.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The job's trace as the configured propagators carry it (W3C `traceparent`, ...):
    # its `POST /jobs` span, or its latest resume's. Every step attempt's span joins it
    # (app/tracing.py). NULL with tracing off.
    trace_context: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_job_status_created_at", "status", "created_at"),
        Index("ix_job_feature_name_created_at", "feature_name", "created_at"),
        Index("ix_job_created_at_id", "created_at", "id"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_job_tenant_idempotency_key"),
    )


_UNSENT_PREDICATE = text("unsent_fence IS NOT NULL")
_LIVE_STEP_PREDICATE = text("status IN (" + ", ".join(f"'{status}'" for status in LIVE_STEP) + ")")


class JobStep(Base):
    __tablename__ = "job_step"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("job.id", ondelete="CASCADE"), primary_key=True
    )
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_name: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    # The attempt people and services see: 1.. per run of the step, reset by resume.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # The token a delivery must carry to act on this step; rises with every attempt,
    # recovery and resume, so a stale delivery can never match again.
    fence: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(ERROR_CODE_LENGTH))
    retryable: Mapped[bool | None] = mapped_column(Boolean)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # A random token of the delivery whose claim started the step's latest run: a worker
    # that lost its claim's answer asks whether the claim is its own (app/jobs/claim.py).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # Set while a delivery of this step is owed: the broker did not take it after the
    # commit that made the step runnable. The fence that delivery carries and when it is
    # due to run (a retry's delay included); the process that sends it clears both
    # (app/jobs/outbox.py). A mark whose fence the step no longer carries is stale.
    unsent_fence: Mapped[int | None] = mapped_column(Integer)
    unsent_due_at: Mapped[datetime | None]

    __table_args__ = (
        # Beat's index: only steps waiting to start or running. Partial, so that a
        # statement that names its step by primary key and checks the status with a
        # bound value cannot be planned through it: PostgreSQL's generic plans (kept
        # for statements psycopg prepares) cannot prove the predicate, and on tables
        # without statistics they would otherwise scan every step in that status.
        Index(
            "ix_job_step_live_status_queued_at",
            "status",
            "queued_at",
            postgresql_where=_LIVE_STEP_PREDICATE,
            sqlite_where=_LIVE_STEP_PREDICATE,
        ),
        # The outbox's: only steps marked unsent, none at all while the broker answers.
        Index(
            "ix_job_step_unsent_due_at",
            "unsent_due_at",
            postgresql_where=_UNSENT_PREDICATE,
            sqlite_where=_UNSENT_PREDICATE,
        ),
    )


class JobEvent(Base):
    __tablename__ = "job_event"

    # Insertion order: writers take it without waiting on each other.
    ingest_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The global position clients see (`/ws?after=ID`), handed out in commit order:
    # at insert on SQLite (writers are serialised), by the sequencer on PostgreSQL
    # (NULL until then; see app/events/sequencer.py).
    id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    feature_name: Mapped[str] = mapped_column(String(100))
    step_index: Mapped[int | None] = mapped_column(Integer)
    step_name: Mapped[str | None] = mapped_column(String(100))
    attempt: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_event_job_id_seq"),
        # What the sequencer scans: only events still waiting for their id.
        Index(
            "ix_job_event_unsequenced",
            "ingest_id",
            postgresql_where=text("id IS NULL"),
            sqlite_where=text("id IS NULL"),
        ),
    )


class MetricFold(Base):
    """How far a fold of the event log has got: every event with `id <= last_event_id`
    is in its aggregates (app/events/metrics_fold.py), changed in the same transaction."""

    __tablename__ = "metric_fold"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)


class MetricAggregate(Base):
    """One number of a metric series: a counter's value, or a histogram's count, sum or
    one bucket's own count (`part`); `labels` is the JSON list of the label values."""

    __tablename__ = "metric_aggregate"

    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[str] = mapped_column(String(300), primary_key=True)
    part: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[float] = mapped_column(Double, default=0.0)


# Typed handles on the tables for Core statements on the hot path.
job_table = cast(Table, Job.__table__)
job_step_table = cast(Table, JobStep.__table__)
job_event_table = cast(Table, JobEvent.__table__)
metric_fold_table = cast(Table, MetricFold.__table__)
metric_aggregate_table = cast(Table, MetricAggregate.__table__)
