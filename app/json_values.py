"""JSON the job's columns can store.

Python's json module reads `NaN`, `Infinity` and numbers too large for a float (as
an infinity) without complaint, and writes them back out the same way; neither RFC
8259 nor PostgreSQL's json type accepts them. So data from clients and services is
checked where it comes in, before anything is written, and the engine writes JSON by
the same rule (app/db.py): SQLite never stores what PostgreSQL would refuse.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any) -> str:
    """Standard JSON text. ValueError for NaN or an infinity (or nesting too deep to
    write), TypeError for a value JSON has no form for."""
    try:
        return json.dumps(value, allow_nan=False)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def check_storable(value: Any) -> int:
    """The size of `value` as JSON text, in bytes; ValueError or TypeError (see `dumps`)
    when a JSON column cannot hold it."""
    return len(dumps(value))  # ASCII: json.dumps escapes everything else


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range for a JSON number")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Keyword arguments for json.loads (and httpx's Response.json) that refuse what
# `dumps` cannot write, with ValueError.
STRICT_LOADS: dict[str, Any] = {"parse_float": _finite, "parse_constant": _no_constant}
