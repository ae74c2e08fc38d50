"""The catalog: defaults, ${VAR:-default} expansion, and errors that name file and key."""

from __future__ import annotations

import pytest

from app.catalog import (
    PYTHON_STEP_TIMEOUT_S,
    CatalogError,
    expand_env,
    load_catalog,
    parse_catalog,
)
from app.config import get_settings


def test_default_catalog_ships_both_features():
    catalog = load_catalog()
    assert catalog.features["business_plan"].steps == [
        "prompt_enhancer",
        "fast_chat_llm",
        "summarizer_pro",
        "email_notifier",
    ]
    assert catalog.features["viral_video"].steps == [
        "prompt_enhancer",
        "video_gen_v2",
        "email_notifier",
    ]
    assert catalog.services["video_gen_v2"].queue == "heavy"
    assert set(catalog.queues) == {"heavy", "medium", "default"}


def test_env_expansion():
    env = {"SET": "http://svc:1"}
    assert expand_env("${SET:-http://x}/a", "k", env) == "http://svc:1/a"
    assert expand_env("${UNSET:-http://x}/a", "k", env) == "http://x/a"
    with pytest.raises(CatalogError, match="k: environment variable UNSET is not set"):
        expand_env("${UNSET}/a", "k", env)
    with pytest.raises(CatalogError, match="unsupported variable syntax"):
        expand_env("${SET:=oops}", "k", env)


def test_omitted_fields_take_defaults():
    catalog = parse_catalog(
        "services:\n  s: {kind: python, target: 'app.steps:noop'}\nfeatures:\n  f: {steps: [s]}\n",
        "f.yaml",
    )
    service = catalog.services["s"]
    assert (service.queue, service.concurrency, service.max_attempts) == ("default", 10, 3)
    assert (service.timeout_s, service.lease_ttl_s) == (30.0, 60.0)


def test_an_http_service_without_timeout_s_takes_http_read_timeout_s(monkeypatch):
    """DESIGN.md's HTTP_READ_TIMEOUT_S is the read timeout of every service call whose
    service sets none; a service's own timeout_s wins."""
    monkeypatch.setenv("HTTP_READ_TIMEOUT_S", "4.5")
    get_settings.cache_clear()
    try:
        catalog = parse_catalog(
            "services:\n"
            "  plain: {kind: http, url: 'http://x/a'}\n"
            "  own: {kind: http, url: 'http://x/b', timeout_s: 600}\n"
            "  local: {kind: python, target: 'app.steps:noop'}\n"
            "features: {f: {steps: [plain, own, local]}}\n",
            "f.yaml",
        )
    finally:
        get_settings.cache_clear()
    timeouts = {name: service.timeout_s for name, service in catalog.services.items()}
    assert timeouts == {"plain": 4.5, "own": 600.0, "local": PYTHON_STEP_TIMEOUT_S}


ONE_SERVICE = "services:\n  s: {kind: http, url: 'http://x', %s}\nfeatures: {f: {steps: [s]}}\n"
BAD = [
    (
        "features:\n  f: {steps: [ghost]}\nservices: {}\n",
        "f.yaml: features.f.steps[0]: unknown service 'ghost'",
    ),
    (
        ONE_SERVICE % "concurrency: -1",
        "f.yaml: services.s.concurrency",
    ),
    (
        ONE_SERVICE % "queue: 'bad queue'",
        "services.s: Value error, queue 'bad queue'",
    ),
    ("services:\n  s: {kind: http}\nfeatures: {f: {steps: [s]}}\n", "kind http needs url"),
    (
        "services:\n  s: {kind: python, target: nomodule}\nfeatures: {f: {steps: [s]}}\n",
        "kind python needs target",
    ),
    (
        "services:\n  s: {kind: grpc, url: 'http://x'}\nfeatures: {f: {steps: [s]}}\n",
        "services.s.kind",
    ),
    (
        "services:\n  s: {kind: http, url: 'http://x', timeout: 3}\nfeatures: {f: {steps: [s]}}\n",
        "services.s.timeout: Extra inputs are not permitted",
    ),
    (
        "services:\n  s: {kind: http, url: '${X:=y}'}\nfeatures: {f: {steps: [s]}}\n",
        "f.yaml: services.s.url: unsupported variable syntax",
    ),
    ("services: [1]\n", "f.yaml: services: expected a mapping"),
    ("services: {}\n", "at least one feature"),
    ("wat: 1\n", "unknown top-level key"),
    (": : :\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_invalid_catalog_names_file_and_key(text, message):
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "f.yaml")
    assert message in str(info.value)


WEIGHED = "services:\n  s: {kind: python, target: 'app.steps:noop'}\nfeatures:\n  f: {steps: %s}\n"


def test_a_step_may_carry_a_weight_and_a_plain_name_weighs_one():
    catalog = parse_catalog(WEIGHED % "[{service: s, weight: 30}, s, {service: s}]", "f.yaml")
    assert catalog.features["f"].steps == ["s", "s", "s"]
    assert catalog.features["f"].weights == [30.0, 1.0, 1.0]
    assert load_catalog().features["business_plan"].weights == [1.0] * 4


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("[{service: s, weight: -1}]", "f.steps[0].weight: must be a number >= 0, got -1"),
        ("[s, {service: s, weight: heavy}]", "f.steps[1].weight: must be a number >= 0"),
        ("[{service: s, weight: .inf}]", "f.steps[0].weight: must be a number >= 0, got inf"),
        ("[{service: s, weight: 0}, {service: s, weight: 0}]", "every weight is 0"),
        ("[{service: s, weigth: 2}]", "f.steps[0]: unknown key(s) ['weigth']"),
        ("[{weight: 2}]", "f.steps[0].service: required"),
        ("[{service: ghost, weight: 2}]", "f.steps[0]: unknown service 'ghost'"),
    ],
)
def test_an_invalid_weight_is_refused_at_start_up_naming_file_key_and_problem(
    tmp_path, steps, message
):
    # What start-up loads (the API's lifespan, `cao worker`, the embedded stack).
    path = tmp_path / "catalog.yaml"
    path.write_text(WEIGHED % steps)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}: features.f"), info.value
    assert message in str(info.value)
