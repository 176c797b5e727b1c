"""Database engines and sessions for PostgreSQL (production) and SQLite (embedded default)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

_AFTER_COMMIT = "after_commit_callbacks"
_IDLE_SINCE = "idle_since"
# A pooled PostgreSQL connection back from its last use less than this long ago is handed out
# without a ping first (see _ping_when_idle).
PING_AFTER_IDLE_S = 1.0
log = logging.getLogger("core.db")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only clock the service uses)."""
    return datetime.now(UTC)


def make_engine(
    url: str, *, pool_size: int = 10, ping_after_idle_s: float = PING_AFTER_IDLE_S
) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite; on servers, a ping
    before handing out a connection idle `ping_after_idle_s` or longer."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    # Up to twice pool_size connections, opened as concurrent work needs them and kept open:
    # a pool of pool_size plus as many overflow connections would close each overflow
    # connection as it comes back and open a new one for the next burst, a fork and a
    # catalog warm-up on the server every time (docs/scaling.md).
    engine = create_engine(url, pool_size=2 * pool_size, max_overflow=0, pool_recycle=1800)
    _ping_when_idle(engine, ping_after_idle_s)
    return engine


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """SQLAlchemy's pre-ping, for connections idle `idle_s` or longer only.

    pool_pre_ping pings at every checkout: a round trip and about 0.1 ms of this process's CPU
    before every transaction, about three a job (docs/benchmarks.md). What it guards against
    (a server restarted, a connection closed by the server, a proxy or a firewall while idle)
    happens to idle connections; a connection used a moment ago that has since broken fails
    its first statement instead, as an in-flight one would, and that disconnect invalidates
    the pool just as a failed ping does. A failed ping here also invalidates every pooled
    connection and the checkout retries on a new one, as pool_pre_ping does.
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:  # None: invalidated, reconnected at the next checkout
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)  # none on a new connection: no ping needed
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise InvalidatePoolError(f"ping of an idle connection failed: {err}") from err
            raise


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Concurrent readers while one process writes; foreign keys are off by default in SQLite.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock at BEGIN so two processes never deadlock upgrading read locks.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session


def run_after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Call callback once the session's current transaction commits (never on rollback)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_callbacks(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        try:
            callback()
        except Exception:  # noqa: BLE001 - the commit stands; a follow-up must not undo it
            log.exception("a callback after commit failed")


@event.listens_for(Session, "after_rollback")
def _drop_callbacks(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)
