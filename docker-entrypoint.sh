#!/usr/bin/env bash
# Container entry point. The first argument picks this container's role:
#   api         migrate first when RUN_MIGRATIONS_ON_STARTUP is true, then serve the
#               REST/WebSocket API on 0.0.0.0:$PORT (default 8000)
#   worker      a Celery worker consuming $WORKER_QUEUES (comma-separated, default
#               "default") with $WORKER_CONCURRENCY processes (default 2)
#   beat        Celery Beat: stuck-job checks, lease reaping, retention (run exactly one)
#   migrate     apply the database migrations, then exit
#   simulators  the simulated services on 0.0.0.0:8100 (a demo tool)
#   healthcheck ROLE   exit 0 when this container's ROLE is healthy: api, its
#               readiness (database and Redis answer); worker, a Celery ping of this
#               container's own worker; beat, a heartbeat file touched in the last 60 s
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

# One worker per container: named after its queues and the container's host name,
# so that its healthcheck can ping it (and no other).
worker_name() {
  local queues="${WORKER_QUEUES:-default}"
  echo "${queues//,/+}@${HOSTNAME:-$(hostname)}"
}

healthcheck() {
  case "${1:-api}" in
    api)
      exec python -c "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/api/v1/health/ready' % os.environ.get('PORT', '8000'), timeout=4)"
      ;;
    worker)
      exec python -m celery -A worker.celery_app inspect ping --timeout 5 \
        --destination "$(worker_name)"
      ;;
    beat)
      local file="${BEAT_HEARTBEAT_FILE:?BEAT_HEARTBEAT_FILE must be set for the beat healthcheck}"
      [ -f "$file" ] && [ $(($(date +%s) - $(stat -c %Y "$file"))) -lt 60 ]
      ;;
    *)
      echo "docker-entrypoint: no healthcheck for role ${1}" >&2
      exit 2
      ;;
  esac
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
    exec "$cao" worker -Q "${WORKER_QUEUES:-default}" -c "${WORKER_CONCURRENCY:-2}" \
      --name "$(worker_name)" "$@"
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
  healthcheck)
    healthcheck "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
