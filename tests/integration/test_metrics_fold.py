"""The metrics fold on a real database: exact when folds run at once (two API replicas
scraped together), resumed where it stopped, and bounded in time on a large log."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import text

from app.db import session_scope
from app.events import metrics_fold
from app.events.metrics_counts import (
    JOB_DURATION,
    JOBS_CREATED,
    JOBS_FINISHED,
    STEP_ATTEMPTS,
    STEP_DURATION,
)
from app.events.metrics_fold import fold_events, read_folded
from tests.event_log_rows import Event, write_jobs


def _seed(jobs: int, first_id: int) -> int:
    """`jobs` finished one-step jobs, their events numbered from `first_id`; the next id."""
    return write_jobs(
        [
            [
                Event("JOB_CREATED", at=1 + n % 3),
                Event("STEP_STARTED", 0, "svc", 2 + n % 3),
                Event("STEP_COMPLETED", 0, "svc", 3 + n % 3),
                Event("JOB_COMPLETED", at=4 + n % 3),
            ]
            for n in range(jobs)
        ],
        first_id,
        feature="f",
    )


def _folded() -> dict[tuple[str, tuple[str, ...], str], float]:
    return {(a.metric, tuple(json.loads(a.labels)), a.part): a.value for a in read_folded()}


@pytest.mark.timeout(60)
def test_folds_running_at_once_count_every_event_exactly_once(backend, monkeypatch):
    monkeypatch.setattr(metrics_fold, "FOLD_WINDOW", 37)  # many windows, many chances to race
    next_id = _seed(150, 1)
    errors: list[BaseException] = []

    def scraper() -> None:
        try:
            for _ in range(5):
                fold_events()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    for thread in threads:
        thread.start()
    _seed(50, next_id)  # more events land while they fold
    for thread in threads:
        thread.join(30)
    assert errors == []
    fold_events()
    folded = _folded()
    assert folded[(JOBS_CREATED, ("f",), "")] == 200
    assert folded[(JOBS_FINISHED, ("f", "COMPLETED"), "")] == 200
    assert folded[(STEP_ATTEMPTS, ("svc", "completed"), "")] == 200
    assert folded[(STEP_DURATION, ("svc",), "count")] == 200
    assert folded[(STEP_DURATION, ("svc",), "sum")] == pytest.approx(200.0)
    assert folded[(JOB_DURATION, ("f",), "count")] == 200
    # A fold with nothing new changes nothing.
    fold_events()
    assert _folded() == folded


@pytest.mark.timeout(60)
def test_retention_folds_the_events_it_deletes(backend):
    from app.jobs.recovery import delete_old_jobs

    _seed(20, 1)
    assert delete_old_jobs(retention_days=1) == 19  # the newest event's job stays
    folded = _folded()
    assert folded[(JOBS_FINISHED, ("f", "COMPLETED"), "")] == 20
    assert folded[(STEP_DURATION, ("svc",), "count")] == 20


@pytest.mark.timeout(120)
def test_a_scrape_folds_a_large_log_within_its_budget(private_postgres, monkeypatch):
    """Jobs' events seeded by SQL: a budgeted fold stops on time, and the folds that
    follow resume where it stopped and end exact (the figures at 100,000 jobs are
    benchmarks/metrics_scrape.py's)."""
    from app.db import dispose_db, init_db

    jobs = 5_000
    monkeypatch.setattr(metrics_fold, "FOLD_WINDOW", 1000)
    dispose_db()
    init_db(private_postgres)
    try:
        with session_scope() as session:
            session.execute(text(_SEED_JOBS), {"n": jobs})
            session.execute(text(_SEED_EVENTS), {"n": jobs})
        started = time.monotonic()
        first = fold_events(budget_s=0.05)
        assert time.monotonic() - started < 3.0  # the budget and one window at most
        assert not first.complete
        assert first.events > 0
        while not fold_events(budget_s=0.05).complete:
            pass
        folded = _folded()
        assert folded[(JOBS_CREATED, ("f",), "")] == jobs
        assert folded[(STEP_DURATION, ("svc",), "count")] == jobs
        assert folded[(JOBS_FINISHED, ("f", "COMPLETED"), "")] == jobs
    finally:
        dispose_db()
        init_db()


_SEED_JOBS = """
INSERT INTO job (id, tenant, feature_name, status, progress, current_step, total_steps,
                 input_data, context, recipe, last_seq, created_at, updated_at)
SELECT md5(i::text)::uuid, 'default', 'f', 'COMPLETED', 100, 0, 1, '{}', '{}', '{}', 4,
       now(), now()
FROM generate_series(1, :n) AS i
"""
_SEED_EVENTS = """
INSERT INTO job_event (id, job_id, seq, type, feature_name, step_index, step_name, attempt,
                       progress, ts, data)
SELECT 4 * (i - 1) + k, md5(i::text)::uuid, k,
       (ARRAY['JOB_CREATED', 'STEP_STARTED', 'STEP_COMPLETED', 'JOB_COMPLETED'])[k], 'f',
       CASE WHEN k IN (2, 3) THEN 0 END, CASE WHEN k IN (2, 3) THEN 'svc' END,
       CASE WHEN k IN (2, 3) THEN 1 END, 0, now() + k * interval '1 second', '{}'
FROM generate_series(1, :n) AS i, generate_series(1, 4) AS k
ORDER BY i, k
"""
