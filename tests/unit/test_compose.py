"""docker-compose.yml, Dockerfile and docker-entrypoint.sh agree with the code.

No container engine runs in the test environment, so these checks read the files and
compare them with what the code accepts: the Settings fields, the default catalog's
queues and URL variables, the entrypoint's roles and the wheel's inputs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from app.catalog import DEFAULT_CATALOG, load_catalog
from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker-entrypoint.sh"
DESIGN_SERVICES = {"redis", "db", "api", "worker_heavy", "worker_medium", "worker_default", "beat"}
# Read by docker-entrypoint.sh or by the postgres image, not by the gateway's Settings.
CONTAINER_VARIABLES = {"PORT", "WORKER_QUEUES", "WORKER_CONCURRENCY"}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def gateway_services() -> dict[str, dict[str, Any]]:
    """The services that run our image (built from this repository)."""
    return {name: spec for name, spec in services().items() if "build" in spec}


def environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


# What an operator exports before `docker compose up` (the `${VAR:?}` secrets).
OPERATOR_ENV = {"POSTGRES_PASSWORD": "a-strong-password", "API_KEYS": "operator-key-1:operator"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] = OPERATOR_ENV) -> str:
    """`value` as compose interpolates it from `env`: `${VAR}`, `${VAR:-default}`, and
    `${VAR:?message}` (unset: an error naming VAR)."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, rest = match.groups()
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise KeyError(f"{name}: {rest}")
        return rest or ""

    return _VARIABLE.sub(substitute, value)


def role(spec: dict[str, Any]) -> str:
    command = spec.get("command", ["api"])  # the image's CMD
    return (command.split() if isinstance(command, str) else command)[0]


def default_catalog_variables() -> set[str]:
    text = resources.files("app").joinpath(DEFAULT_CATALOG).read_text()
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def entrypoint_roles() -> set[str]:
    # The case labels of the role dispatch, e.g. `  worker)`; `*)` runs a command.
    return set(re.findall(r"^  ([a-z]+)\)$", ENTRYPOINT.read_text(), flags=re.M))


def dockerfile_instructions(keyword: str) -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(f"{keyword} ")]


def test_design_services_and_simulators_exist():
    assert DESIGN_SERVICES | {"simulators"} <= set(services())
    assert {"api", "worker_heavy", "worker_medium", "worker_default", "beat", "simulators"} <= set(
        gateway_services()
    )


def test_worker_pools_cover_every_queue_of_the_default_catalog():
    from worker.celery_app import celery_app

    consumed: set[str] = set()
    for spec in gateway_services().values():
        if role(spec) == "worker":
            consumed |= set(environment(spec).get("WORKER_QUEUES", "default").split(","))
    # Beat's maintenance tasks go to Celery's default queue; someone must consume it.
    needed = set(load_catalog().queues) | {celery_app.conf.task_default_queue}
    assert needed <= consumed, f"no worker consumes {sorted(needed - consumed)}"


def test_every_environment_variable_is_one_the_code_reads():
    settings_names = {name.upper() for name in Settings.model_fields}
    known = settings_names | default_catalog_variables() | CONTAINER_VARIABLES
    for name, spec in services().items():
        unknown = {
            var for var in environment(spec) if var not in known and not var.startswith("POSTGRES_")
        }
        assert not unknown, f"{name}: {sorted(unknown)} is read by nothing"


