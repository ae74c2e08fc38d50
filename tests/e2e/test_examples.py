"""Acceptance: each example runs end to end with `cao demo --example NAME` on the
embedded stack, from the suite's install, in a fresh shell's environment (as
tests/e2e/test_demo.py runs `cao demo`), and its results are what the example says.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_demo import assert_nothing_left, standalone_env
from tests.harness import CAO

pytestmark = pytest.mark.slow


def run_example(tmp_path: Path, name: str) -> tuple[str, Path]:
    state = tmp_path / "state"
    result = subprocess.run(
        [*CAO, "demo", "--example", name, "--state-dir", str(state)],
        cwd=tmp_path,
        env=standalone_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, state


def events(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "cao.db") as db:
        rows = db.execute(
            "SELECT job_id, seq, type, step_name, progress, data, ts FROM job_event "
            "ORDER BY job_id, seq"
        ).fetchall()
    keys = ("job_id", "seq", "type", "step_name", "progress", "data", "ts")
    return [{**dict(zip(keys, row, strict=True)), "data": json.loads(row[5])} for row in rows]


def test_demo_lists_the_examples():
    result = subprocess.run(
        [*CAO, "demo", "--list"], env=standalone_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in ("arithmetic", "planning", "reports"):
        assert name in result.stdout
    unknown = subprocess.run(
        [*CAO, "demo", "--example", "nope"],
        env=standalone_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert "unknown example 'nope'" in unknown.stderr


def test_arithmetic_gives_12_24_14_each_a_partial_result_before_the_next(tmp_path):
    out, state = run_example(tmp_path, "arithmetic")
    assert "arithmetic: COMPLETED" in out, out
    log = events(state)
    # Each step's output landed (STEP_COMPLETED, and the job's outputs with it) while
    # the job was still running: before the next step started, long before the end.
    completed = [
        (e["step_name"], e["data"]["output"]) for e in log if e["type"] == "STEP_COMPLETED"
    ]
    assert completed == [("add5", {"value": 12}), ("mul2", {"value": 24}), ("sub10", {"value": 14})]
    order = [(e["type"], e["step_name"]) for e in log]
    for step, following in (("add5", "mul2"), ("mul2", "sub10")):
        assert order.index(("STEP_COMPLETED", step)) < order.index(("STEP_STARTED", following))
    landed = {e["step_name"]: e["ts"] for e in log if e["type"] == "STEP_COMPLETED"}
    finished = next(e["ts"] for e in log if e["type"] == "JOB_COMPLETED")
    assert landed["add5"] < landed["mul2"] < finished  # visible for a while, not all at once
    assert [e["progress"] for e in log if e["type"] == "STEP_COMPLETED"] == [33, 66, 100]
    with sqlite3.connect(state / "cao.db") as db:
        (context,) = db.execute("SELECT context FROM job").fetchone()
    assert json.loads(context) == {
        "add5": {"value": 12},
        "mul2": {"value": 24},
        "sub10": {"value": 14},
    }
    assert '{"value":12}' in out  # the live display shows each step's result
    assert_nothing_left(state)


def test_planning_progress_is_30_60_80_100_and_never_lower(tmp_path):
    out, state = run_example(tmp_path, "planning")
    assert "planning: COMPLETED" in out, out
    log = events(state)
    progress = [e["progress"] for e in log]
    assert progress == sorted(progress), progress  # never lower
    after_step = [(e["step_name"], e["progress"]) for e in log if e["type"] == "STEP_COMPLETED"]
    assert after_step == [("wbs", 30), ("tasks", 60), ("dependencies", 80), ("schedule", 100)]
    schedule = next(
        e for e in log if e["step_name"] == "schedule" and e["type"] == "STEP_COMPLETED"
    )
    plan = schedule["data"]["output"]
    assert len(plan["schedule"]) == 9  # three deliverables, three phases each
    assert plan["total_days"] == 8  # 2 + 3 + 1, then two reviews waiting on each other
    assert_nothing_left(state)


def test_reports_run_on_two_queues_and_write_real_files(tmp_path):
    out, state = run_example(tmp_path, "reports")
    for feature in ("generate_report", "sync_metrics", "cleanup_reports"):
        assert f"{feature}: COMPLETED" in out, out
    with sqlite3.connect(state / "cao.db") as db:
        queues = dict(db.execute("SELECT step_name, queue FROM job_step").fetchall())
    assert queues == {
        "render_report": "reports",
        "sync_metrics": "default",
        "cleanup_reports": "default",
    }
    report = next(e for e in events(state) if e["step_name"] == "render_report" and e["data"])
    name = report["data"]["output"]["report"]
    assert (state / "reports" / name).read_text().startswith("row,amount\n")
    assert "ready." in (state / "logs" / "worker-reports.log").read_text()
    assert_nothing_left(state)
