"""Per-service lease semaphore in Redis: the only module that knows its keys.

One sorted set per service holds lease ids scored by expiry (ms, from Redis `TIME`,
never a worker's clock); only unexpired members count against the limit, so a lease
whose worker died frees its slot after `lease_ttl_s` even before it is reaped.
A step that finds its service full is put on the service's wait list in the same
script; releasing a lease hands the freed slot straight to the oldest waiter (the
lease is created for it), so a waiting step never busy-polls and a newcomer cannot
steal the slot. Lease ids are `job_id:step_index:fence:queue` (see app/jobs/repository.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import redis

from app.redis_client import get_redis

_PREFIX = "cao:lease:"
_WAIT_PREFIX = "cao:wait:"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Lua functions shared by the scripts below; `now` is Redis TIME in ms.
# acquire: 1 acquired, 2 already held (handed over or a duplicate delivery), 0 full
# (and, when wait_if_full, queued on the wait list).
_ACQUIRE_FN = """
local function acquire(leases, waiters, lease_id, ttl, limit, wait_if_full)
  local held = redis.call('ZSCORE', leases, lease_id)
  if held and tonumber(held) >= now then
    redis.call('ZADD', leases, now + ttl, lease_id)
    return 2
  end
  if redis.call('ZCOUNT', leases, now, '+inf') < limit then
    redis.call('ZADD', leases, now + ttl, lease_id)
    redis.call('ZREM', waiters, lease_id)
    return 1
  end
  if wait_if_full then
    redis.call('ZADD', waiters, 'NX', now, lease_id)
  end
  return 0
end
"""

# release_and_wake: removes the lease ('' to only wake), then hands free slots to the
# oldest waiters (a lease is created for each); returns their ids.
_RELEASE_FN = """
local function release_and_wake(leases, waiters, lease_id, ttl, limit, max_wake)
  if lease_id ~= '' then
    redis.call('ZREM', leases, lease_id)
  end
  local free = limit - redis.call('ZCOUNT', leases, now, '+inf')
  local woken = {}
  while free > 0 and #woken < max_wake do
    local popped = redis.call('ZPOPMIN', waiters)
    if #popped == 0 then break end
    redis.call('ZADD', leases, now + ttl, popped[1])
    table.insert(woken, popped[1])
    free = free - 1
  end
  return woken
end
"""

# KEYS: leases, waiters. ARGV: lease_id, ttl_ms, limit, wait_if_full (0/1).
_ACQUIRE = (
    _NOW
    + _ACQUIRE_FN
    + """
return acquire(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1')
"""
)

# KEYS: leases. ARGV: lease_id, ttl_ms. 1 renewed, 0 lost (expired or reaped).
_RENEW = (
    _NOW
    + """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) >= now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""
)

# KEYS: leases, waiters. ARGV: lease_id ('' to only wake), ttl_ms, limit, max_wake.
_RELEASE_AND_WAKE = (
    _NOW
    + _RELEASE_FN
    + """
return release_and_wake(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
                        tonumber(ARGV[4]))
"""
)

# KEYS: leases, waiters of the released service; leases, waiters of the next one.
# ARGV: released id, its ttl_ms, its limit; next id, its ttl_ms, its limit.
# Release (waking waiters first: they were there before the next step), then take a
# slot for the next step without queueing it, but only if the released lease was
# still held. Returns {acquire result, woken ids}.
_HAND_ON = (
    _NOW
    + _RELEASE_FN
    + _ACQUIRE_FN
    + """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local still_held = held and tonumber(held) >= now
local woken = release_and_wake(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]),
                               tonumber(ARGV[3]), tonumber(ARGV[3]))
local acquired = 0
if still_held then
  acquired = acquire(KEYS[3], KEYS[4], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), false)
end
return {acquired, woken}
"""
)

# KEYS: leases. Removes and returns every expired lease id.
_REAP = (
    _NOW
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1)
end
return expired
"""
)

# KEYS: leases, waiters. ARGV: lease_id. 2 held (unexpired), 1 on the wait list, 0 neither.
_STATE = (
    _NOW
    + """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) >= now then
  return 2
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 1
end
return 0
"""
)

_COUNT = (
    _NOW
    + """
return {redis.call('ZCOUNT', KEYS[1], now, '+inf'), redis.call('ZCARD', KEYS[2])}
"""
)


@dataclass(frozen=True)
class LeaseId:
    job_id: str
    step_index: int
    fence: int
    queue: str

    def __str__(self) -> str:
        return f"{self.job_id}:{self.step_index}:{self.fence}:{self.queue}"

    @classmethod
    def parse(cls, raw: str | bytes) -> LeaseId:
        text = raw.decode() if isinstance(raw, bytes) else raw
        job_id, step_index, fence, queue = text.split(":", 3)
        return cls(job_id, int(step_index), int(fence), queue)


@dataclass(frozen=True)
class Slot:
    """A lease on a service with that service's current limits."""

    service: str
    lease: LeaseId
    ttl_s: float
    limit: int


