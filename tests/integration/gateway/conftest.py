"""The in-process gateway the gateway tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.support.gateway import gateway_settings, wait_ready


@pytest.fixture
def gateway(exported, triton, kafka, topic, redis_server, request) -> Iterator[TestClient]:
    """A ready gateway app under ``TestClient`` on the session's Triton, Kafka and Redis, with this
    test's topic. Its feature store is the indirect parameter (``"memory"`` or ``"redis"``;
    ``"memory"`` when not parametrized); its gRPC front end listens on a free port
    (``app.state.grpc_port``)."""
    settings = GatewaySettings(**gateway_settings(
        exported, triton, kafka, topic, store=getattr(request, "param", "memory"),
        redis_url=redis_server.url, redis_key_prefix=topic, grpc_port=-1))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client
