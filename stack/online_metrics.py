"""The online-metrics service as a separate process (``python -m online_metrics``), for the
integration tests and the demo. Ready when /healthz answers (the replay may still be running:
/healthz says ``caught_up``)."""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess
from stack.service import REPO_ROOT, Service, python_module_env


class OnlineMetricsProcess(Service):
    """Start the service with ``RECSYS_ONLINE_METRICS_*`` settings (keys without the prefix) on
    ``port`` (a free one unless given)."""

    name = "online metrics"
    stop_timeout_s = 15

    def __init__(self, settings: dict[str, object], *, port: int | None = None,
                 log_path: Path | None = None, startup_timeout_s: float = 60) -> None:
        self.settings = settings
        self.port = port or free_port()
        super().__init__(
            log_path=log_path or Path(tempfile.mkdtemp(prefix="online-metrics-")) / "online_metrics.log",
            startup_timeout_s=startup_timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _new_process(self) -> ManagedProcess:
        env = python_module_env("RECSYS_ONLINE_METRICS_", self.settings)
        env["RECSYS_ONLINE_METRICS_PORT"] = str(self.port)
        return ManagedProcess("online-metrics", [sys.executable, "-m", "online_metrics"],
                              self.log_path, env=env, cwd=REPO_ROOT)

    def _is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
            return response.status == 200 and json.load(response)["status"] == "ok"

    def _where(self) -> str:
        return f"at {self.url}"

    def get_json(self, path: str) -> dict:
        """GET ``path`` (e.g. "/v1/online-metrics") as JSON."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.load(response)

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return response.read().decode()
