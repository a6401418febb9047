"""How behaviour events become real-time features: the rules both feature stores implement.

Time-decayed quantities (a user's category affinities, the catalog's trending items) are sums of
event weights that halve every ``half_life_ms``. They are kept in log2 space relative to time 0,

    log_score = log2(sum_i weight_i * 2 ** (ts_i / half_life))

so that adding an event is order-independent (a late event counts exactly as if it had arrived on
time), scores never overflow however long a stream runs, and ranking by ``log_score`` ranks by the
decayed value at any moment. The decayed value at ``now`` is ``2 ** (log_score - now / half_life)``.
RedisStore's Lua script implements the same arithmetic; the shared store contract tests keep the two
in step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from features.behaviour import event_order, type_name
from features.events import ID_PATTERN, Event, EventType

# A purchase says more about taste than a view. Used for affinities and trending alike.
EVENT_WEIGHTS: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 2.0,
    EventType.CART: 4.0,
    EventType.PURCHASE: 8.0,
}


@dataclass(frozen=True)
class FeatureRules:
    """Parameters of the feature state; both stores take one."""

    history_items: int = 100  # recent events kept per user: at least the user tower's sequence
    affinity_half_life_ms: int = 24 * 3600 * 1000
    trending_half_life_ms: int = 3600 * 1000
    # Every per-user collection is capped, and a user's state expires after ``user_ttl_s`` without
    # an event, so memory grows with active users, never with time (docs/features.md: budget).
    seen_items: int = 500  # the most recently touched distinct items (the exclusions sent to Triton)
    bought_items: int = 500  # the most recently bought distinct items
    # Ids of the user's last N applied events, for recognising a client's retry. Redeliveries by
    # Kafka are recognised by offset instead (``apply_many``'s positions), however old.
    dedup_events_per_user: int = 128
    user_ttl_s: int = 30 * 24 * 3600
    trending_items: int = 100_000  # the highest trending scores kept; the tail is dropped

    def __post_init__(self) -> None:
        for name in ("history_items", "seen_items", "bought_items", "dedup_events_per_user",
                     "user_ttl_s", "trending_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.affinity_half_life_ms <= 0 or self.trending_half_life_ms <= 0:
            raise ValueError("half lives must be > 0 ms")


def log_decayed_add(log_score: float | None, ts_ms: int, weight: float, half_life_ms: int) -> float:
    """``log_score`` with one more event of ``weight`` at ``ts_ms`` (see the module docstring)."""
    term = math.log2(weight) + ts_ms / half_life_ms
    if log_score is None:
        return term
    hi, lo = max(log_score, term), min(log_score, term)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def decayed_value(log_score: float, now_ms: int, half_life_ms: int) -> float:
    return 2.0 ** (log_score - now_ms / half_life_ms)


@dataclass(frozen=True)
class RecentEvent:
    event_id: str
    item_id: str
    # A ``features.behaviour`` step-type name, not an ``EventType``: a snapshot from offline data
    # carries types the live stream has not ("rating", "unknown").
    event_type: str
    ts_ms: int


@dataclass
class UserFeatures:
    user_id: str
    recent: list[RecentEvent]  # by features.behaviour.event_order, most recent last
    # The most recently touched / bought items, at most FeatureRules.seen_items / bought_items.
    seen_items: set[str] = field(default_factory=set)
    bought_items: set[str] = field(default_factory=set)
    category_affinity: dict[str, float] = field(default_factory=dict)  # decayed to read time
    updated_at_ms: int | None = None  # wall-clock time of the last write

    @property
    def recent_items(self) -> list[str]:
        return [e.item_id for e in self.recent]

    def top_categories(self, n: int = 3) -> list[str]:
        return sorted(self.category_affinity, key=self.category_affinity.__getitem__, reverse=True)[:n]


def recent_event(event: Event) -> RecentEvent:
    return RecentEvent(event.event_id, event.item_id, type_name(event.event_type), event.ts_ms)


# --- batch snapshots ------------------------------------------------------------------------------
#
# A snapshot seeds the stores with users' histories from offline data (``load_snapshot``), as JSON
# ``{user_id: rows}``. A row is either
#
# * ``[event_id, item_id, event_type, ts_ms]``: a real event. It sorts among live events by its real
#   time and id, and the live delivery of the same event (same time and id) does not add it twice;
# * a bare ``item_id`` (the older form: chronological items, nothing else known). These become
#   events of type "unknown" at time 0 with ids ``snapshot:<position>``, so they stay in file order
#   and in front of every live event.

SNAPSHOT_TYPE = "unknown"
_ID = re.compile(ID_PATTERN)
# Event ids of snapshot rows are never part of a Redis key, and the ids the offline loader generates
# for a log without them ("row~<n>") lie outside ID_PATTERN: any printable ASCII but the space and
# "|", the separators of a Redis recent-event member. The space sorts below all of these, which
# keeps Redis's order of ties that of the ids.
_EVENT_ID = re.compile(r"^[!-{}~]{1,64}$")

SnapshotRow = str | Sequence[object]


def _checked_id(value: object, what: str, user_id: str, pattern: re.Pattern = _ID) -> str:
    # User and item ids become parts of Redis keys: the same alphabet as live events.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"snapshot user {user_id!r}: {what} {value!r} does not match {pattern.pattern}")
    return value


def snapshot_events(user_id: str, rows: Iterable[SnapshotRow]) -> list[RecentEvent]:
    """One user's snapshot rows (either form, see above) as events in ``event_order``, each
    (time, id) once. Raises ValueError on a malformed row: a bad snapshot should stop a start-up,
    not seed wrong histories."""
    _checked_id(user_id, "user id", user_id)
    events: dict[tuple[int, str], RecentEvent] = {}
    for position, row in enumerate(rows):
        if isinstance(row, str):
            event = RecentEvent(f"snapshot:{position:06d}", _checked_id(row, "item id", user_id),
                                SNAPSHOT_TYPE, 0)
        else:
            if not isinstance(row, (list, tuple)) or len(row) != 4:
                raise ValueError(f"snapshot user {user_id!r}: row {row!r} is neither an item id "
                                 "nor [event_id, item_id, event_type, ts_ms]")
            event_id, item_id, event_type, ts_ms = row
            if isinstance(ts_ms, bool) or not isinstance(ts_ms, int) or ts_ms < 0:
                raise ValueError(f"snapshot user {user_id!r}: ts_ms {ts_ms!r} is not an integer >= 0")
            event = RecentEvent(_checked_id(event_id, "event id", user_id, _EVENT_ID),
                                _checked_id(item_id, "item id", user_id), type_name(event_type), ts_ms)
        events.setdefault(event_order(event), event)
    return sorted(events.values(), key=event_order)


def is_purchase(event: RecentEvent) -> bool:
    return event.event_type == EventType.PURCHASE.value
