"""The examples: systems this gateway replaces, each a catalog plus its python steps,
shipped in the package (`app/examples/<name>/catalog.yaml` and `steps.py`).

`cao demo --example NAME` runs an example's features with the inputs below;
`cao dev --example NAME` serves its catalog. docs/examples.md tells each one's story.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Example:
    name: str
    summary: str
    # The demo's jobs, in the order it submits them: (feature_name, input_data).
    jobs: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def catalog_path(self) -> Path:
        return Path(str(resources.files(__name__).joinpath(self.name, "catalog.yaml")))


EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example(
            "arithmetic",
            "add5 -> mul2 -> sub10 on {value}, each step's result visible as it lands",
            (("arithmetic", {"value": 7}),),
        ),
        Example(
            "planning",
            "wbs -> tasks -> dependencies -> schedule, weighted 30/30/20/20",
            (
                (
                    "planning",
                    {"project": "Bakery website", "deliverables": ["menu", "orders", "map"]},
                ),
            ),
        ),
        Example(
            "reports",
            "report generation and metrics sync on two queues, and a retention cleanup",
            (
                ("generate_report", {"name": "weekly-sales", "rows": 200}),
                ("sync_metrics", {"source": "billing"}),
                ("cleanup_reports", {"days_to_keep": 30}),
            ),
        ),
    )
}


class UnknownExample(ValueError):
    pass


def get_example(name: str) -> Example:
    try:
        return EXAMPLES[name]
    except KeyError:
        known = ", ".join(sorted(EXAMPLES))
        raise UnknownExample(f"unknown example {name!r}; the examples are: {known}") from None
