"""Run the online-metrics service: ``python -m online_metrics`` (settings from
RECSYS_ONLINE_METRICS_* environment variables, docs/settings.md).

At start-up it replays the impressions and events topics from their beginning (its state is in
memory only), then follows them; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import logging

import uvicorn

from online_metrics.app import create_app
from online_metrics.config import OnlineMetricsSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines are noise
    settings = OnlineMetricsSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=False)  # the page polls every few seconds: no line per request
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
