"""The reports steps, on files under CAO_REPORTS_DIR (settings: `cao_reports_dir`).

`render_report` takes real time (ROW_SECONDS a row, as a query-heavy report does) and
writes `<name>-<UTC time>.csv`; `sync_metrics` summarises the reports present into
`metrics.json`; `cleanup_reports` deletes the reports last written more than
`days_to_keep` days ago.
"""

from __future__ import annotations

import csv
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import get_settings
from app.services.errors import PermanentStepError

ROW_SECONDS = 0.01
MAX_ROWS = 10_000
REPORT_GLOB = "*.csv"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DAY_S = 86_400


def _reports_dir() -> Path:
    directory = get_settings().cao_reports_dir
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _int(input_data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = input_data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PermanentStepError(
            f"input_data.{key} must be an integer from {low} to {high}, got {value!r}",
            code="bad_input",
        )
    return value


def render_report(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    name = input_data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PermanentStepError(
            "input_data.name must be 1-64 characters of A-Z a-z 0-9 _ -", code="bad_input"
        )
    rows = _int(input_data, "rows", 1, MAX_ROWS)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = _reports_dir() / f"{name}-{stamp}.csv"
    partial = path.with_suffix(".part")
    with partial.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "amount"])
        for row in range(rows):
            time.sleep(ROW_SECONDS)
            writer.writerow([row, (row * 37) % 101])
    partial.rename(path)  # a cancelled or timed-out render leaves no report behind
    return {"report": path.name, "rows": rows, "bytes": path.stat().st_size}


def sync_metrics(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    directory = _reports_dir()
    reports = sorted(directory.glob(REPORT_GLOB))
    metrics = {
        "source": str(input_data.get("source", "reports")),
        "reports": len(reports),
        "bytes": sum(report.stat().st_size for report in reports),
        "synced_at": datetime.now(UTC).isoformat(),
    }
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def cleanup_reports(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    days_to_keep = _int(input_data, "days_to_keep", 0, 36_500)
    cutoff = time.time() - days_to_keep * _DAY_S
    deleted, kept = [], 0
    for report in sorted(_reports_dir().glob(REPORT_GLOB)):
        if report.stat().st_mtime < cutoff:
            report.unlink(missing_ok=True)
            deleted.append(report.name)
        else:
            kept += 1
    return {"days_to_keep": days_to_keep, "deleted": deleted, "kept": kept}
