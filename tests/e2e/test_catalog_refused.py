"""The servers refuse to start on an invalid catalog, and their error names the file
and the key (the catalog's own errors are tests/unit/test_catalog.py's)."""

from __future__ import annotations

import subprocess

from tests.harness import CAO, free_port


def test_api_refuses_to_start_on_an_invalid_catalog(tmp_path, env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n  s: {kind: http, url: 'http://x', max_attempts: 0}\n"
        "features: {f: {steps: [s]}}\n"
    )
    result = subprocess.run(
        [*CAO, "api", "--port", str(free_port())],
        env={**env, "CAO_CATALOG": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"{bad}: services.s.max_attempts" in result.stdout + result.stderr


def test_worker_refuses_to_start_on_an_invalid_catalog(tmp_path, env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: {}\nfeatures:\n  f: {steps: [missing]}\n")
    result = subprocess.run(
        [*CAO, "worker", "-Q", "default"],
        env={**env, "CAO_CATALOG": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "features.f.steps[0]: unknown service 'missing'" in result.stdout + result.stderr
