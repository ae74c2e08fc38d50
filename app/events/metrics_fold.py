"""The counters and histograms of /metrics, folded from the durable event log.

The log already holds every committed change exactly once, with its time, whichever
worker on whichever host made it; so the deployment's counts are a fold over it, and
nothing is counted on a step's path. A fold reads the events after its cursor (the
global `id`, given in commit order, never reused: app/events/sequencer.py and the
retention's rule in app/jobs/recovery_repository.py), adds what they count to
`metric_aggregate` and moves the cursor in the same transaction, under the cursor
row's lock: two folds at once (two API replicas scraped together) fold each event
once, and a fold cut off folds nothing. Whoever scrapes folds first (bounded by a
time budget, the rest next time); retention folds everything before it deletes.

What each event counts (the step's service is the event's `step_name`):
- JOB_CREATED: `cao_jobs_created_total{feature}`.
- STEP_STARTED: `cao_step_wait_seconds{service}`, from the moment the step was queued:
  its job's creation or resume, the previous step's completion, or a retry's due time
  (the retry's event plus its delay); time waiting for a slot counts as waiting.
- STEP_COMPLETED, STEP_RETRYING, and JOB_ERROR ending a started attempt: the attempt's
  outcome in `cao_step_attempts_total{service,outcome}` (completed, retried, failed)
  and its call in `cao_step_duration_seconds{service}`, from its STEP_STARTED. Every
  counted attempt has one duration, so each service's histogram count is the sum of
  its attempts. An attempt ended by a cancel is counted in neither.
- JOB_COMPLETED, JOB_ERROR, JOB_CANCELLED: `cao_jobs_finished_total{feature,status}`
  and `cao_job_duration_seconds{feature}` from the job's creation (a rerun job
  finishes again, and counts again).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from itertools import groupby
from typing import NamedTuple

from app.db import session_scope
from app.events import metrics_store as store
from app.events.metrics_store import Aggregate, AggregateKey, FoldEvent
from app.events.sequencer import SEQUENCE_BATCH, sequence_events
from app.events.types import EventType

# Events per fold transaction: a backlog is folded window by window.
FOLD_WINDOW = 5000

JOBS_CREATED = "cao_jobs_created_total"
JOBS_FINISHED = "cao_jobs_finished_total"
STEP_ATTEMPTS = "cao_step_attempts_total"
STEP_DURATION = "cao_step_duration_seconds"
STEP_WAIT = "cao_step_wait_seconds"
JOB_DURATION = "cao_job_duration_seconds"

_STEP_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_JOB_BOUNDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Counter(NamedTuple):
    name: str
    documentation: str
    labels: tuple[str, ...]


class Histogram(NamedTuple):
    name: str
    documentation: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]  # the finite upper bounds; +Inf follows


COUNTERS = (
    Counter(JOBS_CREATED, "Jobs created", ("feature",)),
    Counter(JOBS_FINISHED, "Jobs finished, by final status", ("feature", "status")),
    Counter(STEP_ATTEMPTS, "Step attempts ended, by outcome", ("service", "outcome")),
)
HISTOGRAMS = (
    Histogram(
        STEP_DURATION,
        "Duration of a service call (one per ended attempt)",
        ("service",),
        _STEP_BOUNDS,
    ),
    Histogram(
        STEP_WAIT,
        "Time a step waited from queued (or due) until started",
        ("service",),
        _STEP_BOUNDS,
    ),
    Histogram(
        JOB_DURATION, "Time from a job's creation until it finished", ("feature",), _JOB_BOUNDS
    ),
)
_BOUNDS = {histogram.name: histogram.bounds for histogram in HISTOGRAMS}

COUNT, SUM, INF = "count", "sum", "+Inf"
_FINISHED_STATUS = {
    EventType.JOB_COMPLETED: "COMPLETED",
    EventType.JOB_ERROR: "FAILED",
    EventType.JOB_CANCELLED: "CANCELLED",
}
_ATTEMPT_OUTCOME = {
    EventType.STEP_COMPLETED: "completed",
    EventType.STEP_RETRYING: "retried",
    EventType.JOB_ERROR: "failed",
}


def bucket_part(bound: float) -> str:
    """The aggregate part holding a bucket's own count (not cumulative)."""
    return f"le={bound!r}"


