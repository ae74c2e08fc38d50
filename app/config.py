"""Settings: every environment variable in DESIGN.md, read and validated once.

Nothing else in the project reads the environment for configuration; code that
needs a setting calls `get_settings()`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Where the gateway runs; production refuses the embedded defaults below.
    cao_env: Environment = "development"

    database_url: str = "sqlite:///cao.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    internal_api_key: str | None = None

    http_connect_timeout_s: float = Field(3.0, gt=0)
    http_read_timeout_s: float = Field(30.0, gt=0)

    job_stuck_seconds: float = Field(7200, gt=0)
    sanity_check_interval_seconds: float = Field(60, gt=0)
    reap_leases_interval_seconds: float = Field(15, gt=0)
    # The bounded safety re-check for steps waiting on a service slot.
    wake_waiters_interval_seconds: float = Field(1.0, gt=0)
    cleanup_interval_seconds: float = Field(3600, gt=0)
    # Finished jobs (and their events) older than this are deleted by Beat.
    job_retention_days: float = Field(30, gt=0)
    # Create-idempotency keys are honoured for this long.
    idempotency_retention_hours: float = Field(24, gt=0)
    # A QUEUED step whose message has not been picked up for this long is re-enqueued
    # (its message may have been lost with a Redis restart or a failed enqueue).
    requeue_after_seconds: float = Field(120, gt=0)
    # How often Beat sends the steps whose delivery the broker refused (app/jobs/outbox.py),
    # for a process that died before its own resender could.
    unsent_sweep_interval_seconds: float = Field(2.0, gt=0)

    run_migrations_on_startup: bool = False
    migration_max_attempts: int = Field(20, ge=1)
    migration_retry_sleep_seconds: float = Field(2, ge=0)

    cao_catalog: Path | None = None
    # Where the reports example (app/examples/reports) writes and cleans up its files.
    cao_reports_dir: Path = Path(".cao/reports")
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    # The largest step output (a service's answer body, a python step's JSON): a step's
    # output is stored, sent to every later step in `context` and put in an event.
    max_step_output_bytes: int = Field(1024 * 1024, gt=0)

    api_keys: str = ""
    api_keys_file: Path | None = None
    # Production without API keys is refused unless this says running open is meant.
    allow_open_access: bool = False
    # /docs, /redoc and /openapi.json; off by default in production.
    docs_enabled: bool | None = None

    # Bounds on what one client can hold (docs/operations.md "Limits").
    max_streams_per_key: int = Field(16, ge=1)
    # A step output larger than this (JSON bytes) is left out of its STEP_COMPLETED
    # event, marked `output_truncated`; GET /jobs/{id} has it.
    event_output_max_bytes: int = Field(64 * 1024, ge=1024)
    # One page of events (REST, and each back-fill read of WebSocket/SSE) stops
    # after this many bytes of event JSON (always at least one event).
    event_page_max_bytes: int = Field(1024 * 1024, ge=1024)
    # The largest message a WebSocket client may send (it sends nothing that matters).
    ws_max_message_bytes: int = Field(4096, ge=128)
    # Seconds a client may take to send its request headers and body (uvicorn's
    # keep-alive timeout bounds an idle connection).
    http_request_timeout_s: float = Field(30, gt=0)

    # How long a PostgreSQL connection waits on a server that stopped answering at the
    # network level (its host gone, a partition, a failover leaving the connection
    # half-open) before it fails; also how long a new connection may take.
    database_tcp_timeout_s: float = Field(30, ge=2)

    # Celery's broker visibility timeout; must exceed the longest step timeout.
    broker_visibility_timeout_s: int = Field(3600, gt=0)
    # Touched by Beat as it schedules (worker/heartbeat.py), for its healthcheck.
    beat_heartbeat_file: Path | None = None
    log_level: str = "INFO"
    # One JSON object a line from every process (app/logs.py).
    log_json: bool = False
    # Celery task events (received, started, succeeded ...) from the start, and the
    # task-sent events of senders. Off, a worker sends task events once a monitor asks
    # for them (Flower does, every few seconds while it runs). Either way each process
    # sends them in batches, a message per half second (app/broker.py).
    task_events: bool = False

    # Traces (app/tracing.py): on when an OTLP endpoint is set. The OpenTelemetry SDK
    # reads the other OTEL_* variables itself (protocol, headers, sampler, batching).
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: str | None = None
    otel_exporter_otlp_traces_protocol: str | None = None
    otel_sdk_disabled: bool = False

    @field_validator(
        "internal_api_key",
        "cao_catalog",
        "api_keys_file",
        "beat_heartbeat_file",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
        "otel_exporter_otlp_protocol",
        "otel_exporter_otlp_traces_protocol",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose passes unset variables through as empty strings.
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        # Plain postgres URLs get the psycopg 3 driver the project ships with.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.cao_env != "production":
            return self
        if self.database_url.startswith("sqlite"):
            raise ValueError("CAO_ENV=production needs a PostgreSQL DATABASE_URL, not SQLite")
        if not self.api_keys.strip() and self.api_keys_file is None and not self.allow_open_access:
            raise ValueError(
                "CAO_ENV=production needs API keys: set API_KEYS (or API_KEYS_FILE), or "
                "ALLOW_OPEN_ACCESS=true to let every caller act as an operator on purpose"
            )
        return self

    @property
    def docs_on(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else self.cao_env != "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def tracing(self) -> bool:
        """Whether this process exports traces: an OTLP endpoint is set, the SDK not
        disabled (OTEL_SDK_DISABLED, as the SDK itself reads it)."""
        endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
        return endpoint is not None and not self.otel_sdk_disabled


@lru_cache
def get_settings() -> Settings:
    return Settings()
