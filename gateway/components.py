"""The gateway's long-lived components, one async context manager each: entering one opens (and
checks) the component, leaving it closes it. ``gateway.app``'s lifespan enters them in order on an
``AsyncExitStack``, so they close in reverse: nothing closes while something started after it
still uses it (the pusher before the producer it sends with, the gRPC server before the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_service.background import BackgroundConsumer
from feature_service.config import FeatureServiceSettings
from feature_service.store import FeatureStore, create_store
from feature_service.topics import ensure_topics
from features.experiment import Experiment, read_pointer
from gateway import metrics
from gateway.config import GatewaySettings
from gateway.errors import Conflict
from gateway.exposure import ExposureLog, ExposureSink, NoExposureLog, create_producer
from gateway.grpc_server import ServiceGetter, start_grpc_server
from gateway.inventory import Inventory, create_inventory
from gateway.producer import EventProducer
from gateway.push import FrequencyCap, Pusher, PushHub
from gateway.served_model import ServedArms, ServedModel, load_served_model
from gateway.service import RecommendationService
from gateway.triton_client import TritonRecommender

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
ReadinessReason = Callable[[], "str | None"]


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task]:
    """Run ``coro`` as a task while inside; cancel it (and wait for it) on the way out."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def feature_store(settings: GatewaySettings, features: FeatureServiceSettings,
                        served: ServedModel) -> AsyncIterator[FeatureStore]:
    """The feature store, seeded with the batch snapshot of user histories when there is one."""
    # The state's rules (caps, TTL, de-duplication) come from the feature-service settings, as for
    # a standalone consumer.
    store = create_store(settings.store, features.rules(), redis_url=settings.redis_url,
                         prefix=settings.redis_key_prefix,
                         item_categories=served.catalog.categories_by_item())
    try:
        if settings.snapshot_path and Path(settings.snapshot_path).is_file():
            histories = json.loads(Path(settings.snapshot_path).read_text())
            await asyncio.to_thread(store.load_snapshot, histories)
            log.info("seeded %d users from %s", len(histories), settings.snapshot_path)
        yield store
    finally:
        store.close()


async def _refresh_periodically(fn: Callable[[], None], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(fn)


@asynccontextmanager
async def stock_inventory(settings: GatewaySettings) -> AsyncIterator[Inventory]:
    """Stock levels; a Redis-backed copy is refreshed every ``stock_cache_ms`` in the background,
    so that a recommendation never waits on Redis for it."""
    async with contextlib.AsyncExitStack() as stack:
        inventory = await asyncio.to_thread(create_inventory, settings.store,
                                            redis_url=settings.redis_url,
                                            prefix=settings.redis_key_prefix)
        stack.callback(inventory.close)
        if settings.store == "redis":
            await stack.enter_async_context(background(
                _refresh_periodically(inventory.refresh, settings.stock_cache_ms / 1000)))
        yield inventory


@asynccontextmanager
async def triton_client(settings: GatewaySettings,
                        served: ServedModel) -> AsyncIterator[TritonRecommender]:
    """The Triton client, connected, and checked to serve the input shape of the repository's
    live version (the gateway would otherwise send requests Triton rejects)."""
    triton = TritonRecommender(settings.triton_grpc_url, settings.triton_timeout_ms,
                               settings.triton_model)
    try:
        await triton.connect()
        if triton.sequence_length != served.sequence_length:
            raise RuntimeError(f"Triton serves sequence length {triton.sequence_length}, the "
                               f"repository's serving.json says {served.sequence_length}")
        if settings.history_items < served.sequence_length:
            # The model would be served shorter histories than it was trained on, silently.
            raise RuntimeError(f"the feature store keeps {settings.history_items} events per user "
                               f"(HISTORY_ITEMS) but the model reads the last {served.sequence_length} "
                               f"steps: set RECSYS_GATEWAY_HISTORY_ITEMS >= {served.sequence_length}")
        yield triton
    finally:
        await triton.close()


@asynccontextmanager
async def event_producer(settings: GatewaySettings,
                         features: FeatureServiceSettings) -> AsyncIterator[EventProducer]:
    """The Kafka producer of accepted events, once every topic the gateway uses exists."""
    await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap_servers,
                            [settings.events_topic, features.dlq_topic,
                             settings.recommendations_topic], features.topic_partitions)
    # Compacted: a table of every item's latest update (gateway/catalog_updates.py).
    await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap_servers, [settings.catalog_topic],
                            features.topic_partitions, configs={"cleanup.policy": "compact"})
    producer = await asyncio.to_thread(EventProducer, settings.kafka_bootstrap_servers,
                                       settings.events_topic, settings.kafka_timeout_ms)
    try:
        yield producer
    finally:
        producer.close()


