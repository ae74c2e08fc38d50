"""Control of the running workers' pools: which workers consume which queue with how
many processes, and resizing the pool of every worker of a queue without a restart.

An SRE sizes one pool per queue (`cao worker -Q heavy -c N`); this is the same knob
at run time, through Celery's remote control (`pool_grow` / `pool_shrink`, which
also adjust the worker's prefetch). A size set here lasts until the worker restarts,
which starts it with its `-c` again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.broker import get_celery

REPLY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WorkerPool:
    worker: str  # the worker's node name
    queues: tuple[str, ...]
    processes: int | None  # None when the worker did not say (no stats reply in time)


@dataclass(frozen=True)
class Resized:
    pool: WorkerPool
    size: int  # the size asked for
    error: str | None = None  # why the worker was not resized


class NoWorkerForQueue(LookupError):
    """No running worker consumes the queue."""


def worker_pools(timeout: float = REPLY_TIMEOUT_S) -> list[WorkerPool]:
    """Every worker that answers within `timeout`, by name."""
    inspect = get_celery().control.inspect(timeout=timeout)
    queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    return [
        WorkerPool(
            worker=name,
            queues=tuple(sorted(queue["name"] for queue in queues.get(name, []))),
            processes=_processes(stats.get(name)),
        )
        for name in sorted(queues.keys() | stats.keys())
    ]


def _processes(stats: Mapping[str, Any] | None) -> int | None:
    processes = (stats or {}).get("pool", {}).get("processes")
    return len(processes) if isinstance(processes, list) and processes else None


def resize_queue_pools(queue: str, size: int, timeout: float = REPLY_TIMEOUT_S) -> list[Resized]:
    """Grow or shrink the pool of every worker consuming `queue` to `size` processes.

    A worker busy in every process cannot shrink now; it says so and keeps its size."""
    if size < 1:
        raise ValueError("a pool needs at least one process")
    pools = [pool for pool in worker_pools(timeout) if queue in pool.queues]
    if not pools:
        raise NoWorkerForQueue(f"no running worker consumes queue {queue!r}")
    return [_resize(pool, size, timeout) for pool in pools]


def _resize(pool: WorkerPool, size: int, timeout: float) -> Resized:
    if pool.processes is None:  # a change by a guessed difference could go anywhere
        return Resized(pool, size, error="its pool size is unknown (no stats reply)")
    change = size - pool.processes
    if change == 0:
        return Resized(pool, size)
    control = get_celery().control
    command = control.pool_grow if change > 0 else control.pool_shrink
    replies = command(abs(change), destination=[pool.worker], reply=True, timeout=timeout)
    answer = next((reply[pool.worker] for reply in replies or [] if pool.worker in reply), None)
    if answer is None:
        return Resized(pool, size, error="no answer")
    if "ok" not in answer:
        return Resized(pool, size, error=str(answer.get("error", answer)))
    return Resized(pool, size)
