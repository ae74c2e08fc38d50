"""The `cao` command: server processes, the embedded stack and operator commands."""

from __future__ import annotations

import typer

from app.cli import client, dev_commands, pool_commands, server

cli = typer.Typer(
    name="cao",
    help="CAO Gateway: orchestration of multi-step AI workflows.",
    no_args_is_help=True,
    add_completion=False,
)
for _commands in (server, dev_commands, client, pool_commands):
    _commands.register(cli)


def main() -> None:
    cli()
