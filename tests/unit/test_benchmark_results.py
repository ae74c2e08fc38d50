"""A benchmark run's results file (benchmarks/results.py): the JSON and the markdown
hold the date, the machine, the parameters, the gateway's figures, the baseline of
the same run and the ratios. No servers."""

from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict
from pathlib import Path

from benchmarks.results import Machine, Results, this_machine, write_results

WHEN = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
MACHINE = Machine(cores=2, cpu_model="Test CPU @ 2.0GHz", python="3.11.9", system="Linux")
LOAD = (1.5, 0.75, 0.25)
RESULTS = Results(
    benchmark="job_creation",
    parameters={"jobs": 100, "clients": 2, "rounds": 1},
    gateway={"requests/s (median of rounds)": 400.5},
    baselines={"FastAPI endpoint + send_task": {"requests/s (median of rounds)": 1000.0}},
    ratios={"requests/s, gateway / plain": 0.4005},
    servers={"postgresql": "16.4", "redis": "7.2.4"},
    detail=[{"gateway": {"per_s": 400.5}, "plain": {"per_s": 1000.0}}],
)


def test_writes_json_and_markdown_named_by_date_and_benchmark(tmp_path: Path) -> None:
    json_path, md_path = write_results(RESULTS, tmp_path, when=WHEN, machine=MACHINE, load=LOAD)

    assert json_path == tmp_path / "2030-01-02-job_creation.json"
    assert md_path == tmp_path / "2030-01-02-job_creation.md"
    assert sorted(p.name for p in tmp_path.iterdir()) == [json_path.name, md_path.name]


def test_json_holds_every_part_of_the_run(tmp_path: Path) -> None:
    json_path, _ = write_results(RESULTS, tmp_path, when=WHEN, machine=MACHINE, load=LOAD)
    document = json.loads(json_path.read_text())

    assert document["benchmark"] == "job_creation"
    assert document["date"] == "2030-01-02"
    assert document["machine"] == {
        "cores": 2,
        "cpu_model": "Test CPU @ 2.0GHz",
        "python": "3.11.9",
        "system": "Linux",
    }
    assert document["load_average"] == [1.5, 0.75, 0.25]
    assert document["servers"] == {"postgresql": "16.4", "redis": "7.2.4"}
    assert document["parameters"] == {"jobs": 100, "clients": 2, "rounds": 1}
    assert document["gateway"] == {"requests/s (median of rounds)": 400.5}
    assert document["baselines"] == {
        "FastAPI endpoint + send_task": {"requests/s (median of rounds)": 1000.0}
    }
    assert document["ratios"] == {"requests/s, gateway / plain": 0.4005}
    assert document["detail"] == [{"gateway": {"per_s": 400.5}, "plain": {"per_s": 1000.0}}]


def test_markdown_shows_machine_parameters_figures_and_ratios(tmp_path: Path) -> None:
    _, md_path = write_results(RESULTS, tmp_path, when=WHEN, machine=MACHINE, load=LOAD)
    text = md_path.read_text()

    assert text.startswith("# job_creation, 2030-01-02\n")
    assert "2 cores, Test CPU @ 2.0GHz, Python 3.11.9, Linux; load average 1.50/0.75/0.25" in text
    assert "postgresql 16.4, redis 7.2.4" in text
    assert "| clients | 2 |" in text
    assert "| CAO gateway | requests/s (median of rounds) | 400.5 |" in text
    assert "| FastAPI endpoint + send_task | requests/s (median of rounds) | 1000 |" in text
    assert "| requests/s, gateway / plain | 0.4005 |" in text


def test_a_run_without_baseline_says_so(tmp_path: Path) -> None:
    alone = Results(
        benchmark="events_fanout",
        parameters={"subscribers": 10},
        gateway={"p99_ms": 12.5},
        baselines={},
        ratios={},
    )
    json_path, md_path = write_results(alone, tmp_path, when=WHEN, machine=MACHINE, load=LOAD)

    assert json.loads(json_path.read_text())["baselines"] == {}
    assert "No plain-Celery baseline" in md_path.read_text()


def test_a_table_of_cases_comes_first_in_the_markdown_and_whole_in_the_json(
    tmp_path: Path,
) -> None:
    rows = (("scenario", "lost", "recovery p50 s"), ("Redis restarted x5", 0, 1.25))
    cases = Results(
        benchmark="chaos",
        parameters={"kills": 100},
        gateway={"redis lost": 0.0},
        baselines={},
        ratios={},
        table=rows,
    )
    json_path, md_path = write_results(cases, tmp_path, when=WHEN, machine=MACHINE, load=LOAD)

    assert json.loads(json_path.read_text())["table"] == [list(row) for row in rows]
    text = md_path.read_text()
    assert "| scenario | lost | recovery p50 s |\n| --- | --- | --- |\n" in text
    assert "| Redis restarted x5 | 0 | 1.25 |" in text
    assert text.index("## Table") < text.index("## Parameters")


def test_the_machine_is_described_without_its_hostname() -> None:
    machine = this_machine()

    assert set(asdict(machine)) == {"cores", "cpu_model", "python", "system"}
    assert machine.cores >= 1
    assert machine.cpu_model
    assert machine.python == platform.python_version()
    assert platform.node() not in machine.system.split()
