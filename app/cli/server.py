"""Server commands: api, worker, beat, migrate, simulators. They read the same
environment as the containers (DATABASE_URL, REDIS_URL, CAO_CATALOG, ...)."""

from __future__ import annotations

import os
import tempfile
from typing import Annotated

import typer


def _refuse_invalid_settings() -> None:
    """Exit 2 with one readable line when the environment is refused (e.g. production
    without API_KEYS), before anything starts: the same check every server command
    (and `uvicorn app.main:app`, `celery -A worker.celery_app`) makes on its own."""
    from pydantic import ValidationError

    from app.config import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        reasons = "; ".join(
            str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()
        )
        typer.secho(f"refusing to start: {reasons}", fg="red", err=True)
        raise typer.Exit(2) from exc


def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the REST and WebSocket API."""
    import uvicorn

    from app.config import get_settings
    from app.logs import configure_logging

    _refuse_invalid_settings()
    settings = get_settings()
    # Ours for uvicorn's lines too (log_config=None: uvicorn leaves logging alone), from
    # the first one this process writes.
    configure_logging("api")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        log_config=None,
        # A request's headers and body must arrive within HTTP_REQUEST_TIMEOUT_S.
        http="app.api.http_protocol:RequestDeadlineProtocol",
        # Clients send nothing that matters on a socket: a large frame closes it (1009)
        # before it is buffered, instead of uvicorn's 16 MiB.
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        # Open SSE streams and sockets must not hold a shutdown forever.
        timeout_graceful_shutdown=5,
    )


def worker(
    queues: Annotated[
        str, typer.Option("-Q", "--queues", help="Comma-separated queues to consume.")
    ] = "default",
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", help="Worker processes.")
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork or threads.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    name: Annotated[
        str | None, typer.Option(help="Celery node name (default: QUEUES-PID@host).")
    ] = None,
) -> None:
    """Run a Celery worker for one queue (one pool per queue)."""
    from app.broker import check_visibility_timeout, run_celery_command

    _refuse_invalid_settings()
    try:
        check_visibility_timeout()
    except RuntimeError as exc:
        typer.secho(f"refusing to start: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    name = name or f"{queues.replace(',', '+')}-{os.getpid()}@%h"
    argv = ["worker", "-Q", queues, "-n", name, "--pool", pool, "--loglevel", loglevel]
    if concurrency:
        argv += ["-c", str(concurrency)]
    # With heartbeats (events of their own, one every 2 s), a worker has the event
    # dispatcher that a monitor turns task events on in, and Flower sees it online.
    argv += ["--without-gossip", "--without-mingle"]
    run_celery_command(argv)


def beat(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run Celery Beat: stuck-job sanity checks, lease reaping, retention."""
    from app.broker import run_celery_command

    _refuse_invalid_settings()
    # Beat's schedule state is disposable: the schedule itself lives in worker/schedule.py.
    with tempfile.TemporaryDirectory(prefix="cao-beat-") as state:
        schedule = os.path.join(state, "schedule")
        run_celery_command(["beat", "--loglevel", loglevel, "--schedule", schedule])


def migrate(
    downgrade: Annotated[bool, typer.Option(help="Downgrade to base instead.")] = False,
) -> None:
    """Apply database migrations (retrying while the database comes up)."""
    from app.logs import configure_logging
    from app.migrate import downgrade_base, upgrade_with_retries

    configure_logging("migrate")
    try:
        if downgrade:
            downgrade_base()
        else:
            upgrade_with_retries()
    except Exception as exc:  # one readable line in container logs, not a traceback
        typer.secho(f"migration failed: {type(exc).__name__}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo("migrations applied" if not downgrade else "database downgraded to base")


def simulators(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8100,
    latency_ms: Annotated[float, typer.Option(help="Latency of every call.")] = 0.0,
    failure_rate: Annotated[float, typer.Option(help="Share of calls that fail (0..1).")] = 0.0,
    failure_status: Annotated[int, typer.Option(help="Status of failed calls.")] = 503,
) -> None:
    """Serve the simulated services (prompt_enhancer, fast_chat_llm, ...)."""
    from app.catalog import current_catalog
    from app.config import get_settings
    from app.simulators import Behavior, run_simulators, simulated_services

    behavior = Behavior(
        latency_ms=latency_ms, failure_rate=failure_rate, failure_status=failure_status
    )
    run_simulators(
        host=host,
        port=port,
        behavior=behavior,
        required_api_key=get_settings().internal_api_key,
        services=simulated_services(current_catalog()),
    )


def register(cli: typer.Typer) -> None:
    for command in (api, worker, beat, migrate, simulators):
        cli.command()(command)
