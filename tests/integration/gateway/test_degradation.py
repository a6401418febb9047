"""Triton killed while requests flow: every answer is still a 200, from the fallback, and
readiness reports the model as down."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from export.pipeline import SNAPSHOT_FILE
from gateway.app import create_app
from gateway.config import GatewaySettings
from stack.triton import TritonServer


@pytest.fixture
def own_triton(exported, tmp_path):
    """A Triton of this test's own: it gets killed."""
    with TritonServer(exported.repository, log_path=tmp_path / "triton.log") as server:
        yield server


def test_triton_killed_mid_traffic_answers_from_the_fallback(exported, own_triton, kafka):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        triton_grpc_url=own_triton.grpc_url, kafka_bootstrap_servers=kafka.bootstrap_servers,
        events_topic=topic, recommendations_topic=f"{topic}.recs",
        model_repository=str(exported.repository),
        snapshot_path=str(exported.artifacts / SNAPSHOT_FILE),
        # room for a slow model answer before the kill; after it, calls fail fast (no server)
        request_deadline_ms=2000, triton_timeout_ms=1500)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        responses = []
        stop = threading.Event()

        def traffic():
            users = [str(u) for u in range(1, 50)]
            while not stop.is_set():
                for user in users:
                    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
                    responses.append((time.monotonic(), r.status_code, r.json()))

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(1.0)
            own_triton.kill()
            killed_at = time.monotonic()
            time.sleep(1.5)
        finally:
            stop.set()
            worker.join(30)

        assert all(status == 200 for _, status, _ in responses)
        before = [body for t, _, body in responses if t < killed_at]
        after = [body for t, _, body in responses if t > killed_at + 0.2]
        assert before and all(b["source"] == "model" and not b["degraded"] for b in before[:10])
        assert after and all(b["degraded"] and b["source"] in ("trending", "popular") for b in after)
        assert all(len(b["items"]) == 5 for b in after)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["triton"] is False
