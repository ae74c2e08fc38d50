"""Values a JSON column cannot hold (NaN, infinities, what JSON has no form for) are
refused where they come in: a step's output fails the step at once, not the commit
of its result. The job API's side is in test_api_input.py, a service's answer end to
end in test_retries.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert
from sqlalchemy.exc import StatementError

from app.catalog import Service
from app.db import build_engine
from app.services import StepError, call_service
from app.services.http import classify_response
from tests.harness import step_call

UNSTORABLE_OUTPUTS = {
    "nan": {"score": math.nan},
    "infinity": {"score": [1.0, -math.inf]},
    "datetime": {"at": datetime(2026, 1, 1, tzinfo=UTC)},
    "set": {"tags": {"a", "b"}},
    "bare nan": math.nan,
}


def returns(input_data: dict[str, Any], context: dict[str, Any]) -> Any:
    """A `kind: python` step that returns what its input names."""
    return UNSTORABLE_OUTPUTS[input_data["case"]]


@pytest.mark.parametrize("case", sorted(UNSTORABLE_OUTPUTS))
def test_a_python_step_returning_what_json_cannot_hold_fails_permanently(case):
    service = Service(name="s", kind="python", target=f"{__name__}:returns")
    with pytest.raises(StepError) as failed:
        call_service(service, step_call(case=case))
    assert failed.value.code == "invalid_output"
    assert failed.value.retryable is False
    assert "returned what JSON cannot hold" in failed.value.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"score": NaN}', "NaN is not a JSON number"),
        (b'{"score": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"score": 1e999}', "1e999 is out of range for a JSON number"),
    ],
)
def test_a_service_answer_json_cannot_hold_is_not_valid_json(body, reason):
    answer = httpx.Response(200, content=body, headers={"Content-Type": "application/json"})
    with pytest.raises(StepError) as failed:
        classify_response(answer)
    assert failed.value.code == "invalid_response"
    assert failed.value.retryable is False
    assert reason in failed.value.message


def test_finite_numbers_pass():
    answer = httpx.Response(200, json={"score": 1.5e300, "n": -2, "small": 5e-324})
    assert classify_response(answer) == {"score": 1.5e300, "n": -2, "small": 5e-324}


def test_sqlite_refuses_to_write_nan_as_postgresql_does(tmp_path):
    """Without the engine's strict serializer SQLite stores `NaN`, which PostgreSQL and
    other JSON readers refuse later."""
    engine = build_engine(f"sqlite:///{tmp_path / 'strict.db'}")
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", JSON))
    table.metadata.create_all(engine)
    with engine.begin() as connection, pytest.raises(StatementError, match="JSON compliant"):
        connection.execute(insert(table).values(v={"x": math.nan}))
    engine.dispose()
