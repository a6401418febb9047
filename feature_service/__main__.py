"""Run a standalone feature-service consumer (Redis store, so gateways can share its features).

    RECSYS_FEATURES_STORE=redis RECSYS_FEATURES_REDIS_URL=redis://127.0.0.1:6379/0 \
    RECSYS_FEATURES_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m feature_service
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer
from feature_service.store import create_store


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines are noise
    settings = FeatureServiceSettings()
    store = create_store(settings.store, redis_url=settings.redis_url, prefix=settings.redis_key_prefix,
                         history_items=settings.history_items,
                         dedup_window_events=settings.dedup_window_events,
                         dedup_ttl_s=settings.dedup_ttl_s)
    if settings.snapshot_path:
        store.load_snapshot(json.loads(Path(settings.snapshot_path).read_text()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        FeatureConsumer(settings, store).run(stop)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
