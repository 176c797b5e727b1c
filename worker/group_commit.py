"""Group commit: the state changes a worker's task threads make together, in one transaction.

Each job's claim and outcome is a short transaction: one statement (on PostgreSQL), then a
COMMIT. At saturation the jobs of a batch end on the same decoding step, so their task threads
write their outcomes, and claim the jobs that take their places, at the same moment. Run in
one transaction, they pay the session, the pool's checkout and the COMMIT's round trip once
instead of once each (docs/benchmarks.md, "Group commit").

Nothing waits to form a group: a change that finds no transaction in progress commits at once,
alone; the changes that arrive while one commits go together in the next (the leader/follower
scheme of a database's group commit, with no timer). `concurrency` transactions may run at
once (`database_commit_concurrency`; SQLite: 1), the changes arriving while all are busy
waiting for the next.

Every change stays fenced on its own (its conditional UPDATE moves its own job or nothing), so
what one change does never depends on another. A change that raises rolls back the group it
was in, and each of the group's changes is then run again in a transaction of its own: one
job's error is never another's. An error of the transaction itself (the database unreachable)
reaches the caller of every change in the group, and each caller retries as it would have
alone.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy.orm import Session, sessionmaker

from core.db import transaction
from core.retry import is_transient

T = TypeVar("T")

# More changes than this wait for the next transaction (a bound on how long one holds its rows).
MAX_GROUP = 64


@dataclass(eq=False)  # compared by identity: each is one caller's
class _Change:
    """One caller's change, the caller's context (log fields), and where its result goes."""

    change: Callable[[Session], Any]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    outcome: Future[Any] = field(default_factory=Future)
    taken: bool = False  # a transaction holds it (set and read under the committer's lock)
    wake: threading.Event = field(default_factory=threading.Event)  # committed, or a slot freed

    def apply(self, session: Session) -> Any:
        # In the caller's context: the lines it logs and the log fields it binds are its own.
        return self.context.run(self.change, session)


class GroupCommitter:
    """Runs state changes from many threads, committing those that arrive together at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        concurrency: int = 1,
        max_group: int = MAX_GROUP,
    ) -> None:
        self.sessions = sessions
        self.max_group = max_group
        # Transactions at once: 1 groups the most; more lets a distant database's round
        # trips overlap (the changes arriving while all are busy still go together).
        bind = sessions.kw.get("bind")
        if bind is not None and bind.dialect.name == "sqlite":
            concurrency = 1  # one writer at a time there: a second transaction would only wait
        # A thread waits on its own change's event only: woken when its change has committed
        # (whoever committed it), or when a slot frees while its change is the oldest queued.
        # The first thread to find a free slot while its change is queued (a woken one, or one
        # just arriving) commits all the changes queued. A thread whose change another took
        # never competes for a slot, and a commit wakes only the threads it concerns.
        self._lock = threading.Lock()
        self._free = concurrency
        self._pending: list[_Change] = []  # queued, none taken
        self.transactions = 0  # committed, for tests and benchmarks
        self.changes = 0

    def run(self, change: Callable[[Session], T]) -> T:
        """change(session) in a transaction, shared with the changes arriving with it; its result
        once committed, or what it (or the transaction) raised."""
        item = _Change(change)
        with self._lock:
            self._pending.append(item)
            group = self._take(item)
        while True:
            if group:
                try:
                    self._commit(group)
                finally:
                    self._finish(group, item)
            if item.outcome.done():
                return cast(T, item.outcome.result())
            item.wake.wait()
            with self._lock:
                item.wake.clear()
                group = self._take(item)

    def _take(self, item: _Change) -> list[_Change]:
        """With a slot free and this change still queued: the slot, this change and the oldest
        others queued, max_group in all; else [] (under the lock)."""
        if item.taken or not self._free:
            return []
        self._free -= 1
        others = [other for other in self._pending if other is not item]
        group = [item, *others[: self.max_group - 1]]
        for taken in group:
            taken.taken = True
        self._pending = others[self.max_group - 1 :]
        return group

    def _finish(self, group: list[_Change], item: _Change) -> None:
        """Wake the threads whose changes just committed, then free the slot. Woken first,
        those threads' next changes (a claim after an outcome) can join the next group."""
        for other in group:
            if other is not item and other.outcome.done():
                other.wake.set()
        with self._lock:
            # Only if this thread was interrupted (a signal, not an error of a change): the
            # others' changes go back for their own threads to commit.
            left = [other for other in group if other is not item and not other.outcome.done()]
            for other in left:
                other.taken = False
            self._pending[:0] = left
            self._release_slot()

    def _release_slot(self) -> None:
        """Free a slot and wake the thread of the oldest change queued, if any (under the lock):
        it takes the slot unless a thread arriving first takes it, and its change with it."""
        self._free += 1
        if self._pending:
            self._pending[0].wake.set()

    def _commit(self, group: list[_Change]) -> None:
        try:
            with transaction(self.sessions) as session:
                results = [item.apply(session) for item in group]
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(group) == 1 or is_transient(exc):
                for item in group:
                    item.outcome.set_exception(exc)
            else:  # one change failed: none of the others may fail with it
                for item in group:
                    self._commit([item])
            return
        with self._lock:
            self.transactions += 1
            self.changes += len(group)
        for item, result in zip(group, results, strict=True):
            item.outcome.set_result(result)
