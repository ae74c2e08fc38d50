"""A PostgreSQL server that goes silent at the network level (its host gone, a
partition, a failover that leaves connections half-open) makes the gateway's
connections fail within DATABASE_TCP_TIMEOUT_S, so that a request gets its 503 and a
worker its retry, rather than waiting for ever on a reply that cannot come.

The client runs in a network namespace of its own, joined to this one by a veth
pair; taking this side's link down makes every packet vanish without a reset, as a
partition does. Needs root and iproute2 (as CI has on this machine)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to build a network namespace",
)

TCP_TIMEOUT_S = 4

# Runs in the namespace: one query, then (once the test has cut the link) a query
# whose answer cannot come back, then a new connection that cannot be made.
CLIENT = """
import sys, time
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from app.db import build_engine

engine = build_engine(sys.argv[1], pre_ping=False)
with engine.connect() as connection:
    connection.execute(text("select 1"))
print("connected", flush=True)

def timed(label, statement):
    started = time.monotonic()
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
        print(label, "answered", flush=True)
    except OperationalError:
        print(label, "failed", round(time.monotonic() - started, 1), flush=True)

timed("waiting", "select pg_sleep(60)")
timed("connecting", "select 1")
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def linked_namespace() -> Iterator[tuple[str, str, Callable[[], None]]]:
    """(namespace, the address of this side of its link, a function that cuts the link)."""
    suffix = uuid.uuid4().hex[:6]
    namespace, outer, inner = f"cao-{suffix}", f"cao{suffix}o", f"cao{suffix}i"
    subnet = f"10.231.{random.randint(1, 250)}"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", namespace)
        _ip("addr", "add", f"{subnet}.1/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        yield namespace, f"{subnet}.1", lambda: _ip("link", "set", outer, "down")
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def test_a_silent_database_fails_waiting_queries_and_new_connections_in_time(
    migrated, backend_name, env
):
    if backend_name != "postgresql":
        pytest.skip("a network timeout of PostgreSQL connections")
    url = make_url(migrated)
    with linked_namespace() as (namespace, address, cut):
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432), host=address)
        through_link = url.set(host=address, port=proxy.port)
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                sys.executable,
                "-c",
                CLIENT,
                through_link.render_as_string(hide_password=False),
            ],
            env={**env, "DATABASE_TCP_TIMEOUT_S": str(TCP_TIMEOUT_S)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
            time.sleep(1.0)  # the pg_sleep is in flight
            cut()
            # Without the timeouts the first answer never comes: the run's timeout ends it.
            out, _ = client.communicate(timeout=4 * TCP_TIMEOUT_S)
        finally:
            client.kill()
            proxy.cut()
    results = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line}
    assert results["waiting"][0] == "failed", out
    assert float(results["waiting"][1]) < 1.0 + 2 * TCP_TIMEOUT_S, out
    assert results["connecting"][0] == "failed", out
    assert float(results["connecting"][1]) < 2 * TCP_TIMEOUT_S, out
