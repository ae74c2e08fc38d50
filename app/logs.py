"""Logging of every process: structlog for our lines, and the stdlib's records (Celery's,
uvicorn's, warnings) rendered by the same processors, as text or, with LOG_JSON=true,
as one JSON object a line (`timestamp`, `level`, `event`, tracebacks as a field).

In JSON mode nothing else may reach the output as raw text: what is printed becomes a
log line, and an uncaught exception is logged rather than printed.

Lines about step work carry STEP_FIELDS: the runner binds them in the context where a
delivery starts (`bind_step`), so every line logged while it runs has them, Celery's own
included; `step_scope` undoes what is bound inside it, `in_context` carries them to a
logger used on another thread.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import structlog
from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from app.config import get_settings

STEP_FIELDS = ("job_id", "step_index", "attempt", "service", "queue")
# The logger that what is printed goes to, in JSON mode.
PRINTED = "stdout"

_L = TypeVar("_L", bound=structlog.typing.BindableLogger)
_handler: logging.Handler | None = None


def configure_logging(process: str = "cao", stdlib_level: int | str | None = None) -> None:
    """Set up this process's logging; `stdlib_level` is the level of stdlib records
    (Celery passes its --loglevel), LOG_LEVEL otherwise. Safe to call again."""
    settings = get_settings()
    level = logging.getLevelName(settings.log_level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _ProcessName(process),
    ]
    exceptions: Processor
    renderer: Processor
    if settings.log_json:
        # Frames without their locals: a local may hold a key or a payload.
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line (PrintLogger writes the newline apart), so that a line of
        # ours and a stdlib record written at once from two threads do not interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _foreign_fields],
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            renderer,
        ],
    )
    _route_stdlib(formatter, level if stdlib_level is None else stdlib_level)
    if settings.log_json:
        _capture_raw_output()


def _route_stdlib(formatter: logging.Formatter, level: int | str) -> None:
    """Every stdlib record through `formatter`, once: loggers that wrote on their own
    (uvicorn's, Celery's) hand their records to the root logger instead."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(formatter)
    root.addHandler(_handler)
    root.setLevel(level)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and (logger.handlers or not logger.propagate):
            logger.handlers.clear()
            logger.propagate = True
    logging.captureWarnings(True)


class _ProcessName:
    """Adds `process` (api, worker, beat, ...): a processor rather than a context
    variable, which a thread the process starts would not see."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("process", self.name)
        return event_dict


def _foreign_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A stdlib record's text without its trailing newline (a warning's has one), and
    uvicorn's access line as fields besides."""
    args = event_dict.pop("positional_args", None)
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = event.rstrip()
    record = event_dict.get("_record")
    if record is not None and record.name == "uvicorn.access":
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, http_version, status = args
            event_dict.update(
                client=client, method=method, path=path, http_version=http_version, status=status
            )
    return event_dict


class _PrintedToLog(io.TextIOBase):
    """sys.stdout in JSON mode: each line printed is logged (Celery Beat prints its
    banner, a python step may print)."""

    encoding = "utf-8"

    def __init__(self) -> None:
        self._logger = logging.getLogger(PRINTED)
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        self._log(line)

    def _log(self, line: str) -> None:
        if line.strip():
            self._logger.info(line.rstrip())


class _TerminalToLog(_PrintedToLog):
    """sys.__stdout__ in a JSON worker. Celery writes its notices (shutdown, restart)
    straight to that stream's descriptor, from its signal handlers, unless the stream
    has none: as its own stdout proxy, this one has none, and what is printed to it
    is logged."""

    def fileno(self) -> Any:
        return None


def route_terminal_output() -> None:
    """In JSON mode, also what is written past sys.stdout, to sys.__stdout__."""
    if get_settings().log_json and not isinstance(sys.__stdout__, _TerminalToLog):
        sys.__stdout__ = _TerminalToLog()  # type: ignore[misc,assignment]


def _capture_raw_output() -> None:
    if not isinstance(sys.stdout, _PrintedToLog):
        sys.stdout = _PrintedToLog()
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    structlog.get_logger("uncaught").critical(
        "uncaught exception", exc_info=(kind, error, traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    structlog.get_logger("uncaught").critical(
        "uncaught exception in a thread",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def bind_step(
    job_id: object,
    step_index: int,
    *,
    attempt: int | None = None,
    service: str | None = None,
    queue: str | None = None,
) -> None:
    """The step this context works on, for every line logged in it from now on (None
    for what is not known yet: a delivery's attempt before its claim)."""
    bind_contextvars(
        job_id=str(job_id), step_index=step_index, attempt=attempt, service=service, queue=queue
    )


def unbind_step() -> None:
    unbind_contextvars(*STEP_FIELDS)


@contextmanager
def step_scope() -> Iterator[None]:
    """Step fields bound inside the block are undone after it."""
    saved = {key: value for key, value in get_contextvars().items() if key in STEP_FIELDS}
    try:
        yield
    finally:
        unbind_step()
        bind_contextvars(**saved)


def in_context(logger: _L) -> _L:
    """`logger` with this context's step fields bound, for lines it logs on another
    thread (a thread does not see the context of the one that started the work)."""
    fields: MutableMapping[str, Any] = {
        key: value for key, value in get_contextvars().items() if key in STEP_FIELDS
    }
    return logger.bind(**fields) if fields else logger


def first_line(error: BaseException) -> str:
    """An error's first line, for a one-line log entry (drivers add hints and links)."""
    return str(error).split("\n", 1)[0]
