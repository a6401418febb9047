"""Records as the gateway writes them, small enough to reason about by hand."""

from __future__ import annotations

import json

from features.events import Event
from online_metrics.records import NO_ARM, Exposure

T0 = 1_700_000_000_000  # a list's time; outcomes are placed relative to it
MINUTE = 60_000


def exposure(request_id: str, items=("a", "b", "c"), *, ts_ms: int = T0, surface: str = "feed",
             model_version: int | str = 3, arm: str = NO_ARM) -> Exposure:
    return Exposure(request_id, (surface, model_version, arm), ts_ms,
                    {item: i for i, item in enumerate(items)}, len(items))


def record(request_id: str, items=("a", "b", "c"), *, ts_ms: int = T0, surface: str = "feed",
           model_version: int | str = 3, arm: str | None = None) -> bytes:
    """The JSON value of gateway.exposure.exposure_record."""
    return json.dumps({
        "request_id": request_id, "user_id": "u1", "surface": surface,
        "model_version": model_version, "arm": arm, "source": "model", "degraded": False,
        "cold_start": False, "ts_ms": ts_ms,
        "items": [{"position": i, "item_id": item, "score": 1.0 - i / 10}
                  for i, item in enumerate(items)]}).encode()


def event(event_type: str, item_id: str = "a", *, request_id: str | None = "r1",
          position: str | None = None, ts_ms: int = T0 + 1000, event_id: str | None = None,
          value: str | None = None) -> Event:
    context = {}
    if request_id is not None:
        context["request_id"] = request_id
    if position is not None:
        context["position"] = position
    if value is not None:
        context["value"] = value
    fields = dict(user_id="u1", item_id=item_id, event_type=event_type, ts_ms=ts_ms,
                  context=context or None)
    if event_id is not None:
        fields["event_id"] = event_id
    return Event(**fields)
