"""A single-node Apache Kafka broker in KRaft mode, run from the Maven-fetched jars on Java 17.

The jars come from stack/kafka_files/pom.xml (scripts/setup.sh links them at <repo>/.kafka-libs);
the broker's logging configuration is stack/kafka_files/log4j2.xml.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from stack.ports import free_ports, port_is_open
from stack.process import ManagedProcess, ServiceStartError
from stack.service import Service

if TYPE_CHECKING:
    from kafka import KafkaAdminClient

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG4J2_CONFIG = Path(__file__).resolve().parent / "kafka_files" / "log4j2.xml"
_MIN_JAVA = 17


def default_libs_dir() -> Path:
    return Path(os.environ.get("RECSYS_KAFKA_LIBS", REPO_ROOT / ".kafka-libs"))


def kafka_unavailable_reason(libs_dir: Path | None = None) -> str | None:
    """Why a broker cannot run here (no Java >= 17, no jars), or None if it can."""
    libs = Path(libs_dir) if libs_dir else default_libs_dir()
    if not any(libs.glob("kafka_2.13-*.jar")):
        return f"Kafka broker jars not found in {libs}: run scripts/setup.sh"
    java = shutil.which("java")
    if java is None:
        return f"Java >= {_MIN_JAVA} is required for the Kafka broker and `java` is not on PATH"
    version = _java_major_version(java)
    if version is None or version < _MIN_JAVA:
        return f"Java >= {_MIN_JAVA} is required for the Kafka broker; {java} is {version}"
    return None


def _java_major_version(java: str) -> int | None:
    out = subprocess.run(
        [java, "-XshowSettings:properties", "-version"],
        capture_output=True, text=True, timeout=30,
    )
    match = re.search(r"java\.specification\.version = (\d+)(?:\.(\d+))?", out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major  # "1.8" -> 8


def _random_cluster_id() -> str:
    """Kafka's Uuid string form: URL-safe base64 of 16 random bytes, without padding.

    Like Kafka's Uuid.randomUuid(), never starting with '-': the tool would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker(Service):
    """A KRaft broker+controller on 127.0.0.1 storing everything under `data_dir`.

    Storage is formatted on the first start only, so a broker restarted on the same `data_dir`
    keeps its topics, messages and committed offsets. Ports are free ones unless given;
    restart() keeps them, and a new KafkaBroker on an existing `data_dir` may use other ports
    (server.properties is rewritten on every start).
    """

    name = "Kafka"
    stop_timeout_s = 30

    def __init__(
        self,
        data_dir: Path,
        *,
        libs_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap_mb: int = 512,
        fixed_heap: bool = False,
        startup_timeout_s: float = 90,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.libs_dir = Path(libs_dir) if libs_dir else default_libs_dir()
        spare = free_ports(2)
        self.port = port or spare[0]
        self.controller_port = controller_port or spare[1]
        self.heap_mb = heap_mb
        # The whole heap committed and touched at start (-Xms = -Xmx, AlwaysPreTouch), as Kafka's
        # docs advise for production: the RSS is then flat from the start instead of growing up to
        # -Xmx over minutes, so a soak's RSS slope shows leaks, not the JVM committing its heap.
        # Off by default: test suites run several brokers and need not hold 512 MB each up front.
        self.fixed_heap = fixed_heap
        super().__init__(log_path=self.data_dir / "broker.log", startup_timeout_s=startup_timeout_s)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kafka-logs"

    def _write_properties(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "3",
            # Topics are created explicitly (create_topics), so a typo cannot invent one.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java_argv(self, main_class: str, *args: str, heap: tuple[str, ...] = ()) -> list[str]:
        return [
            "java", f"-Xmx{self.heap_mb}m", *heap, "-cp", str(self.libs_dir / "*"),
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            main_class, *args,
        ]

    def _format_storage(self) -> None:
        if (self.log_dirs / "meta.properties").is_file():
            return
        argv = self._java_argv(
            "kafka.tools.StorageTool", "format", f"--cluster-id={_random_cluster_id()}",
            f"--config={self.properties_path}", "--standalone",
        )
        log.info("formatting Kafka storage in %s", self.log_dirs)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise ServiceStartError(
                f"Kafka storage format failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
            )

    def _new_process(self) -> ManagedProcess:
        reason = kafka_unavailable_reason(self.libs_dir)
        if reason:
            raise ServiceStartError(reason)
        self._write_properties()
        self._format_storage()
        heap = (f"-Xms{self.heap_mb}m", "-XX:+AlwaysPreTouch") if self.fixed_heap else ()
        return ManagedProcess("kafka", self._java_argv("kafka.Kafka", str(self.properties_path), heap=heap),
                              self.log_path)

    def _where(self) -> str:
        return f"at {self.bootstrap_servers} (controller port {self.controller_port})"

    def admin(self, **config: object) -> KafkaAdminClient:
        """A kafka-python admin client for this broker; the caller closes it."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **config)

    def _is_ready(self) -> bool:
        # A TCP check first: the admin client spends seconds in bootstrap retries otherwise.
        if not port_is_open(self.port):
            return False
        admin = self.admin(bootstrap_timeout_ms=5000, request_timeout_ms=5000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def create_topics(self, names: Iterable[str], partitions: int = 3,
                      timeout_s: float = 30) -> None:
        """Create topics (replication factor 1) unless they exist; wait for their leaders."""
        from feature_service.topics import ensure_topics

        ensure_topics(self.bootstrap_servers, names, partitions, timeout_s)
