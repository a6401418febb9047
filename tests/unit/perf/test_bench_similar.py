"""perf/bench_gateway.py's similar-items target: its requests, the items and send times it gets,
and the similar/feed p99 check of the report."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from perf.bench_gateway import parse_args, sample_items, sanity_check, schedules
from perf.gateway_report import TARGET_SIMILAR_P99_RATIO, plot, target_checks
from perf.gateway_targets import GatewayTarget, SimilarTarget
from perf.load_generator import BAD_BODY


class FakeGateway(BaseHTTPRequestHandler):
    """Item "7": a model answer; "8": degraded; "9": not a list; "404": unknown; "501": no model."""

    paths: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.paths.append(self.path)
        item = self.path.split("/")[3]
        status = int(item) if item in ("404", "501") else 200
        body = {"items": [{"item_id": "1"}] * 3, "source": "model", "degraded": item == "8"}
        if item == "9":
            body["items"] = "nope"
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    FakeGateway.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_similar_target_asks_about_items(gateway_url, client):
    async def run():
        target = SimilarTarget(gateway_url + "/", 3, 2.0, 4, client)
        await target.open()
        try:
            return [await target.send(item) for item in ("7", "8", "9", "404", "501")]
        finally:
            await target.close()

    assert asyncio.run(run()) == [(200, False), (200, True), (BAD_BODY, False), (404, False),
                                  (501, False)]
    assert FakeGateway.paths[0] == "/v1/items/7/similar?k=3"
    assert SimilarTarget.name == "similar" and GatewayTarget.name == "gateway"
    feed = GatewayTarget("http://h", 10, 1.0, 1, "httpx")
    assert feed._url("u1") == "http://h/v1/users/u1/recommendations?k=10"  # the feed is unchanged


def test_sanity_check_per_target(gateway_url):
    assert sanity_check(gateway_url, "7", 3, "similar") is None
    assert FakeGateway.paths == ["/v1/items/7/similar?k=3"]
    assert "degraded True" in sanity_check(gateway_url, "8", 3, "similar")
    assert "501" in sanity_check(gateway_url, "501", 3, "similar")  # a repository without the model
    assert "expected a model answer with 4" in sanity_check(gateway_url, "7", 4, "similar")


def test_item_sample_is_seeded_sorted_and_all_by_default():
    ids = [str(i) for i in range(1, 101)]
    assert sample_items(reversed(ids), 0, seed=0) == ids  # numeric-looking ids in natural order
    some = sample_items(ids, 10, seed=3)
    assert len(set(some)) == 10 and set(some) <= set(ids) and some == sample_items(ids, 10, seed=3)
    assert some == sorted(some, key=lambda i: (len(i), i)) and some != sample_items(ids, 10, seed=4)
    assert sample_items(ids, 500, seed=0) == ids


@pytest.mark.parametrize("arrivals", ["uniform", "poisson"])
def test_similar_runs_share_the_feeds_send_times(arrivals):
    args = parse_args(["--duration-s", "2", "--warmup-s", "1", "--arrivals", arrivals, "--seed", "5"])
    users, items = [f"u{i}" for i in range(30)], [str(i) for i in range(1, 200)]
    plan = schedules(100, args, users, items)
    (feed_t, feed_users), (triton_t, triton_users) = plan["gateway"], plan["triton"]
    sim_t, sim_items = plan["similar"]
    assert np.array_equal(feed_t, sim_t) and np.array_equal(feed_t, triton_t)
    assert feed_users == triton_users and len(sim_items) == len(sim_t)
    assert set(sim_items) <= set(items) and len(set(sim_items)) > 50
    assert schedules(100, args, users, items)["similar"][1] == sim_items  # the same at every repeat
    assert "similar" not in schedules(100, args, users, [])
    assert parse_args(["--targets", "similar", "gateway", "similar"]).targets == ["similar", "gateway"]


def _row(target, rate, p50, p99, error_rate=0.0, degraded=0):
    return {"target": target, "rate": rate, "p50_ms": p50, "p99_ms": p99, "error_rate": error_rate,
            "error_kinds": {}, "degraded": degraded, "send_lag_p99_ms": 0.5, "cpu_other": 0.0,
            "p95_ms": p99, "achieved_rps": rate}


def test_similar_p99_against_the_feed_per_rate():
    rows = [_row("gateway", 50, 5.0, 10.0), _row("similar", 50, 4.0, 11.0),
            _row("gateway", 100, 5.0, 10.0), _row("similar", 100, 6.0, 12.5, degraded=3),
            _row("gateway", 200, 5.0, 10.0, error_rate=0.05), _row("similar", 200, 5.0, 9.0),
            _row("similar", 400, 5.0, 9.0)]  # no feed run at 400: no ratio
    checks = target_checks(rows)["similar_vs_feed_p99"]
    assert list(checks) == ["50", "100", "200"]
    assert checks["50"]["ratio"] == 1.1 and checks["50"]["target_met"] is True
    assert checks["50"]["target_ratio"] == TARGET_SIMILAR_P99_RATIO == 1.2
    assert checks["100"]["ratio"] == 1.25 and checks["100"]["target_met"] is False
    assert checks["100"]["similar_degraded"] == 3 and checks["100"]["feed_p50_ms"] == 5.0
    # the feed overloaded: its p99 is the survivors', no verdict in favour
    assert checks["200"]["ratio"] == 0.9 and checks["200"]["target_met"] is False
    assert "similar_vs_feed_p99" not in target_checks([_row("gateway", 50, 5.0, 10.0)])
    assert all(c["quiet"] for c in checks.values())
    busy = [_row("gateway", 50, 5.0, 10.0), {**_row("similar", 50, 4.0, 11.0), "cpu_other": 1.2}]
    lagging = [{**_row("gateway", 50, 5.0, 10.0), "send_lag_p99_ms": 30.0}, _row("similar", 50, 4.0, 11.0)]
    for rows in (busy, lagging):
        c = target_checks(rows)["similar_vs_feed_p99"]["50"]
        assert c["quiet"] is False and c["target_met"] is True  # reported, not decided by the noise


def test_plot_draws_the_similar_curve_and_ratio(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row(t, r, 5.0, 10.0 + (t == "similar")) for r in (50, 100) for t in ("gateway", "similar")]
    plot(tmp_path / "g.png", rows, "test")
    assert (tmp_path / "g.png").stat().st_size > 10_000
