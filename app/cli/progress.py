"""Live terminal progress for one or more jobs: a bar per job and a line per step
(status, attempt, duration), redrawn from `GET /api/v1/jobs/{id}` about ten times a
second until every job has finished.

Polling the job (rather than streaming events) keeps this independent of how the
gateway runs and tolerant of API restarts: it only needs an `httpx.Client` whose
`base_url` is the gateway. On a terminal the display redraws in place; when output
goes to a file or pipe, rich prints only the final state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app.jobs.states import FINISHED_JOB

JobBody = dict[str, Any]

STATUS_STYLES = {
    "PENDING": "dim",
    "QUEUED": "cyan",
    "WAITING_FOR_SLOT": "yellow",
    "RUNNING": "bold blue",
    "RETRYING": "magenta",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "CANCELLED": "red",
}
# How much of a completed step's output its line shows.
OUTPUT_PREVIEW_CHARS = 60
# How long the API may stay unreachable before watching gives up.
UNREACHABLE_LIMIT_S = 30.0


class WatchTimeout(TimeoutError):
    """Jobs still unfinished when the watch's time limit ran out."""


def watch_jobs(
    client: httpx.Client,
    job_ids: list[str],
    console: Console,
    *,
    poll_interval_s: float = 0.1,
    timeout_s: float | None = None,
    abort: Callable[[], None] | None = None,
) -> dict[str, JobBody]:
    """Show live progress until every job has finished; return their final bodies.

    `abort`, when given, is called before each poll and may raise to stop watching
    (the embedded stack passes its child-process check). HTTP errors other than a
    lost connection propagate: a 404 means the job id is wrong, not that it is late.
    """
    bodies: dict[str, JobBody] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_answer = time.monotonic()
    try:
        with Live(render_jobs(job_ids, bodies), console=console, auto_refresh=False) as live:
            while True:
                if abort is not None:
                    abort()
                for job_id in job_ids:
                    if not is_finished(bodies.get(job_id)):
                        body = _fetch(client, job_id, last_answer)
                        if body is not None:
                            bodies[job_id], last_answer = body, time.monotonic()
                live.update(render_jobs(job_ids, bodies), refresh=True)
                if all(is_finished(bodies.get(job_id)) for job_id in job_ids):
                    return bodies
                if deadline is not None and time.monotonic() > deadline:
                    raise WatchTimeout(f"jobs still running after {timeout_s:g}s")
                time.sleep(poll_interval_s)
    finally:
        if not console.is_terminal:
            # rich ends the final frame with a newline only on terminals.
            console.line()


def is_finished(body: JobBody | None) -> bool:
    return body is not None and body.get("status") in FINISHED_JOB


def _fetch(client: httpx.Client, job_id: str, last_answer: float) -> JobBody | None:
    try:
        response = client.get(f"/api/v1/jobs/{job_id}")
    except httpx.TransportError:
        # A blip (the API restarting) only delays the display; a long outage ends it.
        if time.monotonic() - last_answer > UNREACHABLE_LIMIT_S:
            raise
        return None
    response.raise_for_status()
    body: JobBody = response.json()
    return body


def render_jobs(
    job_ids: Sequence[str], bodies: dict[str, JobBody], now: datetime | None = None
) -> RenderableType:
    now = now or datetime.now(UTC)
    return Group(*(render_job(job_id, bodies.get(job_id), now) for job_id in job_ids))


def render_job(job_id: str, body: JobBody | None, now: datetime) -> RenderableType:
    if body is None:
        return Text(f"{job_id}  waiting for the gateway...", style="dim")
    status = body["status"]
    header = Table.grid(padding=(0, 1))
    header.add_row(
        Text(body["feature_name"], style="bold"),
        Text(job_id[:8], style="dim"),
        ProgressBar(
            total=100,
            completed=body["progress"],
            width=30,
            complete_style="red" if status == "FAILED" else "bar.complete",
        ),
        Text(f"{body['progress']:>3}%"),
        _status_text(status),
        Text(_format_seconds(_elapsed(body, "created_at", now)), style="dim"),
    )
    steps = Table.grid(padding=(0, 1))
    for step in body.get("steps", []):
        steps.add_row(*_step_cells(step, now))
    return Group(header, steps)


def _step_cells(step: JobBody, now: datetime) -> list[RenderableType]:
    duration = step.get("duration_s")
    if duration is None and step.get("started_at"):
        duration = _elapsed(step, "started_at", now)
    return [
        Text(f"   {step['step_index'] + 1}."),
        Text(step["step_name"]),
        _status_text(step["status"]),
        Text(f"attempt {step['attempt']}/{step['max_attempts']}", style="dim"),
        Text(_format_seconds(duration)),
        Text(step["error"], style="red") if step.get("error") else _output_text(step),
    ]


def _output_text(step: JobBody) -> Text:
    """A completed step's output, short: the partial result as soon as it lands."""
    output = step.get("output")
    if output is None:
        return Text("")
    compact = json.dumps(output, separators=(",", ":"), ensure_ascii=False)
    if len(compact) > OUTPUT_PREVIEW_CHARS:
        compact = compact[: OUTPUT_PREVIEW_CHARS - 1] + "…"
    return Text(compact, style="dim", no_wrap=True, overflow="ellipsis")


def _status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _elapsed(body: JobBody, since: str, now: datetime) -> float | None:
    start = _timestamp(body.get(since))
    if start is None:
        return None
    end = _timestamp(body.get("finished_at")) or now
    return max(0.0, (end - start).total_seconds())


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
