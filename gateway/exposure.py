"""The exposure log: every list the gateway serves, one JSON record on the ``impressions`` topic.

A click or a purchase names the list that caused it through ``context.request_id`` and
``context.position`` (docs/api.md); joining the two is how a list's outcome is measured. The log is
best effort, and never delays or fails a response: ``record`` appends to a bounded in-process
queue and returns; a background task drains the queue into a Kafka producer of its own. A full
queue, or a Kafka that does not take a record, drops it, counted in
``recsys_exposures_total{result="dropped_full"|"dropped_error"}`` (``"sent"``: acknowledged).

Its own producer, not the events' one: events are produced with acks=all, one request in flight
and a short delivery timeout, and a client waits for each acknowledgement; a record per served
list on that producer would queue ahead of those events and share its buffer. This one uses
acks=1, a longer linger (batches of records), and gives up on a record rather than block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

from gateway import metrics
from gateway.schemas import Recommendations

log = logging.getLogger(__name__)

# "similar": GET /v1/items/{item_id}/similar; its records add the query's ``item_id``, and their
# user_id is null when the request named no user.
Surface = Literal["feed", "push", "similar"]

# A client's request id: bounded, and safe in logs, headers and Kafka records. Anything else is
# replaced by a fresh one (never an error).
REQUEST_ID_MAX_CHARS = 64
_REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{REQUEST_ID_MAX_CHARS}}}")
# context.position of an event: the item's 0-based position in the list it was shown in (a
# decimal string, as every context value; 0..999).
_POSITION_RE = re.compile(r"[0-9]{1,3}")

DRAIN_BATCH = 500  # records handed to the producer per trip to its thread
# The drain collects for this long after a wake-up before a trip to the producer's thread: one trip
# per few lists, not one per list (each trip costs a thread hop and a sender-thread wake-up).
DRAIN_PAUSE_S = 0.05
LINGER_MS = 100  # batches on the producer; a record per partition per linger would cost far more
MAX_BLOCK_MS = 1000  # send() without topic metadata (Kafka down): give the batch up after this
DELIVERY_TIMEOUT_MS = 10_000


def is_valid_request_id(value: object) -> bool:
    return isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value) is not None


def request_id_or_new(value: str | None) -> str:
    """The client's request id when it is a valid one, else a fresh uuid4 hex."""
    if value is not None and _REQUEST_ID_RE.fullmatch(value) is not None:
        return value
    return uuid.uuid4().hex


def is_valid_position(value: object) -> bool:
    return isinstance(value, str) and _POSITION_RE.fullmatch(value) is not None


def exposure_record(recs: Recommendations, surface: Surface, ts_ms: int) -> dict[str, Any]:
    """The record of one served list (the value on the impressions topic, as JSON)."""
    record: dict[str, Any] = {
        "request_id": recs.request_id,
        "user_id": recs.user_id or None,
        "surface": surface,
        "model_version": recs.model_version,
        "arm": recs.arm,  # None outside an experiment
        "source": recs.source,
        "degraded": recs.degraded,
        "cold_start": recs.cold_start,
        "items": [{"position": position, "item_id": item.item_id, "score": item.score}
                  for position, item in enumerate(recs.items)],
        "ts_ms": ts_ms,
    }
    query_item_id = getattr(recs, "query_item_id", None)  # gateway.similar.SimilarList
    if query_item_id is not None:
        record["item_id"] = query_item_id
    return record


class ExposureSink(Protocol):
    def record(self, recs: Recommendations, surface: Surface) -> None:
        """Log that ``recs`` was served on ``surface``; returns at once, never raises."""


class NoExposureLog:
    """Records nothing (``exposure_enabled=false``, and the service's default)."""

    def record(self, recs: Recommendations, surface: Surface) -> None:
        return None


class Producer(Protocol):
    """What ExposureLog needs of a kafka-python ``KafkaProducer``."""

    def send(self, topic: str, *, key: bytes, value: bytes) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class ExposureLog:
    """A bounded queue of served lists, drained into Kafka by a background task (``start``);
    ``close`` flushes what is queued, waiting at most ``close_timeout_s``."""

    def __init__(self, producer: Producer, topic: str, *, max_queue: int = 10_000,
                 close_timeout_s: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.max_queue = max_queue
        self.close_timeout_s = close_timeout_s
        self._queue: collections.deque[tuple[Recommendations, Surface, int]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._busy = False  # a batch is on the sender thread
        # send() blocks while the topic's metadata is missing: on a thread of its own.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exposure-send")
        self._sent = metrics.EXPOSURES.labels("sent")
        self._dropped_full = metrics.EXPOSURES.labels("dropped_full")
        self._dropped_error = metrics.EXPOSURES.labels("dropped_error")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, recs: Recommendations, surface: Surface) -> None:
        """Queue ``recs`` for the log, or drop it (counted) when the queue is full or closed."""
        if self._closed:
            self._dropped_error.inc()
            return
        if len(self._queue) >= self.max_queue:
            self._dropped_full.inc()
            return
        self._queue.append((recs, surface, int(time.time() * 1000)))
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                if not self._closed:
                    await asyncio.sleep(DRAIN_PAUSE_S)
            batch = [self._queue.popleft() for _ in range(min(DRAIN_BATCH, len(self._queue)))]
            self._busy = True
            try:
                await loop.run_in_executor(self._sender, self._send, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the drain die: count and go on
                log.exception("exposure log: sending %d records failed", len(batch))
                self._dropped_error.inc(len(batch))
            finally:
                self._busy = False

    def _send(self, batch: list[tuple[Recommendations, Surface, int]]) -> None:
        """On the sender thread: serialize and hand each record to the producer. A record the
        producer refuses (no metadata within max_block_ms: Kafka down) drops the rest of the batch
        too, rather than wait that long for each."""
        for done, (recs, surface, ts_ms) in enumerate(batch):
            value = json.dumps(exposure_record(recs, surface, ts_ms),
                               separators=(",", ":")).encode()
            try:
                key = (recs.user_id or recs.request_id).encode()  # no user: spread by list
                future = self.producer.send(self.topic, key=key, value=value)
            except Exception as exc:
                log.warning("exposure log: Kafka did not take a record (%r); dropping %d",
                            exc, len(batch) - done)
                self._dropped_error.inc(len(batch) - done)
                return
            future.add_callback(self._on_sent)
            future.add_errback(self._on_error)

    def _on_sent(self, _metadata: object) -> None:
        self._sent.inc()

    def _on_error(self, exc: BaseException) -> None:
        self._dropped_error.inc()

    async def close(self) -> None:
        """Stop taking records; send what is queued and flush the producer, within
        ``close_timeout_s`` in all; what is left then is dropped (counted)."""
        self._closed = True
        deadline = time.monotonic() + self.close_timeout_s
        if self._task is not None:
            while ((self._queue or self._busy) and time.monotonic() < deadline
                   and not self._task.done()):
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue:
            self._dropped_error.inc(len(self._queue))
            self._queue.clear()
        left = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.to_thread(self.producer.flush, left)
        except Exception as exc:  # KafkaTimeoutError: records still in flight are given up
            log.warning("exposure log: flush on shutdown incomplete: %r", exc)
        self._sender.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.producer.close, 0)


def create_producer(bootstrap_servers: str) -> Any:
    """The exposure log's kafka-python producer (see the module docstring for its settings)."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap_servers, acks=1, linger_ms=LINGER_MS,
                         retries=2, max_block_ms=MAX_BLOCK_MS,
                         request_timeout_ms=DELIVERY_TIMEOUT_MS // 2,
                         delivery_timeout_ms=DELIVERY_TIMEOUT_MS)
