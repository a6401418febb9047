"""A gateway on the test session's services: its settings, and the wait until it is ready.

``gateway_settings`` returns plain keyword settings, for ``GatewaySettings(**settings)`` (an
in-process app under ``TestClient``) and for ``GatewayProcess(settings)`` (``python -m gateway``)
alike.
"""

from __future__ import annotations

from typing import Any

from export.pipeline import SNAPSHOT_FILE
from tests.support.waiting import wait_for

# Tests that look at the model's answers must get them even on a busy 2-core CI box: the
# production deadline (250 ms) would serve a slow call from the fallback (a 200, degraded).
MODEL_ANSWER_TIMEOUTS = {"request_deadline_ms": 10_000, "triton_timeout_ms": 20_000}


def gateway_settings(exported: Any, triton: Any, kafka: Any, topic: str, **overrides: Any) -> dict[str, Any]:
    """Settings for a gateway on ``triton`` (a ``TritonServer``) and ``kafka`` (a ``KafkaBroker``)
    serving the session's exported model, with its own events topic, recommendations topic and
    consumer group (so that tests never see each other's events), model-answer timeouts
    (``MODEL_ANSWER_TIMEOUTS``); ``overrides`` win."""
    return {
        "triton_grpc_url": triton.grpc_url,
        "kafka_bootstrap_servers": kafka.bootstrap_servers,
        "events_topic": topic,
        "recommendations_topic": f"{topic}.recs",
        "consumer_group": f"group-{topic}",
        "model_repository": str(exported.repository),
        "snapshot_path": str(exported.artifacts / SNAPSHOT_FILE),
        **MODEL_ANSWER_TIMEOUTS,
        **overrides,
    }


def wait_ready(client: Any, timeout_s: float = 30) -> None:
    """Until ``GET /readyz`` is a 200 (``client``: a ``TestClient`` or an ``httpx.Client`` with a
    base URL); on timeout the failure shows which checks are still down."""
    wait_for(lambda: client.get("/readyz").status_code == 200, "the gateway to be ready", timeout_s,
             interval_s=0.1, describe=lambda: client.get("/readyz").json())
