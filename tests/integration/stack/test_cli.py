"""`python -m stack ...`: starts a service, prints where it is, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stack.ports import port_is_open
from stack.redis import redis_unavailable_reason
from stack.testing import require_service

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_cli_redis_runs_until_sigterm() -> None:
    require_service(redis_unavailable_reason())
    cli = subprocess.Popen(
        [sys.executable, "-m", "stack", "redis"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        output = "".join(lines)
        assert "redis ready after" in output, output
        port = int(re.search(r"redis://127\.0\.0\.1:(\d+)/0", output).group(1))
        assert port_is_open(port)

        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=20) == 0
        assert not port_is_open(port)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        cli.stdout.close()


def test_cli_triton_reports_missing_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stack", "triton", "--model-repository", str(tmp_path / "nope")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
