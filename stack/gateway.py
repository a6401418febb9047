"""The gateway as a separate process (``python -m gateway``), for the demo, serve and benchmarks."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class GatewayProcess:
    """Start the gateway with ``RECSYS_GATEWAY_*`` settings; ready when /readyz says so."""

    def __init__(self, settings: dict[str, str], *, port: int | None = None,
                 log_path: Path | None = None, startup_timeout_s: float = 60) -> None:
        self.port = port or free_port()
        self.settings = settings
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="gateway-")) / "gateway.log"
        self.ready_after_s: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update({f"RECSYS_GATEWAY_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["RECSYS_GATEWAY_PORT"] = str(self.port)
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
