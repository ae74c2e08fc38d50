"""Pool sizes change live (DESIGN.md): `cao pool resize QUEUE N` grows or shrinks the
pool of every worker consuming QUEUE, without a restart, and the calls that worker
makes at once follow. The `metered` queue's worker here is the test's own."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.operator_support import submit
from tests.harness import CAO, Proc, wait_for_job, wait_until

pytestmark = pytest.mark.slow

QUEUE = SERVICE = "metered"  # limit 3 in tests/catalog.yaml


def cao_pool(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CAO, "pool", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_queues_pool_grows_and_shrinks_while_it_runs(sim, api, env, log_dir, migrated):
    worker = Proc("worker-metered-pool", [*CAO, "worker", "-Q", QUEUE, "-c", "1"], env, log_dir)
    try:
        worker.wait_for_log("ready.", timeout=60)
        wait_until(lambda: processes_shown(env) == 1, 20, 0.2, "the worker's one process")

        grown = cao_pool(env, "resize", QUEUE, "3")
        assert grown.returncode == 0, grown.stderr
        assert "1 -> 3 processes" in grown.stdout
        wait_until(lambda: processes_shown(env) == 3, 20, 0.2, "three processes")
        calls_at_once(sim, api, expected=3)

        shrunk = cao_pool(env, "resize", QUEUE, "1")
        assert shrunk.returncode == 0, shrunk.stderr
        assert "3 -> 1 processes" in shrunk.stdout
        wait_until(lambda: processes_shown(env) == 1, 20, 0.2, "one process")
        calls_at_once(sim, api, expected=1)
    finally:
        worker.stop()


def processes_shown(env: dict[str, str]) -> int | None:
    """The processes `cao pool show` reports for the one worker of the queue (None if
    that worker's answers missed the command's reply window, as on a busy machine)."""
    shown = cao_pool(env, "show").stdout.splitlines()
    rows = [row for row in shown if f"queues={QUEUE} " in row]
    count = rows[0].rsplit("processes=", 1)[1] if len(rows) == 1 else "?"
    return int(count) if count.isdigit() else None


def calls_at_once(sim, api, expected: int) -> None:
    """Three jobs at once: the most calls the service saw together is `expected`."""
    sim.reset()
    sim.behave(SERVICE, latency_ms=2500)  # long enough for three to overlap when they can
    jobs = [submit(api, "metered_job", {"n": n}) for n in range(3)]
    for job_id in jobs:
        assert wait_for_job(api, job_id, timeout=30)["status"] == "COMPLETED"
    assert sim.stats(SERVICE)["max_in_flight"] == expected


def test_resizing_a_queue_no_worker_consumes_says_so(env):
    done = cao_pool(env, "resize", "nobody-consumes-this", "2")
    assert done.returncode == 2
    assert "no running worker consumes queue 'nobody-consumes-this'" in done.stderr
