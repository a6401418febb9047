"""Stock levels set through the admin API; out-of-stock items are never recommended.

In-process (one gateway) or in Redis (shared by every gateway, ``<prefix>:stock``: item -> quantity).
Items never given a quantity count as in stock. A Redis-backed gateway keeps a copy of the
out-of-stock set that its lifespan refreshes every ``stock_cache_ms``, so that a recommendation
never waits on Redis for it.
"""

from __future__ import annotations

import threading
from typing import Protocol

import redis

from feature_service.store import StoreUnavailable


class Inventory(Protocol):
    def set_quantities(self, quantities: dict[str, int]) -> None: ...

    def out_of_stock(self) -> frozenset[str]:
        """The current copy; never does I/O."""

    def refresh(self) -> None:
        """Re-read shared state (blocking); a no-op in-process."""

    def close(self) -> None: ...


class InMemoryInventory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._quantities: dict[str, int] = {}
        self._out: frozenset[str] = frozenset()

    def set_quantities(self, quantities: dict[str, int]) -> None:
        with self._lock:
            self._quantities.update(quantities)
            self._out = frozenset(i for i, q in self._quantities.items() if q <= 0)

    def out_of_stock(self) -> frozenset[str]:
        return self._out

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class RedisInventory:
    def __init__(self, url: str, *, prefix: str = "recsys", timeout_ms: int = 1000) -> None:
        self.key = f"{prefix}:stock"
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_ms / 1000,
                                           socket_connect_timeout=timeout_ms / 1000)
        self._out: frozenset[str] = frozenset()

    def set_quantities(self, quantities: dict[str, int]) -> None:
        try:
            if quantities:
                self._redis.hset(self.key, mapping=quantities)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        self.refresh()  # this gateway sees its own change at once

    def refresh(self) -> None:
        try:
            stock = self._redis.hgetall(self.key)
        except redis.RedisError:
            return  # keep the last copy: stale beats failing requests; the next refresh retries
        self._out = frozenset(k.decode() for k, v in stock.items() if int(v) <= 0)

    def out_of_stock(self) -> frozenset[str]:
        return self._out

    def close(self) -> None:
        self._redis.close()


def create_inventory(kind: str, *, redis_url: str = "", prefix: str = "recsys") -> Inventory:
    if kind == "redis":
        inventory = RedisInventory(redis_url, prefix=prefix)
        inventory.refresh()
        return inventory
    return InMemoryInventory()
