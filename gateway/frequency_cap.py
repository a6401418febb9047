"""The push frequency cap: at most one push per user per interval, in-process or through Redis
(split from ``gateway.push``, which uses it)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import redis

from feature_service.store import StoreUnavailable


class FrequencyCap:
    """At most one push per user per interval. In-process, or shared through Redis.

    In-process, users are kept in an ``OrderedDict`` in the order of their last allowed push, so
    the oldest is always first: each call evicts the users whose interval is over from the front
    (amortised O(1) a call) and the table holds only users pushed within the last interval. (It
    used to rebuild the whole table on every call once it held 100k users.)"""

    def __init__(self, interval_ms: int, *, redis_url: str | None = None, prefix: str = "recsys",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_ms = interval_ms
        self.prefix = prefix
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=1) if redis_url else None

    def allow(self, user_id: str) -> bool:
        if self.interval_ms <= 0:
            return True
        if self._redis is not None:
            try:
                return bool(self._redis.set(f"{self.prefix}:push:{user_id}", "1", nx=True,
                                            px=self.interval_ms))
            except redis.RedisError as exc:
                raise StoreUnavailable(str(exc)) from exc
        now = self._clock()
        horizon = now - self.interval_ms / 1000
        with self._lock:
            last = self._last
            while last:  # forget users whose interval is over: oldest first, each entry once
                user, at = next(iter(last.items()))
                if at > horizon:
                    break
                del last[user]
            if user_id in last:  # still within its interval (expired ones were just evicted)
                return False
            last[user_id] = now  # newest last: the table stays ordered by time
            return True

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
