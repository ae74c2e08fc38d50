"""A benchmark run's results file: `benchmarks/results/<YYYY-MM-DD>-<benchmark>.json` and
the same figures as `.md` beside it.

Each file holds the date, the machine (cores, CPU model, Python version, OS; never its
hostname), the parameters the run took, the gateway's figures, the plain-Celery
baselines measured in the same run, and the ratios between them. Figures from one
machine on one day mean little against another's; the baseline measured alongside
is what makes a run comparable. A second run of the same benchmark on the same day
replaces the first.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Machine:
    cores: int
    cpu_model: str
    python: str
    system: str


@dataclass(frozen=True)
class Results:
    """What one run of one benchmark measured.

    `gateway` and each baseline map a figure's name (with its unit) to its value;
    `ratios` map a description of the ratio to its value; `whole_run` holds figures
    that no one run owns (the database's CPU, shared by all); `servers` names the
    versions of the servers the run used; `detail` is anything more (per round) that
    goes into the JSON only; `table`, when given, is one table (a header row, then a row
    each) that the `.md` shows first, for benchmarks whose figures are one row per case."""

    benchmark: str
    parameters: Mapping[str, Any]
    gateway: Mapping[str, float]
    baselines: Mapping[str, Mapping[str, float]]
    ratios: Mapping[str, float]
    whole_run: Mapping[str, float] = field(default_factory=dict)
    servers: Mapping[str, str] = field(default_factory=dict)
    detail: Any = None
    table: tuple[tuple[Any, ...], ...] = ()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def this_machine() -> Machine:
    return Machine(
        cores=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
    )


def server_versions(env: Mapping[str, str]) -> dict[str, str]:
    """The PostgreSQL and Redis versions of a run's scratch environment
    (benchmarks/common.py `scratch_environment`)."""
    import psycopg
    import redis

    with psycopg.connect(env["BENCH_PG_URL"]) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        info = client.info("server")
    finally:
        client.close()
    return {
        "postgresql": str(row[0]) if row else "?",
        "redis": str(info.get("redis_version", "?")),
    }


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_figure(cell) for cell in row) + " |" for row in rows]
    return lines


def _markdown(document: dict[str, Any]) -> str:
    machine = document["machine"]
    lines = [
        f"# {document['benchmark']}, {document['date']}",
        "",
        f"Machine: {machine['cores']} cores, {machine['cpu_model']}, "
        f"Python {machine['python']}, {machine['system']}; load average "
        + "/".join(f"{value:.2f}" for value in document["load_average"])
        + " (1/5/15 min) as the run ended.",
    ]
    if document["servers"]:
        servers = ", ".join(f"{name} {version}" for name, version in document["servers"].items())
        lines.append(f"Servers: {servers}.")
    if document["table"]:
        header, *rows = document["table"]
        lines += ["", "## Table", ""]
        lines += _table(tuple(header), [tuple(row) for row in rows])
    lines += ["", "## Parameters", ""]
    lines += _table(("parameter", "value"), sorted(document["parameters"].items()))
    rows = [("CAO gateway", name, value) for name, value in document["gateway"].items()]
    for baseline, figures in document["baselines"].items():
        rows += [(baseline, name, value) for name, value in figures.items()]
    rows += [("whole run", name, value) for name, value in document["whole_run"].items()]
    lines += ["", "## Figures", ""]
    lines += _table(("run", "figure", "value"), rows)
    lines += ["", "## Ratios", ""]
    if document["ratios"]:
        lines += _table(("ratio", "value"), list(document["ratios"].items()))
    else:
        lines.append("No plain-Celery baseline: this benchmark's targets are absolute.")
    return "\n".join(lines) + "\n"


def write_results(
    results: Results,
    directory: Path = RESULTS_DIR,
    when: datetime.datetime | None = None,
    machine: Machine | None = None,
    load: tuple[float, float, float] | None = None,
) -> tuple[Path, Path]:
    """Write the run's `.json` and `.md` files; return their paths (json, md)."""
    when = when or datetime.datetime.now(datetime.UTC)
    date = when.date().isoformat()
    document = {
        "benchmark": results.benchmark,
        "date": date,
        "recorded_at": when.isoformat(timespec="seconds"),
        "machine": asdict(machine or this_machine()),
        # Other work on the machine moves every figure; the ratios less so.
        "load_average": list(os.getloadavg()) if load is None else list(load),
        "servers": dict(results.servers),
        "parameters": dict(results.parameters),
        "gateway": dict(results.gateway),
        "baselines": {name: dict(figures) for name, figures in results.baselines.items()},
        "ratios": dict(results.ratios),
        "whole_run": dict(results.whole_run),
        "detail": results.detail,
        "table": [list(row) for row in results.table],
    }
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{date}-{results.benchmark}"
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path.write_text(_markdown(document))
    print(f"results: {json_path} and {md_path.name}")
    return json_path, md_path
