"""The gateway as a deployment runs it, on the run's private servers: simulated
services, one `cao api`, workers on the chaos queue (each also serving Beat's sweeps
on `default`) and one `cao beat`. A scenario kills, freezes, restarts or cuts off any
of them; the stack reads what happened from the database and the simulators."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.migrate import upgrade_head
from app.supervisor import stop_all
from benchmarks.chaos.servers import PostgresCluster, RedisServer
from tests.harness import CAO, Proc, Simulators, Workers, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
# Two http steps on one queue, with a short lease (a lost worker's slot comes back in
# seconds), a short timeout (the downstream scenario's hangs end) and attempts enough
# that 30 % failures never exhaust them: every job of every scenario can complete.
CATALOG = """\
services:
  chaos_call:
    kind: http
    url: "${SIM_URL}/chaos_call"
    queue: chaos
    concurrency: 8
    timeout_s: 2
    lease_ttl_s: 3
    max_attempts: 20
    backoff: {initial_s: 0.1, max_s: 1.0, jitter: 0.2}
  chaos_next:
    kind: http
    url: "${SIM_URL}/chaos_next"
    queue: chaos
    concurrency: 8
    timeout_s: 2
    lease_ttl_s: 3
    max_attempts: 20
    backoff: {initial_s: 0.1, max_s: 1.0, jitter: 0.2}
  # Called only by the worker that a scenario runs in a network namespace of its own.
  isolated_call:
    kind: http
    url: "${SIM_URL}/isolated_call"
    queue: isolated
    concurrency: 4
    timeout_s: 5
    lease_ttl_s: 3
    max_attempts: 20
    backoff: {initial_s: 0.1, max_s: 1.0, jitter: 0.2}
features:
  chaos_job: {steps: [chaos_call, chaos_next]}
  isolated_job: {steps: [isolated_call, chaos_next]}
"""
SERVICES = ("chaos_call", "chaos_next", "isolated_call")
FEATURE = "chaos_job"
QUEUES = "chaos,default"
# Beat's sweeps often, so that a lost step is found within seconds. A queued step is
# sent again after REQUEUE_AFTER_SECONDS whether its message is lost or only waiting
# behind a backlog; a backlog longer than that is sent again whole, each period (at 5 s
# during the 1000-job kill run, the queue once held 12,191 messages for 775 steps):
# 30 s stays above the backlogs these scenarios build.
SETTINGS = {
    "SANITY_CHECK_INTERVAL_SECONDS": "1",
    "REAP_LEASES_INTERVAL_SECONDS": "1",
    "WAKE_WAITERS_INTERVAL_SECONDS": "0.5",
    "REQUEUE_AFTER_SECONDS": "30",
    "BROKER_VISIBILITY_TIMEOUT_S": "300",
    "DATABASE_TCP_TIMEOUT_S": "5",
}
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass
class ChaosStack:
    log_dir: Path
    redis: RedisServer
    postgres: PostgresCluster
    env: dict[str, str]
    sim: Simulators
    api_url: str
    workers: Workers
    procs: list[Proc] = field(default_factory=list)

    @property
    def pg_url(self) -> str:
        return self.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """One statement on a connection of its own (the servers come and go)."""
        with psycopg.connect(self.pg_url, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def start_process(self, name: str, argv: Sequence[str], **env: str) -> Proc:
        proc = Proc(name, list(argv), {**self.env, **env}, self.log_dir)
        self.procs.append(proc)
        return proc

    def start_beat(self, name: str = "beat") -> Proc:
        proc = self.start_process(name, [*CAO, "beat", "--loglevel", "INFO"])
        proc.wait_for_log("beat: Starting", 60)
        return proc

    def start_worker(self, name: str, concurrency: int = 4) -> Proc:
        return self.workers.start(QUEUES, concurrency=concurrency, name=name)

    def submit(self, count: int, at_once: int = 8, feature: str = FEATURE) -> list[str]:
        """Create `count` jobs, `at_once` requests at a time; a 503 (the database is
        away) or a refused connection is retried as a client would."""
        body = {"feature_name": feature, "input_data": {"prompt": "chaos"}}

        def create(_: int) -> str:
            with httpx.Client(base_url=self.api_url, timeout=30) as client:
                while True:
                    try:
                        response = client.post("/api/v1/jobs", json=body)
                    except httpx.TransportError:
                        time.sleep(0.5)
                        continue
                    if response.status_code == 201:
                        return str(response.json()["job_id"])
                    if response.status_code != 503:
                        raise RuntimeError(f"POST /jobs: {response.status_code} {response.text}")
                    time.sleep(0.5)

        with ThreadPoolExecutor(at_once) as pool:
            return list(pool.map(create, range(count)))

    def unfinished(self, job_ids: Sequence[str]) -> int:
        rows = self.query(
            "SELECT count(*) FROM job WHERE id = ANY(%s::uuid[]) AND status <> ALL(%s)",
            list(job_ids),
            list(TERMINAL),
        )
        return int(rows[0][0])

    def wait_finished(self, job_ids: Sequence[str], timeout: float) -> None:
        """Until every job is terminal, or `timeout`: the ledger counts what is not."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.unfinished(job_ids) == 0, timeout, 0.5, "jobs to finish")

    def running_steps(self) -> list[tuple[str, int]]:
        """The steps in flight (job id, step index): what a fault right now can hit."""
        rows = self.query("SELECT job_id::text, step_index FROM job_step WHERE status = 'RUNNING'")
        return [(str(job), int(index)) for job, index in rows]

    def last_event_id(self) -> int:
        rows = self.query("SELECT coalesce(max(id), 0) FROM job_event")
        return int(rows[0][0])


