"""Retry delays: exponential with jitter, never sooner than a service's Retry-After."""

from __future__ import annotations

import random

from app.catalog import Backoff


def retry_delay(backoff: Backoff, failed_attempt: int, retry_after_s: float | None) -> float:
    delay = min(backoff.max_s, backoff.initial_s * backoff.multiplier ** (failed_attempt - 1))
    delay *= 1 - backoff.jitter * random.random()
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay
