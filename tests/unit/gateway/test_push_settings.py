"""The push limits are settings (RECSYS_GATEWAY_PUSH_*), and they reach the hub and the pusher."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from feature_service.store import InMemoryStore
from gateway import components
from gateway.config import GatewaySettings
from gateway.push import PushHub


@pytest.fixture(autouse=True)
def no_gateway_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith("RECSYS_GATEWAY_")]:
        monkeypatch.delenv(name)


def test_push_limits_from_the_environment_reach_the_hub_and_the_pusher(monkeypatch):
    monkeypatch.setattr(PushHub, "start", lambda self: None)  # no Kafka here
    monkeypatch.setattr(PushHub, "stop", lambda self, timeout_s=5: None)
    for name, value in {"PUSH_MAX_REFRESH_TASKS": "7", "PUSH_STORE_POLL_INITIAL_MS": "5",
                        "PUSH_STORE_POLL_MAX_MS": "50", "PUSH_PRODUCE_TIMEOUT_MS": "1500",
                        "PUSH_STREAM_QUEUE_MESSAGES": "3", "MAX_PUSH_STREAMS": "11",
                        "PUSH_VISIBLE_TIMEOUT_MS": "900"}.items():
        monkeypatch.setenv(f"RECSYS_GATEWAY_{name}", value)
    settings = GatewaySettings()

    async def parts():
        producer = SimpleNamespace(client=object())
        async with components.push_parts(settings, InMemoryStore(), producer) as made:
            return made

    made = asyncio.run(parts())
    pusher, hub = made.pusher, made.hub
    assert (pusher.max_refresh_tasks, pusher.poll_initial_ms, pusher.poll_max_ms,
            pusher.produce_timeout_ms, pusher.visible_timeout_ms) == (7, 5, 50, 1500, 900)
    assert (hub.queue_size, hub.max_streams) == (3, 11)


def test_a_poll_that_would_back_off_downwards_is_refused():
    with pytest.raises(ValidationError, match="must not exceed push_store_poll_max_ms"):
        GatewaySettings(push_store_poll_initial_ms=500, push_store_poll_max_ms=200)
