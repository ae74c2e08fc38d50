"""`cao pool`: the worker pools of the running workers, and their sizes changed live.

Talks to the workers through the broker (REDIS_URL), not the API. Exit codes: 0 done,
1 a worker refused or did not answer, 2 no running worker consumes the queue."""

from __future__ import annotations

from typing import Annotated

import typer

pool_cli = typer.Typer(
    name="pool",
    help="Worker pools: show them, and resize those of a queue while they run.",
    no_args_is_help=True,
)


@pool_cli.command("show")
def show() -> None:
    """Every running worker: its queues and its pool's processes."""
    from app.pool_control import worker_pools

    pools = worker_pools()
    if not pools:
        typer.echo("no running worker answered")
        return
    for pool in pools:
        processes = "?" if pool.processes is None else pool.processes
        typer.echo(f"{pool.worker}  queues={','.join(pool.queues)}  processes={processes}")


@pool_cli.command("resize")
def resize(
    queue: Annotated[str, typer.Argument(help="The queue whose workers to resize.")],
    size: Annotated[int, typer.Argument(min=1, help="Processes per worker of that queue.")],
) -> None:
    """Grow or shrink the pool of every worker consuming QUEUE to SIZE processes, now
    (until the worker restarts with its -c)."""
    from app.pool_control import NoWorkerForQueue, resize_queue_pools

    try:
        results = resize_queue_pools(queue, size)
    except NoWorkerForQueue as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    for result in results:
        if result.error:
            # A shrink refused half-way may have removed some processes: `cao pool show`.
            typer.secho(
                f"{result.pool.worker}: not resized to {result.size} ({result.error})",
                fg="red",
                err=True,
            )
        else:
            typer.echo(f"{result.pool.worker}: {result.pool.processes} -> {result.size} processes")
    if any(result.error for result in results):
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    cli.add_typer(pool_cli)
