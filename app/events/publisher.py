"""Pub/sub wake-ups for live streams. The log is the truth; a lost publish is
recovered by subscribers reading the log, so failures here are only logged."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import structlog
from redis.connection import parse_url

from app.config import get_settings
from app.events.types import PublishedEvent
from app.redis_client import get_redis

log = structlog.get_logger(__name__)


def events_channel(redis_url: str | None = None) -> str:
    """The one channel for every job's events (subscribers route by job_id in process).

    Pub/sub ignores the Redis database number, so it is part of the name: two
    deployments (or test runs) on one Redis server never hear each other's events.
    """
    return _channel_for(redis_url or get_settings().redis_url)


@lru_cache(maxsize=8)
def _channel_for(redis_url: str) -> str:
    return f"cao:events:{parse_url(redis_url).get('db', 0)}"


def publish_after_commit(events: Sequence[PublishedEvent]) -> None:
    """Publish one transaction's events, in one round trip."""
    channel = events_channel()
    try:
        if len(events) == 1:
            get_redis().publish(channel, events[0].model_dump_json())
            return
        with get_redis().pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel, event.model_dump_json())
            pipe.execute()
    except Exception as exc:
        log.warning(
            "event publish failed", events=[f"{e.job_id}/{e.seq}" for e in events], error=str(exc)
        )
