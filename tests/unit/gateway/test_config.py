"""Gateway settings: the rules across fields refuse a gateway that could not work as configured."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from gateway.config import GatewaySettings, model_share_ms


@pytest.fixture(autouse=True)
def no_gateway_environment(monkeypatch):
    """Only what a test passes counts, not the RECSYS_GATEWAY_* variables of whoever runs it."""
    for name in [n for n in os.environ if n.startswith("RECSYS_GATEWAY_")]:
        monkeypatch.delenv(name)


def invalid(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        GatewaySettings(**fields)
    return str(info.value)


# --- the Triton timeout and the request deadline ---------------------------------------------------


def test_defaults_are_valid_and_the_triton_timeout_is_a_backstop_beyond_the_deadline():
    settings = GatewaySettings()
    assert settings.request_deadline_ms == 250 and model_share_ms(250) == 200
    assert settings.triton_timeout_ms == 10_000


@pytest.mark.parametrize("deadline_ms, timeout_ms", [(250, 251), (10_000, 20_000), (2000, 10_000)])
def test_a_triton_timeout_beyond_the_deadline_is_kept(deadline_ms, timeout_ms):
    settings = GatewaySettings(request_deadline_ms=deadline_ms, triton_timeout_ms=timeout_ms)
    assert settings.triton_timeout_ms == timeout_ms


@pytest.mark.parametrize("deadline_ms, timeout_ms", [
    (250, 200),  # the request's model share: a timeout there would cancel calls Triton answers
    (250, 250), (10_000, 8000), (20_000, 10_000),
])
def test_a_triton_timeout_within_the_deadline_is_refused(deadline_ms, timeout_ms):
    message = invalid(request_deadline_ms=deadline_ms, triton_timeout_ms=timeout_ms)
    assert (f"triton_timeout_ms ({timeout_ms}) must be longer than request_deadline_ms "
            f"({deadline_ms})") in message
    assert "cancel" in message


def test_the_rule_holds_for_environment_variables_too(monkeypatch):
    monkeypatch.setenv("RECSYS_GATEWAY_TRITON_TIMEOUT_MS", "200")
    assert "must be longer than request_deadline_ms (250)" in invalid()
    monkeypatch.setenv("RECSYS_GATEWAY_REQUEST_DEADLINE_MS", "100")
    assert GatewaySettings().triton_timeout_ms == 200


# --- ports -----------------------------------------------------------------------------------------


def test_grpc_and_rest_cannot_share_a_port():
    message = invalid(port=50051, grpc_port=50051)
    assert "grpc_port and port are both 50051" in message


@pytest.mark.parametrize("port, grpc_port", [(8080, 50051), (8080, 0), (8080, -1), (0, 0), (0, -1)])
def test_distinct_ports_a_free_grpc_port_or_no_grpc_are_fine(port, grpc_port):
    assert GatewaySettings(port=port, grpc_port=grpc_port).grpc_port == grpc_port


@pytest.mark.parametrize("fields", [{"grpc_port": -2}, {"grpc_port": 65536}, {"port": -1},
                                    {"port": 70000}])
def test_ports_out_of_range_are_refused(fields):
    invalid(**fields)


# --- the feature store ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "127.0.0.1:6379", "http://redis:6379"])
def test_a_redis_store_needs_a_redis_url(url):
    message = invalid(store="redis", redis_url=url)
    assert "store=redis needs a redis_url starting with redis://" in message


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "rediss://cache:6380/1", "unix:///run/redis.sock"])
def test_redis_urls_of_every_scheme_are_accepted(url):
    assert GatewaySettings(store="redis", redis_url=url).redis_url == url


def test_an_in_process_store_ignores_the_redis_url():
    assert GatewaySettings(store="memory", redis_url="").store == "memory"


def test_without_the_embedded_consumer_the_store_must_be_shared():
    message = invalid(embedded_consumer=False, store="memory")
    assert "embedded_consumer=false needs store=redis" in message
    assert not GatewaySettings(embedded_consumer=False, store="redis").embedded_consumer


# --- single fields that time or pace something -----------------------------------------------------


@pytest.mark.parametrize("field", ["stock_cache_ms", "push_visible_timeout_ms", "push_keepalive_ms",
                                   "kafka_timeout_ms", "triton_timeout_ms", "request_deadline_ms"])
def test_durations_must_be_positive(field):
    invalid(**{field: 0})
