"""The `cao` command: server processes, the embedded stack and operator commands."""

from __future__ import annotations

import typer

from app.cli import server

cli = typer.Typer(
    name="cao",
    help="CAO Gateway: orchestration of multi-step AI workflows.",
    no_args_is_help=True,
    add_completion=False,
)
server.register(cli)

for _optional in ("app.cli.embedded", "app.cli.client", "app.cli.pools"):
    try:
        __import__(_optional)
    except ModuleNotFoundError as _exc:  # pragma: no cover - modules land one by one
        if _exc.name != _optional:
            raise
    else:
        __import__(_optional, fromlist=["register"]).register(cli)


def main() -> None:
    cli()
