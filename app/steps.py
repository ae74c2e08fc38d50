"""Example `kind: python` steps, called as fn(input_data, context) -> dict."""

from __future__ import annotations

import time
from typing import Any


def noop(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def word_count(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(str(v) for v in input_data.values() if isinstance(v, str))
    return {"words": len(text.split())}


def pause(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Wait `input_data["seconds"]` (a stand-in for slow work; see timeout_s)."""
    seconds = float(input_data.get("seconds", 0))
    time.sleep(seconds)
    return {"paused_s": seconds}
