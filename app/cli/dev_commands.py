"""`cao demo` and `cao dev`: the embedded stack (app/embedded_stack.py) from the command line.

`demo` starts the stack, runs each default feature end to end with live progress,
prints the outputs and stops; `dev` starts it and serves until Ctrl-C. With
`--example NAME` both run an example's catalog (app/examples/) instead, and the demo
submits that example's jobs. Heavy imports live inside the commands so that
`cao --help` stays fast.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.embedded_stack import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

    from app.embedded_stack import EmbeddedStack

DEMO_INPUT = {"prompt": "a neighbourhood bakery", "email": "owner@example.com"}
DEMO_JOBS = (("business_plan", DEMO_INPUT), ("viral_video", DEMO_INPUT))
# Enough simulated latency that the progress display has something to show.
DEMO_SERVICE_LATENCY_MS = 250.0
DEMO_TIMEOUT_S = 60.0

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", help="Where the database, Redis dump and logs live.", file_okay=False
    ),
]


ExampleName = Annotated[
    str | None,
    typer.Option("--example", help="Run an example's catalog (see --list in cao demo)."),
]


def demo(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    example: ExampleName = None,
    list_examples: Annotated[
        bool, typer.Option("--list", help="Name the examples and exit.")
    ] = False,
) -> None:
    """Start the embedded stack, run each default feature (or an example's) end to end,
    print the outputs."""
    import secrets

    from rich.console import Console

    from app.embedded_stack import EmbeddedStack

    console = Console()
    if list_examples:
        _list_examples(console)
        return
    demo_jobs = _use_example(example, state_dir) if example else DEMO_JOBS
    # The demo's own operator key: a user's API_KEYS must not lock the demo out.
    api_key = secrets.token_urlsafe(24)
    stack = EmbeddedStack(
        state_dir,
        simulator_latency_ms=DEMO_SERVICE_LATENCY_MS,
        env_overrides={"API_KEYS": f"{api_key}:operator", "API_KEYS_FILE": None},
    )
    jobs = _supervised(stack, console, lambda: _run_demo(stack, api_key, console, demo_jobs))
    completed = all(job["status"] == "COMPLETED" for job in jobs.values())
    raise typer.Exit(0 if completed and len(jobs) == len(demo_jobs) else 1)


def dev(
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    example: ExampleName = None,
) -> None:
    """Start the embedded stack (API, workers, Beat, simulators) and serve until Ctrl-C."""
    from rich.console import Console

    from app.embedded_stack import EmbeddedStack

    console = Console()
    if example:
        _use_example(example, state_dir)
    stack = EmbeddedStack(state_dir, api_port=port)

    def serve() -> dict[str, dict[str, Any]]:
        _print_addresses(stack, console)
        while True:
            stack.check()
            time.sleep(0.5)

    _supervised(stack, console, serve)


def _list_examples(console: Console) -> None:
    from app.examples import EXAMPLES

    for example in EXAMPLES.values():
        features = ", ".join(dict.fromkeys(feature for feature, _ in example.jobs))
        console.print(f"[bold]{example.name}[/]  {example.summary}  [dim]({features})[/]")


def _use_example(name: str, state_dir: Path) -> Sequence[tuple[str, dict[str, Any]]]:
    """Point this process and the stack's children at the example's catalog (and its
    files at the state directory); returns the example's demo jobs."""
    from app.config import get_settings
    from app.examples import UnknownExample, get_example

    try:
        example = get_example(name)
    except UnknownExample as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    # The children inherit this environment (EmbeddedStack.child_env).
    os.environ["CAO_CATALOG"] = str(example.catalog_path)
    os.environ["CAO_REPORTS_DIR"] = str(Path(state_dir).resolve() / "reports")
    get_settings.cache_clear()
    return example.jobs


def _supervised(
    stack: EmbeddedStack, console: Console, run: Callable[[], dict[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Start the stack, call `run()`, and always stop the stack; map failures to exits."""
    from app.embedded_stack import StackError
    from app.supervisor import sigterm_as_interrupt

    with sigterm_as_interrupt():
        try:
            with console.status("Starting the embedded stack..."):
                stack.start()
            console.print(f"[green]Stack ready[/] (logs in {stack.log_dir})")
            result: dict[str, dict[str, Any]] = run()
            return result
        except StackError as exc:
            _print_error(console, exc)
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            console.print("Interrupted.")
            return {}
        finally:
            if stack.children:
                with console.status("Stopping the embedded stack..."):
                    stack.stop()
                console.print("Stack stopped.")


def _run_demo(
    stack: EmbeddedStack,
    api_key: str,
    console: Console,
    demo_jobs: Sequence[tuple[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    import httpx

    from app.cli.progress import WatchTimeout, watch_jobs

    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as client:
        try:
            job_ids = [_submit(client, feature, data) for feature, data in demo_jobs]
            jobs = watch_jobs(client, job_ids, console, timeout_s=DEMO_TIMEOUT_S, abort=stack.check)
        except (WatchTimeout, httpx.HTTPError) as exc:
            _print_error(console, exc)
            return {}
    _print_outputs(jobs, console)
    return jobs


def _submit(client: httpx.Client, feature: str, input_data: dict[str, Any]) -> str:
    response = client.post("/api/v1/jobs", json={"feature_name": feature, "input_data": input_data})
    response.raise_for_status()
    return str(response.json()["job_id"])


def _print_error(console: Console, error: Exception) -> None:
    from rich.markup import escape

    # Log tails carry brackets that rich would otherwise read as markup.
    console.print("[bold red]error:[/]", escape(str(error)))


def _print_outputs(jobs: dict[str, dict[str, Any]], console: Console) -> None:
    from rich.json import JSON
    from rich.panel import Panel

    for job_id, job in jobs.items():
        completed = job["status"] == "COMPLETED"
        body = JSON.from_data(job["outputs"] if completed else {"error": job.get("error")})
        body.text.no_wrap = False  # long outputs wrap inside the panel instead of being cut
        console.print(
            Panel(
                body,
                title=f"{job['feature_name']}: {job['status']}",
                subtitle=f"job {job_id}",
                border_style="green" if completed else "red",
            )
        )


def _print_addresses(stack: EmbeddedStack, console: Console) -> None:
    console.print(
        f"  API         {stack.api_url}/api/v1\n"
        f"  Docs        {stack.api_url}/docs\n"
        f"  Simulators  {stack.simulators_url}\n"
        f"  Database    {stack.database_url}\n"
        f"  Redis       {stack.redis_url}\n"
        "Press Ctrl-C to stop.",
        highlight=False,
    )


def register(cli: typer.Typer) -> None:
    cli.command()(demo)
    cli.command()(dev)
