"""Push: refreshed recommendations after high-intent events.

The gateway that accepted a cart or purchase event waits until the event is visible in the feature
store, computes the user's new recommendations and produces them to the ``recommendations`` topic
(keyed by user id) for downstream notification systems — at most once per user per
``push_min_interval_ms`` (a frequency cap shared through Redis when the store is Redis). Every
gateway tails that topic and forwards each message to its own SSE streams for the user, so a client
connected to any gateway hears about events accepted by any other.

Everything here is bounded: refreshes are coalesced per user (one pending refresh task per user,
later events join it) and capped in number, the store is polled with backoff, the in-process
frequency cap evicts in amortised O(1), and SSE streams are capped per user and per gateway, end
after a maximum lifetime and are closed when a write is not taken (a dead peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import BaseModel
from starlette.responses import Response

from feature_service.backoff import backoff_s
from feature_service.store import FeatureStore, store_call
from features.events import Event
from gateway import metrics
from gateway.errors import Overloaded, RecsysError
from gateway.frequency_cap import FrequencyCap  # part of push; also imported from here
from gateway.producer import settle_on
from gateway.schemas import Recommendations

log = logging.getLogger(__name__)


class TooManyStreams(RecsysError):
    """One user has as many push streams open on this gateway as it may (429, with Retry-After)."""

    status_code = 429
    code = "too_many_requests"


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


class _Refresh:
    """The pending refresh of one user: the events that joined it, newest last."""

    __slots__ = ("events",)

    def __init__(self, event: Event) -> None:
        self.events: list[Event] = [event]


class Pusher:
    """Runs refreshes after high-intent events in the background; never blocks or fails the ingest
    call.

    Bounded per event: at most one pending refresh task per user (a later event for the user joins
    it, and the push then waits for the newest event joined), at most ``max_refresh_tasks`` in
    flight (beyond that an event for a user with none pending is dropped, counted as
    ``gateway_pushes_total{outcome="dropped"}``), and the store is polled with backoff, from
    ``poll_initial_ms`` doubling up to ``poll_max_ms``, for at most ``visible_timeout_ms``.

    What to push is the caller's: ``schedule`` takes the function that computes it, so the pusher
    can be built before the service that uses it (and knows nothing of it)."""

    def __init__(self, store: FeatureStore, producer: KafkaProducer, topic: str, cap: FrequencyCap,
                 *, visible_timeout_ms: int = 3000, max_refresh_tasks: int = 1000,
                 poll_initial_ms: int = 10, poll_max_ms: int = 200,
                 produce_timeout_ms: int = 10_000) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.cap = cap
        self.visible_timeout_ms = visible_timeout_ms
        self.max_refresh_tasks = max_refresh_tasks
        self.poll_initial_ms = poll_initial_ms
        self.poll_max_ms = poll_max_ms
        self.produce_timeout_ms = produce_timeout_ms
        # send() blocks while metadata is missing: on a thread of the pusher's own, not the default
        # executor's (the store reads of every recommendation run there); the ack holds no thread.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-send")
        self._pending: dict[str, _Refresh] = {}  # user id -> its refresh still collecting events
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, event: Event, recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        """Once ``event`` (or a later event of the same user) is visible in the store, push
        ``await recommend(event.user_id)``."""
        pending = self._pending.get(event.user_id)
        if pending is not None:
            pending.events.append(event)
            metrics.PUSHES.labels("coalesced").inc()
            return
        if len(self._tasks) >= self.max_refresh_tasks:
            metrics.PUSHES.labels("dropped").inc()
            return
        refresh = self._pending[event.user_id] = _Refresh(event)
        task = asyncio.get_running_loop().create_task(self._push_after(event.user_id, refresh, recommend))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_after(self, user_id: str, refresh: _Refresh,
                          recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        try:
            if not await asyncio.to_thread(self.cap.allow, user_id):
                metrics.PUSHES.labels("capped").inc()
                return
            trigger = await self._visible(user_id, refresh)
            self._release(user_id, refresh)  # events from now on start a refresh of their own
            if trigger is None:
                log.warning("event %s not in the store after %d ms: no push",
                            refresh.events[-1].event_id, self.visible_timeout_ms)
                metrics.PUSHES.labels("not_visible").inc()
                return
            recommendations = await recommend(user_id)
            message = PushMessage(
                user_id=user_id,
                trigger=PushTrigger(event_id=trigger.event_id, event_type=trigger.event_type.value,
                                    item_id=trigger.item_id),
                recommendations=recommendations, pushed_at_ms=int(time.time() * 1000))
            await self._produce(message)
            metrics.PUSHES.labels("pushed").inc()
        except Exception:  # a push is best effort: the events themselves are safely in Kafka
            log.exception("push after %s failed", refresh.events[-1].event_id)
            metrics.PUSHES.labels("failed").inc()
        finally:
            self._release(user_id, refresh)

    def _release(self, user_id: str, refresh: _Refresh) -> None:
        if self._pending.get(user_id) is refresh:
            del self._pending[user_id]

    async def _visible(self, user_id: str, refresh: _Refresh) -> Event | None:
        """The newest joined event once it is in the store; at the deadline, the newest one that
        is; None when none is. Polls with backoff: about log2(max/initial) + timeout/max reads."""
        deadline = time.monotonic() + self.visible_timeout_ms / 1000
        delay_s = self.poll_initial_ms / 1000
        newest_seen: Event | None = None
        while True:
            features = await store_call(self.store, self.store.get, user_id)
            if features is not None:
                stored = {e.event_id for e in features.recent}
                events = refresh.events
                if events[-1].event_id in stored:
                    return events[-1]
                newest_seen = next((e for e in reversed(events) if e.event_id in stored), newest_seen)
            left = deadline - time.monotonic()
            if left <= 0:
                return newest_seen
            await asyncio.sleep(min(delay_s, left))
            delay_s = min(delay_s * 2, self.poll_max_ms / 1000)

    async def _produce(self, message: PushMessage) -> None:
        loop = asyncio.get_running_loop()
        future = await loop.run_in_executor(self._sender, functools.partial(
            self.producer.send, self.topic, key=message.user_id.encode(),
            value=message.model_dump_json().encode()))
        await asyncio.wait_for(settle_on(loop, future), self.produce_timeout_ms / 1000)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sender.shutdown(wait=False, cancel_futures=True)


class PushHub:
    """Tails the recommendations topic from its end (a consumer thread, no group) and hands each
    message to the SSE streams open for its user on this gateway.

    Kafka failing (at start, or a poll later) never stops the hub: it closes its consumer and
    connects again after a backoff, from ``retry_initial_ms`` doubling up to ``retry_max_ms``, each
    delay drawn from its upper half (jitter, so that gateways do not reconnect in step). While it
    is not following the topic, ``ready`` is clear and ``not_ready_reason`` says why; it follows
    from the end again, so messages produced while it was down are not pushed (push is best
    effort; clients still have GET .../recommendations)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, max_streams: int = 1000,
                 queue_size: int = 8, retry_initial_ms: int = 500, retry_max_ms: int = 30_000) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_streams = max_streams
        self.queue_size = queue_size
        self.retry_initial_ms = retry_initial_ms
        self.retry_max_ms = retry_max_ms
        self.ready = threading.Event()  # positioned at the end of every partition
        self.not_ready_reason: str | None = "starting"
        self.connects = 0  # consumers made, first one included
        self._failures = 0  # in a row, since the hub last followed the topic
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

    def backoff_s(self, failures: int) -> float:
        """The wait after ``failures`` failed attempts in a row: exponential, capped, jittered."""
        return backoff_s(failures, self.retry_initial_ms, self.retry_max_ms)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
                return  # stopped
            except Exception as exc:  # Kafka down, or anything else: never stop for good
                self._failures += 1
                delay_s = self.backoff_s(self._failures)
                self.not_ready_reason = (f"push hub cannot follow {self.topic!r}: {exc!r} "
                                         f"({self._failures} failure(s) in a row; retrying in "
                                         f"{delay_s:.1f} s)")
                log.warning("%s", self.not_ready_reason)
                self._stop.wait(delay_s)

    def _follow(self) -> None:
        self.connects += 1
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        try:
            while not self._stop.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if partitions:
                    break
                self.not_ready_reason = f"topic {self.topic!r} has no partitions yet"
                self._stop.wait(0.5)
            else:
                return
            parts = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(parts)
            consumer.seek_to_end(*parts)
            for tp in parts:
                consumer.position(tp)  # resolve "end" now, not at the first poll
            self.not_ready_reason = None
            self._failures = 0  # the next failure starts the backoff over
            self.ready.set()
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=200)  # a KafkaError: reconnect, with backoff
                for records in batch.values():
                    for record in records:
                        self._loop.call_soon_threadsafe(self._dispatch, record.key, record.value)
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):  # a consumer that failed may fail to close too
                consumer.close()

    def _dispatch(self, key: bytes | None, value: bytes) -> None:
        user_id = (key or b"").decode(errors="replace")
        for queue in self._streams.get(user_id, ()):
            if queue.full():  # a slow client: the newest recommendations matter, drop the oldest
                queue.get_nowait()
            queue.put_nowait(value.decode(errors="replace"))

    def subscribe(self, user_id: str, *, max_per_user: int | None = None) -> asyncio.Queue:
        """A queue of the user's push messages; the caller must unsubscribe it. More than
        ``max_per_user`` streams for one user: TooManyStreams (429); more than ``max_streams`` on
        this gateway: Overloaded (503)."""
        if max_per_user is not None and len(self._streams.get(user_id, ())) >= max_per_user:
            metrics.PUSH_STREAMS_REFUSED.labels("per_user").inc()
            raise TooManyStreams(f"too many push streams open for this user ({max_per_user})")
        if self._count >= self.max_streams:
            metrics.PUSH_STREAMS_REFUSED.labels("gateway").inc()
            raise Overloaded(f"too many push streams open on this gateway ({self.max_streams})")
        queue: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._streams[user_id].add(queue)
        self._count += 1
        metrics.PUSH_STREAMS.inc()
        return queue

    def streams_of(self, user_id: str) -> int:
        return len(self._streams.get(user_id, ()))

    @property
    def open_streams(self) -> int:
        return self._count

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


