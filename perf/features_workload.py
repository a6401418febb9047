"""The feature benchmark's workload: synthetic shop events with the gateway's producer settings.

ML-100K-sized catalogue (items in 1-3 of 19 genres), Zipf-distributed users and items, and a
realistic funnel of event types; every event is built and validated by ``features.events.Event``.
"""

from __future__ import annotations

import numpy as np

# Workload: ML-100K-sized catalogue, a realistic funnel of event types.
EVENT_MIX = {"view": 0.70, "click": 0.20, "cart": 0.07, "purchase": 0.03}
USER_ZIPF = 0.6  # a few heavy users, a long tail
ITEM_ZIPF = 1.0  # popular items dominate
NUM_CATEGORIES = 19  # ML-100K genres; each item gets 1-3
SURFACES = ("home", "search", "detail", "cart")


def item_id(i: int) -> str:
    return f"i{i:04d}"


def item_categories(num_items: int, seed: int) -> dict[str, list[str]]:
    """Each item in 1-3 of NUM_CATEGORIES genres (what the gateway passes from catalog.json)."""
    rng = np.random.default_rng(seed + 7)
    out = {}
    for i in range(num_items):
        k = int(rng.integers(1, 4))
        out[item_id(i)] = [f"genre{g:02d}" for g in sorted(rng.choice(NUM_CATEGORIES, k, replace=False))]
    return out


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def make_events(n: int, users: int, items: int, rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value template) pairs: ``Event.to_bytes()`` with ``%d`` where ``ts_ms`` goes, so a
    sender stamps the event time at send for ~1 us (the gateway stamps it when the request arrives).
    Every event is built and validated by ``features.events.Event``; ids are fresh uuid4 hex."""
    from features.events import Event

    user_idx = rng.choice(users, n, p=_zipf_weights(users, USER_ZIPF))
    item_idx = rng.choice(items, n, p=_zipf_weights(items, ITEM_ZIPF))
    types = rng.choice(list(EVENT_MIX), n, p=list(EVENT_MIX.values()))
    surface = rng.integers(0, 2 * len(SURFACES), n)  # half the events carry no context
    out = []
    for u, i, t, s in zip(user_idx.tolist(), item_idx.tolist(), types.tolist(), surface.tolist(),
                          strict=True):
        event = Event(user_id=f"u{u:05d}", item_id=item_id(i), event_type=t, ts_ms=0,
                      context={"surface": SURFACES[s]} if s < len(SURFACES) else None)
        value = event.to_bytes()
        assert value.count(b'"ts_ms":0') == 1 and b"%" not in value
        out.append((event.user_id.encode(), value.replace(b'"ts_ms":0', b'"ts_ms":%d')))
    return out


def new_producer(bootstrap: str):
    """The gateway's producer settings (gateway/producer.py)."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, retries=5,
                         linger_ms=1, request_timeout_ms=10_000, max_block_ms=10_000)