@asynccontextmanager
async def exposure_log(settings: GatewaySettings,
                       features: FeatureServiceSettings) -> AsyncIterator[ExposureSink]:
    """The exposure log (gateway/exposure.py) on the impressions topic, with a Kafka producer
    of its own; what is queued is flushed on the way out, within a bounded wait. A no-op when
    ``exposure_enabled`` is false."""
    if not settings.exposure_enabled:
        yield NoExposureLog()
        return
    await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap_servers,
                            [settings.impressions_topic], features.topic_partitions)
    producer = await asyncio.to_thread(create_producer, settings.kafka_bootstrap_servers)
    exposures = ExposureLog(producer, settings.impressions_topic,
                            max_queue=settings.exposure_queue_max)
    exposures.start()
    try:
        yield exposures
    finally:
        await exposures.close()


@asynccontextmanager
async def embedded_consumer(settings: GatewaySettings, features: FeatureServiceSettings,
                            store: FeatureStore) -> AsyncIterator[BackgroundConsumer | None]:
    """The feature-service consumer in a thread of this process; None when it runs elsewhere."""
    if not settings.embedded_consumer:
        yield None
        return
    # event_producer ensured the topics: the consumer need not ask the broker again.
    consumer = BackgroundConsumer(features.model_copy(update={"create_topics": False}), store)
    consumer.start()
    try:
        yield consumer
    finally:
        await asyncio.to_thread(consumer.stop)


@dataclass(frozen=True)
class PushParts:
    hub: PushHub  # this gateway's SSE streams, fed from the recommendations topic
    pusher: Pusher  # produces refreshed recommendations after high-intent events


@asynccontextmanager
async def push_parts(settings: GatewaySettings, store: FeatureStore,
                     producer: EventProducer) -> AsyncIterator[PushParts]:
    """Push: the hub tailing the recommendations topic, the per-user frequency cap (in Redis when
    the store is) and the pusher, which produces with the event producer's client."""
    async with contextlib.AsyncExitStack() as stack:
        hub = PushHub(settings.kafka_bootstrap_servers, settings.recommendations_topic,
                      max_streams=settings.max_push_streams,
                      queue_size=settings.push_stream_queue_messages,
                      retry_initial_ms=settings.push_hub_retry_initial_ms,
                      retry_max_ms=settings.push_hub_retry_max_ms)
        hub.start()
        stack.push_async_callback(asyncio.to_thread, hub.stop)
        cap = FrequencyCap(settings.push_min_interval_ms,
                           redis_url=settings.redis_url if settings.store == "redis" else None,
                           prefix=settings.redis_key_prefix)
        stack.callback(cap.close)
        pusher = Pusher(store, producer.client, settings.recommendations_topic, cap,
                        visible_timeout_ms=settings.push_visible_timeout_ms,
                        max_refresh_tasks=settings.push_max_refresh_tasks,
                        poll_initial_ms=settings.push_store_poll_initial_ms,
                        poll_max_ms=settings.push_store_poll_max_ms,
                        produce_timeout_ms=settings.push_produce_timeout_ms)
        stack.push_async_callback(pusher.close)
        yield PushParts(hub, pusher)


async def _follow_live_version(service: RecommendationService, triton: TritonRecommender,
                               repository: Path, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await _follow_pointer(service, triton, repository)
        except Exception:  # a half-written repository must not stop the watcher
            log.exception("checking the live model version failed")


async def _follow_pointer(service: RecommendationService, triton: TritonRecommender,
                          repository: Path) -> None:
    """Switch to the repository's live version, and to its experiment's arms, once Triton serves
    every one of their versions: no restart, and no request ever pairs one version's scores with
    another's catalog (requests are pinned to a version)."""
    live, experiment = await asyncio.to_thread(read_pointer, repository)
    running = service.arms.experiment if service.arms else None
    if live == service.served.version and experiment == running:
        return
    versions = {live} | (experiment.versions if experiment else set())
    if not all([await triton.version_ready(v) for v in versions]):
        return
    loaded = {m.version: m for m in (service.served, *(service.arms.by_arm.values() if service.arms else ()))}
    models = {v: loaded[v] if v in loaded else await asyncio.to_thread(load_served_model, repository, v)
              for v in versions}
    # ServedArms tags its own copies with the arm names; the live one is served untagged.
    served = dataclasses.replace(models[live], arm=None)
    previous = service.served.version
    try:
        service.reload(served, ServedArms.build(experiment, models) if experiment else None)
    except Conflict as exc:
        log.error("not switching: %s", exc.message)
        return
    metrics.MODEL_VERSION.set(live)
    log.info("now serving model version %d (was %d)%s", live, previous, _arms_text(experiment))


def _arms_text(experiment: Experiment | None) -> str:
    if experiment is None:
        return ""
    arms = ", ".join(f"{a.name}=v{a.version}:{a.weight:g}" for a in experiment.arms)
    return f", experiment {experiment.name!r}: {arms}"


@asynccontextmanager
async def live_version_watcher(settings: GatewaySettings, service: RecommendationService,
                               triton: TritonRecommender) -> AsyncIterator[None]:
    """Polls the model repository every ``model_poll_ms`` for a new live version to serve. The
    first look is made before serving: a restarted gateway serves the running experiment's arms
    from its first request, so no user changes arm across a restart."""
    try:
        await _follow_pointer(service, triton, Path(settings.model_repository))
    except Exception:  # as in the loop: keep serving the live version, and say why
        log.exception("reading the rollout pointer at start-up failed")
    async with background(_follow_live_version(service, triton, Path(settings.model_repository),
                                               settings.model_poll_ms / 1000)):
        metrics.MODEL_VERSION.set(service.served.version)
        yield


@asynccontextmanager
async def grpc_front_end(settings: GatewaySettings,
                         service_getter: ServiceGetter) -> AsyncIterator[int | None]:
    """The gRPC front end over the same service; yields the port it is bound to (None: off)."""
    if settings.grpc_port == 0:
        yield None
        return
    server, bound_port = await start_grpc_server(service_getter, settings.host, settings.grpc_port,
                                                 max_message_bytes=settings.max_body_bytes,
                                                 api_token=settings.api_token)
    try:
        yield bound_port
    finally:
        await server.stop(2)


async def _true_if(value: bool) -> bool:
    return value


def readiness_checks(triton: TritonRecommender, producer: EventProducer, store: FeatureStore,
                     consumer: BackgroundConsumer | None, hub: PushHub) -> dict[str, ReadinessCheck]:
    """What ``/readyz`` asks, by name: every dependency answers and every thread runs."""
    checks: dict[str, ReadinessCheck] = {
        "triton": triton.ready,
        "kafka": lambda: asyncio.to_thread(producer.connected),
        "store": lambda: asyncio.to_thread(store.ping),
    }
    if consumer is not None:
        checks["consumer"] = lambda: _true_if(consumer.alive and consumer.consumer.ready.is_set())
    checks["push"] = lambda: _true_if(hub.alive and hub.ready.is_set())
    return checks


def readiness_reasons(producer: EventProducer, consumer: BackgroundConsumer | None,
                      hub: PushHub) -> dict[str, ReadinessReason]:
    """Why a ``readiness_checks`` entry is false, for the components that can say (``/readyz``
    shows it next to the check, so an operator sees a stuck partition, not just "false")."""
    reasons: dict[str, ReadinessReason] = {
        "kafka": lambda: producer.not_ready_reason,
        "push": lambda: hub.not_ready_reason if hub.alive else "push hub thread stopped"}
    if consumer is not None:
        reasons["consumer"] = lambda: ("consumer thread stopped" if not consumer.alive
                                       else consumer.not_ready_reason)
    return reasons
