"""The PostgreSQL engine's pool: twice pool_size at most, and a burst's connections kept."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from sqlalchemy import event, text

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
