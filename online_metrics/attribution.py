"""The join of outcome events with the lists that caused them. Pure and in memory: no Kafka, no
clock of its own (the consumer feeds it records and, once caught up, the wall clock).

The rule (docs/online_metrics.md): a click, cart or purchase whose ``context.request_id`` names a
known list, that happened within ``window_ms`` after the list was served, and whose item is in
that list, counts for the list's key (surface, model_version, arm). Any other outcome event is
counted as unattributed with one reason of UNATTRIBUTED; nothing here ever raises on data.

Time is the records' own (``ts_ms``), never the time they are read: a replay from the beginning
of the topics gives the same numbers as the live run did. Two watermarks move it on: the newest
event time decides when a list can no longer be attributed to (and is forgotten), the newest list
time decides when an event that arrived before its list gives up waiting. ``advance(now_ms)``
adds the wall clock to both, so that a quiet topic does not keep state forever.

Memory is bounded by counts, oldest first out, each eviction counted: lists kept, events
waiting, ids remembered for de-duplication (Kafka delivers at least once), and keys.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass

from features.events import Event, EventType
from online_metrics.records import Exposure, Key
from online_metrics.stats import KeyStats

UNATTRIBUTED = (
    "no_request_id",  # an outcome event without context.request_id
    "unknown_request",  # no such list arrived within the grace period
    "outside_window",  # later than the window after its list
    "before_exposure",  # earlier than its list (a client clock behind the gateway's)
    "item_not_in_list",
    "bad_position",  # context.position malformed, or not where the item was in the list
    "evicted",  # its list was seen but dropped early (max_exposures) while still in its window
    "pending_overflow",  # waiting for its list when max_pending_events newer events were
)
_OUTCOME = {EventType.CLICK: "click", EventType.CART: "cart", EventType.PURCHASE: "purchase"}
_POSITION_RE = re.compile(r"[0-9]{1,3}")  # as the gateway checks context.position
# A revenue amount: a plain decimal number (no sign, exponent, nan or inf).
_VALUE_RE = re.compile(r"[0-9]{1,15}(\.[0-9]{1,9})?")


@dataclass
class _Served:
    """A list kept for attribution, with the outcomes it already counts for (once each)."""

    exposure: Exposure
    clicked: bool = False
    clicked_at_k: bool = False
    carted: bool = False
    purchased: bool = False


def _remember(ids: OrderedDict, key: str, value: object, limit: int) -> None:
    ids[key] = value
    while len(ids) > limit:
        ids.popitem(last=False)


def purchase_value(event: Event) -> tuple[float | None, bool]:
    """(value, invalid): the revenue a purchase carries in context.value, if any."""
    raw = (event.context or {}).get("value")
    if raw is None:
        return None, False
    if _VALUE_RE.fullmatch(raw) is None:
        return None, True
    value = float(raw)
    return (value, False) if math.isfinite(value) else (None, True)


def _key_order(item: tuple[Key, KeyStats]) -> tuple:
    surface, version, arm = item[0]
    # numbers in numeric order, before names (a version may be either)
    return surface, isinstance(version, str), version if isinstance(version, str) else f"{version:020d}", arm


class Attribution:
    def __init__(self, *, window_ms: int = 30 * 60 * 1000, grace_ms: int = 10_000, k: int = 10,
                 max_exposures: int = 200_000, max_pending: int = 10_000,
                 dedup_ids: int = 500_000, max_keys: int = 1000, bucket_ms: int = 60_000,
                 series_buckets: int = 120) -> None:
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self.k = k
        self.max_exposures = max_exposures
        self.max_pending = max_pending
        self.dedup_ids = dedup_ids
        self.max_keys = max_keys
        self.bucket_ms = bucket_ms
        self.series_buckets = series_buckets
        self.stats: dict[Key, KeyStats] = {}
        self.unattributed: Counter[str] = Counter(dict.fromkeys(UNATTRIBUTED, 0))
        self.counters: Counter[str] = Counter(dict.fromkeys(
            ("exposures", "duplicate_exposures", "dropped_exposures", "evicted_exposures",
             "expired_exposures", "events", "duplicate_events", "views", "attributed"), 0))
        self._live: OrderedDict[str, _Served] = OrderedDict()  # request id -> list, by arrival
        self._seen_requests: OrderedDict[str, int] = OrderedDict()  # request id -> list ts_ms
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._pending: OrderedDict[str, Event] = OrderedDict()  # event id -> event, by arrival
        self._pending_by_request: dict[str, list[str]] = {}
        self._event_time = 0  # newest event ts_ms seen
        self._exposure_time = 0  # newest list ts_ms seen
        self._clock_ms = 0

    @classmethod
    def from_settings(cls, settings) -> Attribution:
        """From an OnlineMetricsSettings."""
        return cls(window_ms=settings.attribution_window_ms, grace_ms=settings.pending_grace_ms,
                   k=settings.ctr_k, max_exposures=settings.max_exposures,
                   max_pending=settings.max_pending_events, dedup_ids=settings.dedup_ids,
                   max_keys=settings.max_keys, bucket_ms=settings.bucket_s * 1000,
                   series_buckets=settings.series_buckets)

    # --- input -----------------------------------------------------------------------------------

    def add_exposure(self, exposure: Exposure) -> None:
        rid = exposure.request_id
        if rid in self._seen_requests or rid in self._live:
            self.counters["duplicate_exposures"] += 1
            return
        stats = self.stats.get(exposure.key)
        if stats is None:
            if len(self.stats) >= self.max_keys:
                self.counters["dropped_exposures"] += 1
                return
            stats = self.stats[exposure.key] = KeyStats(self.bucket_ms, self.series_buckets)
        _remember(self._seen_requests, rid, exposure.ts_ms, self.dedup_ids)
        self.counters["exposures"] += 1
        stats.served(exposure.ts_ms, exposure.size)
        served = self._live[rid] = _Served(exposure)
        while len(self._live) > self.max_exposures:
            self._live.popitem(last=False)
            self.counters["evicted_exposures"] += 1
        self._exposure_time = max(self._exposure_time, exposure.ts_ms)
        for event_id in self._pending_by_request.pop(rid, ()):
            self._attribute(self._pending.pop(event_id), served)
        self._expire()

    def add_event(self, event: Event) -> None:
        if event.event_id in self._seen_events:
            self.counters["duplicate_events"] += 1
            return
        _remember(self._seen_events, event.event_id, None, self.dedup_ids)
        self.counters["events"] += 1
        self._event_time = max(self._event_time, event.ts_ms)
        if event.event_type not in _OUTCOME:
            self.counters["views"] += 1  # a view is not an outcome of a list
        else:
            self._route(event)
        self._expire()

    def advance(self, now_ms: int) -> None:
        """The wall clock, once the consumer has caught up: lists and waiting events expire even
        when no newer record comes to move the watermarks."""
        self._clock_ms = max(self._clock_ms, now_ms)
        self._expire()

    # --- the join --------------------------------------------------------------------------------

    def _route(self, event: Event) -> None:
        rid = (event.context or {}).get("request_id")
        if not rid:
            self.unattributed["no_request_id"] += 1
            return
        served = self._live.get(rid)
        if served is not None:
            self._attribute(event, served)
            return
        list_ts = self._seen_requests.get(rid)
        if list_ts is not None:  # its list was here and is gone
            self.unattributed[self._window_miss(event.ts_ms - list_ts) or "evicted"] += 1
            return
        self._pending[event.event_id] = event
        self._pending_by_request.setdefault(rid, []).append(event.event_id)
        while len(self._pending) > self.max_pending:
            self._give_up(next(iter(self._pending)), "pending_overflow")

    def _window_miss(self, delta_ms: int) -> str | None:
        if delta_ms < 0:
            return "before_exposure"
        return "outside_window" if delta_ms > self.window_ms else None

    def _attribute(self, event: Event, served: _Served) -> None:
        exposure = served.exposure
        miss = self._window_miss(event.ts_ms - exposure.ts_ms)
        if miss is not None:
            self.unattributed[miss] += 1
            return
        position = exposure.positions.get(event.item_id)
        if position is None:
            self.unattributed["item_not_in_list"] += 1
            return
        claimed = (event.context or {}).get("position")
        if claimed is not None and (_POSITION_RE.fullmatch(claimed) is None
                                    or int(claimed) != position):
            self.unattributed["bad_position"] += 1
            return
        self.counters["attributed"] += 1
        stats = self.stats[exposure.key]
        kind = _OUTCOME[event.event_type]
        if kind == "click":
            first_at_k = position < self.k and not served.clicked_at_k
            stats.outcome(exposure.ts_ms, kind, first=not served.clicked, first_at_k=first_at_k)
            served.clicked = True
            served.clicked_at_k |= first_at_k
        elif kind == "cart":
            stats.outcome(exposure.ts_ms, kind, first=not served.carted)
            served.carted = True
        else:
            value, invalid = purchase_value(event)
            stats.outcome(exposure.ts_ms, kind, first=not served.purchased, value=value,
                          invalid_value=invalid)
            served.purchased = True

    def _give_up(self, event_id: str, reason: str) -> None:
        event = self._pending.pop(event_id)
        rid = (event.context or {})["request_id"]
        waiting = self._pending_by_request[rid]
        waiting.remove(event_id)
        if not waiting:
            del self._pending_by_request[rid]
        self.unattributed[reason] += 1

    def _expire(self) -> None:
        # A list is kept until events are past its window (plus the grace, for events lagging on
        # another partition); an event waits until lists are past its time plus the grace (a list
        # is always served before its outcomes). Both in arrival order: the front decides.
        events_now = max(self._event_time, self._clock_ms)
        while self._live:
            rid, served = next(iter(self._live.items()))
            if served.exposure.ts_ms + self.window_ms + self.grace_ms >= events_now:
                break
            del self._live[rid]
            self.counters["expired_exposures"] += 1
        lists_now = max(self._exposure_time, self._clock_ms)
        while self._pending:
            event_id, event = next(iter(self._pending.items()))
            if event.ts_ms + self.grace_ms >= lists_now:
                break
            self._give_up(event_id, "unknown_request")

    # --- output ----------------------------------------------------------------------------------

    @property
    def watermarks(self) -> tuple[int, int]:
        """(newest event ts_ms, newest list ts_ms) seen."""
        return self._event_time, self._exposure_time

    def snapshot(self) -> dict[str, object]:
        """Plain data (JSON-ready), detached from the live state."""
        keys = [{"surface": key[0], "model_version": key[1], "arm": key[2],
                 "totals": stats.totals.as_dict(), "rates": stats.totals.rates(),
                 "series": stats.series()}
                for key, stats in sorted(self.stats.items(), key=_key_order)]
        return {
            "keys": keys,
            "unattributed": dict(self.unattributed),
            "counters": dict(self.counters),
            "state": {"exposures_kept": len(self._live), "pending_events": len(self._pending),
                      "keys": len(self.stats), "event_time_ms": self._event_time,
                      "exposure_time_ms": self._exposure_time},
        }
