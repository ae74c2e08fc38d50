"""Engine, sessions and after-commit hooks for PostgreSQL or SQLite.

Per process: `init_db()` builds the engine (the API in its lifespan, a worker after
fork); `session_scope()` commits or rolls back at the boundary; `on_commit()` runs a
callback only once the transaction has committed (enqueue and publish after commit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from app.config import get_settings
from app.json_values import dumps

log = structlog.get_logger(__name__)

_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None
_statement_sessionmaker: sessionmaker[Session] | None = None
_HOOKS = "cao_on_commit"


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets readers run beside the writer; BEGIN IMMEDIATE takes the write lock up
    # front so concurrent writers wait (busy_timeout) instead of failing on upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def build_engine(url: str | None = None, *, pre_ping: bool = True) -> Engine:
    """`pre_ping` tests each pooled connection before use: one more round trip per
    transaction, worth it for the API; workers retry a task on a dead connection."""
    url = url or get_settings().database_url
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, json_serializer=dumps
        )
        _configure_sqlite(engine)
        return engine
    # The API's thread pool runs up to 40 requests at once; leave them headroom.
    return create_engine(
        url,
        pool_pre_ping=pre_ping,
        pool_size=10,
        max_overflow=30,
        pool_timeout=10,
        pool_recycle=1800,
        json_serializer=dumps,
        connect_args=tcp_timeouts(url),
    )


def tcp_timeouts(url: str) -> dict[str, int]:
    """libpq's network timeouts, from DATABASE_TCP_TIMEOUT_S, for those the URL does not
    set itself. By default libpq waits on a silent server for as long as the kernel
    does: a reply that never comes, for ever; a request never acknowledged, about 15
    minutes. Keepalive probes find a dead peer while a connection waits or idles,
    tcp_user_timeout one that stopped acknowledging what was sent."""
    timeout_s = get_settings().database_tcp_timeout_s
    wanted = {
        "connect_timeout": round(timeout_s),
        "keepalives": 1,
        # Probes start after a third of the timeout, then three of them fail within
        # the next half: the peer is declared dead within about the timeout.
        "keepalives_idle": max(1, round(timeout_s / 3)),
        "keepalives_interval": max(1, round(timeout_s / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": round(timeout_s * 1000),
    }
    given = make_url(url).query
    return {name: value for name, value in wanted.items() if name not in given}


def preload_driver(url: str | None = None) -> None:
    """Import the database driver now, in a pre-fork parent, so that every child
    does not pay for the import when it builds its engine."""
    make_url(url or get_settings().database_url).get_dialect().import_dbapi()


def init_db(url: str | None = None, *, pre_ping: bool = True) -> Engine:
    global _engine, _sessionmaker, _statement_sessionmaker
    if _engine is None:
        _engine = build_engine(url, pre_ping=pre_ping)
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
        _statement_sessionmaker = _statement_sessions(_engine)
    return _engine


def dispose_db() -> None:
    global _engine, _sessionmaker, _statement_sessionmaker
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _sessionmaker = None
    _statement_sessionmaker = None


def get_engine() -> Engine:
    if _engine is None:
        raise RuntimeError("database not initialised: call init_db() in this process first")
    return _engine


def new_session() -> Session:
    if _sessionmaker is None:
        raise RuntimeError("database not initialised: call init_db() in this process first")
    return _sessionmaker()


# How long a write that must not be lost (a step result in hand) is retried while the
# database cannot be reached: a restart, a failover, a dropped connection.
UNREACHABLE_RETRY_S = 30.0


def while_database_unreachable(on_retry: Callable[[BaseException, float], None]) -> Retrying:
    """A tenacity policy: call again on OperationalError, waiting 0.1 s doubling to 2 s,
    for up to UNREACHABLE_RETRY_S, then raise the last error. `on_retry(error, wait_s)`
    is told before each wait. Only for writes that are safe to repeat (fenced)."""

    def before_sleep(state: Any) -> None:
        on_retry(state.outcome.exception(), state.upcoming_sleep)

    return Retrying(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_delay(UNREACHABLE_RETRY_S),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        before_sleep=before_sleep,
        reraise=True,
    )


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, then run on_commit hooks."""
    with _scope(new_session()) as session:
        yield session


@contextmanager
def statement_scope() -> Iterator[Session]:
    """A session for reads and for changes that are one statement each on PostgreSQL
    (app/jobs/step_changes/postgres/). There each statement commits on its own, which
    saves a BEGIN and a COMMIT round trip each time, so a block must not rely on two of
    its changes committing together; elsewhere (SQLite) the block is one transaction,
    as in session_scope. on_commit callbacks run when the block ends, on PostgreSQL
    even when it fails."""
    if _statement_sessionmaker is None:
        raise RuntimeError("database not initialised: call init_db() in this process first")
    with _scope(_statement_sessionmaker()) as session:
        yield session


# Set on the sessions whose every statement commits on its own.
_AUTOCOMMIT = "cao_autocommit"


def _statement_sessions(engine: Engine) -> sessionmaker[Session]:
    """The sessions of statement_scope, chosen once per engine: autocommitting where
    each step change is one statement (PostgreSQL), else as session_scope's."""
    if engine.dialect.name != "postgresql":
        return sessionmaker(engine, expire_on_commit=False)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(autocommit, expire_on_commit=False, info={_AUTOCOMMIT: True})


@contextmanager
def _scope(session: Session) -> Iterator[Session]:
    try:
        yield session
        session.commit()
    except BaseException:
        if session.info.get(_AUTOCOMMIT):
            # What was written is committed already: publish and enqueue it all the same.
            _run_hooks(session)
        session.rollback()
        raise
    finally:
        session.close()


def on_commit(session: Session, callback: Callable[[], None], *, first: bool = False) -> None:
    """Run `callback` after this session's transaction commits (before the callbacks
    registered so far when `first`); dropped on rollback."""
    hooks = session.info.setdefault(_HOOKS, [])
    if first:
        hooks.insert(0, callback)
    else:
        hooks.append(callback)


@event.listens_for(Session, "after_commit")
def _run_hooks(session: Session) -> None:
    for callback in session.info.pop(_HOOKS, []):
        try:
            callback()
        except Exception:
            # The row is committed; Beat finds work whose enqueue or publish was lost.
            log.exception("after-commit hook failed", hook=getattr(callback, "__name__", "?"))


@event.listens_for(Session, "after_soft_rollback")
def _drop_hooks(session: Session, _previous_transaction: Any) -> None:
    session.info.pop(_HOOKS, None)