@pytest.mark.parametrize("service", sorted(gateway_services()))
def test_gateway_environment_is_valid_and_points_at_compose_services(service):
    env = {
        name: interpolate(value) for name, value in environment(gateway_services()[service]).items()
    }
    fields = {
        var.lower(): value for var, value in env.items() if var.lower() in Settings.model_fields
    }
    settings = Settings.model_validate(fields)  # what the container validates at start-up
    assert settings.cao_env == "production"

    database = make_url(settings.database_url)
    postgres = {
        name: interpolate(value)
        for name, value in environment(services()[database.host or ""]).items()
    }
    assert (database.username, database.password, database.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert make_url(settings.redis_url).host in services()

    # Every service of the default catalog is reachable: its URL names the simulators.
    for var in default_catalog_variables():
        assert env.get(var) == "http://simulators:8100", f"{service}: {var}={env.get(var)}"


def test_every_command_is_a_role_the_entrypoint_handles():
    roles = entrypoint_roles()
    assert {"api", "worker", "beat", "migrate", "simulators"} <= roles
    for name, spec in gateway_services().items():
        assert role(spec) in roles, f"{name}: role {role(spec)!r} is not one of {sorted(roles)}"


def test_api_migrates_and_the_rest_wait_for_a_healthy_api():
    api = services()["api"]
    assert environment(api)["RUN_MIGRATIONS_ON_STARTUP"] == "true"
    assert {"db", "redis"} <= set(api["depends_on"])
    assert "healthcheck" in api
    for name, spec in gateway_services().items():
        if role(spec) in {"worker", "beat"}:
            assert spec["depends_on"]["api"]["condition"] == "service_healthy", name


def test_dockerfile_runs_the_entrypoint_as_a_non_root_user():
    assert json.loads(dockerfile_instructions("ENTRYPOINT")[-1]) == ["docker-entrypoint.sh"]
    assert json.loads(dockerfile_instructions("CMD")[-1]) == ["api"]
    assert any(
        copy.endswith("docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh")
        for copy in dockerfile_instructions("COPY")
    )
    assert dockerfile_instructions("USER")[-1] not in {"root", "0"}
    assert ENTRYPOINT.stat().st_mode & 0o111, "docker-entrypoint.sh must be executable"


def _ignored(name: str, patterns: list[str]) -> bool:
    """.dockerignore for a top-level name: the last matching pattern decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(name, body) or fnmatch.fnmatch(name, body.removeprefix("**/")):
            ignored = not negated
    return ignored


def test_the_image_build_gets_everything_the_wheel_is_built_from():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    inputs = {"pyproject.toml", project["project"]["readme"], *wheel["packages"]}
    inputs |= set(wheel.get("force-include", {}))  # the migrations: alembic/, alembic.ini
    copied = {
        source.rstrip("/")
        for copy in dockerfile_instructions("COPY")
        if not copy.startswith("--")
        for source in copy.split()[:-1]
    }
    assert inputs <= copied, f"the Dockerfile does not copy {sorted(inputs - copied)}"

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    excluded = {name for name in inputs | {"docker-entrypoint.sh"} if _ignored(name, patterns)}
    assert not excluded, f".dockerignore keeps {sorted(excluded)} out of the build context"


def test_entrypoint_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_simulators_are_a_demo_tool_outside_the_production_services():
    simulators = services()["simulators"]
    assert simulators.get("profiles") == ["demo"]
    assert "ports" not in simulators  # reachable inside the compose network only
    for name in DESIGN_SERVICES:
        assert "profiles" not in services()[name], f"{name} must run without a profile"


def test_every_service_has_a_real_healthcheck():
    roles = entrypoint_roles()
    assert "healthcheck" in roles
    script = ENTRYPOINT.read_text()
    for name, spec in services().items():
        check = spec.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), f"{name} has no healthcheck test"
        if name in gateway_services() and role(spec) in {"api", "worker", "beat"}:
            # The entrypoint's own check for that role: readiness, a Celery ping, Beat's
            # heartbeat file.
            assert check["test"] == ["CMD", "docker-entrypoint.sh", "healthcheck", role(spec)]
    assert "/api/v1/health/ready" in script
    assert "inspect ping" in script
    assert "BEAT_HEARTBEAT_FILE" in script
    assert environment(services()["beat"])["BEAT_HEARTBEAT_FILE"]


def test_secrets_come_from_the_environment_and_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "API_KEYS"):
        assert f"${{{secret}:?" in text, f"{secret} must be read as ${{{secret}:?...}}"
    postgres = environment(services()["db"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name, spec in gateway_services().items():
        env = environment(spec)
        assert env["API_KEYS"].startswith("${API_KEYS:?"), name
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"], name
        with pytest.raises(KeyError, match="API_KEYS"):
            interpolate(env["API_KEYS"], {})


def _compose_client() -> bool:
    if shutil.which("docker") is None:
        return False
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    return version.returncode == 0


@pytest.mark.skipif(not _compose_client(), reason="no docker compose client here")
def test_docker_compose_config_is_valid():
    import os

    run = partial(
        subprocess.run,
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    bare = {k: v for k, v in os.environ.items() if k not in OPERATOR_ENV}
    checked = run(env={**bare, **OPERATOR_ENV})
    assert checked.returncode == 0, checked.stderr
    refused = run(env=bare)
    assert refused.returncode != 0
    assert "POSTGRES_PASSWORD" in refused.stderr or "API_KEYS" in refused.stderr
