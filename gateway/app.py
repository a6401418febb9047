"""App factory. Heavy clients (Triton, Kafka, the feature store) are opened in the lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from feature_service.consumer import BackgroundConsumer
from feature_service.store import create_store
from gateway.config import GatewaySettings
from gateway.errors import install_error_handler
from gateway.metrics import install_metrics
from gateway.producer import EventProducer
from gateway.routes import events, health, recommendations
from gateway.served_model import load_served_model
from gateway.service import RecommendationService
from gateway.triton_client import TritonRecommender

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: GatewaySettings = app.state.settings
    served = load_served_model(Path(settings.model_repository))
    features = settings.features()
    store = create_store(settings.store, features.rules(), redis_url=settings.redis_url,
                         prefix=settings.redis_key_prefix,
                         item_categories=served.catalog.categories_by_item())
    triton = producer = consumer = None
    try:
        if settings.snapshot_path and Path(settings.snapshot_path).is_file():
            histories = json.loads(Path(settings.snapshot_path).read_text())
            await asyncio.to_thread(store.load_snapshot, histories)
            log.info("seeded %d users from %s", len(histories), settings.snapshot_path)
        triton = TritonRecommender(settings.triton_grpc_url, settings.triton_timeout_ms,
                                   settings.triton_model)
        await triton.connect()
        if triton.sequence_length != served.sequence_length:
            raise RuntimeError(f"Triton serves sequence length {triton.sequence_length}, the "
                               f"repository's serving.json says {served.sequence_length}")
        producer = await asyncio.to_thread(EventProducer, settings.kafka_bootstrap_servers,
                                           settings.events_topic, settings.kafka_timeout_ms)
        readiness = {
            "triton": triton.ready,
            "kafka": lambda: asyncio.to_thread(producer.connected),
            "store": lambda: asyncio.to_thread(store.ping),
        }
        if settings.embedded_consumer:
            consumer = BackgroundConsumer(features, store)
            consumer.start()
            readiness["consumer"] = lambda: _true_if(consumer.alive and consumer.consumer.ready.is_set())
        app.state.readiness = readiness
        app.state.service = RecommendationService(served, store, triton, producer, settings.max_k)
        app.state.consumer = consumer
        log.info("gateway serving model version %d (%d items)", served.version, served.catalog.num_items)
        yield
    finally:
        if consumer is not None:
            await asyncio.to_thread(consumer.stop)
        if producer is not None:
            await asyncio.to_thread(producer.close)
        if triton is not None:
            await triton.close()
        store.close()


async def _true_if(value: bool) -> bool:
    return value


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = FastAPI(title="recsys gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings or GatewaySettings()
    install_error_handler(app)
    install_metrics(app)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(health.router)
    return app
