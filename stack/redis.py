"""A Redis server (Debian's redis-server) on a free port: throw-away, or persistent (AOF)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess, ServiceStartError

log = logging.getLogger(__name__)


def redis_unavailable_reason() -> str | None:
    """Why redis-server cannot run here, or None if it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server, or run scripts/setup.sh)"
    return None


class RedisServer:
    """redis-server on 127.0.0.1 without RDB snapshots. By default state lives only in memory, so
    a restart() starts empty. ``persistent=True`` turns on the append-only file with an fsync per
    write batch (appendfsync always), next to the log: what a feature store needs whose consumers
    commit Kafka offsets once Redis has acknowledged a write; restart() then keeps every write."""

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
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkdtemp(prefix="redis-server-")
        ) / "redis.log"
        self.ready_after_s: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self) -> RedisServer:
        reason = redis_unavailable_reason()
        if reason:
            raise ServiceStartError(reason)
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "",
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
              else ["--appendonly", "no"]),
            # The working dir is where redis would write dumps; keep it out of the repo.
            "--dir", str(self.log_path.parent),
        ]
        self._process = ManagedProcess("redis-server", argv, self.log_path)
        log.info("starting Redis on port %d, log %s", self.port, self.log_path)
        self._process.start()
        self.ready_after_s = self._process.wait_ready(self._is_ready, self.startup_timeout_s,
                                                      poll_interval_s=0.05)
        log.info("Redis ready after %.2f s at %s", self.ready_after_s, self.url)
        return self

    def _is_ready(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self, timeout_s: float = 10) -> None:
        if self._process is not None:
            self._process.stop(timeout_s)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (data kept only when persistent)."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
