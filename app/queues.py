"""Broker queue inspection (depth per Celery queue on the Redis transport)."""

from __future__ import annotations

from app.redis_client import get_redis

# kombu's Redis transport keeps each priority band of a queue in its own list.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def queue_depths(queues: list[str]) -> dict[str, int]:
    client = get_redis()
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
            for step in _PRIORITY_STEPS:
                pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
        counts = pipe.execute()
    width = 1 + len(_PRIORITY_STEPS)
    return {queue: sum(counts[i * width : (i + 1) * width]) for i, queue in enumerate(queues)}
