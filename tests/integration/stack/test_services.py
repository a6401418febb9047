"""The real services, started by the stack launchers: Redis, Kafka (KRaft) and Triton."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from stack.kafka import KafkaBroker, kafka_unavailable_reason
from stack.ports import port_is_open
from stack.process import ServiceStartError
from stack.redis import RedisServer, redis_unavailable_reason
from stack.testing import require_service
from stack.triton import TritonServer, triton_unavailable_reason

pytestmark = pytest.mark.integration


# --- Redis ------------------------------------------------------------------------------------

def test_redis_set_get_and_port_closed_after_stop(tmp_path: Path) -> None:
    require_service(redis_unavailable_reason())
    import redis

    server = RedisServer(log_path=tmp_path / "redis.log")
    with server:
        assert server.ready_after_s is not None
        client = redis.Redis.from_url(server.url)
        client.set("user:1", "hello")
        assert client.get("user:1") == b"hello"
        client.close()
    assert not server.running
    assert not port_is_open(server.port)


def test_redis_restart_keeps_port_and_loses_data(tmp_path: Path) -> None:
    require_service(redis_unavailable_reason())
    import redis

    with RedisServer(log_path=tmp_path / "redis.log") as server:
        port = server.port
        redis.Redis.from_url(server.url).set("k", "v")
        server.restart()
        assert server.port == port
        assert redis.Redis.from_url(server.url).get("k") is None


def test_persistent_redis_keeps_acknowledged_writes_across_a_restart(tmp_path: Path) -> None:
    require_service(redis_unavailable_reason())
    import redis

    with RedisServer(log_path=tmp_path / "redis.log", persistent=True) as server:
        redis.Redis.from_url(server.url).set("k", "v")
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") == b"v"


# --- Kafka ------------------------------------------------------------------------------------

def test_kafka_produce_and_consume_keyed_messages(tmp_path: Path) -> None:
    require_service(kafka_unavailable_reason())
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"events-{uuid.uuid4().hex[:8]}"
    with KafkaBroker(tmp_path / "kafka") as broker:
        assert broker.ready_after_s is not None
        broker.create_topics([topic])
        broker.create_topics([topic])  # idempotent

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        sent = [(f"user-{i}".encode(), f"event-{i}".encode()) for i in range(3)]
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
        producer.close()

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap_servers,
            group_id="test",
            auto_offset_reset="earliest",
            consumer_timeout_ms=20_000,
        )
        received = []
        for message in consumer:
            received.append((message.key, message.value))
            if len(received) == len(sent):
                break
        consumer.close()
        assert sorted(received) == sorted(sent)

        admin = broker.admin()
        try:
            partitions = admin.describe_topics([topic])[0]["partitions"]
        finally:
            admin.close()
        assert len(partitions) == 3
    assert not broker.running
    assert not port_is_open(broker.port)


def test_kafka_restart_keeps_ports_topics_and_messages(tmp_path: Path) -> None:
    require_service(kafka_unavailable_reason())
    from kafka import KafkaConsumer, KafkaProducer

    with KafkaBroker(tmp_path / "kafka") as broker:
        broker.create_topics(["durable"], partitions=1)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        producer.send("durable", key=b"user-1", value=b"before restart")
        producer.flush(timeout=30)
        producer.close()
        port = broker.port

        broker.restart()

        assert broker.port == port
        consumer = KafkaConsumer("durable", bootstrap_servers=broker.bootstrap_servers,
                                 auto_offset_reset="earliest", consumer_timeout_ms=20_000)
        first = next(iter(consumer))
        consumer.close()
        assert (first.key, first.value) == (b"user-1", b"before restart")


# --- Triton -----------------------------------------------------------------------------------

_IDENTITY_MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", data.astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

_FAILING_MODEL_PY = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file is corrupt")

    def execute(self, requests):
        return []
'''


def _write_python_model(repository: Path, name: str, model_py: str) -> None:
    """One python-backend model: FP32 INPUT0 [4] -> OUTPUT0 [4], dynamic batching."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, backend="python", max_batch_size=8)
    config.input.add(name="INPUT0", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[4])
    config.dynamic_batching.SetInParent()  # `dynamic_batching {}`: present, all defaults
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)

    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture
def triton_available() -> None:
    require_service(triton_unavailable_reason())


@pytest.mark.usefixtures("triton_available")
def test_triton_serves_identity_model_over_grpc(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    repository = tmp_path / "models"
    _write_python_model(repository, "identity", _IDENTITY_MODEL_PY)

    with TritonServer(repository, log_path=tmp_path / "triton.log") as server:
        assert server.ready_after_s is not None
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            batch = np.arange(8, dtype=np.float32).reshape(2, 4)
            infer_input = grpcclient.InferInput("INPUT0", list(batch.shape), "FP32")
            infer_input.set_data_from_numpy(batch)
            result = client.infer("identity", [infer_input])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), batch)
        finally:
            client.close()

        server.unload_model("identity")
        assert not server.is_model_ready("identity")
        server.load_model("identity")
        assert server.is_model_ready("identity")
    assert not server.running
    assert not port_is_open(server.grpc_port)


@pytest.mark.usefixtures("triton_available")
def test_triton_reports_model_that_fails_to_initialize(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    _write_python_model(repository, "identity", _IDENTITY_MODEL_PY)
    _write_python_model(repository, "broken_ranker", _FAILING_MODEL_PY)

    server = TritonServer(repository, log_path=tmp_path / "triton.log", startup_timeout_s=120)
    with pytest.raises(ServiceStartError) as excinfo:
        server.start()
    message = str(excinfo.value)
    assert "broken_ranker" in message
    assert "weights file is corrupt" in message
    assert not server.running
