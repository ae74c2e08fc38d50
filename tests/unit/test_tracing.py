"""Tracing's configuration: when it is on, what the spans' service is called, which
exporter it builds. Nothing here sets this process's tracer provider."""

from __future__ import annotations

import pytest

from app.config import Settings, get_settings
from app.tracing import exporter, service_resource

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),  # compose passes unset as empty
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_with_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], on: bool
) -> None:
    for name in ("ENDPOINT", "TRACES_ENDPOINT"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().tracing is on


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "cao-beat"),
        ({"OTEL_SERVICE_NAME": "gateway-beat"}, "gateway-beat"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=beat-eu,deployment.environment=prod"},
            "beat-eu",
        ),
    ],
)
def test_the_service_is_the_process_role_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert service_resource("cao-beat").attributes["service.name"] == name


def test_an_unknown_protocol_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    get_settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
            exporter()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
