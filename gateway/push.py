"""Push: refreshed recommendations after high-intent events.

The gateway that accepted a cart or purchase event waits until the event is visible in the feature
store, computes the user's new recommendations and produces them to the ``recommendations`` topic
(keyed by user id) for downstream notification systems — at most once per user per
``push_min_interval_ms`` (a frequency cap shared through Redis when the store is Redis). Every
gateway tails that topic and forwards each message to its own SSE streams for the user, so a client
connected to any gateway hears about events accepted by any other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import BaseModel

from feature_service.store import FeatureStore, StoreUnavailable, store_call
from features.events import Event
from gateway import metrics
from gateway.errors import Overloaded
from gateway.schemas import Recommendations

log = logging.getLogger(__name__)


class PushTrigger(BaseModel):
    event_id: str
    event_type: str
    item_id: str


class PushMessage(BaseModel):
    """A value on the recommendations topic, and the data of an SSE ``recommendations`` event."""

    user_id: str
    trigger: PushTrigger
    recommendations: Recommendations
    pushed_at_ms: int


class FrequencyCap:
    """At most one push per user per interval. In-process, or shared through Redis."""

    def __init__(self, interval_ms: int, *, redis_url: str | None = None, prefix: str = "recsys") -> None:
        self.interval_ms = interval_ms
        self.prefix = prefix
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=1) if redis_url else None

    def allow(self, user_id: str) -> bool:
        if self.interval_ms <= 0:
            return True
        if self._redis is not None:
            try:
                return bool(self._redis.set(f"{self.prefix}:push:{user_id}", "1", nx=True,
                                            px=self.interval_ms))
            except redis.RedisError as exc:
                raise StoreUnavailable(str(exc)) from exc
        now = time.monotonic()
        with self._lock:
            last = self._last.get(user_id)
            if last is not None and (now - last) * 1000 < self.interval_ms:
                return False
            self._last[user_id] = now
            if len(self._last) > 100_000:  # forget users whose interval is long over
                horizon = now - self.interval_ms / 1000
                self._last = {u: t for u, t in self._last.items() if t > horizon}
            return True

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


class Pusher:
    """Runs one background task per high-intent event; never blocks or fails the ingest call.

    What to push is the caller's: ``schedule`` takes the function that computes it, so the pusher
    can be built before the service that uses it (and knows nothing of it)."""

    def __init__(self, store: FeatureStore, producer: KafkaProducer, topic: str, cap: FrequencyCap,
                 *, visible_timeout_ms: int = 3000) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.cap = cap
        self.visible_timeout_ms = visible_timeout_ms
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, event: Event, recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        """Once ``event`` is visible in the store, push ``await recommend(event.user_id)``."""
        task = asyncio.get_running_loop().create_task(self._push_after(event, recommend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_after(self, event: Event,
                          recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        try:
            if not await asyncio.to_thread(self.cap.allow, event.user_id):
                metrics.PUSHES.labels("capped").inc()
                return
            if not await self._visible(event):
                log.warning("event %s not in the store after %d ms: no push", event.event_id,
                            self.visible_timeout_ms)
                metrics.PUSHES.labels("not_visible").inc()
                return
            recommendations = await recommend(event.user_id)
            message = PushMessage(
                user_id=event.user_id,
                trigger=PushTrigger(event_id=event.event_id, event_type=event.event_type.value,
                                    item_id=event.item_id),
                recommendations=recommendations, pushed_at_ms=int(time.time() * 1000))
            await asyncio.to_thread(self._produce, message)
            metrics.PUSHES.labels("pushed").inc()
        except Exception:  # a push is best effort: the event itself is safely in Kafka
            log.exception("push after %s failed", event.event_id)
            metrics.PUSHES.labels("failed").inc()

    async def _visible(self, event: Event) -> bool:
        deadline = time.monotonic() + self.visible_timeout_ms / 1000
        while time.monotonic() < deadline:
            features = await store_call(self.store, self.store.get, event.user_id)
            if features is not None and any(e.event_id == event.event_id for e in features.recent):
                return True
            await asyncio.sleep(0.01)
        return False

    def _produce(self, message: PushMessage) -> None:
        self.producer.send(self.topic, key=message.user_id.encode(),
                           value=message.model_dump_json().encode()).get(timeout=10)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PushHub:
    """Tails the recommendations topic from its end (a consumer thread, no group) and hands each
    message to the SSE streams open for its user on this gateway."""

    def __init__(self, bootstrap_servers: str, topic: str, *, max_streams: int = 1000,
                 queue_size: int = 8) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_streams = max_streams
        self.queue_size = queue_size
        self.ready = threading.Event()  # positioned at the end of every partition
        self._streams: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="push-hub", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        try:
            while not self._stop.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if partitions:
                    break
                self._stop.wait(0.5)
            else:
                return
            parts = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(parts)
            consumer.seek_to_end(*parts)
            for tp in parts:
                consumer.position(tp)  # resolve "end" now, not at the first poll
            self.ready.set()
            while not self._stop.is_set():
                try:
                    batch = consumer.poll(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("push hub: %r", exc)
                    self._stop.wait(0.5)
                    continue
                for records in batch.values():
                    for record in records:
                        self._loop.call_soon_threadsafe(self._dispatch, record.key, record.value)
        finally:
            consumer.close()

    def _dispatch(self, key: bytes | None, value: bytes) -> None:
        user_id = (key or b"").decode(errors="replace")
        for queue in self._streams.get(user_id, ()):
            if queue.full():  # a slow client: the newest recommendations matter, drop the oldest
                queue.get_nowait()
            queue.put_nowait(value.decode(errors="replace"))

    def subscribe(self, user_id: str) -> asyncio.Queue:
        """A queue of the user's push messages; the caller must unsubscribe it."""
        if self._count >= self.max_streams:
            raise Overloaded(f"too many push streams open on this gateway ({self.max_streams})")
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._streams[user_id].add(queue)
        self._count += 1
        metrics.PUSH_STREAMS.inc()
        return queue

    def unsubscribe(self, user_id: str, queue: asyncio.Queue) -> None:
        streams = self._streams.get(user_id)
        if streams is None or queue not in streams:
            return
        streams.discard(queue)
        if not streams:
            del self._streams[user_id]
        self._count -= 1
        metrics.PUSH_STREAMS.dec()

    def stop(self, timeout_s: float = 5) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def sse(event: str, data: str, event_id: str | None = None) -> str:
    """One Server-Sent Event (data must be a single line, as JSON is)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"
