"""app/logs.py in JSON mode, in a fresh interpreter (logging is process-wide state):
what a process may write besides our own lines comes out as JSON too: stdlib records
with their tracebacks as a field, warnings, prints, uncaught exceptions in the main
thread and in others, and uvicorn's access line with its parts as fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

SCRIPT = textwrap.dedent(
    """
    import logging, threading, warnings
    import structlog
    from app.logs import bind_step, configure_logging, step_scope

    configure_logging("test")
    log = structlog.get_logger()
    bind_step("job-1", 2, attempt=1, service="svc", queue="q")
    log.info("ours")
    with step_scope():
        bind_step("job-2", 0)
        log.info("inner")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/x", "1.1", 404
    )
    warnings.warn("a warning")
    print("printed", "words")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("library").exception("stdlib failure")
        log.exception("structlog failure")
    thread = threading.Thread(target=lambda: {}["missing"], name="failing")
    thread.start()
    thread.join()
    raise RuntimeError("uncaught")
    """
)


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    env = {**os.environ, "LOG_JSON": "true", "LOG_LEVEL": "INFO"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 1, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\n{result.stderr}")
    return parsed


def _one(records: list[dict[str, Any]], event: str) -> dict[str, Any]:
    found = [r for r in records if r["event"] == event]
    assert len(found) == 1, (event, records)
    return found[0]


def test_every_line_has_the_common_fields(records: list[dict[str, Any]]) -> None:
    assert len(records) == 9, records
    for record in records:
        assert {"timestamp", "level", "event", "process"} <= record.keys(), record


def test_step_fields_from_the_context(records: list[dict[str, Any]]) -> None:
    ours = _one(records, "ours")
    assert (ours["job_id"], ours["step_index"], ours["attempt"]) == ("job-1", 2, 1)
    assert (ours["service"], ours["queue"]) == ("svc", "q")
    inner = _one(records, "inner")
    assert (inner["job_id"], inner["step_index"], inner["attempt"]) == ("job-2", 0, None)
    # The scope undid its binding: the lines after it are about job-1 again.
    assert _one(records, "printed words")["job_id"] == "job-1"


def test_foreign_lines(records: list[dict[str, Any]]) -> None:
    access = next(r for r in records if r.get("logger") == "uvicorn.access")
    assert (access["method"], access["path"], access["status"]) == ("GET", "/x", 404)
    warning = next(r for r in records if r.get("logger") == "py.warnings")
    assert warning["level"] == "warning"
    assert warning["event"].endswith("UserWarning: a warning")
    assert _one(records, "printed words")["logger"] == "stdout"


def test_tracebacks_are_a_field(records: list[dict[str, Any]]) -> None:
    for event, error in (
        ("stdlib failure", "ZeroDivisionError"),
        ("structlog failure", "ZeroDivisionError"),
        ("uncaught exception in a thread", "KeyError"),
        ("uncaught exception", "RuntimeError"),
    ):
        record = _one(records, event)
        (exception,) = record["exception"]
        assert exception["exc_type"] == error, record
        assert exception["frames"], record
        # No locals: they may hold keys or payloads.
        assert all("locals" not in frame for frame in exception["frames"]), record
