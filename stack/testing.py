"""Session-scoped pytest fixtures for the real services, for other packages' tests.

Use them from a conftest.py with either

    pytest_plugins = ["stack.testing"]

or `from stack.testing import kafka_broker, redis_server  # noqa: F401`.
Each fixture skips the test (with the reason) when the service cannot run on this machine.
They are shared by the whole session: a test that restarts or breaks a service should start
its own KafkaBroker / RedisServer instead, and tests should use unique topic names / keys.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from stack.kafka import KafkaBroker, kafka_unavailable_reason
from stack.redis import RedisServer, redis_unavailable_reason


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A running single-node Kafka broker; `kafka_broker.create_topics([...])` as needed."""
    reason = kafka_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running redis-server without persistence; connect with `redis_server.url`."""
    reason = redis_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log") as server:
        yield server
