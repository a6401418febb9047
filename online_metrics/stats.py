"""Per key (surface, model_version, arm): what was served and what came of it, in total and per
time bucket.

A list counts once per outcome kind whatever the number of its clicks (a rate is "lists with at
least one click" over lists). An outcome is counted in the bucket of the *list's* time, not the
event's, so each bucket's rates are those of the lists served in it (a cohort): a bucket's numbers
can still grow for as long as the attribution window after it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields

# What ``KeyStats.outcome`` accepts: the list flags it sets.
OUTCOMES = ("click", "cart", "purchase")


@dataclass
class Counts:
    impressions: int = 0  # lists served
    items_shown: int = 0
    clicked_lists: int = 0  # lists with >= 1 attributed click
    clicked_at_k_lists: int = 0  # ... with a click at a position below k
    carted_lists: int = 0
    purchased_lists: int = 0
    clicks: int = 0  # attributed events (a list may have several)
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0  # the values of attributed purchases
    invalid_values: int = 0  # attributed purchases whose context.value is not a number >= 0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["revenue"] = round(self.revenue, 6)  # float sums: no 0.30000000000000004 in the API
        return out

    def rates(self) -> dict[str, float | None]:
        """None with no impression: a rate of nothing is not 0."""
        n = self.impressions
        if not n:
            return dict.fromkeys(RATES)
        return {"ctr": self.clicked_lists / n, "ctr_at_k": self.clicked_at_k_lists / n,
                "add_to_cart_rate": self.carted_lists / n,
                "purchase_rate": self.purchased_lists / n,
                "revenue_per_mille": round(self.revenue * 1000 / n, 6)}


RATES = ("ctr", "ctr_at_k", "add_to_cart_rate", "purchase_rate", "revenue_per_mille")
# Rates that are proportions of lists (successes, trials = impressions): what can be compared
# with a two-proportion test. revenue_per_mille is a mean of values, not a proportion.
PROPORTIONS = {"ctr": "clicked_lists", "ctr_at_k": "clicked_at_k_lists",
               "add_to_cart_rate": "carted_lists", "purchase_rate": "purchased_lists"}


class KeyStats:
    """Totals and a bounded series of buckets for one key."""

    def __init__(self, bucket_ms: int, max_buckets: int) -> None:
        self.bucket_ms = bucket_ms
        self.max_buckets = max_buckets
        self.totals = Counts()
        self.buckets: OrderedDict[int, Counts] = OrderedDict()  # bucket start (ms) -> counts

    def _bucket(self, ts_ms: int, create: bool) -> Counts | None:
        start = ts_ms - ts_ms % self.bucket_ms
        counts = self.buckets.get(start)
        if counts is not None or not create:
            return counts
        if len(self.buckets) >= self.max_buckets and start < next(iter(self.buckets)):
            return None  # older than everything kept: the series has moved on
        newest = next(reversed(self.buckets), None)
        counts = self.buckets[start] = Counts()
        if newest is not None and start < newest:
            # Out of order (lists from several partitions): keep the buckets sorted by time.
            for later in [b for b in self.buckets if b > start]:
                self.buckets.move_to_end(later)
        while len(self.buckets) > self.max_buckets:
            self.buckets.popitem(last=False)
        return counts

    def served(self, ts_ms: int, items: int) -> None:
        for counts in self._targets(ts_ms, create=True):
            counts.impressions += 1
            counts.items_shown += items

    def outcome(self, list_ts_ms: int, kind: str, *, first: bool, first_at_k: bool = False,
                value: float | None = None, invalid_value: bool = False) -> None:
        """An attributed event of ``kind`` on a list served at ``list_ts_ms``. ``first``: the first
        of its kind on that list (the list now counts as clicked / carted / purchased);
        ``first_at_k``: the list's first click at a position below k."""
        for counts in self._targets(list_ts_ms, create=False):
            if kind == "click":
                counts.clicks += 1
                counts.clicked_lists += first
                counts.clicked_at_k_lists += first_at_k
            elif kind == "cart":
                counts.carts += 1
                counts.carted_lists += first
            else:
                counts.purchases += 1
                counts.purchased_lists += first
                counts.invalid_values += invalid_value
                if value is not None:
                    counts.revenue += value

    def _targets(self, ts_ms: int, create: bool) -> list[Counts]:
        bucket = self._bucket(ts_ms, create)
        return [self.totals] if bucket is None else [self.totals, bucket]

    def series(self) -> list[dict[str, object]]:
        return [{"start_ms": start, **counts.as_dict(), **counts.rates()}
                for start, counts in self.buckets.items()]
