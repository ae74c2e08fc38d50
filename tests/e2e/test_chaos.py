"""The chaos suite's short version (benchmarks/chaos at the sizes of `SHORT`): the
scenarios the rest of the suite does not already attack, on one gateway of their own
with a private PostgreSQL cluster and Redis server. Each must lose no job, commit no
step twice, keep every service within its limit and let a subscriber miss nothing.

Attacked elsewhere, and so not here: a worker frozen past its lease
(test_recovery.test_frozen_worker_late_result_is_rejected), Redis gone while jobs are
created (test_redis_outage, test_broker_outage_recovery), 5xx, timeouts and 429
(test_retries), duplicate deliveries (test_fencing.test_duplicate_message_runs_the_step_once
and test_old_attempt_delivered_after_a_newer_one_started_changes_nothing), sweeps racing
(test_recovery.test_concurrent_sweeps_requeue_each_stuck_step_once), many sockets on a
running gateway (test_events_ws.test_700_sockets_each_get_every_event_in_order_while_50_jobs_run),
every error an operation answers against the OpenAPI document (test_openapi).
schemathesis runs here for a few seconds, the full run for five minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.chaos.runner import run_scenario
from benchmarks.chaos.sizes import SHORT
from benchmarks.chaos.stack import ChaosStack, chaos_stack
from tests.e2e.netns_link import netns_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(log_dir: Path) -> Iterator[ChaosStack]:
    # The short scenarios build no backlog: a step a killed worker had prefetched is
    # sent again after 5 s, not the full run's 30.
    with chaos_stack(log_dir, REQUEUE_AFTER_SECONDS="5") as running:
        yield running


@pytest.mark.parametrize(
    "scenario",
    [
        "worker_sigkill",
        "postgres_restarts",
        "schemathesis",
        pytest.param(
            "worker_cut_off",
            marks=pytest.mark.skipif(
                not netns_available(),
                reason="needs root, iproute2 and socat for network namespaces",
            ),
        ),
    ],
)
def test_a_scenario_loses_nothing_and_recovers(stack: ChaosStack, scenario: str) -> None:
    row = run_scenario(scenario, stack, SHORT)
    assert row.jobs > 0, row
    assert row.lost == 0, row
    assert row.committed_twice == 0, row
    assert row.missed == 0, row
    assert row.max_in_flight <= row.limit, row
    if scenario == "schemathesis":
        assert row.detail.get("operations", 0) > 0, row
        assert row.detail.get("failures") == 0, row
        assert row.detail.get("errors") == 0, row
    if row.faults:
        assert row.recover_p99_s is not None, row
        assert row.recover_p99_s < 30, row
