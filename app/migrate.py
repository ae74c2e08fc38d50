"""Schema migrations: `alembic upgrade head` / `downgrade base` from code.

Used by `cao migrate`, the embedded stack and the API's optional start-up
migration; retries while the database is still coming up.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from app.config import get_settings

log = structlog.get_logger(__name__)
_ROOT = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    # A source checkout has alembic/ beside app/; a wheel carries it inside app/.
    for ini in (_ROOT.parent / "alembic.ini", _ROOT / "_alembic.ini"):
        if ini.exists():
            config = Config(str(ini))
            script_dir = ini.parent / ("alembic" if ini.name == "alembic.ini" else "_alembic")
            config.set_main_option("script_location", str(script_dir))
            config.attributes["url"] = url or get_settings().database_url
            return config
    raise RuntimeError("alembic migrations not found next to the app package")


def upgrade_head(url: str | None = None) -> None:
    command.upgrade(alembic_config(url), "head")


def downgrade_base(url: str | None = None) -> None:
    command.downgrade(alembic_config(url), "base")


def upgrade_with_retries(
    url: str | None = None, max_attempts: int | None = None, sleep_s: float | None = None
) -> None:
    """Upgrade to head, retrying connection failures while the database starts."""
    settings = get_settings()
    attempts = max_attempts or settings.migration_max_attempts
    sleep = settings.migration_retry_sleep_seconds if sleep_s is None else sleep_s

    def _before_sleep(state: object) -> None:
        log.warning("database not reachable yet; retrying migrations", attempts=attempts)

    retrying = retry(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(sleep),
        before_sleep=_before_sleep,
        reraise=True,
    )
    retrying(upgrade_head)(url)
