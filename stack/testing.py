"""Test helpers for code that needs the real services."""

from __future__ import annotations

import os

import pytest

# Under `make test` and in CI a service that cannot start is a failure, never a silent skip.
SERVICES_REQUIRED = os.environ.get("RECSYS_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


def require_service(reason: str | None) -> None:
    """Skip (locally) or fail (make test, CI) when ``reason`` says a service cannot run here."""
    if reason:
        if SERVICES_REQUIRED:
            pytest.fail(f"required service unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
