"""Pub/sub wake-ups for live streams. The log is the truth; a lost publish is
recovered by subscribers reading the log, so failures here are only logged."""

from __future__ import annotations

import structlog

from app.events.types import EventOut
from app.redis_client import get_redis

log = structlog.get_logger(__name__)

ALL_EVENTS_CHANNEL = "cao:events"


def publish_after_commit(event: EventOut) -> None:
    try:
        get_redis().publish(ALL_EVENTS_CHANNEL, event.model_dump_json())
    except Exception as exc:
        log.warning("event publish failed", job_id=event.job_id, seq=event.seq, error=str(exc))
