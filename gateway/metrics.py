"""Prometheus metrics of the gateway (exposed at /metrics)."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram

REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "HTTP request latency", ["method", "route", "status"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RECOMMENDATIONS = Counter(
    "gateway_recommendations_total", "Recommendation responses by source and fallback reason",
    ["source", "reason"],  # source: model | trending | popular; reason: none | cold_start |
)                          # model_unavailable | deadline | overload | store_unavailable |
#                            version_mismatch (an index outside the live catalog)
TRITON_SECONDS = Histogram(
    "gateway_triton_seconds", "Triton recommend call latency, as the gateway sees it",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5),
)
PUSHES = Counter(
    "gateway_pushes_total", "Refreshed recommendations after high-intent events, by outcome",
    # pushed | capped | not_visible | failed; coalesced: joined the user's pending refresh;
    ["outcome"],  # dropped: too many refreshes in flight (Pusher.max_refresh_tasks)
)
PUSH_STREAMS = Gauge("gateway_push_streams", "Open SSE push streams")
PUSH_STREAMS_REFUSED = Counter(
    "gateway_push_streams_refused_total", "SSE push streams refused, by limit",
    ["limit"],  # per_user (429) | gateway (503)
)
PUSH_STREAM_ENDS = Counter(
    "gateway_push_stream_ends_total", "SSE push streams ended, by reason",
    ["reason"],  # disconnect | lifetime | send_failed (dead or stuck peer) | error
)
EXPOSURES = Counter(
    "recsys_exposures", "Served lists in the exposure log (impressions topic), best effort",
    ["result"],  # sent (acknowledged) | dropped_full (queue full) | dropped_error (Kafka, shutdown)
)
ATTRIBUTION_DROPPED = Counter(
    "recsys_attribution_dropped", "Invalid context.request_id / context.position of accepted "
    "events, removed from the event (the event itself is accepted)",
    ["field"],  # request_id | position
)
MODEL_VERSION = Gauge("gateway_model_version", "The model version this gateway serves")


class RequestMetrics:
    """Request latency per route, up to the response's start (so an SSE stream counts its set-up,
    not its lifetime). Plain ASGI: Starlette's BaseHTTPMiddleware measured at ~1 ms a request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observing_send(message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # set by the router while it dispatched
                REQUEST_SECONDS.labels(scope["method"], getattr(route, "path", "unmatched"),
                                       str(message["status"])).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, observing_send)


def install_metrics(app: FastAPI) -> None:
    app.add_middleware(RequestMetrics)
