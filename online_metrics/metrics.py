"""Prometheus exposition of a snapshot (``GET /metrics``).

Drawn from the same snapshot as the JSON endpoint at scrape time, in a registry of the app's own,
rather than counters incremented alongside the state: the two can never disagree, and a replay
after a restart rebuilds the counters with the state (they restart from 0 with the process, which
Prometheus' rate() handles as any counter reset, then jump to the replayed totals).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

KEY_LABELS = ["surface", "model_version", "arm"]
# snapshot totals field -> the outcome label of online_metrics_lists_with_outcome_total
_LISTS = {"clicked_lists": "click", "clicked_at_k_lists": "click_at_k", "carted_lists": "cart",
          "purchased_lists": "purchase"}
_EVENTS = {"clicks": "click", "carts": "cart", "purchases": "purchase"}

Snapshot = Callable[[], dict]


class SnapshotCollector:
    """A prometheus_client collector over ``snapshot()`` (OnlineMetricsConsumer.snapshot)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from _per_key(snap["keys"])
        unattributed = CounterMetricFamily(
            "online_metrics_unattributed_events", "Outcome events not attributed to a list, by "
            "reason (docs/online_metrics.md)", labels=["reason"])
        for reason, n in sorted(snap["unattributed"].items()):
            unattributed.add_metric([reason], n)
        yield unattributed
        records = CounterMetricFamily(
            "online_metrics_records", "Valid records read, by what became of them "
            "(exposures, duplicate_exposures, dropped_exposures, events, views, attributed...)",
            labels=["kind"])
        for kind, n in sorted(snap["counters"].items()):
            records.add_metric([kind], n)
        yield records
        bad = CounterMetricFamily("online_metrics_bad_records",
                                  "Messages skipped as invalid, by topic and reason",
                                  labels=["topic", "reason"])
        for row in snap.get("bad_records", []):
            bad.add_metric([row["topic"], row["reason"]], row["count"])
        yield bad
        state = snap["state"]
        yield GaugeMetricFamily("online_metrics_exposures_kept",
                                "Lists held for attribution", value=state["exposures_kept"])
        yield GaugeMetricFamily("online_metrics_pending_events",
                                "Outcome events waiting for their list", value=state["pending_events"])
        consumer = snap.get("consumer")
        if consumer is not None:
            yield GaugeMetricFamily("online_metrics_caught_up",
                                    "1 once the replay of both topics reached their end",
                                    value=int(consumer["caught_up"]))
            yield CounterMetricFamily("online_metrics_kafka_errors",
                                      "Kafka errors (each followed by a retry)",
                                      value=consumer["kafka_errors"])


def _per_key(keys: list[dict]) -> Iterator[Metric]:
    impressions = CounterMetricFamily("online_metrics_impressions", "Lists served",
                                      labels=KEY_LABELS)
    items = CounterMetricFamily("online_metrics_items_shown", "Items in the lists served",
                                labels=KEY_LABELS)
    lists = CounterMetricFamily(
        "online_metrics_lists_with_outcome", "Lists with at least one attributed event of the "
        "outcome (click_at_k: a click at a position below k)", labels=[*KEY_LABELS, "outcome"])
    events = CounterMetricFamily("online_metrics_outcome_events", "Attributed events",
                                 labels=[*KEY_LABELS, "outcome"])
    revenue = CounterMetricFamily("online_metrics_revenue", "Sum of attributed purchase values",
                                  labels=KEY_LABELS)
    invalid = CounterMetricFamily("online_metrics_invalid_values",
                                  "Attributed purchases whose value is not a number",
                                  labels=KEY_LABELS)
    rates = GaugeMetricFamily("online_metrics_rate", "Rates since the start of the retained data "
                              "(ctr_at_k, add_to_cart_rate, purchase_rate, revenue_per_mille...)",
                              labels=[*KEY_LABELS, "rate"])
    for row in keys:
        key = [row["surface"], str(row["model_version"]), row["arm"]]
        totals = row["totals"]
        impressions.add_metric(key, totals["impressions"])
        items.add_metric(key, totals["items_shown"])
        for field, outcome in _LISTS.items():
            lists.add_metric([*key, outcome], totals[field])
        for field, outcome in _EVENTS.items():
            events.add_metric([*key, outcome], totals[field])
        revenue.add_metric(key, totals["revenue"])
        invalid.add_metric(key, totals["invalid_values"])
        for name, value in row["rates"].items():
            if value is not None:
                rates.add_metric([*key, name], value)
    yield from (impressions, items, lists, events, revenue, invalid, rates)


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A registry of its own: not the process-wide default one, so that two apps in one process
    (tests) do not collide."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return registry
