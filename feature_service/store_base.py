"""The feature store's interface, shared by both stores: ``FeatureStore``, its errors and helpers.
``feature_service.store`` has the stores themselves and ``create_store``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from features.events import Event
from features.user_state import (
    FeatureRules,
    RecentEvent,
    SnapshotRow,
    UserFeatures,
    is_purchase,
    snapshot_events,
)

# Redis memory of one user at every default cap (FeatureRules: 100 recent events, 500 seen and 500
# bought items, 128 event ids, a few dozen category affinities), with the server's
# zset-max-listpack-entries at 512 as stack/redis.py and docker/compose.yaml set it: ~18 KiB
# measured. A typical user (tens of events) takes ~4 KiB. tests/integration/feature_service/
# test_redis_store.py holds Redis to it.
USER_MEMORY_BUDGET_BYTES = 24 * 1024

# Where a consumed event came from: (topic, partition, offset).
Position = tuple[str, int, int]


class StoreUnavailable(RuntimeError):
    """The backing store cannot be reached; callers retry or degrade."""


def wall_ms() -> int:
    return int(time.time() * 1000)


def parse_snapshot(histories: Mapping[str, Sequence[SnapshotRow]],
                    keep: int) -> list[tuple[str, list[RecentEvent], list[str], list[str]]]:
    """Per user: the newest ``keep`` snapshot events, and the items and bought items of all of
    them in event order (repeats included: the stores keep the most recently touched). Everything
    is parsed before either store changes anything, so a malformed snapshot leaves the store as it
    was."""
    out = []
    for user, rows in histories.items():
        events = snapshot_events(user, rows)
        if events:
            out.append((user, events[-keep:], [e.item_id for e in events],
                        [e.item_id for e in events if is_purchase(e)]))
    return out


class FeatureStore(Protocol):
    rules: FeatureRules
    # True when the state outlives the process, so consumed offsets may be committed.
    durable: bool
    # True when calls do network I/O: async callers run them in a worker thread.
    blocking: bool

    def apply(self, event: Event) -> bool:
        """Record ``event``; False when its ``event_id`` was already applied."""

    def apply_many(self, events: Sequence[Event],
                   positions: Sequence[Position] | None = None) -> list[bool]:
        """``apply`` for each event, in order, in as few round trips as the store allows. With
        ``positions`` (each event's Kafka topic, partition and offset) an event at or below the
        last offset applied from its partition is a redelivery and is dropped too."""

    def applied_offsets(self) -> dict[tuple[str, int], int]:
        """The last offset applied per (topic, partition)."""

    def forget_offsets(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget the applied offsets of ``partitions`` (their topic was re-created)."""

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        """The user's features (affinities decayed to ``now_ms``), or None for an unknown user."""

    def trending(self, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` items with the highest decayed popularity, best first."""

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        """Merge a batch snapshot of user histories (``features.user_state.snapshot_events``: typed
        ``[event_id, item_id, event_type, ts_ms]`` rows, or bare item ids in front of every live
        event) into the recent events, seen items and bought items (purchases). An event whose
        (time, id) is already there is not added again, so loading the same snapshot twice changes
        nothing. Affinities and trending come from the live stream only."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


_T = TypeVar("_T")


async def store_call(store: FeatureStore, fn: Callable[..., _T], *args: object) -> _T:
    """Call ``fn`` (a method of ``store``) from async code: in a worker thread when the store does
    network I/O, inline when it is in-process (a thread hop would cost more than the call)."""
    if store.blocking:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
