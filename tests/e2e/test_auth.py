"""API keys, roles and tenants: parsing, the role matrix over every endpoint of a real
`cao api` guarded by keys, and tenant isolation on list, get, events and WebSocket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.auth import (
    ApiKeyConfigError,
    KeyRing,
    Principal,
    announce_access_mode,
    build_keyring,
    load_api_keys_file,
    parse_api_keys,
)
from app.config import Settings
from tests.e2e.operator_support import KEYS, key_of, keyed_client, secured_api, submit
from tests.harness import CAO, Proc, free_port, wait_for_job, wait_until

# --- configuration ---------------------------------------------------------------------


def test_api_keys_parse_roles_and_tenants():
    entries = parse_api_keys(" alpha-key-1:client:acme , omega-key-2:operator,, beta-key-3:client")
    assert entries == [
        ("alpha-key-1", Principal("client", "acme")),
        ("omega-key-2", Principal("operator", "default")),
        ("beta-key-3", Principal("client", "default")),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("alpha-key-1:admin", "API_KEYS entry 1: role 'admin' is not one of client, operator"),
        ("alpha-key-1:client,beta-key-2", "API_KEYS entry 2: expected key:role[:tenant]"),
        ("short:client", "API_KEYS entry 1: key must be a string of at least 8"),
        ("alpha-key-1:client:a b", "API_KEYS entry 1: tenant 'a b' must be 1-64 characters"),
    ],
)
def test_malformed_api_keys_say_what_is_wrong(raw, message):
    with pytest.raises(ApiKeyConfigError, match="^" + message.replace("[", r"\[")):
        parse_api_keys(raw)


def test_api_keys_file_and_its_errors(tmp_path: Path):
    good = tmp_path / "keys.yaml"
    good.write_text(
        "- {key: file-key-0001, role: operator}\n- {key: file-key-0002, role: client, tenant: t1}\n"
    )
    assert [p for _, p in load_api_keys_file(good)] == [
        Principal("operator", "default"),
        Principal("client", "t1"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {key: file-key-0001, role: client, team: x}\n")
    with pytest.raises(ApiKeyConfigError, match=r"bad.yaml item 0: unknown field\(s\) team"):
        load_api_keys_file(bad)
    bad.write_text("key: file-key-0001\n")
    with pytest.raises(ApiKeyConfigError, match="expected a list"):
        load_api_keys_file(bad)
    settings = Settings(api_keys="file-key-0001:client", api_keys_file=good)
    with pytest.raises(ApiKeyConfigError, match="configured twice"):
        build_keyring(settings)


def test_keyring_holds_digests_and_resolves_exactly():
    ring = KeyRing(parse_api_keys("alpha-key-1:client:acme,omega-key-2:operator"))
    assert ring.resolve("alpha-key-1") == Principal("client", "acme")
    assert ring.resolve("omega-key-2") == Principal("operator", "default")
    for wrong in ("alpha-key-", "alpha-key-1 ", "ALPHA-KEY-1", ""):
        assert ring.resolve(wrong) is None
    assert "alpha-key-1" not in repr(vars(ring)), "plaintext keys must not be kept"


def test_an_open_gateway_says_so_loudly(monkeypatch):
    monkeypatch.setattr("app.auth.get_keyring", lambda: KeyRing([]))
    with capture_logs() as logs:
        announce_access_mode()
    assert logs[0]["log_level"] == "warning"
    assert "OPEN" in logs[0]["event"]


@pytest.mark.slow
def test_malformed_keys_stop_the_api_at_start_up(env, log_dir):
    proc = Proc(
        "api-badkeys",
        [*CAO, "api", "--port", str(free_port())],
        {**env, "API_KEYS": "alpha-key-1:superuser"},
        log_dir,
    )
    try:
        wait_until(lambda: not proc.alive(), 30, message="the api to refuse to start")
        assert proc.popen.returncode != 0
        assert "role 'superuser' is not one of client, operator" in proc.log_text()
    finally:
        proc.stop()


# --- the role matrix over a live API ---------------------------------------------------

WHO = ("no key", "unknown key", "client_a", "client_b", "operator")
OPEN = "open"
# endpoint -> the documented answer for each caller in WHO, on a job of tenant A.
# WebSocket answers are close codes, or OPEN when WS_CONNECTED arrives.
MATRIX: dict[str, tuple[int | str, ...]] = {
    "create": (401, 401, 201, 201, 201),
    "get": (401, 401, 200, 404, 200),
    "list": (401, 401, 200, 200, 200),
    "events": (401, 401, 200, 404, 200),
    "ws_job": (4401, 4401, OPEN, 4004, OPEN),
    "ws_all": (4401, 4401, OPEN, OPEN, OPEN),
    "resume": (401, 401, 403, 403, 409),  # the job is COMPLETED: past auth, not resumable
    "cancel": (401, 401, 409, 404, 409),  # a client cancels its own tenant's jobs
    "bulk": (401, 401, 403, 403, 200),
    "features": (401, 401, 200, 200, 200),
    "services": (401, 401, 403, 403, 200),
    "health_services": (401, 401, 403, 403, 200),
    "whoami": (401, 401, 200, 200, 200),
}
ERROR_CODES = {401: ("missing_api_key", "invalid_api_key"), 403: ("operator_required",)}


def _headers(who: str) -> dict[str, str]:
    if who == "no key":
        return {}
    if who == "unknown key":
        return {"X-API-Key": "not-a-configured-key"}
    return {"Authorization": f"Bearer {key_of(who)}"}


@pytest.fixture(scope="module")
def world(env, log_dir, migrated, workers) -> Iterator[dict[str, Any]]:
    """A keyed API, and one finished job for each client tenant."""
    workers.ensure("default")
    with (
        secured_api(env, log_dir) as url,
        keyed_client(url, "operator") as operator,
        keyed_client(url, "client_a") as client_a,
        keyed_client(url, "client_b") as client_b,
    ):
        job_a = submit(client_a, "python_job", {"text": "tenant a"})
        job_b = submit(client_b, "python_job", {"text": "tenant b"})
        for job_id in (job_a, job_b):
            assert wait_for_job(operator, job_id)["status"] == "COMPLETED"
        yield {"url": url, "job_a": job_a, "job_b": job_b, "operator": operator}


def _ws(world: dict[str, Any], path: str, headers: dict[str, str]) -> int | str:
    ws_url = world["url"].replace("http://", "ws://") + path
    with connect(ws_url, additional_headers=headers, open_timeout=10) as socket:
        try:
            first = json.loads(socket.recv(timeout=10))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else "closed without a close frame"
        assert first["type"] == "WS_CONNECTED", first
        return OPEN


def _call(world: dict[str, Any], endpoint: str, who: str) -> int | str:
    headers, job = _headers(who), world["job_a"]
    if endpoint == "ws_job":
        return _ws(world, f"/ws/{job}", headers)
    if endpoint == "ws_all":
        return _ws(world, "/ws", headers)
    requests = {
        "create": ("POST", "/api/v1/jobs", {"feature_name": "python_job", "input_data": {}}),
        "get": ("GET", f"/api/v1/jobs/{job}", None),
        "list": ("GET", "/api/v1/jobs", None),
        "events": ("GET", f"/api/v1/jobs/{job}/events", None),
        "resume": ("POST", f"/api/v1/jobs/{job}/resume", None),
        "cancel": ("POST", f"/api/v1/jobs/{job}/cancel", None),
        "bulk": ("POST", "/api/v1/jobs/resume", {"dry_run": True, "feature_name": "none"}),
        "features": ("GET", "/api/v1/features", None),
        "services": ("GET", "/api/v1/services", None),
        "health_services": ("GET", "/api/v1/health/services", None),
        "whoami": ("GET", "/api/v1/whoami", None),
    }
    method, path, body = requests[endpoint]
    response = httpx.request(method, world["url"] + path, json=body, headers=headers, timeout=15)
    if response.status_code >= 400:
        error = response.json()["error"]  # always the envelope
        assert error["code"] in ERROR_CODES.get(response.status_code, (error["code"],)), error
    if response.status_code == 401:
        # RFC 9110: a 401 says how to authenticate.
        assert response.headers["WWW-Authenticate"].startswith("Bearer "), response.headers
    return response.status_code


@pytest.mark.slow
@pytest.mark.parametrize(
    ("endpoint", "who", "expected"),
    [(endpoint, who, row[i]) for endpoint, row in MATRIX.items() for i, who in enumerate(WHO)],
    ids=lambda value: str(value).replace(" ", "_"),
)
def test_role_matrix(world, endpoint, who, expected):
    assert _call(world, endpoint, who) == expected


@pytest.mark.slow
@pytest.mark.parametrize("who", ["client_a", "operator"])
def test_whoami_names_the_role_and_tenant_of_the_key(world, who):
    _, role, tenant = KEYS[who]
    body = httpx.get(f"{world['url']}/api/v1/whoami", headers=_headers(who)).json()
    assert body == {"success": True, "role": role, "tenant": tenant, "keys_required": True}


@pytest.mark.slow
def test_health_stays_open_and_both_key_headers_work(world):
    assert httpx.get(world["url"] + "/api/v1/health").json() == {"ok": True}
    by_header = httpx.get(
        f"{world['url']}/api/v1/jobs/{world['job_a']}", headers={"X-API-Key": key_of("client_a")}
    )
    assert by_header.status_code == 200
    assert _ws(world, f"/ws/{world['job_a']}?api_key={key_of('client_a')}", {}) == OPEN


@pytest.mark.slow
@pytest.mark.parametrize(
    ("me", "mine", "theirs"), [("client_a", "job_a", "job_b"), ("client_b", "job_b", "job_a")]
)
def test_a_client_never_sees_another_tenants_jobs(world, me, mine, theirs):
    tenant = KEYS[me][2]
    with keyed_client(world["url"], me) as client:
        listed = client.get("/api/v1/jobs", params={"limit": 500}).json()["items"]
        assert world[mine] in {item["job_id"] for item in listed}
        assert {item["tenant"] for item in listed} == {tenant}
        assert client.get(f"/api/v1/jobs/{world[theirs]}").status_code == 404
        assert client.get(f"/api/v1/jobs/{world[theirs]}/events").status_code == 404

    seen = _all_jobs_stream(world, me)
    assert world[mine] in seen, "the stream should carry the client's own events"
    operator = world["operator"]
    tenants = {operator.get(f"/api/v1/jobs/{job_id}").json()["tenant"] for job_id in seen}
    assert tenants == {tenant}


def _all_jobs_stream(world: dict[str, Any], who: str) -> set[str]:
    """Job ids of every event `/ws?after=0` sends this caller until it goes quiet."""
    ws_url = world["url"].replace("http://", "ws://") + "/ws?after=0"
    seen: set[str] = set()
    with connect(ws_url, additional_headers=_headers(who), open_timeout=10) as socket:
        while True:
            try:
                message = json.loads(socket.recv(timeout=1.5))
            except TimeoutError:
                return seen
            if message["type"] != "WS_CONNECTED":
                seen.add(message["job_id"])
