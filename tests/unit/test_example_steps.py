"""The examples' python steps, called as a worker calls them."""

from __future__ import annotations

import os
import time

import pytest

from app.config import get_settings
from app.examples import EXAMPLES
from app.examples.reports import steps as reports
from app.services.errors import PermanentStepError

DAY_S = 86_400


@pytest.fixture
def reports_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CAO_REPORTS_DIR", str(tmp_path / "reports"))
    get_settings.cache_clear()
    yield tmp_path / "reports"
    get_settings.cache_clear()


def test_cleanup_deletes_reports_older_than_days_to_keep(reports_dir, monkeypatch):
    monkeypatch.setattr(reports, "ROW_SECONDS", 0)
    names = [reports.render_report({"name": f"r{i}", "rows": 3}, {})["report"] for i in range(3)]
    now = time.time()
    for name, age_days in zip(names, (40, 10, 0), strict=True):
        os.utime(reports_dir / name, (now - age_days * DAY_S, now - age_days * DAY_S))
    assert reports.sync_metrics({}, {})["reports"] == 3

    assert reports.cleanup_reports({"days_to_keep": 30}, {}) == {
        "days_to_keep": 30,
        "deleted": [names[0]],
        "kept": 2,
    }
    assert reports.cleanup_reports({"days_to_keep": 5}, {})["deleted"] == [names[1]]
    assert sorted(p.name for p in reports_dir.glob("*.csv")) == [names[2]]
    with pytest.raises(PermanentStepError, match="days_to_keep must be an integer"):
        reports.cleanup_reports({"days_to_keep": "30"}, {})


def test_every_example_catalog_loads_and_names_its_demo_features():
    from app.catalog import load_catalog

    for example in EXAMPLES.values():
        catalog = load_catalog(example.catalog_path)
        assert {feature for feature, _ in example.jobs} <= set(catalog.features)
