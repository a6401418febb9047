"""The feature-service consumer as a separate process (``python -m feature_service``), for
scale-out and fault tests and benchmarks. Ready when its Prometheus endpoint reports it ready."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path

from stack.ports import free_port
from stack.process import ManagedProcess

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class FeatureServiceProcess:
    """Start a consumer with ``RECSYS_FEATURES_*`` settings (keys without the prefix)."""

    def __init__(self, settings: dict[str, object], *, log_path: Path | None = None,
                 startup_timeout_s: float = 60) -> None:
        self.settings = settings
        self.metrics_port = free_port()
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="features-")) / "features.log"
        self.ready_after_s: float | None = None
        self._process: ManagedProcess | None = None

    def start(self) -> FeatureServiceProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update({f"RECSYS_FEATURES_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["RECSYS_FEATURES_METRICS_PORT"] = str(self.metrics_port)
        self._process = ManagedProcess("feature-service", [sys.executable, "-m", "feature_service"],
                                       self.log_path, env=env, cwd=REPO_ROOT)
        self._process.start()
        self.ready_after_s = self._process.wait_ready(lambda: self.metric("feature_consumer_ready") == 1,
                                                      self.startup_timeout_s)
        log.info("feature service ready after %.1f s", self.ready_after_s)
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from the process's /metrics, e.g. metric("feature_events_total",
        'outcome="applied"'); 0 when the series does not exist yet."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        series = re.escape(f"{name}{{{labels}}}" if labels else name)
        match = re.search(rf"^{series} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def kill(self) -> None:
        """SIGKILL: no chance to finish the batch in hand or commit its offsets."""
        if self._process is not None and self._process.pid is not None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.stop(timeout_s=5)

    def stop(self, timeout_s: float = 15) -> None:
        if self._process is not None:
            self._process.stop(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines) if self._process else ""

    def __enter__(self) -> FeatureServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
