"""The dashboard as the API serves it: its pages and assets (no key needed: they hold
no data), the policy that keeps a page on this origin, and the two answers its script
relies on: who the caller is, and where a listed page stands in the event log."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.harness import wait_until


@pytest.fixture(scope="module")
def client(migrated):
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "path",
    ["/dashboard", "/dashboard/services", "/dashboard/jobs/7f1c1c1e-3c9a-4b8e-9a51-0d6c1c1e3c9a"],
)
def test_each_page_is_the_shell_with_a_same_origin_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "{{version}}" not in response.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', response.text):
        assert asset.startswith("/dashboard"), asset  # nothing from elsewhere


def test_assets_are_served_from_the_package_and_versioned(client):
    page = client.get("/dashboard").text
    script = re.search(r'src="(/dashboard/assets/dashboard\.js\?v=\w+)"', page)
    assert script is not None, page
    response = client.get(script.group(1))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "immutable" in response.headers["cache-control"]
    assert client.get("/dashboard/assets/dashboard.css").status_code == 200


def test_every_module_the_script_imports_is_served_at_the_same_version(client):
    page = client.get("/dashboard").text
    entry = re.search(r'src="/dashboard/assets/(dashboard\.js)\?v=(\w+)"', page)
    assert entry is not None, page
    version = entry.group(2)
    seen, todo = set(), [entry.group(1)]
    while todo:
        name = todo.pop()
        seen.add(name)
        response = client.get(f"/dashboard/assets/{name}?v={version}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        assert len(response.text.splitlines()) < 400, name
        for spec in re.findall(r'^import .* from "([^"]+)";$', response.text, re.M):
            # One URL per module, versioned: otherwise a browser keeps an old one for good.
            imported = re.fullmatch(r"\./(\w+\.js)\?v=(\w+)", spec)
            assert imported is not None, (name, spec)
            assert imported.group(2) == version, (name, spec)
            if imported.group(1) not in seen:
                todo.append(imported.group(1))
    assert {"api.js", "live.js", "ui.js", "jobs_page.js", "job_page.js"} <= seen


def test_unknown_assets_and_bad_job_ids_get_the_envelope(client):
    missing = client.get("/dashboard/assets/secrets.txt")
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    assert client.get("/dashboard/jobs/not-a-uuid").json()["error"]["code"] == "validation_error"


def test_pages_stay_out_of_the_api_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/dashboard")]
    assert "/api/v1/whoami" in paths


def test_whoami_on_an_open_gateway_is_an_operator(client):
    body = client.get("/api/v1/whoami").json()
    assert body == {
        "success": True,
        "role": "operator",
        "tenant": "default",
        "keys_required": False,
    }


def test_a_job_page_says_where_the_event_log_stands(client):
    before = client.get("/api/v1/jobs", params={"limit": 1}).json()["last_event_id"]
    created = client.post("/api/v1/jobs", json={"feature_name": "stalled_job"})
    assert created.status_code == 201, created.text
    # On PostgreSQL the API's event hub gives the new event its id shortly after commit.
    after = wait_until(
        lambda: (
            (page := client.get("/api/v1/jobs", params={"limit": 1}).json())["last_event_id"]
            > before
            and page
        ),
        10,
        message="the new job's event in the log",
    )
    assert after["items"][0]["job_id"] == created.json()["job_id"]
