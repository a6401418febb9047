"""The feature consumer in a background thread: the gateway's embedded, single-process mode."""

from __future__ import annotations

import logging
import threading

from feature_service import metrics
from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer, OnApplied
from feature_service.store import FeatureStore

log = logging.getLogger(__name__)


class BackgroundConsumer:
    """Runs a FeatureConsumer in a daemon thread (the embedded, single-process mode). A failure
    that ends ``run`` (the broker unreachable at start, a bug) does not end the thread: the
    consumer starts again after a backoff, and is not ready meanwhile, with the reason."""

    def __init__(self, settings: FeatureServiceSettings, store: FeatureStore,
                 on_applied: OnApplied | None = None) -> None:
        self.consumer = FeatureConsumer(settings, store, on_applied)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-consumer", daemon=True)
        self.error: BaseException | None = None
        self.restarts = 0

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.consumer.run(self._stop)
                return
            except Exception as exc:  # noqa: BLE001 - surfaced through readiness and the log
                failures += 1
                self.error = exc
                self.restarts += 1
                self.consumer.ready.clear()
                metrics.READY.set(0)
                wait_s = self.consumer.backoff_s(failures)
                log.exception("feature consumer stopped; starting again in %.1f s", wait_s)
                self._stop.wait(wait_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def not_ready_reason(self) -> str | None:
        reason = self.consumer.not_ready_reason
        if self.error is not None and not self.consumer.ready.is_set():
            return f"restarting after {self.error!r}" + (f"; {reason}" if reason else "")
        return reason

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
