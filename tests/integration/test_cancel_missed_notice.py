"""A cancel whose notice never reaches the worker still stops the call: the heartbeat
finds the step no longer RUNNING under its attempt and interrupts it, within a third
of the lease's TTL, and the slot is given back."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from app.catalog import current_catalog
from app.db import session_scope
from app.jobs import operator_actions
from app.jobs.runner import Outcome, run_step
from app.jobs.service import create_job, get_job_or_404, job_detail
from app.leases import get_semaphore
from tests.lease_support import queued_deliveries


# In the main thread without pytest-timeout's alarm, as in a prefork pool process; the
# step pauses 15 s at most, which bounds the test.
@pytest.mark.timeout(0)
def test_a_missed_cancel_notice_is_made_up_for_by_the_heartbeat(db, monkeypatch):
    monkeypatch.setattr(operator_actions, "announce_cancel", lambda *attempt: None)
    with session_scope() as session:
        job_id = create_job(
            session, current_catalog(), feature_name="solo_pause_job", input_data={"seconds": 15}
        ).job.id
    queued_deliveries("solo")  # driven by hand

    def cancel_soon(job_id: uuid.UUID) -> None:
        time.sleep(0.5)
        with session_scope() as session:
            operator_actions.cancel_job(session, job_id)

    threading.Thread(target=cancel_soon, args=(job_id,), daemon=True).start()
    started = time.monotonic()
    assert run_step(job_id, 0, 1) is Outcome.CANCELLED
    # lease_ttl_s is 2: a heartbeat every 0.67 s, and its row write after it.
    assert time.monotonic() - started < 0.5 + 2 + 1.5
    assert get_semaphore().usage("solo_pause").in_use == 0
    with session_scope() as session:
        job = job_detail(session, get_job_or_404(session, job_id))
    assert job.status == "CANCELLED"
    assert [step.status for step in job.steps] == ["CANCELLED"]
