"""The PostgreSQL engine's pool: twice pool_size at most, a burst's connections kept, and a
ping before handing out a connection only when it has been idle."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from core.db import make_engine


def test_a_burst_beyond_pool_size_keeps_its_connections_for_the_next(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=2)
    opened: list[Any] = []
    event.listen(engine, "connect", lambda connection, record: opened.append(connection))
    try:
        for _ in range(3):  # three bursts of four at once, quiet in between
            with ExitStack() as held:
                for _ in range(4):
                    held.enter_context(engine.connect()).execute(text("select 1"))
        # Before, the two beyond the pool were closed after each burst and opened again.
        assert len(opened) == 4
        assert engine.pool.checkedin() == 4  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_a_fifth_connection_waits_for_one_of_the_four_to_come_back(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=2)
    got_fifth = threading.Event()

    def fifth() -> None:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
            got_fifth.set()

    try:
        with ExitStack() as held:
            connections = [held.enter_context(engine.connect()) for _ in range(4)]
            waiter = threading.Thread(target=fifth)
            waiter.start()
            assert not got_fifth.wait(0.5)  # the pool is at its cap of twice pool_size
            connections[0].close()
            assert got_fifth.wait(10)
            waiter.join()
        assert engine.pool.checkedin() == 4  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    pings: list[Any] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("select pg_backend_pid()")).scalar_one())


def _terminate(pg_url: str, pid: int) -> None:
    """End a server process and wait (up to 5 s) until it has exited."""
    admin = create_engine(pg_url)
    try:
        with admin.connect() as connection:
            connection.execute(text("select pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    finally:
        admin.dispose()


def test_a_connection_back_a_moment_ago_is_handed_out_without_a_ping(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, pool_size=1, ping_after_idle_s=0.3)
    pings = _count_pings(engine, monkeypatch)
    try:
        first = _backend_pid(engine)  # a new connection: nothing to ping
        for _ in range(5):  # back to back: the same connection, never pinged
            assert _backend_pid(engine) == first
        assert pings == []
        time.sleep(0.4)  # idle past the threshold: pinged once, then used
        assert _backend_pid(engine) == first
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_an_idle_connection_the_server_ended_is_replaced_at_checkout(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1, ping_after_idle_s=0.1)
    try:
        ended = _backend_pid(engine)
        _terminate(pg_url, ended)
        time.sleep(0.2)
        # The ping finds the connection gone: a new one serves the statement, no error.
        assert _backend_pid(engine) != ended
    finally:
        engine.dispose()


def test_a_connection_broken_right_after_use_fails_once_then_the_pool_reconnects(
    pg_url: str,
) -> None:
    # The cost of pinging idle connections only: one used a moment ago is not pinged, so its
    # first statement meets the break (as a statement in flight would), and the disconnect
    # invalidates the pool for the next checkout.
    engine = make_engine(pg_url, pool_size=1, ping_after_idle_s=60)
    try:
        ended = _backend_pid(engine)
        _terminate(pg_url, ended)
        with pytest.raises(OperationalError) as raised:
            _backend_pid(engine)
        assert raised.value.connection_invalidated
        assert _backend_pid(engine) != ended
    finally:
        engine.dispose()
