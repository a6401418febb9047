"""The online-metrics service as a process against a real Kafka broker: records written before it
starts are replayed, records written after are followed; the JSON endpoint's numbers are checked
exactly, a Prometheus series too, and the page is drawn in a real headless Chromium (Debian's,
driven by Playwright). A screenshot is saved to build/test-artifacts/online_metrics.png (also when
the test fails)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from features.events import Event
from stack.online_metrics import OnlineMetricsProcess
from stack.testing import require_service
from tests.support.browser import chromium_unavailable_reason, headless_page
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = REPO_ROOT / "build" / "test-artifacts" / "online_metrics.png"
LIVE, CANDIDATE = ("feed", 3, "live"), ("feed", 4, "candidate")


def exposure(request_id: str, items: str, ts_ms: int, model_version: int, arm: str) -> bytes:
    """A record as gateway/exposure.py writes it."""
    return json.dumps({
        "request_id": request_id, "user_id": "u1", "surface": "feed", "model_version": model_version,
        "arm": arm, "source": "model", "degraded": False, "cold_start": False, "ts_ms": ts_ms,
        "items": [{"position": i, "item_id": item, "score": 0.5} for i, item in enumerate(items)],
    }).encode()


def event(event_type: str, item_id: str, ts_ms: int, event_id: str | None = None,
          **context: str) -> bytes:
    fields = dict(user_id="u1", item_id=item_id, event_type=event_type, ts_ms=ts_ms,
                  context=context or None)
    return Event(**fields, **({"event_id": event_id} if event_id else {})).to_bytes()


class Scenario:
    def __init__(self, kafka) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.impressions, self.events = f"impressions-{suffix}", f"events-{suffix}"
        kafka.create_topics([self.impressions, self.events], partitions=2)
        self.producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        # Taken when the module's service starts, not at import: the whole suite may run before.
        self.now = int(time.time() * 1000)

    def send(self, topic: str, value: bytes, key: str = "u1") -> None:
        self.producer.send(topic, key=key.encode(), value=value).get(timeout=10)

    def before_start(self) -> None:
        """Replayed at start-up: attributed outcomes and every kind of trouble."""
        imp, ev, t = self.impressions, self.events, self.now - 60_000
        self.send(imp, exposure("r1", "abc", t, 3, "live"))
        self.send(imp, exposure("r2", "abcd", t, 4, "candidate"), key="u2")
        self.send(imp, exposure("r1", "abc", t, 3, "live"))  # a redelivery
        self.send(imp, b"this is not JSON")
        click = event("click", "b", t + 10_000, "e1", request_id="r1", position="1")
        self.send(ev, click)
        self.send(ev, click)  # a redelivery
        self.send(ev, event("cart", "d", t + 10_000, request_id="r2", position="3"), key="u2")
        self.send(ev, event("purchase", "d", t + 20_000, request_id="r2", value="9.5"), key="u2")
        self.send(ev, event("purchase", "a", t + 20_000, request_id="r2", value="oops"), key="u2")
        self.send(ev, event("click", "a", t + 10_000, request_id="nobody"))
        self.send(ev, event("click", "z", t + 10_000, request_id="r1"))  # not in that list
        self.send(ev, event("view", "a", t + 10_000, request_id="r1"))
        self.send(ev, event("click", "a", t + 10_000))  # no request id
        self.send(ev, b"{not json")

    def after_start(self, service: OnlineMetricsProcess) -> None:
        """Followed live: a click read before its list (three minutes ahead: the wall clock cannot end
        its wait before the list comes)."""
        now = self.now
        self.send(self.events, event("click", "a", now + 180_000, request_id="r3", position="0"))
        wait_for(lambda: service.get_json("/v1/online-metrics")["state"]["pending_events"] == 1,
                 "the early click to wait for its list")
        self.send(self.impressions, exposure("r3", "ab", now + 179_000, 3, "live"))


@pytest.fixture(scope="module")
def service(kafka, tmp_path_factory) -> Iterator[OnlineMetricsProcess]:
    scenario = Scenario(kafka)
    scenario.before_start()
    settings = {"kafka_bootstrap_servers": kafka.bootstrap_servers,
                "impressions_topic": scenario.impressions, "events_topic": scenario.events,
                "pending_grace_ms": 10_000, "topic_check_interval_ms": 500, "poll_timeout_ms": 100}
    log = tmp_path_factory.mktemp("online-metrics") / "online_metrics.log"
    with OnlineMetricsProcess(settings, log_path=log) as process:
        wait_for(lambda: process.get_json("/healthz")["caught_up"], "the replay to catch up",
                 describe=process.log_tail)
        # the click on a list that never came: given up once the wall clock is past its grace
        wait_for(lambda: process.get_json("/v1/online-metrics")["unattributed"]["unknown_request"],
                 "the unknown request to be given up")
        scenario.after_start(process)
        wait_for(lambda: process.get_json("/v1/online-metrics")["counters"]["attributed"] == 5,
                 "the early click to be attributed",
                 describe=lambda: process.get_json("/v1/online-metrics"))
        yield process
    scenario.producer.close()


def test_the_numbers_of_replayed_and_followed_records_are_exact(service):
    body = service.get_json("/v1/online-metrics")
    keys = {(k["surface"], k["model_version"], k["arm"]): k for k in body["keys"]}
    assert set(keys) == {LIVE, CANDIDATE}
    live, candidate = keys[LIVE]["totals"], keys[CANDIDATE]["totals"]
    assert {k: live[k] for k in ("impressions", "items_shown", "clicked_lists",
                                 "clicked_at_k_lists", "clicks", "carted_lists", "purchases")} == \
        {"impressions": 2, "items_shown": 5, "clicked_lists": 2, "clicked_at_k_lists": 2,
         "clicks": 2, "carted_lists": 0, "purchases": 0}
    assert {k: candidate[k] for k in ("impressions", "items_shown", "clicked_lists", "carted_lists",
                                      "carts", "purchased_lists", "purchases", "revenue",
                                      "invalid_values")} == \
        {"impressions": 1, "items_shown": 4, "clicked_lists": 0, "carted_lists": 1, "carts": 1,
         "purchased_lists": 1, "purchases": 2, "revenue": 9.5, "invalid_values": 1}
    assert keys[LIVE]["rates"]["ctr_at_k"] == 1.0
    assert keys[CANDIDATE]["rates"] == {"ctr": 0.0, "ctr_at_k": 0.0, "add_to_cart_rate": 1.0,
                                        "purchase_rate": 1.0, "revenue_per_mille": 9500.0}
    assert {r: n for r, n in body["unattributed"].items() if n} == \
        {"unknown_request": 1, "item_not_in_list": 1, "no_request_id": 1}
    counters = body["counters"]
    assert (counters["exposures"], counters["duplicate_exposures"], counters["events"],
            counters["duplicate_events"], counters["views"], counters["attributed"]) == \
        (3, 1, 9, 1, 1, 5)
    bad = {(b["topic"], b["reason"]): b["count"] for b in body["bad_records"] if b["count"]}
    assert bad == {("impressions", "not_json"): 1, ("events", "not_json"): 1}
    assert body["state"]["pending_events"] == 0 and body["consumer"]["caught_up"] is True
    assert sum(b["impressions"] for b in keys[LIVE]["series"]) == 2

    metrics = service.get_text("/metrics")
    assert 'online_metrics_impressions_total{arm="live",model_version="3",surface="feed"} 2.0' in metrics
    assert 'online_metrics_unattributed_events_total{reason="unknown_request"} 1.0' in metrics

    compare = service.get_json("/v1/online-metrics/compare?surface=feed&metric=add_to_cart_rate"
                               "&a=live&b=candidate")
    assert (compare["a"]["successes"], compare["a"]["trials"]) == (0, 2)
    assert (compare["b"]["successes"], compare["b"]["trials"], compare["difference"]) == (1, 1, 1.0)


def test_the_page_draws_a_plot_for_each_key(service):
    require_service(chromium_unavailable_reason())
    with headless_page(service.url, SCREENSHOT, height=900) as watched:
        page = watched.page
        page.goto(f"{service.url}/?refresh_ms=500")
        page.wait_for_selector("#status[data-state=ok]")
        page.wait_for_function("document.querySelectorAll('svg.plot[data-points]').length == 2")
        plots = page.eval_on_selector_all(
            "svg.plot", "ns => ns.map(n => ({key: n.dataset.key, points: +n.dataset.points,"
            " lines: n.querySelectorAll('polyline').length,"
            " dots: n.querySelectorAll('circle').length}))")
        assert {p["key"] for p in plots} == {"feed/3/live", "feed/4/candidate"}
        for plot in plots:
            assert plot["points"] >= 1 and plot["lines"] == 3
            assert plot["dots"] == 3 * plot["points"]  # one per rate and bucket
        assert "arm candidate" in page.inner_text(".card[data-key='feed/4/candidate'] h2")
        assert "unknown_request" in page.inner_text("#unattributed")
        watched.assert_clean()
    assert SCREENSHOT.stat().st_size > 10_000
