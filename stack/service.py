"""The life cycle every launcher shares: start a ManagedProcess, wait until the service answers,
stop / restart / kill it, and use it as a context manager.

A launcher subclasses ``Service`` and supplies two things: ``_new_process()`` (check that the
service can run here, write its config, and return the not-yet-started process) and
``_is_ready()`` (one readiness probe; see ``ManagedProcess.wait_ready`` for what returning False,
raising, or raising ServiceStartError mean). Everything else — the readiness wait with the log
tail on failure, stopping the whole process group, the orphan guarantees — is ManagedProcess's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from stack.process import ManagedProcess, log_tail

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def python_module_env(prefix: str, settings: Mapping[str, object]) -> dict[str, str]:
    """Environment for ``python -m <package>`` of this repository, configured by pydantic
    settings read from ``<prefix><KEY>`` variables: the current environment, the repository on
    PYTHONPATH, and ``settings`` (keys without the prefix, any case)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update({f"{prefix}{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Service:
    """One service process: ``start()`` returns once it is ready, ``stop()`` always cleans up.

    Subclasses set ``name`` (for logs), ``stop_timeout_s`` (how long ``stop()`` waits for a
    graceful exit before SIGKILL) and ``ready_poll_interval_s``, and call ``super().__init__``.
    """

    name = "service"
    stop_timeout_s: float = 15
    ready_poll_interval_s: float = 0.2

    def __init__(self, *, log_path: Path, startup_timeout_s: float) -> None:
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.ready_after_s: float | None = None  # seconds from start() to ready, once started
        self._process: ManagedProcess | None = None

    # --- what a launcher supplies --------------------------------------------------------------

    def _new_process(self) -> ManagedProcess:
        """The service's process, not started yet; raise ServiceStartError if it cannot run."""
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _where(self) -> str:
        """Where clients reach the service, for the log line once it is ready."""
        return ""

    # --- life cycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        """The service's process id (it leads its own process group), None before start()."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Start the process and wait until ``_is_ready()``; on failure the process is stopped and
        ServiceStartError carries the tail of its log."""
        self._process = self._new_process()
        log.info("starting %s, log %s", self.name, self.log_path)
        self._process.start()
        self.ready_after_s = self._process.wait_ready(self._is_ready, self.startup_timeout_s,
                                                      poll_interval_s=self.ready_poll_interval_s)
        log.info("%s ready after %.2f s %s", self.name, self.ready_after_s, self._where())
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the service and everything it spawned (no-op if it never started)."""
        if self._process is not None:
            self._process.stop(self.stop_timeout_s if timeout_s is None else timeout_s)

    def restart(self) -> Self:
        """Stop and start again with the same ports and data directory (for fault tests)."""
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, with no chance to clean up."""
        if self._process is not None and self._process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.stop(timeout_s=5)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the service's log ('' before anything was written)."""
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
