#!/usr/bin/env bash
# Container entry point. The first argument picks this container's role:
#   api         migrate first when RUN_MIGRATIONS_ON_STARTUP is true, then serve the
#               REST/WebSocket API on 0.0.0.0:$PORT (default 8000)
#   worker      a Celery worker consuming $WORKER_QUEUES (comma-separated, default
#               "default") with $WORKER_CONCURRENCY processes (default 2)
#   beat        Celery Beat: stuck-job checks, lease reaping, retention (run exactly one)
#   migrate     apply the database migrations, then exit
#   simulators  the simulated services on 0.0.0.0:8100
# Arguments after a role go to its `cao` command (e.g. `worker --loglevel DEBUG`).
# Anything else runs as a command, e.g. `docker compose run --rm api cao jobs`.
# CAO_BIN overrides the `cao` executable (tests point it at a virtualenv).
set -euo pipefail

cao="${CAO_BIN:-cao}"

# The spellings pydantic accepts as true for the same Settings field.
is_true() {
  case "${1,,}" in
    1 | true | yes | y | on | t) return 0 ;;
    *) return 1 ;;
  esac
}

# `cao migrate` retries while the database comes up (MIGRATION_MAX_ATTEMPTS times,
# MIGRATION_RETRY_SLEEP_SECONDS apart). When it gives up, the container must stop
# rather than serve against a database without the schema.
run_migrations() {
  local status=0
  "$cao" migrate "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "docker-entrypoint: database migrations failed (cao migrate exited $status);" \
      "check DATABASE_URL and that the database accepts connections" >&2
    exit "$status"
  fi
}

role="${1:-api}"
if [ "$#" -gt 0 ]; then shift; fi

case "$role" in
  api)
    if is_true "${RUN_MIGRATIONS_ON_STARTUP:-false}"; then
      run_migrations
      # Done once here: the API's own start-up (one per uvicorn worker) must not
      # race to run the same migrations again.
      export RUN_MIGRATIONS_ON_STARTUP=false
    fi
    exec "$cao" api --host 0.0.0.0 --port "${PORT:-8000}" "$@"
    ;;
  worker)
    exec "$cao" worker -Q "${WORKER_QUEUES:-default}" -c "${WORKER_CONCURRENCY:-2}" "$@"
    ;;
  beat)
    exec "$cao" beat "$@"
    ;;
  migrate)
    run_migrations "$@"
    ;;
  simulators)
    exec "$cao" simulators --host 0.0.0.0 "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
