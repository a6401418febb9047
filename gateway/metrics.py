"""Prometheus metrics of the gateway (exposed at /metrics)."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from prometheus_client import Counter, Histogram

REQUEST_SECONDS = Histogram(
    "gateway_request_seconds", "HTTP request latency", ["method", "route", "status"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RECOMMENDATIONS = Counter(
    "gateway_recommendations_total", "Recommendation responses by kind", ["kind"],
)


def install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        REQUEST_SECONDS.labels(request.method, getattr(route, "path", "unmatched"),
                               str(response.status_code)).observe(time.perf_counter() - started)
        return response
