"""LOG_JSON=true: every line of the API, the workers and Beat is one JSON object.

Real processes, each in both of its forms: the API as `cao api` and as
`uvicorn app.main:app`, a worker as `cao worker` and as `celery -A worker.celery_app
worker`, and `cao beat`. Two jobs run through them, on queues of their own (so the
run's other workers take none of their steps): one completes across both workers,
with a step that prints, the other retries and fails. Every line each process wrote,
up to and including its shutdown, parses, with `timestamp`, `level` and `event`;
every worker line about one of the jobs carries the five step fields.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.supervisor import stop_all
from tests.harness import CAO, Proc, Simulators, free_port, wait_for_job, wait_until

pytestmark = pytest.mark.timeout(150)

CATALOG = """
services:
  logs_http: {kind: http, url: "${SIM_URL}/prompt_enhancer", queue: logs_a, timeout_s: 10}
  logs_other: {kind: http, url: "${SIM_URL}/fast_chat_llm", queue: logs_b, timeout_s: 10}
  # Prints its input to stdout: a line the worker must log as JSON too.
  logs_print: {kind: python, target: "builtins:print", queue: logs_a}
  # json.loads of a dict raises TypeError: retried once, then the job fails.
  logs_raise:
    kind: python
    target: "json:loads"
    queue: logs_b
    max_attempts: 2
    backoff: {initial_s: 0.1, max_s: 0.2}
features:
  logs_ok: {steps: [logs_http, logs_other, logs_print]}
  logs_fail: {steps: [logs_raise]}
"""
STEP_FIELDS = ("job_id", "step_index", "attempt", "service", "queue")


def _lines(proc: Proc) -> list[str]:
    return [line for line in proc.log_text().splitlines() if line.strip()]


def _records(proc: Proc) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(_lines(proc), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{proc.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), (proc.name, line)
        missing = {"timestamp", "level", "event"} - record.keys()
        assert not missing, (proc.name, missing, line)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def json_stack(
    simulators: Simulators,
    env: dict[str, str],
    log_dir: Path,
    migrated: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    catalog = tmp_path_factory.mktemp("json-logs") / "catalog.yaml"
    catalog.write_text(CATALOG)
    # Task events from the start: their messages must not change what is logged.
    json_env = {**env, "LOG_JSON": "true", "CAO_CATALOG": str(catalog), "TASK_EVENTS": "true"}
    cao_port, uvicorn_port = free_port(), free_port()
    python = [sys.executable, "-m"]
    procs = {
        "cao-api": Proc("json-cao-api", [*CAO, "api", "--port", str(cao_port)], json_env, log_dir),
        "uvicorn-api": Proc(
            "json-uvicorn-api",
            [*python, "uvicorn", "app.main:app", "--port", str(uvicorn_port)],
            json_env,
            log_dir,
        ),
        "cao-worker": Proc(
            "json-cao-worker", [*CAO, "worker", "-Q", "logs_a", "-c", "1"], json_env, log_dir
        ),
        "celery-worker": Proc(
            "json-celery-worker",
            [
                *python,
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "logs_b",
                "-c",
                "1",
                "-n",
                "json-logs-b@%h",
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            json_env,
            log_dir,
        ),
        "beat": Proc("json-beat", [*CAO, "beat"], json_env, log_dir),
    }
    try:
        procs["cao-api"].wait_for_port(cao_port, 60)
        procs["uvicorn-api"].wait_for_port(uvicorn_port, 60)
        procs["cao-worker"].wait_for_log("ready.", 60)
        procs["celery-worker"].wait_for_log("ready.", 60)
        procs["beat"].wait_for_log("beat: Starting", 60)
        yield {"procs": procs, "urls": (cao_port, uvicorn_port)}
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def ran(json_stack: dict[str, Any]) -> dict[str, Any]:
    """Both jobs run, then every process stopped (SIGTERM, as an orchestrator stops
    them): what they wrote, their shutdown included."""
    cao_port, uvicorn_port = json_stack["urls"]
    jobs = {}
    for port, feature in ((cao_port, "logs_ok"), (uvicorn_port, "logs_fail")):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            created = api.post("/api/v1/jobs", json={"feature_name": feature, "input_data": {}})
            assert created.status_code == 201, created.text
            jobs[feature] = wait_for_job(api, created.json()["job_id"], timeout=60)
    beat = json_stack["procs"]["beat"]
    wait_until(lambda: beat.logged("Sending due task"), 30, 0.2, "Beat to send a task")
    stop_all(json_stack["procs"].values(), grace_s=15)
    return {
        "jobs": jobs,
        "records": {name: _records(proc) for name, proc in json_stack["procs"].items()},
    }


def test_every_line_of_every_process_is_json(ran: dict[str, Any]) -> None:
    assert ran["jobs"]["logs_ok"]["status"] == "COMPLETED", ran["jobs"]["logs_ok"]
    assert ran["jobs"]["logs_fail"]["status"] == "FAILED", ran["jobs"]["logs_fail"]
    records = ran["records"]
    for name, lines in records.items():
        assert lines, f"{name} wrote nothing"
        assert all(r["process"] in {"api", "worker", "beat"} for r in lines), name
    # Celery's and uvicorn's own lines are among them, and so is what a step printed.
    events = {name: [r["event"] for r in lines] for name, lines in records.items()}
    assert any("Application startup complete" in e for e in events["uvicorn-api"])
    access = [r for r in records["uvicorn-api"] if r.get("logger") == "uvicorn.access"]
    assert any(r["method"] == "POST" and r["status"] == 201 for r in access), access
    assert any(e.endswith(" ready.") for e in events["celery-worker"])
    assert any("Sending due task" in e for e in events["beat"])
    assert any(r.get("logger") == "stdout" for r in records["cao-worker"]), events["cao-worker"]
    starting = [r for r in records["celery-worker"] if r["event"] == "worker starting"]
    assert [(r["queues"], r["task_events"]) for r in starting] == [(["logs_b"], True)], starting


def test_step_lines_carry_the_step_fields(ran: dict[str, Any]) -> None:
    ok, failed = ran["jobs"]["logs_ok"]["job_id"], ran["jobs"]["logs_fail"]["job_id"]
    worker_lines = ran["records"]["cao-worker"] + ran["records"]["celery-worker"]
    about_jobs = [r for r in worker_lines if ok in json.dumps(r) or failed in json.dumps(r)]
    for record in about_jobs:
        assert all(record.get(field) is not None for field in STEP_FIELDS), record
    started = {
        (r["job_id"], r["step_index"], r["attempt"], r["service"], r["queue"])
        for r in about_jobs
        if r["event"] == "step started"
    }
    assert started == {
        (ok, 0, 1, "logs_http", "logs_a"),
        (ok, 1, 1, "logs_other", "logs_b"),
        (ok, 2, 1, "logs_print", "logs_a"),
        (failed, 0, 1, "logs_raise", "logs_b"),
        (failed, 0, 2, "logs_raise", "logs_b"),
    }
    # Celery's own line on a step task's result carries them as well.
    succeeded = [r for r in about_jobs if "succeeded in" in r["event"]]
    assert {r["service"] for r in succeeded} >= {"logs_http", "logs_other", "logs_raise"}
    printed = [r for r in about_jobs if r.get("logger") == "stdout"]
    assert [r["service"] for r in printed] == ["logs_print"], printed
