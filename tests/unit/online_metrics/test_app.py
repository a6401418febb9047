"""The HTTP endpoints over an in-memory state (a consumer fed by hand, never started)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from online_metrics.app import create_app
from online_metrics.config import OnlineMetricsSettings
from online_metrics.consumer import OnlineMetricsConsumer
from tests.unit.online_metrics.helpers import T0, event, record


@pytest.fixture
def state() -> OnlineMetricsConsumer:
    """Feed: arm live 4 lists (1 clicked), arm candidate 2 lists (both clicked, one bought)."""
    settings = OnlineMetricsSettings(impressions_topic="imp", events_topic="ev")
    consumer = OnlineMetricsConsumer(settings)
    with consumer.lock:
        for i in range(4):
            consumer.handle_message("imp", record(f"l{i}", arm="live"))
        for i in range(2):
            consumer.handle_message("imp", record(f"c{i}", arm="candidate", model_version=4))
        consumer.handle_message("imp", record("p0", surface="push"))
        for rid in ("l0", "c0", "c1"):
            consumer.handle_message("ev", event("click", request_id=rid, event_id=f"e-{rid}",
                                                ts_ms=T0 + 1000).to_bytes())
        consumer.handle_message("ev", event("purchase", request_id="c1", value="20",
                                            ts_ms=T0 + 2000).to_bytes())
        consumer.handle_message("ev", event("click", request_id=None).to_bytes())
        consumer.handle_message("ev", b"not json")
    return consumer


@pytest.fixture
def client(state) -> TestClient:
    with TestClient(create_app(state.settings, source=state)) as client:
        yield client


def test_the_json_endpoint_has_totals_rates_series_and_reasons(client):
    body = client.get("/v1/online-metrics").json()
    keys = {(k["surface"], k["model_version"], k["arm"]): k for k in body["keys"]}
    assert set(keys) == {("feed", 3, "live"), ("feed", 4, "candidate"), ("push", 3, "none")}
    candidate = keys[("feed", 4, "candidate")]
    assert candidate["totals"]["impressions"] == 2 and candidate["totals"]["revenue"] == 20
    assert candidate["rates"]["ctr_at_k"] == 1.0 and candidate["rates"]["purchase_rate"] == 0.5
    assert candidate["rates"]["revenue_per_mille"] == 10_000
    assert candidate["series"][0]["impressions"] == 2
    assert keys[("feed", 3, "live")]["rates"]["ctr_at_k"] == 0.25
    assert keys[("push", 3, "none")]["rates"]["ctr_at_k"] == 0
    assert body["unattributed"]["no_request_id"] == 1
    assert body["settings"]["attribution_window_ms"] == 30 * 60 * 1000
    assert body["settings"]["bucket_s"] == 60 and body["settings"]["ctr_k"] == 10
    assert {"topic": "events", "reason": "not_json", "count": 1} in body["bad_records"]


def test_compare_arms_on_a_surface(client):
    body = client.get("/v1/online-metrics/compare",
                      params={"surface": "feed", "metric": "ctr_at_k", "a": "live",
                              "b": "candidate"}).json()
    assert body["a"] == {"arm": "live", "model_versions": [3], "successes": 1, "trials": 4,
                         "rate": 0.25}
    assert body["b"]["successes"] == 2 and body["b"]["trials"] == 2
    assert body["difference"] == 0.75 and body["defined"] is True
    assert body["ci_low"] < 0.75 < body["ci_high"] and 0 < body["p_value"] < 1
    assert body["confidence"] == 0.95


@pytest.mark.parametrize(("params", "message"), [
    ({"metric": "bogus"}, "unknown metric"),
    ({"metric": "revenue_per_mille"}, "not a proportion"),
    ({"b": "nope"}, "b: no lists of arm 'nope' on surface 'feed'; known arms there: candidate, live"),
    ({"surface": "similar"}, "known arms there: none"),
])
def test_compare_says_what_is_wrong(client, params, message):
    query = {"surface": "feed", "metric": "ctr_at_k", "a": "live", "b": "candidate", **params}
    response = client.get("/v1/online-metrics/compare", params=query)
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_compare_needs_its_parameters(client):
    assert client.get("/v1/online-metrics/compare", params={"surface": "feed"}).status_code == 422


def test_prometheus_metrics_are_labelled_by_key_and_reason(client):
    text = client.get("/metrics").text
    assert 'online_metrics_impressions_total{arm="live",model_version="3",surface="feed"} 4.0' in text
    assert ('online_metrics_lists_with_outcome_total{arm="candidate",model_version="4",'
            'outcome="purchase",surface="feed"} 1.0') in text
    assert 'online_metrics_revenue_total{arm="candidate",model_version="4",surface="feed"} 20.0' in text
    assert 'online_metrics_unattributed_events_total{reason="no_request_id"} 1.0' in text
    assert 'online_metrics_bad_records_total{reason="not_json",topic="events"} 1.0' in text
    assert 'online_metrics_rate{arm="live",model_version="3",rate="ctr_at_k",surface="feed"} 0.25' in text
    assert "online_metrics_caught_up 0.0" in text


def test_health_and_the_page(client):
    assert client.get("/healthz").json() == {"status": "ok", "caught_up": False}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/page.js" in page.text and "http" not in page.text.replace(
        "http-equiv", "")  # nothing from another origin
    assert client.get("/static/page.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/page.css").status_code == 200
    assert client.get("/static/../config.py").status_code == 404
    assert client.get("/static/secrets.txt").status_code == 404
