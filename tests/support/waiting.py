"""Wait for a condition, not for a fixed time: a sleep is either too short on a busy machine or
wasted on a quiet one."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 30,
             interval_s: float = 0.05, describe: Callable[[], object] | None = None) -> None:
    """Return as soon as ``condition()`` is truthy; fail naming ``what`` (and ``describe()``, when
    given) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")
        time.sleep(interval_s)
