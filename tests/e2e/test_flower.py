"""Flower, as an operator runs it beside the gateway (`celery --broker=$REDIS_URL
flower`), sees the workers with their queues and the step tasks of a job. The workers
run as deployed by default (TASK_EVENTS unset): they send heartbeats, and task events
once Flower asks for them, which it does on its own every few seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.broker import EVENTS_FLUSH_INTERVAL_S
from tests.harness import Proc, free_port, wait_for_job, wait_until

pytestmark = pytest.mark.timeout(120)

RUN_STEP_TASK = "cao.run_step"


@pytest.fixture(scope="module")
def flower(env: dict[str, str], log_dir: Path) -> Iterator[httpx.Client]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "celery",
        f"--broker={env['REDIS_URL']}",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        "--basic_auth=ops:flower-test",
    ]
    proc = Proc("flower", argv, env, log_dir)
    try:
        proc.wait_for_port(port, 60)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=("ops", "flower-test"), timeout=10
        ) as client:
            yield client
    finally:
        proc.stop()


def _workers(flower: httpx.Client) -> dict[str, Any]:
    response = flower.get("/api/workers", params={"refresh": "true"})
    response.raise_for_status()
    workers: dict[str, Any] = response.json()
    return workers


def _queues_of(worker: dict[str, Any]) -> set[str]:
    return {queue["name"] for queue in worker.get("active_queues") or ()}


def test_flower_shows_the_workers_their_queues_and_the_step_tasks(
    flower: httpx.Client, stack: dict[str, Any]
) -> None:
    # Every worker of the stack, with the queue it consumes.
    def all_queues_seen() -> dict[str, Any] | None:
        workers = _workers(flower)
        seen = set().union(*(_queues_of(w) for w in workers.values())) if workers else set()
        return workers if {"default", "medium", "heavy"} <= seen else None

    workers = wait_until(all_queues_seen, 30, 0.5, "Flower to list the workers")
    default_workers = [name for name, w in workers.items() if "default" in _queues_of(w)]
    assert default_workers, workers
    for name in default_workers:
        assert RUN_STEP_TASK in workers[name]["registered"], workers[name]
    # Heartbeats reach it: it knows them online.
    wait_until(
        lambda: all(
            flower.get("/api/workers", params={"status": "true"}).json().get(name)
            for name in default_workers
        ),
        30,
        0.5,
        "Flower to see the workers' heartbeats",
    )

    api = stack["api"]

    def run(feature: str) -> str:
        created = api.post("/api/v1/jobs", json={"feature_name": feature, "input_data": {}})
        job_id: str = created.json()["job_id"]
        assert wait_for_job(api, job_id)["status"] == "COMPLETED"
        return job_id

    def tasks_of(job_id: str) -> list[dict[str, Any]]:
        tasks = flower.get("/api/tasks", params={"taskname": RUN_STEP_TASK}).json()
        return [t for t in tasks.values() if job_id in (t.get("args") or "")]

    def step_tasks(job_id: str) -> list[dict[str, Any]] | None:
        mine = tasks_of(job_id)
        # viral_video: prompt_enhancer (default), video_gen_v2 (heavy), email_notifier
        # (default), each a delivery of its own: no two consecutive steps share a queue.
        done = [t for t in mine if t["state"] == "SUCCESS"]
        return mine if len(done) == 3 else None

    def seen_whole(job_id: str) -> list[dict[str, Any]] | None:
        # Task events reach Flower in batches (EVENTS_FLUSH_INTERVAL_S apart).
        try:
            return wait_until(lambda: step_tasks(job_id), 2 + 2 * EVENTS_FLUSH_INTERVAL_S, 0.2)
        except TimeoutError:
            return None

    # Flower asks each worker for task events within seconds of seeing it, and a step
    # run before its worker was asked is not in Flower: jobs until one is, wholly (a
    # worker of a loaded machine may come up, and be asked, after the others).
    tasks = wait_until(
        lambda: seen_whole(run("viral_video")), 90, 0.0, "Flower to show a job's step tasks"
    )
    by_worker = {t["worker"] for t in tasks}
    assert {"default", "heavy"} <= set().union(*(_queues_of(workers[w]) for w in by_worker))
