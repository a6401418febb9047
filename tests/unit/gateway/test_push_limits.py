"""The push path's bounds (issue 15): SSE streams per user, stream lifetime, keep-alive and dead
peers, coalesced and capped refreshes with backoff polling, the frequency cap's amortised eviction."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from feature_service.store import InMemoryStore
from features.events import Event
from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.errors import Overloaded
from gateway.push import FrequencyCap, Pusher, PushHub, PushMessage, PushStream, TooManyStreams
from tests.unit.gateway.test_push import FakeProducer, fake_recommend


def cart(user="u", event_id="e1"):
    return Event(event_id=event_id, user_id=user, item_id="i", event_type="cart",
                 ts_ms=int(time.time() * 1000))


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- SSE streams --------------------------------------------------------------------------------

def test_one_user_cannot_take_every_stream_slot():
    async def scenario():
        hub = PushHub("unused:9092", "r", max_streams=1000)
        queues = [hub.subscribe("greedy", max_per_user=4) for _ in range(4)]
        with pytest.raises(TooManyStreams) as refused:
            hub.subscribe("greedy", max_per_user=4)
        assert refused.value.status_code == 429 and hub.open_streams == 4
        assert hub.subscribe("other", max_per_user=4) is not None  # others still get slots
        hub.unsubscribe("greedy", queues[0])
        assert hub.subscribe("greedy", max_per_user=4) is not None  # a freed slot is usable again

    asyncio.run(scenario())


def test_gateway_cap_still_applies_across_users():
    async def scenario():
        hub = PushHub("unused:9092", "r", max_streams=2)
        hub.subscribe("a", max_per_user=4), hub.subscribe("b", max_per_user=4)
        with pytest.raises(Overloaded):
            hub.subscribe("c", max_per_user=4)

    asyncio.run(scenario())


def test_the_fifth_stream_of_a_user_is_a_429_with_retry_after_in_the_error_shape():
    app = create_app(GatewaySettings(max_push_streams_per_user=4, push_keepalive_ms=15_000))
    hub = PushHub("unused:9092", "r")
    for _ in range(4):
        hub.subscribe("u1")
    app.state.push_hub = hub
    response = TestClient(app).get("/v1/users/u1/push")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "15"
    assert response.json()["error"]["code"] == "too_many_requests"
    assert hub.open_streams == 4  # the refused stream took nothing
    schema = app.openapi()["paths"]["/v1/users/{user_id}/push"]["get"]["responses"]
    assert "429" in schema


class Peer:
    """An ASGI client side: records what the stream sends; leaves when told; can stop reading."""

    def __init__(self, *, leave_after_s=None, stall_after=None, fail_after=None, error_after=None):
        self.messages: list[dict] = []
        self.leave_after_s = leave_after_s
        self.stall_after = stall_after  # sends taken before the peer stops reading
        self.fail_after = fail_after  # ... before a send raises OSError (connection reset)
        self.error_after = error_after  # ... before a send raises a bug

    async def receive(self):
        if self.leave_after_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.leave_after_s)
        return {"type": "http.disconnect"}

    async def send(self, message):
        n = len(self.messages)
        if self.stall_after is not None and n >= self.stall_after:
            await asyncio.Event().wait()
        if self.fail_after is not None and n >= self.fail_after:
            raise ConnectionResetError("peer gone")
        if self.error_after is not None and n >= self.error_after:
            raise RuntimeError("a bug")
        self.messages.append(message)

    def text(self):
        return "".join(m.get("body", b"").decode() for m in self.messages[1:])


def run_stream(peer, *, keepalive_s=0.02, lifetime_s=5.0, send_timeout_s=0.05, feed=()):
    hub = PushHub("unused:9092", "r")
    queue = hub.subscribe("u", max_per_user=4)
    stream = PushStream(hub, "u", queue, keepalive_s=keepalive_s, lifetime_s=lifetime_s,
                        send_timeout_s=send_timeout_s)

    async def scenario():
        for data in feed:
            hub._dispatch(b"u", data.encode())
        await asyncio.wait_for(stream({"type": "http"}, peer.receive, peer.send), 5)

    return hub, stream, scenario


def test_a_stream_ends_cleanly_at_its_lifetime_with_a_final_event_and_frees_its_slot():
    peer = Peer()
    hub, stream, scenario = run_stream(peer, keepalive_s=0.02, lifetime_s=0.15, feed=['{"n":1}'])
    asyncio.run(scenario())
    assert stream.ended == "lifetime" and hub.open_streams == 0
    assert peer.messages[0]["status"] == 200
    text = peer.text()
    assert text.startswith(": connected\n\n") and 'event: recommendations\ndata: {"n":1}\n\n' in text
    assert ": keep-alive\n\n" in text  # idle in between: comments
    assert text.endswith('event: reconnect\ndata: {"reason": "max_lifetime"}\n\n')
    assert peer.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_client_that_leaves_frees_its_slot():
    peer = Peer(leave_after_s=0.05)
    hub, stream, scenario = run_stream(peer)
    asyncio.run(scenario())
    assert stream.ended == "disconnect" and hub.open_streams == 0


def test_a_peer_that_stops_reading_is_closed_at_the_send_timeout():
    peer = Peer(stall_after=2)  # takes the headers and ": connected", then never the keep-alive
    hub, stream, scenario = run_stream(peer, keepalive_s=0.02, send_timeout_s=0.05)
    started = time.monotonic()
    asyncio.run(scenario())
    assert stream.ended == "send_failed" and hub.open_streams == 0
    assert time.monotonic() - started < 1


def test_a_reset_connection_is_noticed_at_the_next_keep_alive():
    peer = Peer(fail_after=2)
    hub, stream, scenario = run_stream(peer, keepalive_s=0.02)
    asyncio.run(scenario())
    assert stream.ended == "send_failed" and hub.open_streams == 0


def test_an_error_or_a_cancellation_still_frees_the_slot():
    peer = Peer(error_after=1)
    hub, stream, scenario = run_stream(peer)
    with pytest.raises(RuntimeError):
        asyncio.run(scenario())
    assert stream.ended == "error" and hub.open_streams == 0

    hub, stream, _ = run_stream(Peer())

    async def cancelled():
        task = asyncio.ensure_future(stream({"type": "http"}, Peer().receive, Peer().send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    assert hub.open_streams == 0


# --- Refreshes ----------------------------------------------------------------------------------

class CountingStore(InMemoryStore):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def get(self, user_id):
        self.reads += 1
        return super().get(user_id)


def test_a_500_event_batch_for_one_user_is_one_refresh_with_bounded_store_reads():
    store, producer = CountingStore(), FakeProducer()
    events = [cart(event_id=f"e{n}") for n in range(500)]

    async def scenario():
        pusher = Pusher(store, producer, "r", FrequencyCap(0), visible_timeout_ms=300)
        for event in events:
            pusher.schedule(event, fake_recommend)
        assert len(pusher._tasks) == 1
        await asyncio.gather(*pusher._tasks)  # never visible: gives up at the timeout
        # backoff 10, 20, 40, 80, 160, then the deadline: a handful of reads, not 500 x 30
        assert store.reads <= 8
        for event in events:  # now they are in the store
            store.apply(event)
        pusher.schedule(cart(event_id="e500"), fake_recommend)
        pusher.schedule(cart(event_id="e501"), fake_recommend)
        store.apply(cart(event_id="e500"))
        store.apply(cart(event_id="e501"))
        assert len(pusher._tasks) == 1
        await asyncio.gather(*pusher._tasks)
        await pusher.close()

    asyncio.run(scenario())
    assert len(producer.sent) == 1  # one push for the coalesced events, after the newest one
    assert PushMessage.model_validate_json(producer.sent[0][2]).trigger.event_id == "e501"


def test_refreshes_in_flight_are_capped_and_the_rest_counted_as_dropped():
    before = sample("gateway_pushes_total", outcome="dropped")

    async def scenario():
        pusher = Pusher(InMemoryStore(), FakeProducer(), "r", FrequencyCap(0),
                        visible_timeout_ms=50, max_refresh_tasks=3)
        for n in range(5):
            pusher.schedule(cart(user=f"u{n}"), fake_recommend)
        assert len(pusher._tasks) == 3
        await pusher.close()

    asyncio.run(scenario())
    assert sample("gateway_pushes_total", outcome="dropped") - before == 2


# --- Frequency cap ------------------------------------------------------------------------------

def test_the_frequency_cap_does_not_rebuild_its_table_on_every_call_above_100k_users():
    cap = FrequencyCap(interval_ms=60_000)
    now = time.monotonic()
    cap._last.update((f"u{n}", now) for n in range(100_001))
    table = cap._last
    for n in range(1000):
        assert cap.allow(f"new{n}")
        assert cap._last is table  # the same table, grown by one: no rebuild
    assert len(table) == 101_001 and not cap.allow("u7")


def test_the_frequency_cap_forgets_users_whose_interval_is_over():
    clock = [0.0]
    cap = FrequencyCap(interval_ms=1000, clock=lambda: clock[0])
    for n in range(1000):
        assert cap.allow(f"u{n}")
    clock[0] = 0.5
    assert not cap.allow("u1") and cap.allow("late")
    clock[0] = 1.2  # u0..u999 are over; "late" (0.5) is not
    assert cap.allow("x") and len(cap._last) == 2 and not cap.allow("late")
    clock[0] = 1.5
    assert cap.allow("late") and cap.allow("u1")
