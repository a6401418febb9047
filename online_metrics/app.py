"""App factory of the online-metrics service: the JSON API, the A/B comparison, Prometheus
metrics, and a page of plots (``online_metrics/static/``: plain HTML, CSS and JavaScript, nothing
from another origin; the service has no internet).

The lifespan starts the Kafka consumer and stops it. Tests hand ``create_app`` a source of their
own instead (anything with ``snapshot()``), and no consumer is started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from features.significance import compare_proportions
from online_metrics.config import OnlineMetricsSettings
from online_metrics.consumer import OnlineMetricsConsumer
from online_metrics.metrics import registry_for
from online_metrics.stats import PROPORTIONS, RATES

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "index.html"
ASSETS = ("index.html", "page.js", "page.css")  # served by name only: nothing else can be reached
_MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class Source(Protocol):
    def snapshot(self) -> dict: ...


def create_app(settings: OnlineMetricsSettings | None = None,
               source: Source | None = None) -> FastAPI:
    settings = settings or OnlineMetricsSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        consumer = None
        if source is None:
            consumer = OnlineMetricsConsumer(settings)
            consumer.start()
        app.state.source = source or consumer
        try:
            yield
        finally:
            if consumer is not None:
                # Nothing to flush (no offsets, state in memory) and the thread is a daemon: a
                # client stuck in Kafka's bootstrap back-off must not hold the shutdown up.
                consumer.stop(timeout_s=2)

    app = FastAPI(title="recsys online metrics", version="0.1.0", lifespan=lifespan)
    window = {"attribution_window_ms": settings.attribution_window_ms,
              "pending_grace_ms": settings.pending_grace_ms, "ctr_k": settings.ctr_k,
              "bucket_s": settings.bucket_s, "series_buckets": settings.series_buckets,
              "confidence": settings.confidence}

    def snapshot(request: Request) -> dict:
        return request.app.state.source.snapshot()

    @app.get("/v1/online-metrics")
    def online_metrics(request: Request) -> dict:
        """Per (surface, model_version, arm): totals, rates and the series of time buckets;
        unattributed events by reason; the attribution settings."""
        return {**snapshot(request), "settings": window}

    @app.get("/v1/online-metrics/compare")
    def compare(request: Request,
                surface: Annotated[str, Query(max_length=64)],
                a: Annotated[str, Query(max_length=64, description="arm A (the baseline)")],
                b: Annotated[str, Query(max_length=64, description="arm B")],
                metric: Annotated[str, Query(max_length=64)] = "ctr_at_k") -> dict:
        """Arm B's rate against arm A's on one surface (each arm's lists summed over its model
        versions): difference B - A, its confidence interval, z and the two-sided p-value."""
        if metric not in PROPORTIONS:
            why = "it is not a proportion of lists" if metric in RATES else "unknown metric"
            raise HTTPException(400, f"metric {metric!r}: {why}; comparable metrics: "
                                     f"{', '.join(PROPORTIONS)}")
        rows = [row for row in snapshot(request)["keys"] if row["surface"] == surface]
        arms = sorted({row["arm"] for row in rows})
        sides = {}
        for side, arm in (("a", a), ("b", b)):
            chosen = [row for row in rows if row["arm"] == arm]
            if not chosen:
                raise HTTPException(400, f"{side}: no lists of arm {arm!r} on surface "
                                         f"{surface!r}; known arms there: {', '.join(arms) or 'none'}")
            versions = sorted({r["model_version"] for r in chosen}, key=str)
            sides[side] = {"arm": arm, "model_versions": versions,
                           "successes": sum(r["totals"][PROPORTIONS[metric]] for r in chosen),
                           "trials": sum(r["totals"]["impressions"] for r in chosen)}
        result = compare_proportions(sides["a"]["successes"], sides["a"]["trials"],
                                     sides["b"]["successes"], sides["b"]["trials"],
                                     settings.confidence)
        sides["a"]["rate"], sides["b"]["rate"] = result.rate_a, result.rate_b
        return {"surface": surface, "metric": metric, **sides, "difference": result.difference,
                "ci_low": result.ci_low, "ci_high": result.ci_high, "z": result.z,
                "p_value": result.p_value, "confidence": result.confidence,
                "defined": result.defined}

    registry = None

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        nonlocal registry
        if registry is None:
            registry = registry_for(request.app.state.source.snapshot)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz(request: Request) -> dict:
        """Alive; ``caught_up`` says whether the replay of the topics has reached their end."""
        caught_up = getattr(request.app.state.source, "caught_up", None)  # a threading.Event
        return {"status": "ok", "caught_up": caught_up is None or caught_up.is_set()}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return _asset(PAGE)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        return _asset(name)

    return app


def _asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no such asset: {name[:64]!r}")
    path = STATIC_DIR / name
    return FileResponse(path, media_type=_MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})
