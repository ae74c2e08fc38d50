"""The counters and histograms the event log is folded into, and the one statement that
works out what a window of the log adds to them.

What each event counts (the step's service is the event's `step_name`):
- JOB_CREATED: `cao_jobs_created_total{feature}`.
- STEP_STARTED: `cao_step_wait_seconds{service}`, from the moment the step was queued:
  its job's creation or resume, the previous step's completion, or a retry's due time
  (the retry's event plus its delay); time waiting for a slot counts as waiting. A
  STEP_STARTED that follows another with nothing queueing in between (a run recovery
  started again) waited for nothing new and is not observed.
- STEP_COMPLETED, STEP_RETRYING, and JOB_ERROR ending a started attempt: the attempt's
  outcome in `cao_step_attempts_total{service,outcome}` (completed, retried, failed)
  and its call in `cao_step_duration_seconds{service}`, from its STEP_STARTED. Every
  counted attempt has one duration, so each service's histogram count is the sum of
  its attempts. An attempt ended by a cancel, a resume or another end is counted once
  at most, and one ended by a cancel in neither.
- JOB_COMPLETED, JOB_ERROR, JOB_CANCELLED: `cao_jobs_finished_total{feature,status}`
  and `cao_job_duration_seconds{feature}` from the job's creation (a rerun job
  finishes again, and counts again).

The database does this work where the events are: an event's earlier events (when its
step was queued or started, when its job was created) are found through the job's
(job_id, seq) index, and only a few grouped rows come back: about 10 us an event, where
reading every event of each touched job into this process and walking them in Python
took about 40 (docs/architecture.md, "Metrics from the event log").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    CTE,
    ColumnElement,
    Float,
    Integer,
    ScalarSelect,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    extract,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FromClause

from app.models import job_event_table

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

_HISTOGRAM_NAMES = frozenset(histogram.name for histogram in HISTOGRAMS)
COUNT, SUM, INF = "count", "sum", "+Inf"


def bucket_part(bound: float) -> str:
    """The aggregate part holding a bucket's own count (not cumulative)."""
    return f"le={bound!r}"


class Observed(NamedTuple):
    """`events` adding to one series of `metric`; for a histogram, all in one
    bucket (`bucket`, the bucket's part) with their seconds summed; "" for a counter."""

    metric: str
    labels: tuple[str, ...]
    bucket: str
    events: int
    seconds: float


def observe_window(session: Session, after_id: int, up_to_id: int) -> list[Observed]:
    """What the events with `after_id < id <= up_to_id` count, grouped by series and
    bucket. A job's events are numbered in seq order, so the earlier events each one
    needs are all numbered, and all below `up_to_id`."""
    query = _window_query(session.get_bind().dialect.name)
    rows = session.execute(query, {"after_id": after_id, "up_to_id": up_to_id})
    return [
        Observed(
            row.metric,
            (row.label_a,) if row.label_b is None else (row.label_a, row.label_b),
            row.bucket,
            row.events,
            float(row.total),
        )
        for row in rows
        if row.bucket or row.metric not in _HISTOGRAM_NAMES
    ]


@cache  # built once per engine kind: a scrape folds a window or two
def _window_query(dialect: str) -> Select[Any]:
    seconds = _SECONDS_BETWEEN[dialect]
    new = _EVENT.c.id.between(bindparam("after_id") + 1, bindparam("up_to_id"))
    # Never a new event's `data` (a step's output may be large): only a retry's delay is
    # read, from the earlier event that queued a step.
    columns = ("job_id", "seq", "type", "feature_name", "step_index", "step_name", "ts")
    window = select(*(_EVENT.c[name] for name in columns)).where(new).cte("new_event")
    observation = union_all(
        *_created(window),
        *_waits(window, seconds),
        *_attempts(window, seconds),
        *_finishes(window, seconds),
    ).subquery("observation")
    bucketed = select(
        observation, _bucket(observation.c.metric, observation.c.seconds).label("bucket")
    ).subquery("bucketed")
    series = (bucketed.c.metric, bucketed.c.label_a, bucketed.c.label_b, bucketed.c.bucket)
    return select(
        *series,
        func.count().label("events"),
        func.coalesce(func.sum(bucketed.c.seconds), 0.0).label("total"),
    ).group_by(*series)


_EVENT = job_event_table
_QUEUEING = ("JOB_CREATED", "JOB_RESUMED", "STEP_COMPLETED", "STEP_RETRYING")
_FINISHED_STATUS = {
    "JOB_COMPLETED": "COMPLETED",
    "JOB_ERROR": "FAILED",
    "JOB_CANCELLED": "CANCELLED",
}
_ATTEMPT_OUTCOME = {
    "STEP_COMPLETED": "completed",
    "STEP_RETRYING": "retried",
    "JOB_ERROR": "failed",
}
# What ends every attempt of the job still open: a resume, and the job's end.
_ENDS_EVERY_ATTEMPT = ("JOB_RESUMED", *_FINISHED_STATUS)
_ONE_STEPS = ("STEP_STARTED", "STEP_COMPLETED", "STEP_RETRYING")

SecondsBetween = Callable[[ColumnElement[Any], ColumnElement[Any]], ColumnElement[float]]


def _postgres_seconds(
    later: ColumnElement[Any], earlier: ColumnElement[Any]
) -> ColumnElement[float]:
    return cast(extract("epoch", later - earlier), Float)