@dataclass(frozen=True)
class Usage:
    in_use: int
    waiting: int


class LeaseState(IntEnum):
    """Where a step stands with its service's semaphore (see `LeaseSemaphore.state`)."""

    NONE = 0
    WAITING = 1
    HELD = 2


class LeaseSemaphore:
    """The lease operations for one Redis; scripts are registered once per client."""

    ACQUIRED = 1
    ALREADY_HELD = 2
    FULL = 0

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE_AND_WAKE)
        self._hand_on = client.register_script(_HAND_ON)
        self._reap = client.register_script(_REAP)
        self._count = client.register_script(_COUNT)
        self._state = client.register_script(_STATE)

    @staticmethod
    def keys(service: str) -> list[str]:
        return [_PREFIX + service, _WAIT_PREFIX + service]

    def acquire(
        self, service: str, lease: LeaseId, ttl_s: float, limit: int, *, wait: bool = True
    ) -> int:
        return int(
            self._acquire(
                keys=self.keys(service),
                args=[str(lease), int(ttl_s * 1000), limit, "1" if wait else "0"],
            )
        )

    def renew(self, service: str, lease: LeaseId, ttl_s: float) -> bool:
        return bool(self._renew(keys=self.keys(service)[:1], args=[str(lease), int(ttl_s * 1000)]))

    def release(self, service: str, lease: LeaseId, ttl_s: float, limit: int) -> list[LeaseId]:
        """Drop the lease (tolerates one already expired or reaped); returns steps woken.

        Every free slot is handed out, not only the one released, so a raised limit
        takes effect at the next release.
        """
        return self._wake(service, str(lease), ttl_s, limit, max_wake=limit)

    def hand_on(self, released: Slot, nxt: Slot) -> tuple[bool, list[LeaseId]]:
        """Release one lease and take a slot for the next step of the same job, in one
        round trip: (whether the next step got its slot, the waiters woken). Waiters go
        first; a next step that finds its service full is not queued (the caller sends
        it the usual way). Nor does a step take one whose own lease had lapsed: its
        delivery may be a zombie whose step runs again elsewhere, and the slot it took
        would carry the id the other run's next step takes too; the zombie, fenced out,
        would then give that slot back under the other run's next call."""
        acquired, woken = self._hand_on(
            keys=[*self.keys(released.service), *self.keys(nxt.service)],
            args=[
                str(released.lease),
                int(released.ttl_s * 1000),
                released.limit,
                str(nxt.lease),
                int(nxt.ttl_s * 1000),
                nxt.limit,
            ],
        )
        return int(acquired) == self.ACQUIRED, [LeaseId.parse(raw) for raw in woken]

    def wake_waiters(self, service: str, ttl_s: float, limit: int) -> list[LeaseId]:
        """Hand every free slot to a waiter (a raised limit, or a lost wake-up)."""
        return self._wake(service, "", ttl_s, limit, max_wake=limit)

    def _wake(
        self, service: str, lease: str, ttl_s: float, limit: int, max_wake: int
    ) -> list[LeaseId]:
        woken = self._release(
            keys=self.keys(service), args=[lease, int(ttl_s * 1000), limit, max_wake]
        )
        return [LeaseId.parse(raw) for raw in woken]

    def services_with_leases(self) -> set[str]:
        """Every service that has a lease set in Redis, in the catalog or not (one
        removed from it still has the leases of the jobs that snapshotted it)."""
        return {
            key.decode()[len(_PREFIX) :]
            for key in self._redis.scan_iter(match=_PREFIX + "*", count=1000)
        }

    def reap_expired(self, service: str) -> list[LeaseId]:
        return [LeaseId.parse(raw) for raw in self._reap(keys=self.keys(service)[:1])]

    def usage(self, service: str) -> Usage:
        in_use, waiting = self._count(keys=self.keys(service))
        return Usage(int(in_use), int(waiting))

    def usages(self, services: list[str]) -> dict[str, Usage]:
        """`usage` of every service in one round trip (a catalog may hold dozens)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for service in services:
                self._count(keys=self.keys(service), client=pipe)
            counts = pipe.execute()
        return {
            service: Usage(int(in_use), int(waiting))
            for service, (in_use, waiting) in zip(services, counts, strict=True)
        }

    def state(self, service: str, lease: LeaseId) -> LeaseState:
        """Whether `lease` is held (unexpired), on the wait list, or neither."""
        return LeaseState(int(self._state(keys=self.keys(service), args=[str(lease)])))

    def forget_waiter(self, service: str, lease: LeaseId) -> None:
        self._redis.zrem(self.keys(service)[1], str(lease))


_semaphore: LeaseSemaphore | None = None


def get_semaphore() -> LeaseSemaphore:
    global _semaphore
    if _semaphore is None:
        _semaphore = LeaseSemaphore(get_redis())
    return _semaphore
