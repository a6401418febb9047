"""Launcher configuration that can be checked without starting a service."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stack.kafka import KafkaBroker, _random_cluster_id
from stack.process import ServiceStartError
from stack.redis import RedisServer
from stack.testing import require_service
from stack.triton import TritonServer, prepare_server_dir, triton_unavailable_reason


def test_triton_loads_every_model_by_default(tmp_path: Path) -> None:
    server = TritonServer(tmp_path)
    argv = server._argv(Path("/srv/triton"))
    assert "--model-control-mode=explicit" in argv
    assert "--load-model=*" in argv
    ports = {server.http_port, server.grpc_port, server.metrics_port}
    assert len(ports) == 3
    assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"
    assert server.http_url == f"http://127.0.0.1:{server.http_port}"


def test_triton_loads_only_named_models(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, load_models=["user_tower", "retrieve"], grpc_port=12345)
    argv = server._argv(Path("/srv/triton"))
    assert [a for a in argv if a.startswith("--load-model")] == [
        "--load-model=user_tower", "--load-model=retrieve",
    ]
    assert "--grpc-port=12345" in argv


def test_triton_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match="does not exist"):
        TritonServer(tmp_path / "missing").start()


def test_prepare_server_dir_is_safe_to_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_service(triton_unavailable_reason())
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(tmp_path))
    results: list[Path] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            results.append(prepare_server_dir())
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    server_dir = results[0]
    assert (server_dir / "bin" / "tritonserver").is_file()
    assert (server_dir / "backends" / "python" / "triton_python_backend_stub").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [server_dir.name]  # no temp leftovers


def test_kafka_properties(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=19092, controller_port=19093)
    broker._write_properties()
    props = dict(
        line.split("=", 1) for line in broker.properties_path.read_text().splitlines()
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["num.partitions"] == "3"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(broker.log_dirs)
    assert broker.bootstrap_servers == "127.0.0.1:19092"


def test_kafka_missing_jars_says_run_setup(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", libs_dir=tmp_path / "no-libs")
    with pytest.raises(ServiceStartError, match="run scripts/setup.sh"):
        broker.start()


def test_kafka_cluster_id_format() -> None:
    for _ in range(500):  # about 1 in 64 raw ids starts with '-'
        cluster_id = _random_cluster_id()
        assert len(cluster_id) == 22
        assert "=" not in cluster_id
        assert not cluster_id.startswith("-")


def test_redis_url() -> None:
    server = RedisServer(port=16379)
    assert server.url == "redis://127.0.0.1:16379/0"