def _sqlite_seconds(later: ColumnElement[Any], earlier: ColumnElement[Any]) -> ColumnElement[float]:
    """SQLite's date functions keep milliseconds only: whole seconds by `strftime('%s')`,
    plus the stored microseconds (`YYYY-MM-DD HH:MM:SS.ffffff`, from its 20th character)."""

    def fraction(moment: ColumnElement[Any]) -> ColumnElement[float]:
        return cast(func.substr(moment, 20), Float)

    whole = cast(func.strftime("%s", later), Integer) - cast(func.strftime("%s", earlier), Integer)
    return cast(whole + (fraction(later) - fraction(earlier)), Float)


_SECONDS_BETWEEN: Mapping[str, SecondsBetween] = {
    "postgresql": _postgres_seconds,
    "sqlite": _sqlite_seconds,
}


def _observation(
    metric: str,
    label_a: ColumnElement[Any],
    label_b: ColumnElement[Any] | None = None,
    seconds: ColumnElement[Any] | None = None,
) -> list[ColumnElement[Any]]:
    """The columns every part of the union has. A histogram's row without seconds is
    no observation (its step had not started, or was queued by nothing counted)."""
    return [
        literal(metric, String).label("metric"),
        cast(label_a, String).label("label_a"),
        cast(null() if label_b is None else label_b, String).label("label_b"),
        cast(null() if seconds is None else seconds, Float).label("seconds"),
    ]


def _non_negative(seconds: ColumnElement[float]) -> ColumnElement[float]:
    """Hosts' clocks may disagree by a little: a difference below zero counts as zero."""
    return case((seconds < 0, 0.0), else_=seconds)


def _from_latest_before(
    event: FromClause,
    value: Callable[[FromClause], ColumnElement[Any]],
    kinds: Sequence[str],
    same_step: Sequence[str] = (),
) -> ScalarSelect[Any]:
    """`value` of the job's latest event before `event` of one of `kinds`, or of one of
    `same_step` on `event`'s step (NULL when none): one backward step or two along the
    job's (job_id, seq) index."""
    earlier = _EVENT.alias("earlier")
    kind: ColumnElement[bool] = earlier.c.type.in_(kinds)
    if same_step:
        on_step = and_(earlier.c.type.in_(same_step), earlier.c.step_index == event.c.step_index)
        kind = or_(kind, on_step)
    return (
        select(value(earlier))
        .where(earlier.c.job_id == event.c.job_id, earlier.c.seq < event.c.seq, kind)
        .order_by(earlier.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )


def _created(window: CTE) -> list[Select[Any]]:
    query = select(*_observation(JOBS_CREATED, window.c.feature_name))
    return [query.where(window.c.type == "JOB_CREATED")]


def _waits(window: CTE, seconds: SecondsBetween) -> list[Select[Any]]:
    """A start's wait, from the latest queueing event when nothing started since."""

    def waited(queued_by: FromClause) -> ColumnElement[Any]:
        # A retry is due once its delay has passed: the backoff is not waiting.
        delay = case(
            (queued_by.c.type == "STEP_RETRYING", queued_by.c.data["delay_s"].as_float()),
            else_=None,
        )
        wait = seconds(window.c.ts, queued_by.c.ts) - func.coalesce(cast(delay, Float), 0.0)
        return case((queued_by.c.type.in_(_QUEUEING), _non_negative(wait)), else_=None)

    wait = _from_latest_before(window, waited, ("STEP_STARTED", *_QUEUEING))
    query = select(*_observation(STEP_WAIT, window.c.step_name, seconds=wait))
    return [query.where(window.c.type == "STEP_STARTED", window.c.step_name.is_not(None))]


def _attempts(window: CTE, seconds: SecondsBetween) -> list[Select[Any]]:
    """An attempt's outcome and duration, when its step's latest earlier event is the
    start of that attempt (no end, resume or job's end since)."""

    def since_start(began: FromClause) -> ColumnElement[Any]:
        ran = _non_negative(seconds(window.c.ts, began.c.ts))
        return case((began.c.type == "STEP_STARTED", ran), else_=None)

    ended = (
        select(
            window.c.step_name,
            case(_ATTEMPT_OUTCOME, value=window.c.type).label("outcome"),
            _from_latest_before(
                window, since_start, _ENDS_EVERY_ATTEMPT, same_step=_ONE_STEPS
            ).label("seconds"),
        )
        .where(window.c.type.in_(_ATTEMPT_OUTCOME), window.c.step_name.is_not(None))
        .cte("ended")
    )
    return [
        select(*_observation(STEP_ATTEMPTS, ended.c.step_name, ended.c.outcome)).where(
            ended.c.seconds.is_not(None)
        ),
        select(*_observation(STEP_DURATION, ended.c.step_name, seconds=ended.c.seconds)),
    ]


def _finishes(window: CTE, seconds: SecondsBetween) -> list[Select[Any]]:
    """A job's end, and its duration from its creation."""

    def since_creation(created: FromClause) -> ColumnElement[Any]:
        return _non_negative(seconds(window.c.ts, created.c.ts))

    status = case(_FINISHED_STATUS, value=window.c.type)
    counted = select(*_observation(JOBS_FINISHED, window.c.feature_name, status))
    since_created = _from_latest_before(window, since_creation, ("JOB_CREATED",))
    timed = select(*_observation(JOB_DURATION, window.c.feature_name, seconds=since_created))
    finished = window.c.type.in_(_FINISHED_STATUS)
    return [counted.where(finished), timed.where(finished)]


def _bucket(metric: ColumnElement[str], seconds: ColumnElement[float]) -> ColumnElement[str]:
    """The part a row adds to: its histogram's first bucket that holds it, +Inf past the
    last; "" for a row without seconds (a counter's, or no observation)."""
    whens = [
        (and_(metric == histogram.name, seconds <= bound), bucket_part(float(bound)))
        for histogram in HISTOGRAMS
        for bound in histogram.bounds
    ]
    return case((seconds.is_(None), ""), *whens, else_=INF)
