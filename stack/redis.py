"""A Redis server (Debian's redis-server) on a free port: throw-away, or persistent (AOF)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess, ServiceStartError
from stack.service import Service


def redis_unavailable_reason() -> str | None:
    """Why redis-server cannot run here, or None if it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server, or run scripts/setup.sh)"
    return None


class RedisServer(Service):
    """redis-server on 127.0.0.1 without RDB snapshots. By default state lives only in memory, so
    a restart() starts empty. ``persistent=True`` turns on the append-only file with an fsync per
    write batch (appendfsync always), next to the log: what a feature store needs whose consumers
    commit Kafka offsets once Redis has acknowledged a write; restart() then keeps every write."""

    name = "Redis"
    stop_timeout_s = 10
    ready_poll_interval_s = 0.05

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout_s: float = 20,
        log_path: Path | None = None,
        persistent: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        super().__init__(log_path=log_path or Path(tempfile.mkdtemp(prefix="redis-server-"))
                         / "redis.log", startup_timeout_s=startup_timeout_s)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _new_process(self) -> ManagedProcess:
        reason = redis_unavailable_reason()
        if reason:
            raise ServiceStartError(reason)
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "",
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
              else ["--appendonly", "no"]),
            # As docker/compose.yaml: the capped seen/bought ZSETs stay in the compact encoding.
            "--zset-max-listpack-entries", "512",
            # The working dir is where redis would write dumps; keep it out of the repo.
            "--dir", str(self.log_path.parent),
        ]
        return ManagedProcess("redis-server", argv, self.log_path)

    def _where(self) -> str:
        return f"at {self.url}"

    def _is_ready(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
