"""Events within bounds: an output over EVENT_OUTPUT_MAX_BYTES is left out of its
event (marked), a page of events stops at EVENT_PAGE_MAX_BYTES, and an event stored
with a lone surrogate is still sent as UTF-8."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.config import get_settings
from app.events.types import EventOut, completed_data
from app.events.wire import WireEvent, _page

KIB = 1024


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EVENT_OUTPUT_MAX_BYTES", str(64 * KIB))
    monkeypatch.setenv("EVENT_PAGE_MAX_BYTES", str(1024 * KIB))
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _event(event_id: int, data: dict[str, Any]) -> EventOut:
    return EventOut(
        id=event_id,
        seq=event_id,
        type="STEP_COMPLETED",
        job_id="00000000-0000-0000-0000-000000000001",
        feature_name="f",
        step_index=0,
        step_name="s",
        attempt=1,
        progress=100,
        ts=datetime(2026, 1, 1, tzinfo=UTC),
        data=data,
    )


def test_an_output_up_to_the_limit_is_in_its_event_and_a_larger_one_is_marked():
    small = {"text": "x" * 100}
    assert completed_data(small, 112, 64 * KIB) == {"output": small}
    marked = completed_data({"text": "x" * 100 * KIB}, 100 * KIB + 11, 64 * KIB)
    assert marked == {"output": None, "output_truncated": True, "output_bytes": 100 * KIB + 11}


def test_a_large_output_stored_by_an_older_version_is_left_out_when_sent(limits):
    wire = WireEvent.from_event(_event(1, {"output": {"text": "x" * 300 * KIB}}))
    sent = json.loads(wire.text)
    assert sent["data"]["output"] is None
    assert sent["data"]["output_truncated"] is True
    assert sent["data"]["output_bytes"] > 300 * KIB
    assert len(wire.text) < 4 * KIB


def test_a_page_stops_at_its_byte_budget_and_says_there_is_more(limits):
    # Each event just under the output limit: 20 of them are over 1 MiB.
    events = [WireEvent.from_event(_event(n, {"output": {"t": "x" * 60 * KIB}})) for n in range(20)]
    page = _page(iter(events), rows=20, limit=500)
    assert 0 < len(page) < 20
    assert sum(len(event.text) for event in page) <= 1024 * KIB
    assert page.more is True
    whole = _page(iter(events[:3]), rows=3, limit=500)
    assert (len(whole), whole.more) == (3, False)
    # One event larger than the budget still goes out, alone.
    assert len(_page(iter(events[:1]), rows=1, limit=500)) == 1


def test_an_event_stored_with_a_lone_surrogate_is_sent_as_utf8(limits):
    wire = WireEvent.from_event(_event(1, {"output": {"note": "a\ud800b"}}))
    wire.text.encode("utf-8")  # no UnicodeEncodeError
    assert json.loads(wire.text)["data"]["output"] == {"note": "a\ufffdb"}
