"""Run a standalone feature-service consumer (Redis store, so gateways can share its features).

    RECSYS_FEATURES_STORE=redis RECSYS_FEATURES_REDIS_URL=redis://127.0.0.1:6379/0 \\
    RECSYS_FEATURES_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
    RECSYS_FEATURES_CATALOG_PATH=model_repository/retrieve/1/catalog.json python -m feature_service

Several processes with the same ``RECSYS_FEATURES_GROUP_ID`` split the topic's partitions.
SIGTERM/SIGINT stop it after the batch in hand (its offsets committed).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

from prometheus_client import start_http_server

from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer
from feature_service.store import create_store
from features.catalog import ItemCatalog


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines are noise
    settings = FeatureServiceSettings()
    categories = (ItemCatalog.from_json(Path(settings.catalog_path)).categories_by_item()
                  if settings.catalog_path else None)
    store = create_store(settings.store, settings.rules(), redis_url=settings.redis_url,
                         prefix=settings.redis_key_prefix, item_categories=categories)
    if settings.snapshot_path:
        store.load_snapshot(json.loads(Path(settings.snapshot_path).read_text()))
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer = FeatureConsumer(settings, store)
    try:
        consumer.run(stop)
    finally:
        store.close()
        logging.getLogger(__name__).info("stopped: %d applied, %d duplicates, %d dead-lettered",
                                         consumer.applied, consumer.duplicates, consumer.dead_lettered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
