"""stack/service.py: the life cycle every launcher shares, with a tiny python child as the service."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from stack.feature_service import FeatureServiceProcess
from stack.gateway import GatewayProcess
from stack.kafka import KafkaBroker
from stack.process import ManagedProcess, ServiceStartError
from stack.redis import RedisServer
from stack.service import REPO_ROOT, Service, python_module_env
from stack.triton import TritonServer


class FileService(Service):
    """Ready once its child wrote ``ready`` next to the log; ``fail`` makes the child exit at once."""

    name = "file service"
    stop_timeout_s = 5
    ready_poll_interval_s = 0.02

    def __init__(self, tmp: Path, *, fail: bool = False, startup_timeout_s: float = 10) -> None:
        super().__init__(log_path=tmp / "service.log", startup_timeout_s=startup_timeout_s)
        self.flag = tmp / "ready"
        self.fail = fail
        self.starts = 0

    def _new_process(self) -> ManagedProcess:
        self.starts += 1
        self.flag.unlink(missing_ok=True)
        code = f"""
            import pathlib, sys, time
            print("child {self.starts} up", flush=True)
            if {self.fail}:
                sys.exit("broken config")
            pathlib.Path({str(self.flag)!r}).write_text("x")
            time.sleep(60)
        """
        return ManagedProcess("file-service", [sys.executable, "-c", textwrap.dedent(code)],
                              self.log_path)

    def _is_ready(self) -> bool:
        return self.flag.exists()


def test_context_manager_starts_until_ready_and_stops(tmp_path: Path) -> None:
    service = FileService(tmp_path)
    assert not service.running and service.pid is None and service.ready_after_s is None
    with service as same:
        assert same is service
        assert service.running and service.pid is not None
        assert service.ready_after_s is not None and service.ready_after_s >= 0
        assert "child 1 up" in service.log_tail()
    assert not service.running


def test_restart_runs_a_new_process(tmp_path: Path) -> None:
    with FileService(tmp_path) as service:
        first = service.pid
        assert service.restart() is service
        assert service.running and service.pid != first and service.starts == 2
    assert "child 2 up" in service.log_tail(lines=3)


def test_kill_ends_the_process_at_once(tmp_path: Path) -> None:
    service = FileService(tmp_path).start()
    service.kill()
    assert not service.running
    service.stop()  # stopping a dead service is fine


def test_failed_start_carries_the_log_tail(tmp_path: Path) -> None:
    service = FileService(tmp_path, fail=True)
    with pytest.raises(ServiceStartError, match="broken config"):
        service.start()
    assert not service.running


def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    FileService(tmp_path).stop()
    assert FileService(tmp_path).log_tail() == ""


def test_every_launcher_is_a_service(tmp_path: Path) -> None:
    launchers = [TritonServer(tmp_path), KafkaBroker(tmp_path / "kafka"), RedisServer(),
                 GatewayProcess({}), FeatureServiceProcess({})]
    for launcher in launchers:
        assert isinstance(launcher, Service)
        assert launcher.log_path.name.endswith(".log") and not launcher.running
    assert launchers[1].log_path == (tmp_path / "kafka").resolve() / "broker.log"
    assert [s.stop_timeout_s for s in launchers] == [30, 30, 10, 15, 15]


def test_python_module_env_puts_the_repo_first_and_prefixes_settings(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = python_module_env("RECSYS_GATEWAY_", {"store": "memory", "port": 8000})
    assert env["PYTHONPATH"].split(":") == [str(REPO_ROOT), "/elsewhere"]
    assert env["RECSYS_GATEWAY_STORE"] == "memory" and env["RECSYS_GATEWAY_PORT"] == "8000"
