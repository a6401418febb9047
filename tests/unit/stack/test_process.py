"""ManagedProcess and free_port, with tiny python child processes (fast, no services needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stack.ports import free_port, free_ports
from stack.process import ManagedProcess, ServiceStartError

REPO_ROOT = Path(__file__).resolve().parents[3]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _alive(pid: int) -> bool:
    """True if pid is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def _wait_for(predicate, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _read_pid(path: Path) -> int:
    assert _wait_for(lambda: path.exists() and path.read_text().strip() != ""), path
    return int(path.read_text())


def test_wait_ready_returns_seconds_until_check_passes(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    proc = ManagedProcess(
        "child",
        _python(f"""
            import pathlib, time
            time.sleep(0.3)
            pathlib.Path({str(flag)!r}).write_text("x")
            time.sleep(60)
        """),
        tmp_path / "child.log",
    )
    with proc:
        elapsed_s = proc.wait_ready(flag.exists, timeout_s=10)
        assert 0.2 < elapsed_s < 10
        assert proc.running
    assert not proc.running


def test_check_exceptions_mean_not_ready_yet(tmp_path: Path) -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not listening yet")
        return True

    with ManagedProcess("child", ["sleep", "60"], tmp_path / "child.log") as proc:
        proc.wait_ready(check, timeout_s=10, poll_interval_s=0.01)
    assert len(calls) == 3


def test_early_exit_raises_with_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "doomed",
        _python("""
            import sys
            for i in range(100):
                print(f"line {i}")
            print("fatal: config is broken", file=sys.stderr)
            sys.exit(3)
        """),
        tmp_path / "doomed.log",
    )
    proc.start()
    with pytest.raises(ServiceStartError) as excinfo:
        proc.wait_ready(lambda: False, timeout_s=30)
    message = str(excinfo.value)
    assert "doomed" in message
    assert "exited with code 3" in message
    assert "fatal: config is broken" in message
    assert "line 99" in message
    assert "line 10\n" not in message  # only the tail, not the whole log
    assert not proc.running


def test_service_start_error_from_check_aborts_at_once(tmp_path: Path) -> None:
    def check() -> bool:
        raise ServiceStartError("model 'x' failed to load")

    proc = ManagedProcess("child", ["sleep", "60"], tmp_path / "child.log")
    proc.start()
    started = time.monotonic()
    with pytest.raises(ServiceStartError, match="model 'x' failed to load"):
        proc.wait_ready(check, timeout_s=30)
    assert time.monotonic() - started < 5
    assert not proc.running


def test_timeout_raises_and_process_is_gone(tmp_path: Path) -> None:
    proc = ManagedProcess("slow", ["sleep", "60"], tmp_path / "slow.log")
    proc.start()
    pid = proc.pid
    assert pid is not None and _alive(pid)
    with pytest.raises(ServiceStartError, match="not ready after"):
        proc.wait_ready(lambda: False, timeout_s=0.5)
    assert not proc.running
    assert not _alive(pid)


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = ManagedProcess(
        "parent",
        _python(f"""
            import pathlib, subprocess, time
            grandchild = subprocess.Popen(["sleep", "60"])
            pathlib.Path({str(pid_file)!r}).write_text(str(grandchild.pid))
            time.sleep(60)
        """),
        tmp_path / "parent.log",
    )
    proc.start()
    grandchild = _read_pid(pid_file)
    child = proc.pid
    assert child is not None and _alive(grandchild)
    proc.stop(timeout_s=5)
    assert not _alive(child)
    assert _wait_for(lambda: not _alive(grandchild), timeout_s=2)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = ManagedProcess(
        "stubborn",
        _python(f"""
            import pathlib, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
        """),
        tmp_path / "stubborn.log",
    )
    proc.start()
    proc.wait_ready(ready.exists, timeout_s=10)
    started = time.monotonic()
    proc.stop(timeout_s=0.5)
    assert not proc.running
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_custom_stop_signal(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = ManagedProcess(
        "sigint-lover",
        _python(f"""
            import pathlib, sys, time
            pathlib.Path({str(ready)!r}).write_text("x")
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                print("graceful shutdown")
                sys.exit(0)
        """),
        tmp_path / "child.log",
        stop_signal=signal.SIGINT,
    )
    proc.start()
    proc.wait_ready(ready.exists, timeout_s=10)
    proc.stop(timeout_s=5)
    assert proc.returncode == 0
    assert "graceful shutdown" in proc.log_tail()


def test_custom_stop_signal_reaches_a_child_of_a_launcher_that_ignores_it(tmp_path: Path) -> None:
    # what a launcher started in the background (`nohup make test &`) looks like
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        test_custom_stop_signal(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_child_dies_when_python_parent_is_sigkilled(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: no orphan even if the parent gets no chance to clean up."""
    pid_file = tmp_path / "service.pid"
    parent = subprocess.Popen(
        _python(f"""
            import pathlib, time
            from stack.process import ManagedProcess
            proc = ManagedProcess("svc", ["sleep", "60"], pathlib.Path({str(tmp_path / 'svc.log')!r}))
            proc.start()
            pathlib.Path({str(pid_file)!r}).write_text(str(proc.pid))
            time.sleep(60)
        """),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        service = _read_pid(pid_file)
        assert _alive(service)
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(service), timeout_s=5)
    finally:
        parent.kill()
        parent.wait()


def test_missing_binary_raises_service_start_error(tmp_path: Path) -> None:
    proc = ManagedProcess("ghost", ["/nonexistent/binary"], tmp_path / "ghost.log")
    with pytest.raises(ServiceStartError, match="cannot run"):
        proc.start()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
