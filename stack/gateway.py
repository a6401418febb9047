"""The gateway as a separate process (``python -m gateway``), for the demo, serve and benchmarks."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port, free_ports
from stack.process import ManagedProcess

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class GatewayProcess:
    """Start the gateway with ``RECSYS_GATEWAY_*`` settings; ready when /readyz says so.

    REST on ``port``, gRPC on ``grpc_port`` (both free ports unless given; ``grpc_port=0``: no
    gRPC front end)."""

    def __init__(self, settings: dict[str, str], *, port: int | None = None,
                 grpc_port: int | None = None, log_path: Path | None = None,
                 startup_timeout_s: float = 60) -> None:
        if port is None and grpc_port is None:
            port, grpc_port = free_ports(2)  # distinct
        self.port = port or free_port()
        self.grpc_port: int | None = free_port() if grpc_port is None else (grpc_port or None)
        self.settings = settings
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="gateway-")) / "gateway.log"
        self.ready_after_s: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str | None:
        """``host:port`` for ``grpc.insecure_channel``; None when gRPC is off."""
        return None if self.grpc_port is None else f"127.0.0.1:{self.grpc_port}"

    def start(self) -> GatewayProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update({f"RECSYS_GATEWAY_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["RECSYS_GATEWAY_PORT"] = str(self.port)
        env["RECSYS_GATEWAY_GRPC_PORT"] = str(self.grpc_port or 0)
        self._process = ManagedProcess("gateway", [sys.executable, "-m", "gateway"], self.log_path,
                                       env=env, cwd=REPO_ROOT)
        self._process.start()
        self.ready_after_s = self._process.wait_ready(self._ready, self.startup_timeout_s)
        log.info("gateway ready after %.1f s at %s", self.ready_after_s, self.url)
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
            return response.status == 200 and json.load(response)["status"] == "ready"

    def stop(self, timeout_s: float = 15) -> None:
        if self._process is not None:
            self._process.stop(timeout_s)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
