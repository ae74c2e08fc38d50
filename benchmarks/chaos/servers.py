"""Servers a chaos scenario may restart: a PostgreSQL cluster made for the run (initdb
into a temporary folder, on a port of its own) and a throw-away Redis server. Neither
is a server anything else on the machine uses."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.harness import free_port, port_open, wait_until
from tests.lease_support import RedisServer

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"

__all__ = ["PostgresCluster", "RedisServer"]


class PostgresCluster:
    """A private PostgreSQL cluster (trust authentication, no fsync: its data is
    disposable) that can be stopped, crashed and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="cao-chaos-pg-"))
        self.data = self.folder / "data"
        # The server's own log stays in its folder (the run's log folder is root's).
        self.log = self.folder / "postgres.log"
        account = pwd.getpwnam(PG_USER)
        shutil.chown(self.folder, account.pw_uid, account.pw_gid)
        self._as_postgres(PG_BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER)

    def _as_postgres(self, *argv: str | Path) -> None:
        command = " ".join(f"'{part}'" for part in argv)
        subprocess.run(
            ["su", PG_USER, "-s", "/bin/sh", "-c", command],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._as_postgres(
            PG_BIN / "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "start",
        )
        wait_until(lambda: port_open(self.port), 30, 0.1, "PostgreSQL to listen")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session and shuts down cleanly; `immediate` is a crash."""
        self._as_postgres(PG_BIN / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        wait_until(lambda: not port_open(self.port), 30, 0.1, "PostgreSQL to stop")

    def create_database(self, name: str) -> str:
        import psycopg

        plain = self.url().replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self, log_dir: Path) -> None:
        if port_open(self.port):
            self.stop("immediate")
        shutil.copy(self.log, log_dir / f"postgres-{self.port}.log")
        shutil.rmtree(self.folder, ignore_errors=True)
