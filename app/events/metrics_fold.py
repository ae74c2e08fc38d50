"""The counters and histograms of /metrics, folded from the durable event log.

The log already holds every committed change exactly once, with its time, whichever
worker on whichever host made it; so the deployment's counts are a fold over it, and
nothing is counted on a step's path. A fold reads what the events after its cursor
count (the global `id`, given in commit order, never reused: app/events/sequencer.py
and the retention's rule in app/jobs/recovery_repository.py; what each event counts:
app/events/metrics_counts.py), adds it to `metric_aggregate` and moves the cursor in
the same transaction, under the cursor row's lock: two folds at once (two API replicas
scraped together) fold each event once, and a fold cut off folds nothing. Whoever
scrapes folds first (bounded by a time budget, the rest next time); retention folds
everything before it deletes.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from app.db import session_scope
from app.events import metrics_store as store
from app.events.metrics_counts import COUNT, SUM, Observed, observe_window
from app.events.metrics_store import Aggregate, AggregateKey
from app.events.sequencer import SEQUENCE_BATCH, sequence_events

# Events per fold transaction: a backlog is folded window by window.
FOLD_WINDOW = 5000


@cache  # a few features and services: the same few keys, folded many times
def labels_key(labels: tuple[str, ...]) -> str:
    return json.dumps(labels)


def increments(observed: Iterable[Observed]) -> dict[AggregateKey, float]:
    """What the observed groups add to each aggregate: a counter's value; a histogram's
    bucket (its own count, not cumulative), count and sum."""
    added: defaultdict[AggregateKey, float] = defaultdict(float)
    for group in observed:
        key = labels_key(group.labels)
        added[(group.metric, key, group.bucket)] += group.events
        if group.bucket:
            added[(group.metric, key, COUNT)] += group.events
            added[(group.metric, key, SUM)] += group.seconds
    return added


@dataclass
class FoldReport:
    folded_to: int  # the cursor after the fold
    events: int  # ids folded by this call (gaps included)
    complete: bool  # False when the budget ran out first


def fold_events(budget_s: float | None = None) -> FoldReport:
    """Fold the log up to its newest committed event (numbering what the sequencer has
    not yet), window by window, each in its own transaction; stop early once
    `budget_s` is spent (None: fold everything)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def in_time() -> bool:
        return deadline is None or time.monotonic() < deadline

    while len(sequence_events()) >= SEQUENCE_BATCH and in_time():
        pass
    with session_scope() as session:
        target = store.newest_event_id(session)
        cursor = store.read_cursor(session)
    if cursor >= target:  # as a rule between scrapes of a quiet deployment: no lock taken
        return FoldReport(folded_to=cursor, events=0, complete=True)
    folded = 0
    while True:
        with session_scope() as session:
            cursor = store.lock_cursor(session)
            if cursor >= target:
                return FoldReport(folded_to=cursor, events=folded, complete=True)
            up_to = min(cursor + FOLD_WINDOW, target)
            store.add_to_aggregates(session, increments(observe_window(session, cursor, up_to)))
            store.move_cursor(session, up_to)
        folded += up_to - cursor
        if not in_time():
            return FoldReport(folded_to=up_to, events=folded, complete=up_to >= target)


def read_folded() -> Sequence[Aggregate]:
    """Every aggregate, as the folds so far left them."""
    with session_scope() as session:
        return store.read_aggregates(session)
