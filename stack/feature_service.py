"""The feature-service consumer as a separate process (``python -m feature_service``), for
scale-out and fault tests and benchmarks. Ready when its Prometheus endpoint reports it ready."""

from __future__ import annotations

import re
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess
from stack.service import REPO_ROOT, Service, python_module_env


class FeatureServiceProcess(Service):
    """Start a consumer with ``RECSYS_FEATURES_*`` settings (keys without the prefix)."""

    name = "feature service"
    stop_timeout_s = 15

    def __init__(self, settings: dict[str, object], *, log_path: Path | None = None,
                 startup_timeout_s: float = 60) -> None:
        self.settings = settings
        self.metrics_port = free_port()
        super().__init__(log_path=log_path or Path(tempfile.mkdtemp(prefix="features-")) / "features.log",
                         startup_timeout_s=startup_timeout_s)

    def _new_process(self) -> ManagedProcess:
        env = python_module_env("RECSYS_FEATURES_", self.settings)
        env["RECSYS_FEATURES_METRICS_PORT"] = str(self.metrics_port)
        return ManagedProcess("feature-service", [sys.executable, "-m", "feature_service"],
                              self.log_path, env=env, cwd=REPO_ROOT)

    def _is_ready(self) -> bool:
        return self.metric("feature_consumer_ready") == 1

    def _where(self) -> str:
        return f"(metrics port {self.metrics_port})"

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from the process's /metrics, e.g. metric("feature_events_total",
        'outcome="applied"'); 0 when the series does not exist yet."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        series = re.escape(f"{name}{{{labels}}}" if labels else name)
        match = re.search(rf"^{series} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0
