"""Push pieces with fakes: the frequency cap, the pusher's wait-then-push, the hub's fan-out."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from kafka.future import Future

from feature_service.store import InMemoryStore
from features.events import Event
from gateway.errors import Overloaded
from gateway.push import FrequencyCap, Pusher, PushHub, PushMessage, sse
from gateway.schemas import Recommendations


class FakeProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))
        return Future().success(None)  # acknowledged at once


async def fake_recommend(user_id):
    return Recommendations(request_id="r1", user_id=user_id, items=[], cold_start=False, degraded=False,
                           source="model", model_version=1)


def cart(user="u", event_id="e1"):
    return Event(event_id=event_id, user_id=user, item_id="i", event_type="cart",
                 ts_ms=int(time.time() * 1000))


def test_frequency_cap_allows_one_push_per_interval_per_user():
    cap = FrequencyCap(interval_ms=60_000)
    assert cap.allow("u") and not cap.allow("u") and cap.allow("v")
    assert all(FrequencyCap(interval_ms=0).allow("u") for _ in range(3))


def test_pusher_waits_for_the_event_in_the_store_then_produces_once_per_interval():
    store, producer = InMemoryStore(), FakeProducer()

    async def scenario():
        pusher = Pusher(store, producer, "recommendations", FrequencyCap(60_000),
                        visible_timeout_ms=2000)
        pusher.schedule(cart(event_id="e1"), fake_recommend)
        await asyncio.sleep(0.1)
        assert producer.sent == []  # not in the store yet: nothing pushed
        store.apply(cart(event_id="e1"))
        await asyncio.sleep(0.4)  # polls back off (10 ms doubling to 200 ms): seen within ~160 ms
        pusher.schedule(cart(event_id="e2"), fake_recommend)  # within the interval: capped
        store.apply(cart(event_id="e2"))
        await asyncio.sleep(0.1)
        await pusher.close()

    asyncio.run(scenario())
    assert len(producer.sent) == 1
    topic, key, value = producer.sent[0]
    message = PushMessage.model_validate_json(value)
    assert (topic, key) == ("recommendations", b"u") and message.trigger.event_id == "e1"


def test_pusher_gives_up_on_an_event_that_never_becomes_visible():
    producer = FakeProducer()

    async def scenario():
        pusher = Pusher(InMemoryStore(), producer, "r", FrequencyCap(0), visible_timeout_ms=50)
        pusher.schedule(cart(), fake_recommend)
        await asyncio.sleep(0.2)
        await pusher.close()

    asyncio.run(scenario())
    assert producer.sent == []


def test_hub_fans_out_to_the_users_streams_keeping_the_newest_and_bounds_streams():
    async def scenario():
        hub = PushHub("unused:9092", "recommendations", max_streams=2, queue_size=2)
        first, second = hub.subscribe("u"), hub.subscribe("u")
        with pytest.raises(Overloaded):
            hub.subscribe("v")
        for n in range(3):
            hub._dispatch(b"u", json.dumps({"n": n}).encode())
        hub._dispatch(b"v", b"{}")  # nobody listening for v
        got = [json.loads(first.get_nowait())["n"] for _ in range(first.qsize())]
        assert got == [1, 2] and second.qsize() == 2  # a slow stream loses the oldest
        hub.unsubscribe("u", first)
        hub.unsubscribe("u", first)  # twice is harmless
        assert hub.subscribe("v") is not None

    asyncio.run(scenario())


def test_sse_framing():
    assert sse("recommendations", '{"a":1}') == 'event: recommendations\ndata: {"a":1}\n\n'
    assert sse("x", "1", event_id="7").startswith("id: 7\n")
