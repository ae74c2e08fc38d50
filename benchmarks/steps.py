"""Python steps for the benchmarks."""

from __future__ import annotations

import time
from typing import Any


def stamped(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A no-op that says when it ran: the hand-off is measured to this moment, when the
    next step's work really starts, not to its row's started_at."""
    return {"ran_at": time.time()}
