"""The services view of `cao services`: per service its queue, limit, leases in use,
waiting steps and queue depth, and per queue its depth, from GET /api/v1/services;
printed once, or kept live in the terminal (`--watch`) for an SRE without a browser."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

Fetch = Callable[[], dict[str, Any]]


def _count(value: int | None) -> str:
    # None: the gateway could not read it from Redis just then.
    return "?" if value is None else str(value)


def _in_use(service: dict[str, Any]) -> Text:
    in_use, limit = service.get("leases_in_use"), service.get("limit")
    text = Text(f"{_count(in_use)}/{limit}")
    if in_use is not None and limit and in_use >= limit:
        text.stylize("bold red")  # the service is the bottleneck now
    elif in_use:
        text.stylize("green")
    return text


def _waiting(service: dict[str, Any]) -> Text:
    waiting = service.get("waiting")
    return Text(_count(waiting), style="yellow" if waiting else "")


def services_table(services: list[dict[str, Any]]) -> Table:
    table = Table("service", "queue", "limit", "in use", "waiting", "queue depth", title="services")
    for column in table.columns[2:]:
        column.justify = "right"
    for service in services:
        table.add_row(
            service["name"],
            service["queue"],
            str(service["limit"]),
            _in_use(service),
            _waiting(service),
            _count(service.get("queue_depth")),
        )
    return table


def queues_table(services: list[dict[str, Any]]) -> Table:
    """Per queue its depth and the services routed to it."""
    queues: dict[str, tuple[int | None, list[str]]] = {}
    for service in services:
        depth, names = queues.setdefault(service["queue"], (service.get("queue_depth"), []))
        names.append(service["name"])
    table = Table("queue", "depth", "services", title="queues")
    table.columns[1].justify = "right"
    for queue, (depth, names) in sorted(queues.items()):
        table.add_row(queue, _count(depth), ", ".join(names))
    return table


def services_view(body: dict[str, Any], note: str = "") -> RenderableType:
    services = body["services"]
    stamp = Text(f"{datetime.now().strftime('%H:%M:%S')}  {note}".rstrip(), style="dim")
    return Group(services_table(services), queues_table(services), stamp)


def watch_services(
    fetch: Fetch, first: dict[str, Any], console: Console, interval_s: float
) -> None:
    """Keep the view live, fetching every `interval_s`, until Ctrl-C. A failed fetch
    keeps the last view on screen and says why; the next one tries again."""
    from rich.live import Live

    body = first
    with Live(services_view(body), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                try:
                    body = fetch()
                    live.update(services_view(body), refresh=True)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    # Shown, not fatal: the gateway may be restarting.
                    note = f"[stale: {type(exc).__name__}: {exc}]"
                    live.update(services_view(body, note), refresh=True)
        except KeyboardInterrupt:
            pass
