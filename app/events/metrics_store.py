"""The SQL of the metrics fold's state: its cursor, the aggregates it adds to, and the
reads that render them (what a window of the log counts: app/events/metrics_counts.py).

Every function runs in the caller's transaction; the fold (app/events/metrics_fold.py)
holds the cursor row's lock from `lock_cursor` until it commits, so the aggregates and
the cursor change together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import job_event_table, metric_aggregate_table, metric_fold_table

EVENTS_FOLD = "events"

_EVENT = job_event_table
_AGGREGATE = metric_aggregate_table
_FOLD = metric_fold_table


# A key of one aggregate number: (metric, labels as a JSON list, part).
AggregateKey = tuple[str, str, str]


def newest_event_id(session: Session) -> int:
    return session.scalar(select(func.max(_EVENT.c.id))) or 0


def lock_cursor(session: Session) -> int:
    """The fold's cursor, locked until the transaction ends: a second fold waits here,
    then reads what the first one committed (on SQLite the transaction holds the
    database's write lock from its start, app/db.py)."""
    query = select(_FOLD.c.last_event_id).where(_FOLD.c.name == EVENTS_FOLD).with_for_update()
    cursor: int | None = session.scalar(query)
    if cursor is None:
        # Made by the migration; only a hand-emptied table gets here.
        session.execute(_insert_for(session)(_FOLD).values(name=EVENTS_FOLD, last_event_id=0))
        return 0
    return cursor


def move_cursor(session: Session, last_event_id: int) -> None:
    statement = update(_FOLD).where(_FOLD.c.name == EVENTS_FOLD)
    session.execute(statement.values(last_event_id=last_event_id))


def read_cursor(session: Session) -> int:
    return session.scalar(select(_FOLD.c.last_event_id).where(_FOLD.c.name == EVENTS_FOLD)) or 0


def _insert_for(session: Session) -> Callable[..., Any]:
    """The engine's INSERT that takes ON CONFLICT (both engines have it, each dialect its
    own construct)."""
    return _UPSERT_INSERTS[session.get_bind().dialect.name]


_UPSERT_INSERTS: Mapping[str, Callable[..., Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def add_to_aggregates(session: Session, increments: Mapping[AggregateKey, float]) -> None:
    """Add each increment to its aggregate, making the ones that do not exist yet."""
    if not increments:
        return
    insert = _insert_for(session)(_AGGREGATE)
    statement = insert.on_conflict_do_update(
        index_elements=[_AGGREGATE.c.metric, _AGGREGATE.c.labels, _AGGREGATE.c.part],
        set_={"value": _AGGREGATE.c.value + insert.excluded.value},
    )
    rows = [
        {"metric": metric, "labels": labels, "part": part, "value": value}
        for (metric, labels, part), value in sorted(increments.items())
    ]
    session.execute(statement, rows)


class Aggregate(NamedTuple):
    metric: str
    labels: str
    part: str
    value: float


def read_aggregates(session: Session) -> list[Aggregate]:
    """Every aggregate (a few per feature and service: read whole at each scrape)."""
    query = select(_AGGREGATE.c.metric, _AGGREGATE.c.labels, _AGGREGATE.c.part, _AGGREGATE.c.value)
    return [Aggregate(*row) for row in session.execute(query)]
