"""Step deliveries after commit, and the ones the broker refused: marked unsent and sent
as soon as it answers again, by whichever process finds it back first.

Every step made runnable by a commit (a new job's first step, a next step, a retry, a
resume, a recovery) is sent after that commit (`send_after_commit`). When the broker
does not take it, the step is marked unsent in the database (app/jobs/outbox_repository.py)
and the process's resender takes over: a thread that asks the broker again, 0.25 s
doubling to 2 s apart, and once it answers sends every standing mark, this process's
and any other's. Beat's `send_unsent_steps` does the same every few seconds, for the
marks of a process that died. Sending a mark takes it first (a conditional update), so
one sender sends it; a duplicate, if any, finds the step's fence used (fencing).

While the resender waits, this process does not try the broker for each new delivery
(a create would wait on it): it marks the step at once, and the resender sends it.

A mark is written only when a send fails, so a delivery the broker takes costs nothing
more than the send. A process that dies between a commit and its send leaves no mark:
the idle-step requeue (REQUEUE_AFTER_SECONDS, app/jobs/recovery.py) finds that step, as
it finds a message lost with a Redis restart. A mark that cannot be written (the
database away too) is kept in this process's memory and sent the same way.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence

import structlog
from sqlalchemy.orm import Session

from app.db import on_commit, session_scope, statement_scope
from app.jobs import outbox_repository as outbox_repo
from app.jobs.dispatch import Delivery, broker_answers, send_deliveries, send_delivery
from app.logs import first_line
from app.models import utcnow

log = structlog.get_logger(__name__)

# How long the resender waits before asking the broker again: doubling up to the most.
FIRST_WAIT_S = 0.25
MOST_WAIT_S = 2.0
# How many marks one transaction takes to send.
BATCH = 200


def send_after_commit(session: Session, delivery: Delivery, *, first: bool = False) -> None:
    """Send `delivery` once the session commits (before the hooks registered so far when
    `first`); if the broker does not take it, the step is marked unsent."""
    on_commit(session, lambda: send(delivery), first=first)


def send(delivery: Delivery) -> None:
    """Send `delivery` now; if the broker does not take it, mark the step unsent and let
    the resender send it once the broker answers. Never raises."""
    send_many([delivery])


def send_many(deliveries: Sequence[Delivery]) -> None:
    """Send `deliveries` now, in one round trip to the broker; if it does not take
    them, mark each step unsent as `send` does. Never raises."""
    if _resender.waiting:
        for delivery in deliveries:
            _owe(delivery)
        return
    try:
        send_deliveries(deliveries)
    except Exception as error:
        first = deliveries[0]
        log.warning(
            "broker did not take step deliveries; marked unsent",
            job_id=str(first.job_id),
            step_index=first.step_index,
            deliveries=len(deliveries),
            error=first_line(error),
        )
        for delivery in deliveries:
            _owe(delivery)


def _owe(delivery: Delivery) -> None:
    """Mark the step unsent and wake the resender; a mark the database does not take is
    kept in memory instead."""
    try:
        with statement_scope() as session:
            marked = outbox_repo.mark_unsent(
                session, delivery.job_id, delivery.step_index, delivery.fence, delivery.due_at
            )
    except Exception as error:
        log.warning(
            "could not mark a step unsent; kept in memory",
            job_id=str(delivery.job_id),
            error=first_line(error),
        )
        _resender.hold(delivery)
        return
    if marked:  # else the step no longer waits for this delivery: nothing is owed
        _resender.hold(None)


def send_unsent() -> int:
    """Send every standing mark, a batch at a time; returns how many were sent. Raises
    the broker's error when it stops taking them (the rest stay marked)."""
    sent = 0
    while True:
        with session_scope() as session:
            taken = outbox_repo.take_unsent(session, BATCH, utcnow())
        _send_taken(taken)
        sent += len(taken)
        if len(taken) < BATCH:
            return sent


def _send_taken(deliveries: list[Delivery]) -> None:
    now = utcnow()
    for index, delivery in enumerate(deliveries):
        try:
            send_delivery(delivery, now)
        except Exception:
            # Marked again, this one and the rest, for the next sender.
            for owed in deliveries[index:]:
                _owe(owed)
            raise


def sweep_unsent() -> int:
    """Beat's sweep: forget stale marks, send the standing ones; returns how many were
    sent. A broker that fails meanwhile leaves the rest to this process's resender."""
    with statement_scope() as session:
        outbox_repo.forget_stale_marks(session)
    try:
        return send_unsent()
    except Exception as error:
        log.warning("broker stopped taking unsent steps", error=first_line(error))
        return 0


class Resender:
    """The thread that, after a failed send, waits for the broker and sends what is
    owed: the deliveries it holds in memory (whose mark could not be written), then
    every standing mark in the database."""

    def __init__(self) -> None:
        self._reset()
        # A thread does not survive fork: a child starts with none, and its own on need.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[uuid.UUID, int, int], Delivery] = {}
        self._handed = 0  # how many failed sends were handed over so far
        self.waiting = False

    def hold(self, delivery: Delivery | None) -> None:
        """Take over after a failed send (keeping `delivery` when its mark could not be
        written); start the thread if it is not running."""
        with self._lock:
            if delivery is not None:
                key = (delivery.job_id, delivery.step_index, delivery.fence)
                self._held[key] = delivery
            self._handed += 1
            if self.waiting:
                return
            self.waiting = True
        threading.Thread(target=self._run, name="cao-resender", daemon=True).start()

    def _run(self) -> None:
        wait = FIRST_WAIT_S
        while True:
            time.sleep(wait)
            with self._lock:
                handed, held = self._handed, list(self._held.values())
            if not self._flush(held):
                wait = min(wait * 2, MOST_WAIT_S)
                continue
            with self._lock:
                if self._handed == handed:
                    # Nothing failed since this flush began: all is sent.
                    self.waiting = False
                    return
            wait = FIRST_WAIT_S

    def _flush(self, held: list[Delivery]) -> bool:
        """Send what is owed if the broker answers; False to try again later."""
        if not broker_answers():
            return False
        try:
            for delivery in held:
                send_delivery(delivery)
                with self._lock:
                    self._held.pop((delivery.job_id, delivery.step_index, delivery.fence))
            sent = send_unsent()
        except Exception as error:
            log.warning("sending unsent steps failed; trying again", error=first_line(error))
            return False
        if sent or held:
            log.info("unsent steps sent", count=sent + len(held))
        return True


_resender = Resender()
