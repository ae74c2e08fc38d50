"""JSON the job's columns can store, and clients and services can be sent.

Python's json module reads `NaN`, `Infinity` and numbers too large for a float (as
an infinity) without complaint, and writes them back out the same way; neither RFC
8259 nor PostgreSQL's json type accepts them. So data from clients and services is
checked where it comes in, before anything is written, and the engine writes JSON by
the same rule (app/db.py): SQLite never stores what PostgreSQL would refuse.

The JSON reader also takes `"\\ud800"`, a lone surrogate: a Python string, but no
UTF-8 text, so it could be stored (escaped) and then never sent to a service or a
client. It is refused the same way; `utf8_text` makes what an older version stored
sendable.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# A Python string holds a surrogate code point only when it is unpaired: the JSON
# reader joins an escaped pair into one character.
_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    """Standard JSON text. ValueError for NaN or an infinity (or nesting too deep to
    write), TypeError for a value JSON has no form for."""
    try:
        return json.dumps(value, allow_nan=False)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def check_storable(value: Any) -> int:
    """The size of `value` as JSON text, in bytes; ValueError or TypeError (see `dumps`)
    when a JSON column cannot hold it, ValueError for a lone surrogate."""
    text = dumps(value)  # ASCII: json.dumps escapes everything else
    # Only text with an escape can hold a surrogate; the search runs in C.
    if "\\ud" in text and _SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        raise ValueError("a string holds a lone surrogate (such as \\ud800): not UTF-8 text")
    return len(text)


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def check_utf8(raw: bytes, value: Any) -> None:
    """ValueError when `value`, read from the JSON text `raw`, holds a lone surrogate
    (only text with a surrogate escape can: the full check runs only then)."""
    if _ESCAPED_SURROGATE.search(raw):
        check_storable(value)


def utf8_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, so that it encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


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
