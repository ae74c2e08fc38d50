"""Operator commands that talk to a running gateway over its REST API: `submit`,
`jobs`, `show`, `resume`, `cancel` and `services`.

Every command takes `--url` (env CAO_URL) and `--api-key` (env CAO_API_KEY, sent as a
bearer token). Exit codes: 0 success (with `--watch`: the job COMPLETED), 1 the API
refused or the watched job did not complete, 2 the gateway is unreachable, 3 a
watch ran out of time. httpx and the progress display are imported inside the
commands so that `cao --help` and the server commands stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from app.json_values import STRICT_LOADS

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2
EXIT_WATCH_TIMEOUT = 3
DEFAULT_URL = "http://127.0.0.1:8000"

Url = Annotated[str, typer.Option("--url", envvar="CAO_URL", help="The gateway's base URL.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="CAO_API_KEY",
        help="An API key (sent as a bearer token).",
        show_default=False,
    ),
]
JobId = Annotated[str, typer.Argument(help="The job's id.", show_default=False)]
Watch = Annotated[bool, typer.Option("--watch", help="Show live progress until it finishes.")]
Timeout = Annotated[
    float | None, typer.Option("--timeout", help="Give up watching after this many seconds.")
]


def _fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _describe(response: httpx.Response) -> str:
    """The API's error envelope as one line (or the raw answer if it is not one)."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


@contextmanager
def _gateway(url: str, api_key: str | None) -> Iterator[httpx.Client]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            yield client
    except httpx.HTTPStatusError as exc:
        _fail(_describe(exc.response))
    except httpx.TransportError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc}", EXIT_UNREACHABLE)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = client.request(method, path, **kwargs)
    if response.is_error:
        _fail(_describe(response))
    body: dict[str, Any] = response.json()
    return body


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _parse_input(raw: str) -> dict[str, Any]:
    """JSON text, or @path to a file holding it."""
    try:
        text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {raw[1:]}: {exc}", param_hint="--input") from exc
    try:
        value = json.loads(text, **STRICT_LOADS)  # NaN would fail later, in the request
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--input")
    return value


def _watch(client: httpx.Client, job_id: str, timeout: float | None) -> NoReturn:
    """Show progress until the job finishes; exit 0 only if it COMPLETED."""
    from app.cli.progress import WatchTimeout, watch_jobs

    console = _console()
    try:
        final = watch_jobs(client, [job_id], console, timeout_s=timeout)[job_id]
    except WatchTimeout as exc:
        _fail(f"job {job_id}: {exc}", EXIT_WATCH_TIMEOUT)
    if final["status"] != "COMPLETED":
        _fail(f"job {job_id} {final['status']}: {final.get('error') or 'no error recorded'}")
    console.print_json(data=final["outputs"])
    raise typer.Exit(0)


def submit(
    feature: Annotated[str, typer.Argument(help="The feature to run.", show_default=False)],
    input_json: Annotated[
        str, typer.Option("--input", help="input_data as JSON, or @file.json.")
    ] = "{}",
    idempotency_key: Annotated[
        str | None, typer.Option(help="A repeat with the same key returns the same job.")
    ] = None,
    watch: Watch = False,
    timeout: Timeout = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Create a job and print its id (with --watch, follow it to the end)."""
    body = {"feature_name": feature, "input_data": _parse_input(input_json)}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with _gateway(url, api_key) as client:
        job_id = str(_call(client, "POST", "/api/v1/jobs", json=body, headers=headers)["job_id"])
        typer.echo(job_id)
        if watch:
            _watch(client, job_id, timeout)


def jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    feature: Annotated[str | None, typer.Option(help="Only jobs of this feature.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    from rich.table import Table

    params = {"status": status, "feature_name": feature, "limit": limit}
    with _gateway(url, api_key) as client:
        page = _call(client, "GET", "/api/v1/jobs", params={k: v for k, v in params.items() if v})
    table = Table("job_id", "feature", "status", "progress", "step", "created_at", "error")
    for item in page["items"]:
        table.add_row(
            item["job_id"],
            item["feature_name"],
            item["status"],
            f"{item['progress']}%",
            f"{item['current_step']} {item['current_step_name'] or ''}".strip(),
            item["created_at"],
            item["error_code"] or "",
        )
    _console().print(table)
    if page["next_cursor"]:
        typer.echo("(more jobs: raise --limit, up to 500)")


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":")) if value is not None else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def show(
    job_id: JobId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """A job's status and its steps: attempts, timings, outputs and errors."""
    from rich.table import Table

    with _gateway(url, api_key) as client:
        job = _call(client, "GET", f"/api/v1/jobs/{job_id}")
    console = _console()
    if as_json:
        console.print_json(data=job)
        return
    console.print(
        f"[bold]{job['job_id']}[/] {job['feature_name']} (tenant {job['tenant']}): "
        f"[bold]{job['status']}[/] {job['progress']}%"
    )
    console.print(f"created {job['created_at']}  finished {job['finished_at'] or '-'}")
    if job["error"]:
        console.print(
            f"[red]error ({job['error_code']}, retryable={job['retryable']}): {job['error']}[/]"
        )
    table = Table("#", "step", "status", "attempt", "started_at", "duration", "output / error")
    for step in job["steps"]:
        result = step["error"] or _short(step["output"])
        table.add_row(
            str(step["step_index"]),
            step["step_name"],
            step["status"],
            f"{step['attempt']}/{step['max_attempts']}",
            step["started_at"] or "",
            _seconds(step["duration_s"]),
            result,
        )
    console.print(table)


def resume(
    job_id: JobId,
    from_step: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Restart at this step, keeping the outputs before it: a FAILED job from "
            "an earlier step, a COMPLETED or CANCELLED one rerun from here.",
        ),
    ] = None,
    watch: Watch = False,
    timeout: Timeout = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Resume a FAILED job from its failed step or an earlier one; rerun a COMPLETED or
    CANCELLED job with --from-step."""
    body = {"from_step": from_step} if from_step is not None else None
    with _gateway(url, api_key) as client:
        job = _call(client, "POST", f"/api/v1/jobs/{job_id}/resume", json=body)
        typer.echo(
            f"job {job['job_id']} resumed at step {job['current_step']} "
            f"({job['current_step_name']}): {job['status']}"
        )
        if watch:
            _watch(client, job_id, timeout)


def cancel(job_id: JobId, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cancel a PENDING or RUNNING job; a step that finishes later is discarded."""
    with _gateway(url, api_key) as client:
        job = _call(client, "POST", f"/api/v1/jobs/{job_id}/cancel")
    typer.echo(f"job {job['job_id']} {job['status']}")


def services(
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep the view live, refreshed until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, max=60, help="Seconds between refreshes (--watch).")
    ] = 1.0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Each service's queue, limit, leases in use, waiting steps and queue depth, and
    each queue's depth (an operator key when keys are configured)."""
    from app.cli.services_view import services_view, watch_services

    path = "/api/v1/services"
    with _gateway(url, api_key) as client:
        first = _call(client, "GET", path)  # a refused key or a dead gateway fails here
        if not watch:
            _console().print(services_view(first))
            return

        def fetch() -> dict[str, Any]:
            response = client.get(path)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

        watch_services(fetch, first, _console(), interval)


def register(cli: typer.Typer) -> None:
    for command in (submit, jobs, show, resume, cancel, services):
        cli.command()(command)
