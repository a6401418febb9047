"""The soak test's load and its observers: steady GET recommendations and POST events on the
gateway (1 % of the event slots malformed: half bad requests to the gateway, half garbage written
straight into the events topic), and a sampler of every service's RSS, Redis memory and the
gateway's /readyz. Each runs in a thread of its own, so that the main thread may restart services
(a process started from a short-lived thread would be signalled when that thread ends)."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from features.events import Event
from perf.cpu_accounting import process_tree
from perf.soak_checks import Response

EVENT_TYPES = ["view"] * 6 + ["click"] * 3 + ["cart", "purchase"]
MALFORMED_EVERY = 200  # two slots in each 200: 1 % malformed, half to the gateway, half to Kafka


def gateway_garbage(i: int, item: str) -> tuple[bytes, str]:
    """A bad POST /v1/events body (the gateway must answer 4xx) and what is wrong with it."""
    day_ahead = int(time.time() * 1000) + 86_400_000
    kinds = [
        (json.dumps({"user_id": "u1", "item_id": "no-such-item", "event_type": "view"}), "unknown item"),
        (json.dumps({"user_id": "u1", "item_id": item, "event_type": "teleport"}), "bad event type"),
        ('{"user_id": "u1", "item_id": ', "truncated JSON"),
        (json.dumps({"user_id": "u1", "item_id": item, "event_type": "view", "pad": "x" * 300_000}),
         "oversized body"),
        (json.dumps({"user_id": "u1", "item_id": item, "event_type": "view", "ts_ms": day_ahead}),
         "a day in the future"),
        (json.dumps({"user_id": "u 1\n", "item_id": item, "event_type": "view"}), "bad user id"),
    ]
    body, why = kinds[i % len(kinds)]
    return body.encode(), why


def kafka_garbage(i: int, item: str) -> bytes:
    """A message the consumer must dead-letter: broken, oversized or invalid."""
    day_ahead = int(time.time() * 1000) + 86_400_000
    return [
        b'{"event_id": "g%d", "user_id": ' % i,
        b"\xff\xfe not utf-8 %d" % i,
        b'{"event_id": "g%d", "pad": "%s"}' % (i, b"x" * 5000),
        b'{"event_id": "g%d", "user_id": "u1", "item_id": "%s", "event_type": "teleport"}'
        % (i, item.encode()),
        b'{"event_id": "g%d", "user_id": "u1", "event_type": "view"}' % i,
        b"garbage %d" % i,
        b'{"event_id": "g%d", "user_id": "u1", "item_id": "%s", "event_type": "view", "ts_ms": %d}'
        % (i, item.encode(), day_ahead),
    ][i % 7]


@dataclass
class Traffic:
    """What the load did: every response, and the fate of every valid event."""

    responses: list[Response] = field(default_factory=list)
    accepted: dict[str, Event] = field(default_factory=dict)  # 202
    never_accepted: dict[str, Event] = field(default_factory=dict)  # only 5xx / no response
    rejected_valid: dict[str, str] = field(default_factory=dict)  # a valid event answered 4xx
    malformed_gateway: list[tuple[str, int]] = field(default_factory=list)  # (why, status)
    retries: int = 0


class HttpLoad(threading.Thread):
    """Open-loop GETs at ``request_rate`` and event slots at ``event_rate`` for ``duration_s``. A
    valid event answered 5xx or not at all is re-sent with its event_id (as the API tells clients
    to) after ``retry_s``, doubling up to 8 s, until accepted or ``retry_for_s`` after the end;
    every attempt counts."""

    def __init__(self, url: str, users: Sequence[str], items: Sequence[str], *, request_rate: float,
                 event_rate: float, duration_s: float, t0: float, run_id: str, seed: int,
                 inject_kafka: Callable[[bytes, bytes], None], timeout_s: float = 15.0,
                 retry_s: float = 1.0, retry_for_s: float = 90.0) -> None:
        super().__init__(name="soak-http", daemon=True)
        self.url, self.users, self.items = url, list(users), list(items)
        self.request_rate, self.event_rate, self.duration_s = request_rate, event_rate, duration_s
        self.t0, self.run_id, self.rng = t0, run_id, random.Random(seed)
        self.inject_kafka, self.timeout_s = inject_kafka, timeout_s
        self.retry_s, self.retry_for_s = retry_s, retry_for_s
        self.traffic = Traffic()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    async def _main(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=1024)) as session:
            self.session = session
            tasks: set[asyncio.Task] = set()
            await asyncio.gather(self._schedule(self.request_rate, self._get, tasks),
                                 self._schedule(self.event_rate, self._event, tasks))
            while tasks:
                await asyncio.gather(*list(tasks))

    async def _schedule(self, rate: float, send: Callable, tasks: set[asyncio.Task]) -> None:
        if rate <= 0:
            return
        for i in range(int(self.duration_s * rate)):
            delay = self.t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _call(self, method: str, path: str, endpoint: str,
                    body: bytes | None = None) -> tuple[int, str]:
        started = time.monotonic()
        try:
            async with self.session.request(method, self.url + path, data=body,
                                            headers={"Content-Type": "application/json"}) as resp:
                status, text = resp.status, await resp.text(errors="replace")
        except Exception as exc:  # noqa: BLE001 - a request without a response is recorded as 0
            status, text = 0, f"{type(exc).__name__}: {exc}"
        done = time.monotonic()
        detail = text if status >= 500 or status == 0 else ""
        self.traffic.responses.append(Response(started - self.t0, endpoint, status,
                                               (done - started) * 1000, detail))
        return status, text

    async def _get(self, i: int) -> None:
        user = self.users[self.rng.randrange(len(self.users))]
        await self._call("GET", f"/v1/users/{user}/recommendations?k=10",
                         "GET /v1/users/{id}/recommendations")

    async def _event(self, i: int) -> None:
        item = self.items[self.rng.randrange(len(self.items))]
        if i % MALFORMED_EVERY == MALFORMED_EVERY // 2 - 1:
            body, why = gateway_garbage(i // MALFORMED_EVERY, item)
            status, _ = await self._call("POST", "/v1/events", "POST /v1/events (malformed)", body)
            self.traffic.malformed_gateway.append((why, status))
            return
        if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            self.inject_kafka(f"bad-{i}".encode(), kafka_garbage(i // MALFORMED_EVERY, item))
            return
        event = Event(event_id=f"{self.run_id}-{i}",
                      user_id=self.users[self.rng.randrange(len(self.users))], item_id=item,
                      event_type=self.rng.choice(EVENT_TYPES), ts_ms=int(time.time() * 1000))
        deadline = self.t0 + self.duration_s + self.retry_for_s
        body = event.to_bytes()
        backoff = self.retry_s
        while True:
            status, text = await self._call("POST", "/v1/events", "POST /v1/events", body)
            if status == 202:
                self.traffic.accepted[event.event_id] = event
                self.traffic.never_accepted.pop(event.event_id, None)
                return
            if 400 <= status < 500:
                self.traffic.rejected_valid[event.event_id] = f"{status}: {text[:200]}"
                return
            self.traffic.never_accepted[event.event_id] = event
            if time.monotonic() + backoff > deadline:
                return
            self.traffic.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(8.0, backoff * 2)


class KafkaGarbage(threading.Thread):
    """Writes malformed messages straight into the events topic, re-sending each one the broker
    did not acknowledge (it may be restarting) until ``deadline_s`` after the stop."""

    def __init__(self, bootstrap_servers: str, topic: str, deadline_s: float = 90.0) -> None:
        super().__init__(name="soak-kafka-garbage", daemon=True)
        self.bootstrap_servers, self.topic, self.deadline_s = bootstrap_servers, topic, deadline_s
        self.todo: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue()
        self.acked: set[bytes] = set()
        self.unacked: set[bytes] = set()
        self.resends = 0
        self.give_up_at: float | None = None
        self.error: BaseException | None = None

    def inject(self, key: bytes, value: bytes) -> None:
        self.todo.put((key, value))

    def finish(self) -> None:
        self.give_up_at = time.monotonic() + self.deadline_s
        self.todo.put(None)
        self.join(self.deadline_s + 30)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def _run(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                 request_timeout_ms=5000, max_block_ms=5000,
                                 max_request_size=2 * 1024 * 1024)
        try:
            while True:
                message = self.todo.get()
                if message is None:
                    break
                key, value = message
                self.unacked.add(key)
                while True:
                    try:
                        producer.send(self.topic, key=key, value=value).get(timeout=10)
                        self.acked.add(key)
                        self.unacked.discard(key)
                        break
                    except KafkaError:
                        self.resends += 1
                        if self.give_up_at is not None and time.monotonic() > self.give_up_at:
                            break
                        time.sleep(1.0)
        finally:
            producer.close(timeout=5)


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` and its descendants (Triton's python-backend stubs), MiB."""
    if pid is None:
        return None
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return round(total / 1024, 2) if total else None


