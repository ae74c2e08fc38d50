"""The observability overhead benchmark's options and the results it assembles from
its rounds (benchmarks/observability_overhead.py), without servers: both
configurations' figures, the ratios observed / bare with their range over rounds, and
the verdict against the 5 % target."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.observability_overhead import (
    BARE,
    OBSERVED,
    SCRAPED_EVERY_SECOND,
    parse_args,
    results_of,
)
from benchmarks.results import Machine, write_results

pytestmark = pytest.mark.timeout(30)


def _run(rate: float, cpu: float, handoff: float, observed: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "seconds": 300 / rate,
        "jobs_per_s": rate,
        "worker_cpu_ms_per_step": cpu,
        "api_cpu_ms_per_step": 0.33 if observed else 0.3,
        "handoff_same_queue_ms": [handoff, handoff, 2 * handoff],
        "handoff_across_queues_ms": [5 * handoff, 5 * handoff, 6 * handoff],
    }
    if observed:
        result |= {
            "scrapes": 9,
            "scrape_ms_max": 40.0,
            "flower_cpu_ms_per_step": 0.5,
            "step_tasks_seen_by_flower": 480,
        }
    return result


def _rounds(
    observed_rates: list[float], every_second: bool = True
) -> list[dict[str, dict[str, Any]]]:
    rounds = []
    for rate in observed_rates:
        configs = {OBSERVED: _run(rate, 3.1, 2.0, True), BARE: _run(100.0, 3.0, 2.0, False)}
        if every_second:
            configs[SCRAPED_EVERY_SECOND] = _run(rate / 2, 3.3, 2.0, True)
        rounds.append(configs)
    return rounds


def test_defaults_are_the_documented_small_run() -> None:
    args = parse_args([])
    assert (args.jobs, args.concurrency, args.sequential, args.rounds) == (1200, 4, 10, 6)
    assert parse_args(["--jobs", "30", "--rounds", "1"]).jobs == 30
    assert parse_args([]).every_second is True
    assert parse_args(["--no-every-second"]).every_second is False


def test_ratios_are_medians_of_rounds_with_their_range() -> None:
    results = results_of(parse_args([]), _rounds([97.0, 99.0, 90.0]), {"redis": "7"})

    ratios = results.ratios
    assert ratios["jobs/s, observed / bare (median of rounds)"] == pytest.approx(0.97)
    assert ratios["jobs/s, observed / bare (lowest round)"] == pytest.approx(0.90)
    assert ratios["jobs/s, observed / bare (highest round)"] == pytest.approx(0.99)
    assert ratios["worker CPU per step, observed / bare (median of rounds)"] == pytest.approx(
        3.1 / 3.0
    )
    assert ratios["hand-off same queue p50, observed / bare (median of rounds)"] == 1.0
    assert ratios["Flower CPU per step, observed / bare (median of rounds)"] == pytest.approx(
        0.5 / 3.0
    )
    # What the API adds (its folds), as a share of a bare step's CPU.
    assert ratios["API CPU per step, added, observed / bare (median of rounds)"] == pytest.approx(
        0.03 / 3.0
    )
    assert ratios["overhead, observed, jobs/s (target <= 5%)"] == pytest.approx(0.03)
    # Scraped every second, shown beside but not judged: the target is met all the same.
    assert ratios[
        "jobs/s, observed, scraped every second / bare (median of rounds)"
    ] == pytest.approx(0.485)
    assert results.detail["within_target"] is True
    assert results.baselines[BARE]["jobs/s (median of rounds)"] == 100.0
    assert results.gateway["observed: Flower CPU ms per step (median of rounds)"] == 0.5
    assert [set(r) for r in results.detail["rounds"]] == [
        {OBSERVED, SCRAPED_EVERY_SECOND, BARE}
    ] * 3


def test_a_run_without_the_every_second_phases_judges_observed_alone() -> None:
    args = parse_args(["--no-every-second", "--label", "short"])
    results = results_of(args, _rounds([97.0, 99.0], every_second=False), {})
    assert results.benchmark == "observability_overhead-short"
    assert results.detail["within_target"] is True
    assert not any(SCRAPED_EVERY_SECOND in name for name in results.ratios)
    assert not any(name.startswith(SCRAPED_EVERY_SECOND) for name in results.gateway)


def test_an_overhead_over_the_target_is_reported(tmp_path: Path) -> None:
    results = results_of(parse_args([]), _rounds([90.0]), {})
    assert results.detail["within_target"] is False

    json_path, md_path = write_results(
        results,
        tmp_path,
        when=datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC),
        machine=Machine(cores=2, cpu_model="cpu", python="3.11", system="Linux"),
        load=(1.0, 1.0, 1.0),
    )
    document = json.loads(json_path.read_text())
    assert document["detail"]["within_target"] is False
    assert "| overhead, observed, jobs/s (target <= 5%) | 0.1 |" in md_path.read_text()
