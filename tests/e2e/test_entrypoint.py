"""docker-entrypoint.sh, run for real with CAO_BIN pointing at this virtualenv's `cao`.

The roles are exercised against real servers: migrations against a PostgreSQL that
starts accepting connections late (as in a fresh `docker compose up`) or never, the
API serving after its start-up migration, a worker consuming the queues it was given.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from app.db import build_engine
from app.migrate import alembic_config
from app.models import Base
from tests.e2e.tcp_proxy import TcpProxy
from tests.harness import Proc, free_port, port_open, wait_until

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker-entrypoint.sh"
CAO_BIN = Path(sys.executable).with_name("cao")
RETRY_WARNING = "database not reachable yet"


class FreshDatabase:
    """An empty PostgreSQL database on the test server, dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        self.url = make_url(server_url).set(database=f"cao_ep_{uuid.uuid4().hex[:10]}")
        self._admin = make_url(server_url).set(drivername="postgresql")
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{self.url.database}"')

    def _connect(self) -> psycopg.Connection:
        dsn = self._admin.render_as_string(hide_password=False)
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)

    def url_via(self, host: str, port: int) -> str:
        return self.url.set(host=host, port=port).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self._connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.url.database}" WITH (FORCE)')

    def assert_migrated_to_head(self) -> None:
        url = self.url.render_as_string(hide_password=False)
        engine = build_engine(url)
        try:
            with engine.connect() as conn:
                revision = MigrationContext.configure(conn).get_current_revision()
                tables = set(inspect(conn).get_table_names())
        finally:
            engine.dispose()
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert revision == head, f"schema at {revision}, head is {head}"
        assert set(Base.metadata.tables) <= tables, tables


@pytest.fixture
def fresh_database(env: dict[str, str], backend_name: str) -> Iterator[FreshDatabase]:
    if backend_name != "postgresql":
        pytest.skip("needs the PostgreSQL server (this run fell back to SQLite)")
    database = FreshDatabase(env["DATABASE_URL"])
    yield database
    database.drop()


@pytest.fixture
def entrypoint_env(env: dict[str, str]) -> dict[str, str]:
    assert CAO_BIN.exists(), f"{CAO_BIN} missing: install the project into this virtualenv"
    return {**env, "CAO_BIN": str(CAO_BIN)}


def run_entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # Run the file itself, not `bash file`: its shebang and executable bit count too.
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(40)
def test_migrate_waits_for_a_database_that_comes_up_late(fresh_database, entrypoint_env):
    pg = fresh_database.url
    # A database server still booting when the container starts: it comes up only once
    # the entrypoint has said it will retry, however slowly the machine starts it.
    proxy = TcpProxy((pg.host or "127.0.0.1", pg.port or 5432), listening=False)
    env = {
        **entrypoint_env,
        "DATABASE_URL": fresh_database.url_via("127.0.0.1", proxy.port),
        "MIGRATION_RETRY_SLEEP_SECONDS": "1",
        "MIGRATION_MAX_ATTEMPTS": "20",
    }
    output: list[str] = []
    try:
        entrypoint = subprocess.Popen(
            [str(ENTRYPOINT), "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert entrypoint.stdout is not None
        for line in entrypoint.stdout:
            if RETRY_WARNING in line and not any(RETRY_WARNING in seen for seen in output):
                proxy.restore()
            output.append(line)
        returncode = entrypoint.wait(timeout=30)
    finally:
        proxy.close()
    assert returncode == 0, "".join(output)
    assert any(RETRY_WARNING in line for line in output), "".join(output)
    fresh_database.assert_migrated_to_head()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("role", ["migrate", "api"])
def test_unreachable_database_fails_the_container_after_max_attempts(role, entrypoint_env):
    port = free_port()  # nothing listens here
    result = run_entrypoint(
        {
            **entrypoint_env,
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/cao",
            "RUN_MIGRATIONS_ON_STARTUP": "true",
            "MIGRATION_RETRY_SLEEP_SECONDS": "0.2",
            "MIGRATION_MAX_ATTEMPTS": "2",
            "PORT": str(free_port()),
        },
        role,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "docker-entrypoint: database migrations failed" in result.stderr
    assert "connection refused" in result.stderr.lower()  # the cause, not just a code
    # Two attempts means exactly one wait in between: MIGRATION_MAX_ATTEMPTS is honoured.
    assert result.stderr.count(RETRY_WARNING) == 1, result.stderr


@pytest.mark.timeout(60)
def test_api_role_migrates_then_serves_health(fresh_database, entrypoint_env, log_dir):
    port = free_port()
    env = {
        **entrypoint_env,
        "DATABASE_URL": fresh_database.url.render_as_string(hide_password=False),
        "RUN_MIGRATIONS_ON_STARTUP": "true",
        "PORT": str(port),
    }
    proc = Proc("entrypoint-api", [str(ENTRYPOINT), "api"], env, log_dir)
    try:
        wait_until(lambda: port_open(port) or not proc.alive(), 45, message="api to listen")
        assert proc.alive(), proc.log_text()
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
        log = proc.log_text()
    finally:
        proc.stop()
    # The entrypoint ran `cao migrate` itself before the server started.
    assert "migrations applied" in log, log
    fresh_database.assert_migrated_to_head()


def _with_python(env: dict[str, str]) -> dict[str, str]:
    """`python` on PATH is this virtualenv's, as it is the image's in a container."""
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}


@pytest.mark.timeout(90)
def test_worker_role_consumes_the_configured_queues(entrypoint_env, log_dir, migrated):
    env = {
        **_with_python(entrypoint_env),
        "WORKER_QUEUES": "heavy,medium",
        "WORKER_CONCURRENCY": "1",
        "HOSTNAME": f"container-{uuid.uuid4().hex[:8]}",
    }
    proc = Proc("entrypoint-worker", [str(ENTRYPOINT), "worker"], env, log_dir)
    try:
        proc.wait_for_log("ready.", timeout=45)
        banner = proc.log_text()
        # The container's healthcheck pings this worker, by the name it was given.
        check = run_entrypoint(env, "healthcheck", "worker")
    finally:
        proc.stop()
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"heavy+medium@{env['HOSTNAME']}: OK" in check.stdout, check.stdout
    assert ".> heavy" in banner, banner
    assert ".> medium" in banner, banner
    assert ".> default" not in banner, banner
    assert "concurrency: 1 " in banner, banner


def test_other_commands_run_as_given(entrypoint_env):
    result = run_entrypoint(entrypoint_env, "printf", "%s|", "cao", "two words")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cao|two words|"


@pytest.mark.timeout(60)
def test_beat_healthcheck_reads_the_heartbeat_beat_keeps(entrypoint_env, log_dir, tmp_path):
    heartbeat = tmp_path / "beat.heartbeat"
    env = {**_with_python(entrypoint_env), "BEAT_HEARTBEAT_FILE": str(heartbeat)}
    assert run_entrypoint(env, "healthcheck", "beat").returncode != 0  # no Beat yet
    proc = Proc("entrypoint-beat", [str(ENTRYPOINT), "beat"], env, log_dir)
    try:
        wait_until(heartbeat.exists, 30, message="Beat to touch its heartbeat file")
        check = run_entrypoint(env, "healthcheck", "beat")
    finally:
        proc.stop()
    assert check.returncode == 0, check.stderr
