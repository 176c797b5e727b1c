"""Who may send now: one send per delivery at a time, and a cap on each tenant's sends.

A webhook worker has a fixed number of sender threads. Without a per-tenant cap, one tenant
whose receiver answers slowly fills them all and every other tenant's webhooks wait; without
the per-delivery guard, a delivery whose send is still running could be sent again beside it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class SendSlots:
    """In-process bookkeeping of the sends in flight, by delivery and by tenant."""

    def __init__(self, *, max_per_tenant: int) -> None:
        self.max_per_tenant = max_per_tenant
        self._lock = threading.Lock()
        self._deliveries: set[str] = set()
        self._tenants: Counter[str] = Counter()

    def busy(self, delivery_id: str) -> bool:
        """Whether this delivery is being sent now."""
        with self._lock:
            return delivery_id in self._deliveries

    @contextmanager
    def take(self, delivery_id: str, tenant_id: str) -> Iterator[bool]:
        """Yield True holding a slot for this send, or False (nothing held) when none is free."""
        with self._lock:
            free = (
                delivery_id not in self._deliveries
                and self._tenants[tenant_id] < self.max_per_tenant
            )
            if free:
                self._deliveries.add(delivery_id)
                self._tenants[tenant_id] += 1
        try:
            yield free
        finally:
            if free:
                with self._lock:
                    self._deliveries.discard(delivery_id)
                    self._tenants[tenant_id] -= 1
                    if self._tenants[tenant_id] <= 0:
                        del self._tenants[tenant_id]

    def in_flight(self, tenant_id: str | None = None) -> int:
        """Sends in flight (of one tenant, or of all)."""
        with self._lock:
            return self._tenants[tenant_id] if tenant_id else self._tenants.total()
