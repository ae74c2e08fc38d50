"""A PostgreSQL server that goes silent at the network level (its host gone, a
partition, a failover that leaves connections half-open) makes the gateway's
connections fail within DATABASE_TCP_TIMEOUT_S, so that a request gets its 503 and a
worker its retry, rather than waiting for ever on a reply that cannot come.

The client runs in a network namespace of its own, reaching the server through a
relay namespace (tests/e2e/netns_link.py); taking the link down makes every packet
vanish without a reset, as a partition does. Needs root, iproute2 and socat (as CI
has on this machine)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.netns_link import netns_available, netns_link

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="needs root, iproute2 and socat to build network namespaces"
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


def test_a_silent_database_fails_waiting_queries_and_new_connections_in_time(
    migrated, backend_name, env
):
    if backend_name != "postgresql":
        pytest.skip("a network timeout of PostgreSQL connections")
    url = make_url(migrated)
    with netns_link() as link:
        address, port = link.relay_to(url.port or 5432)
        through_link = url.set(host=address, port=port)
        client = subprocess.Popen(
            link.in_client(
                sys.executable, "-c", CLIENT, through_link.render_as_string(hide_password=False)
            ),
            env={**env, "DATABASE_TCP_TIMEOUT_S": str(TCP_TIMEOUT_S)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
            time.sleep(1.0)  # the pg_sleep is in flight
            link.cut()
            # Without the timeouts the first answer never comes: the run's timeout ends it.
            out, _ = client.communicate(timeout=4 * TCP_TIMEOUT_S)
        finally:
            client.kill()
    results = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line}
    assert results["waiting"][0] == "failed", out
    assert float(results["waiting"][1]) < 1.0 + 2 * TCP_TIMEOUT_S, out
    assert results["connecting"][0] == "failed", out
    assert float(results["connecting"][1]) < 2 * TCP_TIMEOUT_S, out
