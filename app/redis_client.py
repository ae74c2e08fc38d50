"""The per-process Redis client (built lazily after fork, closed on shutdown)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from app.config import get_settings

_client: redis.Redis | None = None


def build_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        url or get_settings().redis_url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        # A short retry for blips; a longer outage surfaces to the caller.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def get_redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = build_redis()
    return _client


def close_redis() -> None:
    global _client
    if _client is not None:
        _client.close()
    _client = None
