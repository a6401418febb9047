"""The gateway as a separate process (``python -m gateway``), for the demo, serve and benchmarks."""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port, free_ports
from stack.process import ManagedProcess
from stack.service import REPO_ROOT, Service, python_module_env


class GatewayProcess(Service):
    """Start the gateway with ``RECSYS_GATEWAY_*`` settings; ready when /readyz says so.

    REST on ``port``, gRPC on ``grpc_port`` (both free ports unless given; ``grpc_port=0``: no
    gRPC front end)."""

    name = "gateway"
    stop_timeout_s = 15

    def __init__(self, settings: dict[str, str], *, port: int | None = None,
                 grpc_port: int | None = None, log_path: Path | None = None,
                 startup_timeout_s: float = 60) -> None:
        if port is None and grpc_port is None:
            port, grpc_port = free_ports(2)  # distinct
        self.port = port or free_port()
        self.grpc_port: int | None = free_port() if grpc_port is None else (grpc_port or None)
        self.settings = settings
        super().__init__(log_path=log_path or Path(tempfile.mkdtemp(prefix="gateway-")) / "gateway.log",
                         startup_timeout_s=startup_timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str | None:
        """``host:port`` for ``grpc.insecure_channel``; None when gRPC is off."""
        return None if self.grpc_port is None else f"127.0.0.1:{self.grpc_port}"

    def _new_process(self) -> ManagedProcess:
        env = python_module_env("RECSYS_GATEWAY_", self.settings)
        env["RECSYS_GATEWAY_PORT"] = str(self.port)
        env["RECSYS_GATEWAY_GRPC_PORT"] = str(self.grpc_port or 0)
        return ManagedProcess("gateway", [sys.executable, "-m", "gateway"], self.log_path,
                              env=env, cwd=REPO_ROOT)

    def _is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
            return response.status == 200 and json.load(response)["status"] == "ready"

    def _where(self) -> str:
        return f"at {self.url}"
