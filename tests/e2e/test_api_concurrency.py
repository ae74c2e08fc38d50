"""Many concurrent creates: none stalls on the connection pool or fails with a 500."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_a_burst_of_creates_all_succeed_promptly(api_server, sim, workers):
    workers.ensure("default")

    def create(n: int) -> int:
        with httpx.Client(base_url=api_server, timeout=30) as client:
            body = {"feature_name": "python_job", "input_data": {"text": f"burst {n}"}}
            return client.post("/api/v1/jobs", json=body).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=120) as pool:
        statuses = list(pool.map(create, range(120)))
    elapsed = time.monotonic() - started
    assert statuses == [201] * 120
    # Each create commits in its request thread, so a burst larger than the thread
    # pool neither stalls nor fails.
    assert elapsed < 20, f"120 creates took {elapsed:.1f}s"