def _environment(
    redis: RedisServer, database_url: str, sim_url: str, catalog: Path
) -> dict[str, str]:
    return {
        **os.environ,
        "CAO_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "CAO_CATALOG": str(catalog),
        "SIM_URL": sim_url,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **SETTINGS,
    }


@contextlib.contextmanager
def chaos_stack(
    log_dir: Path, workers: int = 2, concurrency: int = 6, **settings: str
) -> Iterator[ChaosStack]:
    """The whole gateway on a private PostgreSQL cluster and Redis server, torn down
    (servers included) however the run ends. The workers' processes (12 by default)
    outnumber a service's limit (8): the leases, not the pool size, keep to it.
    `settings` override SETTINGS."""
    catalog = log_dir / "chaos-catalog.yaml"
    catalog.write_text(CATALOG)
    redis, postgres = RedisServer(log_dir), PostgresCluster()
    pool: Workers | None = None
    procs: list[Proc] = []
    try:
        redis.start()
        postgres.start()
        database_url = postgres.create_database(f"cao_chaos_{uuid.uuid4().hex[:8]}")
        sim_port, api_port = free_port(), free_port()
        env = _environment(redis, database_url, f"http://127.0.0.1:{sim_port}", catalog)
        env.update(settings)
        upgrade_head(database_url)
        sims = Proc("simulators", [*CAO, "simulators", "--port", str(sim_port)], env, log_dir)
        api = Proc("api", [*CAO, "api", "--port", str(api_port)], env, log_dir)
        procs += [sims, api]
        pool = Workers(env, log_dir)
        stack = ChaosStack(
            log_dir,
            redis,
            postgres,
            env,
            Simulators(f"http://127.0.0.1:{sim_port}"),
            f"http://127.0.0.1:{api_port}",
            pool,
            procs,
        )
        # Every process boots at once; each is waited for in a thread of its own.
        with ThreadPoolExecutor() as starting:
            booted = [
                starting.submit(stack.start_worker, f"w{n}", concurrency) for n in range(workers)
            ]
            booted.append(starting.submit(stack.start_beat))
            sims.wait_for_port(sim_port, 60)
            api.wait_for_port(api_port, 60)
            for future in booted:
                future.result()
        yield stack
    finally:
        stop_all([*(pool.procs.values() if pool else ()), *procs], 5)
        redis.stop()
        postgres.destroy(log_dir)
