"""Production-safe defaults (DESIGN.md "Auth", "Configuration"): production refuses to
start open, readiness checks the database and Redis, /docs can be turned off."""

from __future__ import annotations

import subprocess

import pytest

from app.config import Settings
from tests.harness import CAO, free_port, serving_api

pytestmark = pytest.mark.timeout(120)

# A PostgreSQL URL nothing listens on: the refusal comes before any connection.
PRODUCTION = {
    "CAO_ENV": "production",
    "DATABASE_URL": "postgresql://cao@127.0.0.1:9/cao",
    "API_KEYS": "",
    "API_KEYS_FILE": "",
}


@pytest.mark.parametrize("command", [["api"], ["worker", "-Q", "default"], ["beat"]])
def test_production_without_api_keys_refuses_to_start_naming_api_keys(env, command):
    started = subprocess.run(
        [*CAO, *command], env={**env, **PRODUCTION}, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2, started.stderr
    assert "refusing to start" in started.stderr
    assert "API_KEYS" in started.stderr
    assert "Traceback" not in started.stderr


def test_open_access_in_production_takes_an_explicit_setting():
    fields = {"cao_env": "production", "database_url": "postgresql://cao@db/cao"}
    with pytest.raises(ValueError, match="API_KEYS"):
        Settings.model_validate(fields)
    assert Settings.model_validate({**fields, "allow_open_access": True}).cao_env == "production"
    keyed = Settings.model_validate({**fields, "api_keys": "operator-key-1:operator"})
    assert keyed.docs_on is False  # /docs is off in production unless DOCS_ENABLED says so
    assert Settings.model_validate({"cao_env": "test"}).docs_on is True


def test_readiness_answers_200_when_the_database_and_redis_answer(api):
    ready = api.get("/api/v1/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ok": True, "database": "ok", "redis": "ok"}


def test_readiness_is_503_in_the_envelope_without_redis_and_docs_can_be_off(env, log_dir):
    without_redis = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DOCS_ENABLED": "0"}
    with serving_api("api-no-redis", without_redis, log_dir) as api:
        ready = api.get("/api/v1/health/ready")
        assert ready.status_code == 503, ready.text
        error = ready.json()["error"]
        assert error["code"] == "not_ready"
        assert error["details"]["database"] == "ok"
        assert error["details"]["redis"].startswith("unavailable")
        assert ready.headers["Retry-After"] == "1"
        assert api.get("/api/v1/health").status_code == 200  # alive, not ready
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert api.get(path).status_code == 404, path
