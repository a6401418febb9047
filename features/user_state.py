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
from dataclasses import dataclass, field

from features.events import Event, EventType

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

    def __post_init__(self) -> None:
        if self.history_items < 1:
            raise ValueError("history_items must be >= 1")
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
    event_type: EventType
    ts_ms: int


@dataclass
class UserFeatures:
    user_id: str
    recent: list[RecentEvent]  # chronological by event time, most recent last
    seen_items: set[str] = field(default_factory=set)  # every item ever interacted with
    bought_items: set[str] = field(default_factory=set)  # purchased items
    category_affinity: dict[str, float] = field(default_factory=dict)  # decayed to read time
    updated_at_ms: int | None = None  # wall-clock time of the last write

    @property
    def recent_items(self) -> list[str]:
        return [e.item_id for e in self.recent]

    def top_categories(self, n: int = 3) -> list[str]:
        return sorted(self.category_affinity, key=self.category_affinity.__getitem__, reverse=True)[:n]


def recent_event(event: Event) -> RecentEvent:
    return RecentEvent(event.event_id, event.item_id, event.event_type, event.ts_ms)
