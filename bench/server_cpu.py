"""CPU time of the database and broker servers, for benchmarks that report host CPU per job.

The service's own processes are read from /proc (bench.stack). PostgreSQL and Redis are not
the service's, but on a single host they share its cores: `bench service` reports them in
columns of their own, not counted in the service's overhead.

- PostgreSQL: a server on this host, found through the process serving one of our
  connections (its parent is the postmaster). Its CPU is the postmaster's own, what its ended
  children used (the kernel adds it to the parent's when a backend exits), and what its live
  children (backends, WAL writer, checkpointer, autovacuum) have used so far. PostgreSQL on
  another host, or in another process namespace, is not readable: absent.
- Redis: `INFO cpu`, the server's own count (its main process and its forks), wherever it runs.

Both count everything the server did, not only the bench's work: run benchmarks on a machine
nothing else uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.stack import cpu_seconds_if_alive, descendants

_REDIS_CPU_FIELDS = (
    "used_cpu_sys",
    "used_cpu_user",
    "used_cpu_sys_children",
    "used_cpu_user_children",
)


def server_cpu_meter(database_url: str, broker_url: str) -> Callable[[], dict[str, float]]:
    """A reading of the servers' CPU seconds so far, by name ("postgres", "redis"), for those
    readable from here; the servers are located once, now."""
    postmaster = postgres_postmaster(database_url)
    redis_url = broker_url if broker_url.startswith(("redis://", "rediss://")) else None

    def read() -> dict[str, float]:
        seconds: dict[str, float] = {}
        if postmaster is not None:
            seconds["postgres"] = process_tree_cpu_seconds(postmaster)
        if redis_url is not None:
            seconds["redis"] = redis_cpu_seconds(redis_url)
        return seconds

    return read


def postgres_postmaster(database_url: str) -> int | None:
    """The pid of the PostgreSQL server's postmaster, if the server runs on this host (and is
    visible here); None for another database or a server elsewhere."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if not database_url or make_url(database_url).get_backend_name() != "postgresql":
        return None
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            backend = int(connection.execute(text("select pg_backend_pid()")).scalar_one())
            # Read while the connection is open: once it closes, the backend exits and its
            # /proc entry goes, which on a quick exit made this server look like a remote one.
            try:
                postmaster = int(_stat(backend)[1])
                name = Path(f"/proc/{postmaster}/comm").read_text().strip()
            except (OSError, IndexError, ValueError):  # no such process here: elsewhere
                return None
    finally:
        engine.dispose()
    return postmaster if name in ("postgres", "postmaster") else None


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, of its children that have ended (and been
    waited for), and of every live process below it."""
    own = sum(int(field) for field in _stat(pid)[11:15])  # utime, stime, cutime, cstime
    # A child that ended meanwhile counts 0 here, and in cutime at the next reading.
    below = sum(cpu_seconds_if_alive(child) for child in descendants(pid))
    return own / os.sysconf("SC_CLK_TCK") + below


def redis_cpu_seconds(redis_url: str) -> float:
    """The Redis server's CPU seconds so far, by its own INFO cpu."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return sum(float(info.get(name, 0.0)) for name in _REDIS_CPU_FIELDS)


def _stat(pid: int) -> list[str]:
    """/proc/pid/stat's fields after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
