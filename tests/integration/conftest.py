"""Real services, started once per session, on free ports, always stopped.

Under `make test` (RECSYS_REQUIRE_SERVICES=1) and in CI a service that cannot start fails the
tests; elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from export.pipeline import PipelineResult, run
from export.train import TrainConfig
from stack.kafka import KafkaBroker, kafka_unavailable_reason
from stack.redis import RedisServer, redis_unavailable_reason
from stack.testing import require_service
from stack.triton import TritonServer, triton_unavailable_reason

# The shared helpers' asserts explain their failures as the tests' own do (before any imports them).
pytest.register_assert_rewrite("tests.support")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@dataclass
class Exported:
    result: PipelineResult
    repository: Path
    artifacts: Path


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    """A model trained briefly on ML-100K and exported to a fresh repository."""
    root = tmp_path_factory.mktemp("export")
    result = run("ml-100k", root / "model_repository", root / "artifacts", TrainConfig(epochs=2))
    return Exported(result, root / "model_repository", root / "artifacts")


@pytest.fixture(scope="session")
def triton(exported, tmp_path_factory) -> Iterator[TritonServer]:
    require_service(triton_unavailable_reason())
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(exported.repository, log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[KafkaBroker]:
    require_service(kafka_unavailable_reason())
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    require_service(redis_unavailable_reason())
    with RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log") as server:
        yield server


@pytest.fixture
def topic(kafka) -> str:
    """A fresh events topic (and its dead-letter topic) per test."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([name, f"{name}.dlq"], partitions=3)
    return name
