"""App factory. Heavy clients (Triton, Kafka, the feature store) are opened in the lifespan, once
per process, and closed when it ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from feature_service.config import FeatureServiceSettings
from features.events import EventType
from gateway import components
from gateway.config import GatewaySettings
from gateway.errors import install_error_handler
from gateway.limits import BodySizeLimit
from gateway.metrics import install_metrics
from gateway.routes import admin, demo, events, health, items, push, recommendations
from gateway.served_model import load_served_model
from gateway.service import RecommendationService, ServicePolicy

log = logging.getLogger(__name__)


def _policy(settings: GatewaySettings, features: FeatureServiceSettings) -> ServicePolicy:
    """``features``: the embedded consumer's settings (``settings.features()``), whose limits on an
    event the gateway applies too, so that what it accepts the consumer does not dead-letter."""
    return ServicePolicy(
        max_k=settings.max_k, deadline_ms=settings.request_deadline_ms,
        exclude_seen=settings.exclude_seen, max_per_category=settings.max_per_category,
        max_batch_events=settings.max_batch_events,
        max_inflight_model_calls=settings.max_inflight_model_calls,
        push_event_types=frozenset(EventType(t) for t in settings.push_event_types),
        max_event_bytes=features.max_event_bytes, max_future_skew_ms=features.max_future_skew_ms)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open every component in order (each one in ``gateway.components``); they close in reverse."""
    settings: GatewaySettings = app.state.settings
    features = settings.features()
    served = load_served_model(Path(settings.model_repository))
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        store = await enter(components.feature_store(settings, features, served))
        inventory = await enter(components.stock_inventory(settings))
        triton = await enter(components.triton_client(settings, served))
        producer = await enter(components.event_producer(settings, features))
        # Before the pusher: it closes after every push that may still record a list.
        exposures = await enter(components.exposure_log(settings, features))
        consumer = await enter(components.embedded_consumer(settings, features, store))
        push_parts = await enter(components.push_parts(settings, store, producer))
        service = RecommendationService(served, store, triton, producer, inventory,
                                        _policy(settings, features), pusher=push_parts.pusher,
                                        exposures=exposures)
        await enter(components.live_version_watcher(settings, service, triton))

        app.state.readiness = components.readiness_checks(triton, producer, store, consumer,
                                                          push_parts.hub)
        app.state.readiness_reasons = components.readiness_reasons(producer, consumer, push_parts.hub)
        app.state.consumer = consumer
        app.state.service = service
        app.state.push_hub = push_parts.hub
        # Last in, so first out: stopped before anything the service uses closes.
        app.state.grpc_port = await enter(components.grpc_front_end(settings, lambda: app.state.service))
        log.info("gateway serving model version %d (%d items)", served.version, served.catalog.num_items)
        yield


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = FastAPI(title="recsys gateway", version="0.2.0", lifespan=lifespan)
    app.state.settings = settings or GatewaySettings()
    install_error_handler(app)
    install_metrics(app)
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_body_bytes)
    app.include_router(recommendations.router)
    app.include_router(items.router)
    app.include_router(push.router)
    app.include_router(events.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(demo.router)
    return app
