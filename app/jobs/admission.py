"""Group commit of new jobs: the jobs that concurrent `POST /jobs` requests of one API
process create while the previous ones commit go in together, in one transaction (on
PostgreSQL one round trip: the same statement once per job, pipelined; one commit),
then their first steps' deliveries in one round trip to the broker, then each request
answers.

Nothing waits for a batch to fill: a job that finds no commit running is committed at
once, alone, as one statement; jobs that arrive while a commit runs (in a thread: the
event loop goes on reading requests) wait for it to end and go in the next. Under load
a request waits for one commit before its own, and the database, the broker and this
process pay for one round trip, one commit and one thread hop per batch instead of per
job.

Each job of a batch keeps the contract of a single create: its rows and first event
are committed before its 201; its first step is sent after that commit, and a delivery
the broker does not take is marked unsent (app/jobs/outbox.py). A batch the database
refuses as a whole (OperationalError: it cannot be reached) fails each of its
requests; one refused for a row of its own is retried job by job, so that only the
job at fault fails. Jobs with an Idempotency-Key do not come here (they need their
lookup and insert in one transaction of their own: app/jobs/service.py).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import OperationalError

from app.catalog import Catalog
from app.db import session_scope, statement_scope
from app.jobs.job_insert import NewJob, insert_job, insert_jobs
from app.jobs.outbox import send_many
from app.jobs.service import draft_job
from app.models import Job

# Jobs per transaction: enough to take a burst of every connection at once, few enough
# that one batch's commit stays a few milliseconds.
MAX_BATCH = 128


async def create_job(catalog: Catalog, **request: Any) -> Job:
    """Draft a job (`draft_job(catalog, **request)`: an unknown feature raises now) and
    return it once committed and its first step sent, in this event loop's next batch."""
    new = draft_job(catalog, **request)
    await _admission().admit(new)
    return new.job


class Admission:
    """The jobs of one event loop waiting for their commit, and the task committing them."""

    def __init__(self) -> None:
        self._waiting: list[tuple[NewJob, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def admit(self, new: NewJob) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((new, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        # Shielded: a request whose client went away still lets its job commit and go.
        await asyncio.shield(future)

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    outcomes = await asyncio.to_thread(commit_and_send, [new for new, _ in batch])
                except BaseException as error:  # not one of a job's: commit_and_send's own
                    outcomes = [error if isinstance(error, Exception) else None] * len(batch)
                    _settle(batch, outcomes)
                    raise
                _settle(batch, outcomes)
        finally:
            self._committer = None


def _settle(
    batch: list[tuple[NewJob, asyncio.Future[None]]], outcomes: Sequence[Exception | None]
) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


_admissions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission] = (
    weakref.WeakKeyDictionary()
)


def _admission() -> Admission:
    loop = asyncio.get_running_loop()
    admission = _admissions.get(loop)
    if admission is None:
        admission = _admissions[loop] = Admission()
    return admission


def commit_and_send(jobs: Sequence[NewJob]) -> list[Exception | None]:
    """Commit `jobs`, then send the first step of each committed one; per job, None or
    the error that kept it from being created."""
    try:
        _commit(jobs)
    except OperationalError as error:  # the database cannot be reached: none is created
        return [error] * len(jobs)
    except Exception as error:
        if len(jobs) == 1:
            return [error]
        outcomes = [_commit_alone(new) for new in jobs]
    else:
        outcomes = [None] * len(jobs)
    committed = [new.first for new, outcome in zip(jobs, outcomes, strict=True) if not outcome]
    if committed:
        send_many(committed)
    return outcomes


def _commit(jobs: Sequence[NewJob]) -> None:
    if len(jobs) == 1:
        # Alone: one autocommitted statement on PostgreSQL, no BEGIN and COMMIT.
        with statement_scope() as session:
            insert_job(session, jobs[0])
        return
    with session_scope() as session:
        insert_jobs(session, jobs)


def _commit_alone(new: NewJob) -> Exception | None:
    try:
        _commit([new])
    except Exception as error:
        return error
    return None
