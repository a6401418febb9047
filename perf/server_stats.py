"""Server-side numbers around a load run, best effort: Triton's own time per request (its
inference statistics) and the gateway's in-app latency histograms (its ``/metrics``)."""

from __future__ import annotations

import re
import urllib.request

RECOMMENDATIONS_ROUTE = "/v1/users/{user_id}/recommendations"


async def triton_stats(url: str, model: str) -> dict | None:
    """Triton's cumulative success count and time for ``model`` (None if unavailable)."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = (await client.get_inference_statistics(model, as_json=True))["model_stats"]
        s = stats[0]["inference_stats"]
        return {"count": int(s["success"].get("count", 0)), "ns": int(s["success"].get("ns", 0)),
                "queue_ns": int(s["queue"].get("ns", 0)),
                "compute_ns": int(s["compute_infer"].get("ns", 0))}
    except Exception:  # noqa: BLE001 - statistics are a nice-to-have
        return None
    finally:
        await client.close()


def per_request_ms(before: dict | None, after: dict | None, key: str = "ns") -> float | None:
    if not before or not after or after["count"] <= before["count"]:
        return None
    return round((after[key] - before[key]) / (after["count"] - before["count"]) / 1e6, 3)


# Histogram sums and counts; the route label itself contains braces ("/v1/users/{user_id}/..."),
# so labels are matched up to the last "} ".
_METRIC = re.compile(r'^(gateway_\w+?)_(sum|count)(?:\{(.*)\})? (\S+)$', re.M)
GATEWAY_HISTOGRAMS = {
    # the app behind uvicorn (the metrics middleware), recommendations answered with 200
    "app": ("gateway_request_seconds", (f'route="{RECOMMENDATIONS_ROUTE}"', 'status="200"')),
    # the gateway's Triton call as the gateway sees it (absent in older gateways)
    "triton_call": ("gateway_triton_seconds", ()),
}


def gateway_histograms(url: str) -> dict[str, dict] | None:
    """Cumulative ``{"count", "ns"}`` of the gateway's own latency histograms (GATEWAY_HISTOGRAMS)
    from ``/metrics``; None if unavailable. Best effort: metric names are the gateway's business."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    out = {key: {"count": 0.0, "ns": 0.0} for key in GATEWAY_HISTOGRAMS}
    for name, kind, labels, value in _METRIC.findall(text):
        for key, (metric, required) in GATEWAY_HISTOGRAMS.items():
            if name == metric and all(r in (labels or "") for r in required):
                out[key]["count" if kind == "count" else "ns"] += float(value) * (
                    1 if kind == "count" else 1e9)
    return out

