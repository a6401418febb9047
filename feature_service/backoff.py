"""The wait before a retry, shared by every loop that retries a broker or a store: exponential,
capped, with jitter so that many clients failing together do not retry together."""

from __future__ import annotations

import random


def backoff_s(failures: int, initial_ms: int, max_ms: int, rng: random.Random | None = None) -> float:
    """The wait after the ``failures``-th failure in a row: ``initial_ms`` doubled each time, at
    most ``max_ms``, then jittered to between half of it and all of it."""
    ceiling_ms = min(max_ms, initial_ms * 2 ** min(max(failures, 1) - 1, 30))
    return ceiling_ms / 1000 * (0.5 + 0.5 * (rng or random).random())
