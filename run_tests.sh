#!/usr/bin/env bash
# Install the project with its test extras into ./.venv and run the test suite.
#
# Needs only Python 3.11+. The suite runs against real PostgreSQL and Redis
# (CAO_TEST_DATABASE_URL, CAO_TEST_REDIS_URL; defaults: the local servers). Outside
# CI, if they are not reachable, it falls back to SQLite + an embedded Redis and
# says so in the pytest header; with CI=true it refuses to fall back.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k leases -x. The tests run in
# PYTEST_WORKERS processes (default 2; each runs a deployment of its own, and most of a
# test's time is spent waiting on those processes), a test file per process at a time.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "run_tests.sh: Python 3.11+ is required ($("$PYTHON" --version 2>&1) found)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the dependency list changed.
stamp="$VENV/.cao-installed"
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  echo "==> installing the project and its test dependencies"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  cp pyproject.toml "$stamp"
fi

echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "==> import layers"
"$VENV/bin/lint-imports"
echo "==> mypy --strict"
"$VENV/bin/mypy" --strict app worker
echo "==> pytest"
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
