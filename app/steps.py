"""Example `kind: python` steps, called as fn(input_data, context) -> dict."""

from __future__ import annotations

from typing import Any


def noop(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


def word_count(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(str(v) for v in input_data.values() if isinstance(v, str))
    return {"words": len(text.split())}
