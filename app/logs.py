"""Structured logging: structlog for our lines, stdlib logs (Celery, uvicorn) routed through it."""

from __future__ import annotations

import logging
import sys

import structlog

from app.config import get_settings


def configure_logging(process: str = "cao") -> None:
    settings = get_settings()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(settings.log_level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(process=process)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr, force=False)


def first_line(error: BaseException) -> str:
    """An error's first line, for a one-line log entry (drivers add hints and links)."""
    return str(error).split("\n", 1)[0]
