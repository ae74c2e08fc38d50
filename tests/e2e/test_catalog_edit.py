"""A job keeps the recipe it started with: editing the catalog under a running job (its
services removed, their address changed) never breaks it.

The `edited` queue's worker reads its own copy of the test catalog, which the test edits
while the job's first step is in flight; the API and every other worker keep theirs.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.operator_support import submit
from tests.harness import CAO, Proc, wait_for_job, wait_until

pytestmark = pytest.mark.slow

CATALOG = Path(__file__).parents[1] / "catalog.yaml"
DEAD_URL = "http://127.0.0.1:9/nowhere"  # the discard port: nothing answers there


def _edit(catalog: Path) -> None:
    """Remove `edited` and its feature, and send `edited_after` somewhere else."""
    text = catalog.read_text()
    text = re.sub(r"^  edited: .*\n", "", text, flags=re.M)
    text = re.sub(r"^  edited_job: .*\n", "", text, flags=re.M)
    text = re.sub(
        r'(^  edited_after: \{kind: http, url: )"[^"]*"', rf'\g<1>"{DEAD_URL}"', text, flags=re.M
    )
    assert "edited:" not in text
    assert DEAD_URL in text
    catalog.write_text(text)


def _logged_at(log: str, event: str) -> float:
    """When the first line logging `event` was written (its ISO timestamp), as epoch s."""
    line = next(line for line in log.splitlines() if event in line)
    stamp = re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line)
    assert stamp is not None, line
    return datetime.fromisoformat(stamp.group()).timestamp()


def test_editing_the_catalog_never_breaks_a_job_in_flight(
    sim, api, env, log_dir, migrated, tmp_path
):
    catalog = tmp_path / "catalog.yaml"
    shutil.copy(CATALOG, catalog)
    worker = Proc(
        "worker-edited",
        [*CAO, "worker", "-Q", "edited", "-c", "2"],
        {**env, "CAO_CATALOG": str(catalog)},
        log_dir,
    )
    try:
        worker.wait_for_log("ready.", timeout=60)
        sim.behave("edited", latency_ms=3000)
        job_id = submit(api, "edited_job")
        wait_until(lambda: sim.stats("edited")["in_flight"] == 1, 15, 0.05, "the first call")
        _edit(catalog)
        time.sleep(1.5)  # the worker re-reads a changed catalog at most once a second

        job = wait_for_job(api, job_id, timeout=30)
        assert job["status"] == "COMPLETED", job
        assert len(sim.requests("edited", job_id)) == 1
        # The second step was called where the job's snapshot says, once.
        after = sim.requests("edited_after", job_id)
        assert len(after) == 1
        assert after[0]["context"].keys() == {"edited"}
        # The worker read the edit before it called the second step (it re-reads the
        # file as it starts that step), so the call above went by the snapshot.
        worker.wait_for_log("catalog reloaded", timeout=5)
        assert _logged_at(worker.log_text(), "catalog reloaded") < after[0]["received_at"]
    finally:
        worker.stop()