class Sampler(threading.Thread):
    """Every ``every_s``: RSS per service (pids looked up each time: a restart changes them), Redis
    used_memory, and the gateway's /readyz (status and the reasons of failing checks)."""

    def __init__(self, pids: dict[str, Callable[[], int | None]], redis_port: int, gateway_url: str,
                 t0: float, every_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pids, self.redis_port, self.gateway_url = pids, redis_port, gateway_url
        self.t0, self.every_s = t0, every_s
        self.rows: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.rows.append(self.sample())
            self.stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def sample(self) -> dict:
        row: dict = {"t_s": round(time.monotonic() - self.t0, 2)}
        for name, pid in self.pids.items():
            row[f"rss_{name}_mib"] = rss_mib(pid())
        row["redis_used_memory_mib"] = redis_used_memory(self.redis_port)
        if row["redis_used_memory_mib"] is not None:
            row["redis_used_memory_mib"] = round(row["redis_used_memory_mib"] / 2**20, 3)
        row["readyz_status"], row["readyz_reasons"] = readyz(self.gateway_url)
        return row


def redis_used_memory(port: int) -> int | None:
    import redis

    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return int(client.info("memory")["used_memory"])
    except redis.RedisError:
        return None
    finally:
        client.close()


def readyz(gateway_url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{gateway_url}/readyz", timeout=2) as r:
            return r.status, ""
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
            failing = [k for k, ok in body.get("checks", {}).items() if not ok]
            return exc.code, "; ".join(failing + [f"{k}: {v}" for k, v in body.get("reasons", {}).items()])
        except ValueError:
            return exc.code, ""
    except OSError as exc:
        return 0, f"{type(exc).__name__}"