@cache  # a few features and services: the same few keys, folded many times
def labels_key(*values: str) -> str:
    return json.dumps(values)


class Tally:
    """The increments one window of events makes to the aggregates."""

    def __init__(self) -> None:
        self.increments: defaultdict[AggregateKey, float] = defaultdict(float)

    def count(self, metric: str, *labels: str) -> None:
        self.increments[(metric, labels_key(*labels), "")] += 1

    def observe(self, metric: str, seconds: float, *labels: str) -> None:
        key = labels_key(*labels)
        value = max(seconds, 0.0)  # hosts' clocks may disagree by a little
        bound = next((b for b in _BOUNDS[metric] if value <= b), None)
        part = INF if bound is None else bucket_part(float(bound))
        for name, amount in ((part, 1.0), (COUNT, 1.0), (SUM, value)):
            self.increments[(metric, key, name)] += amount


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


class _JobWalk:
    """One job's events in seq order; counts those after `after_id`."""

    def __init__(self, tally: Tally, after_id: int) -> None:
        self.tally = tally
        self.after_id = after_id
        self.created: datetime | None = None
        self.queued: datetime | None = None
        self.started: dict[int | None, datetime] = {}

    def see(self, event: FoldEvent) -> None:
        counted = event.id > self.after_id
        kind = event.type
        if kind == EventType.JOB_CREATED:
            self.created = self.queued = event.ts
            if counted:
                self.tally.count(JOBS_CREATED, event.feature_name)
        elif kind == EventType.JOB_RESUMED:
            self.queued = event.ts
            self.started.clear()
        elif kind == EventType.STEP_STARTED:
            if counted and self.queued is not None and event.step_name is not None:
                self.tally.observe(STEP_WAIT, _seconds(self.queued, event.ts), event.step_name)
            self.queued = None
            self.started[event.step_index] = event.ts
        elif kind in (EventType.STEP_COMPLETED, EventType.STEP_RETRYING):
            self._end_attempt(event, counted)
            # A retry is due once its delay has passed: the backoff is not waiting.
            self.queued = event.ts + timedelta(seconds=event.delay_s or 0.0)
        elif kind in _FINISHED_STATUS:
            self._end_attempt(event, counted)
            self.started.clear()
            if counted:
                self._finish(event)

    def _end_attempt(self, event: FoldEvent, counted: bool) -> None:
        started = self.started.pop(event.step_index, None)
        outcome = _ATTEMPT_OUTCOME.get(EventType(event.type))
        if not counted or started is None or outcome is None or event.step_name is None:
            return
        self.tally.count(STEP_ATTEMPTS, event.step_name, outcome)
        self.tally.observe(STEP_DURATION, _seconds(started, event.ts), event.step_name)

    def _finish(self, event: FoldEvent) -> None:
        status = _FINISHED_STATUS[EventType(event.type)]
        self.tally.count(JOBS_FINISHED, event.feature_name, status)
        if self.created is not None:
            self.tally.observe(JOB_DURATION, _seconds(self.created, event.ts), event.feature_name)


def tally_events(events: Iterable[FoldEvent], after_id: int) -> Tally:
    """What the events with `id > after_id` count; `events` are whole jobs' events up
    to the window's end, grouped by job and in seq order (the earlier ones say when)."""
    tally = Tally()
    for _, job_events in groupby(events, key=lambda event: event.job_id):
        walk = _JobWalk(tally, after_id)
        for event in job_events:
            walk.see(event)
    return tally


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
            events = store.events_of_touched_jobs(session, cursor, up_to)
            store.add_to_aggregates(session, tally_events(events, cursor).increments)
            store.move_cursor(session, up_to)
        folded += up_to - cursor
        if not in_time():
            return FoldReport(folded_to=up_to, events=folded, complete=up_to >= target)


def read_folded() -> Sequence[Aggregate]:
    """Every aggregate, as the folds so far left them."""
    with session_scope() as session:
        return store.read_aggregates(session)