END_OF_STREAM = sse("reconnect", json.dumps({"reason": "max_lifetime"}))


class PushStream(Response):
    """The ASGI response of one SSE push stream, which owns its hub subscription: whatever ends
    the stream (the client leaving, the lifetime, a write not taken, an error, a cancellation),
    the subscription is released when the response returns.

    - every ``keepalive_s`` without a message, a ``: keep-alive`` comment, so that a dead peer
      shows up as a failed write;
    - a write (event or comment) the connection does not take within ``send_timeout_s`` ends the
      stream (the server then closes the connection);
    - after ``lifetime_s``, a final ``event: reconnect`` and a clean end of the response: clients
      (EventSource does this by itself) reconnect, and the slot goes back to the pool."""

    media_type = "text/event-stream"

    def __init__(self, hub: PushHub, user_id: str, queue: asyncio.Queue, *, keepalive_s: float,
                 lifetime_s: float, send_timeout_s: float) -> None:
        self.status_code = 200
        self.background = None  # FastAPI may set it; a stream that ends has nothing to run after
        self.hub = hub
        self.user_id = user_id
        self.queue = queue
        self.keepalive_s = keepalive_s
        self.lifetime_s = lifetime_s
        self.send_timeout_s = send_timeout_s
        self.ended: str | None = None  # why it ended: disconnect | lifetime | send_failed | error

    async def __call__(self, scope, receive, send) -> None:
        try:
            self.ended = await self._stream(receive, send)
            if self.background is not None:
                await self.background()
        except BaseException:
            self.ended = "error"
            raise
        finally:
            self.hub.unsubscribe(self.user_id, self.queue)
            metrics.PUSH_STREAM_ENDS.labels(self.ended or "error").inc()

    async def _stream(self, receive, send) -> str:
        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lifetime_s
        left_task = asyncio.ensure_future(client_left())
        try:
            if not await self._send(send, {
                    "type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]}):
                return "send_failed"
            if not await self._chunk(send, ": connected\n\n"):
                return "send_failed"
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    if await self._chunk(send, END_OF_STREAM) and await self._send(
                            send, {"type": "http.response.body", "body": b"", "more_body": False}):
                        return "lifetime"
                    return "send_failed"
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, left_task}, timeout=min(self.keepalive_s, left),
                                             return_when=asyncio.FIRST_COMPLETED)
                if left_task in done:
                    getter.cancel()
                    return "disconnect"
                if getter in done:
                    chunk = sse("recommendations", getter.result())
                else:
                    getter.cancel()
                    if deadline - loop.time() <= 0:
                        continue  # the lifetime is over: the final event, not a keep-alive
                    chunk = ": keep-alive\n\n"
                if not await self._chunk(send, chunk):
                    return "send_failed"
        finally:
            left_task.cancel()

    async def _chunk(self, send, text: str) -> bool:
        return await self._send(send, {"type": "http.response.body", "body": text.encode(),
                                       "more_body": True})

    async def _send(self, send, message: dict) -> bool:
        """False when the connection did not take ``message`` in time, or is gone."""
        try:
            await asyncio.wait_for(send(message), self.send_timeout_s)
            return True
        except (TimeoutError, OSError) as exc:
            log.info("push stream of %s: write failed (%r), closing it", self.user_id, exc)
            return False


def retry_after_s(keepalive_ms: int) -> int:
    """Retry-After of a refused stream: a stream whose client went away unannounced is noticed at
    its next keep-alive at the latest."""
    return max(1, math.ceil(keepalive_ms / 1000))
