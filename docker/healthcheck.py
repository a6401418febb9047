"""Container health check (standard library only: python:3.11-slim has no curl).

    python healthcheck.py gateway          # GET http://127.0.0.1:$RECSYS_GATEWAY_PORT/healthz
    python healthcheck.py feature_service  # GET http://127.0.0.1:$RECSYS_FEATURES_METRICS_PORT/metrics
    python healthcheck.py URL              # any URL

Exit status 0 on a 2xx answer, 1 otherwise (Docker's healthy / unhealthy), with one line saying
why on stderr (shown by `docker inspect`).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

# service -> (port variable, default port, path)
TARGETS = {
    "gateway": ("RECSYS_GATEWAY_PORT", "8080", "/healthz"),
    "feature_service": ("RECSYS_FEATURES_METRICS_PORT", "9100", "/metrics"),
}


def url_for(target: str, environ: Mapping[str, str] = os.environ) -> str:
    if target not in TARGETS:
        return target
    variable, default, path = TARGETS[target]
    port = environ.get(variable) or default
    return f"http://127.0.0.1:{port}{path}"


def check(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        return False, f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write(__doc__)
        return 1  # Docker reserves exit status 2
    ok, message = check(url_for(args[0]))
    (sys.stdout if ok else sys.stderr).write(message + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
