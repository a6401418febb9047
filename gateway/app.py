"""App factory. Heavy clients (Triton, Kafka, the feature store) are opened in the lifespan, once
per process, and closed when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from features import contract as sig
from feature_service.consumer import BackgroundConsumer
from feature_service.store import create_store
from feature_service.topics import ensure_topics
from features.events import EventType
from gateway import metrics
from gateway.config import GatewaySettings
from gateway.errors import Conflict, install_error_handler
from gateway.grpc_server import start_grpc_server
from gateway.inventory import create_inventory
from gateway.limits import BodySizeLimit
from gateway.metrics import install_metrics
from gateway.producer import EventProducer
from gateway.push import FrequencyCap, Pusher, PushHub
from gateway.routes import admin, demo, events, health, push, recommendations
from gateway.served_model import load_served_model
from gateway.service import RecommendationService, ServicePolicy
from gateway.triton_client import TritonRecommender

log = logging.getLogger(__name__)


def _policy(settings: GatewaySettings) -> ServicePolicy:
    return ServicePolicy(
        max_k=settings.max_k, deadline_ms=settings.request_deadline_ms,
        exclude_seen=settings.exclude_seen, max_per_category=settings.max_per_category,
        max_batch_events=settings.max_batch_events,
        max_inflight_model_calls=settings.max_inflight_model_calls,
        push_event_types=frozenset(EventType(t) for t in settings.push_event_types))


async def _follow_live_version(service: RecommendationService, triton: TritonRecommender,
                               repository: Path, interval_s: float) -> None:
    """Switch to the repository's live version once Triton serves it: no restart, and no request
    ever pairs one version's scores with another's catalog (requests are pinned to a version)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            live = await asyncio.to_thread(sig.live_version, repository)
            if live == service.served.version or not await triton.version_ready(live):
                continue
            served = await asyncio.to_thread(load_served_model, repository, live)
            previous = service.served.version
            try:
                service.reload(served)
            except Conflict as exc:
                log.error("not switching: %s", exc.message)
                continue
            metrics.MODEL_VERSION.set(live)
            log.info("now serving model version %d (was %d)", live, previous)
        except Exception:  # a half-written repository must not stop the watcher
            log.exception("checking the live model version failed")


async def _refresh_periodically(fn, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(fn)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: GatewaySettings = app.state.settings
    features = settings.features()
    served = load_served_model(Path(settings.model_repository))
    async with AsyncExitStack() as stack:
        store = create_store(settings.store, features.rules(), redis_url=settings.redis_url,
                             prefix=settings.redis_key_prefix,
                             item_categories=served.catalog.categories_by_item())
        stack.callback(store.close)
        if settings.snapshot_path and Path(settings.snapshot_path).is_file():
            histories = json.loads(Path(settings.snapshot_path).read_text())
            await asyncio.to_thread(store.load_snapshot, histories)
            log.info("seeded %d users from %s", len(histories), settings.snapshot_path)
        inventory = await asyncio.to_thread(create_inventory, settings.store,
                                            redis_url=settings.redis_url,
                                            prefix=settings.redis_key_prefix)
        stack.callback(inventory.close)
        if settings.store == "redis":
            refresher = asyncio.create_task(
                _refresh_periodically(inventory.refresh, settings.stock_cache_ms / 1000))
            stack.push_async_callback(_cancel, refresher)

        triton = TritonRecommender(settings.triton_grpc_url, settings.triton_timeout_ms,
                                   settings.triton_model)
        stack.push_async_callback(triton.close)
        await triton.connect()
        if triton.sequence_length != served.sequence_length:
            raise RuntimeError(f"Triton serves sequence length {triton.sequence_length}, the "
                               f"repository's serving.json says {served.sequence_length}")

        await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap_servers,
                                [settings.events_topic, features.dlq_topic,
                                 settings.recommendations_topic], features.topic_partitions)
        producer = await asyncio.to_thread(EventProducer, settings.kafka_bootstrap_servers,
                                           settings.events_topic, settings.kafka_timeout_ms)
        stack.callback(producer.close)  # closed after the pusher below, which uses it

        readiness = {
            "triton": triton.ready,
            "kafka": lambda: asyncio.to_thread(producer.connected),
            "store": lambda: asyncio.to_thread(store.ping),
        }
        if settings.embedded_consumer:
            # The topics were ensured above: the consumer need not ask the broker again.
            consumer = BackgroundConsumer(features.model_copy(update={"create_topics": False}), store)
            consumer.start()
            stack.push_async_callback(asyncio.to_thread, consumer.stop)
            readiness["consumer"] = lambda: _true_if(consumer.alive and consumer.consumer.ready.is_set())
        app.state.consumer = consumer if settings.embedded_consumer else None

        hub = PushHub(settings.kafka_bootstrap_servers, settings.recommendations_topic,
                      max_streams=settings.max_push_streams)
        hub.start()
        stack.push_async_callback(asyncio.to_thread, hub.stop)
        readiness["push"] = lambda: _true_if(hub.alive and hub.ready.is_set())
        cap = FrequencyCap(settings.push_min_interval_ms,
                           redis_url=settings.redis_url if settings.store == "redis" else None,
                           prefix=settings.redis_key_prefix)
        stack.callback(cap.close)

        service = RecommendationService(served, store, triton, producer, inventory, _policy(settings))
        pusher = Pusher(lambda user_id: service.recommend(user_id, 10), store, producer.client,
                        settings.recommendations_topic, cap,
                        visible_timeout_ms=settings.push_visible_timeout_ms)
        stack.push_async_callback(pusher.close)
        service.on_high_intent = pusher.schedule

        watcher = asyncio.create_task(_follow_live_version(
            service, triton, Path(settings.model_repository), settings.model_poll_ms / 1000))
        stack.push_async_callback(_cancel, watcher)
        metrics.MODEL_VERSION.set(served.version)

        app.state.readiness = readiness
        app.state.service = service
        app.state.push_hub = hub
        # gRPC front end: the same service; stopped (on exit) before what it uses closes.
        if settings.grpc_port != 0:
            server, bound_port = await start_grpc_server(
                lambda: app.state.service, settings.host, settings.grpc_port,
                max_message_bytes=settings.max_body_bytes)
            stack.push_async_callback(server.stop, 2)
            app.state.grpc_port = bound_port
        else:
            app.state.grpc_port = None
        log.info("gateway serving model version %d (%d items)", served.version, served.catalog.num_items)
        yield


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _true_if(value: bool) -> bool:
    return value


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = FastAPI(title="recsys gateway", version="0.2.0", lifespan=lifespan)
    app.state.settings = settings or GatewaySettings()
    install_error_handler(app)
    install_metrics(app)
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_body_bytes)
    app.include_router(recommendations.router)
    app.include_router(push.router)
    app.include_router(events.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(demo.router)
    return app
