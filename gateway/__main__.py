"""Run the gateway: ``python -m gateway`` (settings from RECSYS_GATEWAY_* environment variables)."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import create_app
from gateway.config import GatewaySettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines are noise
    settings = GatewaySettings()
    # No per-request access log: it cost ~0.8 ms of CPU a request (perf/README.md); requests are
    # counted and timed in /metrics instead.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
