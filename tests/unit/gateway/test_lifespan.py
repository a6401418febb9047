"""The lifespan's composition, with every component replaced by a recording fake: start order,
reverse stop order (also when one fails to start), what it leaves on ``app.state``."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from feature_service.store import InMemoryStore
from gateway import app as app_module
from gateway import components
from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.exposure import NoExposureLog
from gateway.served_model import ServedModel
from gateway.service import RecommendationService

ORDER = ["feature_store", "stock_inventory", "triton_client", "event_producer", "exposure_log",
         "embedded_consumer", "push_parts", "live_version_watcher", "grpc_front_end"]


async def _ready() -> bool:
    return True


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class Fakes:
    """A recording stand-in for each component in ``gateway.components``."""

    def __init__(self, catalog, fail: str | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail = fail
        hub = SimpleNamespace(alive=True, ready=_set_event())
        self.values = {
            "feature_store": InMemoryStore(),
            "stock_inventory": SimpleNamespace(out_of_stock=frozenset),
            "triton_client": SimpleNamespace(ready=_ready),
            "event_producer": SimpleNamespace(connected=lambda: True),
            "exposure_log": NoExposureLog(),
            "embedded_consumer": SimpleNamespace(alive=True, consumer=SimpleNamespace(ready=_set_event())),
            "push_parts": components.PushParts(hub=hub, pusher=SimpleNamespace(schedule=None)),
            "live_version_watcher": None,
            "grpc_front_end": 50123,
        }
        self.served = ServedModel(version=7, catalog=catalog, popular_items=[], sequence_length=4)

    def component(self, name: str):
        @asynccontextmanager
        async def fake(*args, **kwargs):
            if name == self.fail:
                raise RuntimeError(f"{name} cannot start")
            self.log.append(("start", name))
            try:
                yield self.values[name]
            finally:
                self.log.append(("stop", name))
        return fake


@pytest.fixture
def fakes(catalog, monkeypatch) -> Fakes:
    fakes = Fakes(catalog)
    for name in ORDER:
        monkeypatch.setattr(components, name, fakes.component(name))
    monkeypatch.setattr(app_module, "load_served_model", lambda repository: fakes.served)
    return fakes


def test_components_start_in_order_stop_in_reverse_and_are_on_app_state(fakes):
    app = create_app(GatewaySettings())
    with TestClient(app) as client:
        assert fakes.log == [("start", name) for name in ORDER]
        state = app.state
        assert isinstance(state.service, RecommendationService)
        assert state.service.served is fakes.served and state.service.store is fakes.values["feature_store"]
        assert state.service.pusher is fakes.values["push_parts"].pusher
        assert state.service.exposures is fakes.values["exposure_log"]
        assert state.push_hub is fakes.values["push_parts"].hub
        assert state.consumer is fakes.values["embedded_consumer"]
        assert state.grpc_port == 50123
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert list(ready.json()["checks"]) == ["triton", "kafka", "store", "consumer", "push"]
    assert fakes.log[len(ORDER):] == [("stop", name) for name in reversed(ORDER)]


def test_a_component_that_cannot_start_stops_those_started_before_it(fakes):
    fakes.fail = "event_producer"
    with pytest.raises(RuntimeError, match="event_producer cannot start"):
        with TestClient(create_app(GatewaySettings())):
            pass
    assert fakes.log == [("start", "feature_store"), ("start", "stock_inventory"),
                         ("start", "triton_client"),
                         ("stop", "triton_client"), ("stop", "stock_inventory"), ("stop", "feature_store")]


def test_readiness_says_why_the_consumer_is_not_ready(fakes):
    stuck = "user-events[2]: 5 consecutive failed attempts over 40 s (store unavailable)"
    fakes.values["embedded_consumer"] = SimpleNamespace(
        alive=True, consumer=SimpleNamespace(ready=threading.Event()), not_ready_reason=stuck)
    with TestClient(create_app(GatewaySettings())) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["consumer"] is False
        assert ready.json()["reasons"] == {"consumer": stuck}
        fakes.values["embedded_consumer"].alive = False
        assert client.get("/readyz").json()["reasons"] == {"consumer": "consumer thread stopped"}


def test_without_the_embedded_consumer_readiness_does_not_ask_for_it(fakes):
    fakes.values["embedded_consumer"] = None
    app = create_app(GatewaySettings(store="redis", embedded_consumer=False))
    with TestClient(app) as client:
        assert app.state.consumer is None
        assert list(client.get("/readyz").json()["checks"]) == ["triton", "kafka", "store", "push"]


# --- the components that need no server -------------------------------------------------------------


def test_background_task_is_cancelled_on_the_way_out():
    async def scenario():
        started = asyncio.Event()

        async def forever():
            started.set()
            await asyncio.sleep(3600)

        async with components.background(forever()) as task:
            await started.wait()
        return task

    assert asyncio.run(scenario()).cancelled()


def test_switched_off_components_yield_none():
    async def scenario():
        settings = GatewaySettings(store="redis", embedded_consumer=False, grpc_port=0)
        async with components.embedded_consumer(settings, settings.features(), InMemoryStore()) as consumer:
            assert consumer is None
        async with components.grpc_front_end(settings, lambda: None) as port:
            assert port is None

    asyncio.run(scenario())


def test_stock_inventory_in_process_needs_no_refresher():
    async def scenario():
        async with components.stock_inventory(GatewaySettings()) as inventory:
            inventory.set_quantities({"a": 0})
            assert inventory.out_of_stock() == {"a"}
            assert len(asyncio.all_tasks()) == 1  # only this one: no refresher

    asyncio.run(scenario())


class _Triton:
    """Stands in for TritonRecommender: connects, serves sequence length 4."""

    def __init__(self, *args) -> None:
        self.sequence_length = None
        self.closed = False

    async def connect(self) -> None:
        self.sequence_length = 4

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("history_items, error", [(4, None), (3, "RECSYS_GATEWAY_HISTORY_ITEMS >= 4")])
def test_triton_client_refuses_a_store_that_keeps_fewer_events_than_the_model_reads(
        catalog, monkeypatch, history_items, error):
    monkeypatch.setattr(components, "TritonRecommender", _Triton)
    served = ServedModel(version=1, catalog=catalog, popular_items=[], sequence_length=4)

    async def start():
        async with components.triton_client(GatewaySettings(history_items=history_items), served) as t:
            return t

    if error is None:
        assert asyncio.run(start()).closed
    else:
        with pytest.raises(RuntimeError, match=error):
            asyncio.run(start())


def test_the_embedded_store_takes_the_rules_of_the_feature_settings(catalog, tmp_path):
    from feature_service.config import FeatureServiceSettings
    served = ServedModel(version=1, catalog=catalog, popular_items=[], sequence_length=4)
    features = FeatureServiceSettings(dedup_events_per_user=3, seen_items=7, user_ttl_s=60)

    async def rules():
        settings = GatewaySettings(snapshot_path=str(tmp_path / "none.json"))
        async with components.feature_store(settings, features, served) as store:
            return store.rules

    assert asyncio.run(rules()) == features.rules()
    assert features.rules().dedup_events_per_user == 3 and features.rules().seen_items == 7
