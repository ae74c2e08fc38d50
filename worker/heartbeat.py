"""Beat's heartbeat: its scheduler touches BEAT_HEARTBEAT_FILE as its loop turns, so a
container healthcheck can tell a Beat that schedules from one that hangs
(docker-entrypoint.sh `healthcheck beat`). Without the setting it does nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from app.config import get_settings

# Touch the file at most this often: the loop turns several times a second.
TOUCH_EVERY_S = 1.0


class HeartbeatScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heartbeat: Path | None = get_settings().beat_heartbeat_file
        self._touched = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        now = time.monotonic()
        if self._heartbeat is not None and now - self._touched >= TOUCH_EVERY_S:
            self._heartbeat.touch()
            self._touched = now
        return interval
