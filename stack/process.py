"""A child process that is a service: started, polled until ready, and always stopped.

Guarantees against orphans, in order of how the parent goes away:
  * normal stop / context-manager exit / failed readiness: `stop()` signals the whole process
    group (the child runs in its own session, so grandchildren such as Triton's python-backend
    stubs are included), waits, then SIGKILLs the group;
  * the Python interpreter exits without stopping it: an atexit hook stops every live process;
  * the parent is SIGKILLed: the kernel sends the child SIGTERM (prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 40

_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()
_atexit_registered = False
_libc: ctypes.CDLL | None = None


class ServiceStartError(RuntimeError):
    """A service did not become ready (it exited, timed out, or reported a failure)."""


def _load_libc() -> ctypes.CDLL:
    # Loaded in the parent: dlopen between fork and exec is not async-signal-safe.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _make_preexec(parent_pid: int, libc: ctypes.CDLL) -> Callable[[], None]:
    def preexec() -> None:
        # PDEATHSIG fires when the *thread* that forked us exits; start services from a
        # long-lived thread (the main thread, in practice).
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died between fork() and prctl(); then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)
        # A launcher run in the background (`nohup make demo &`) ignores SIGINT, and an ignored
        # signal stays ignored across exec: a Python service would then install no
        # KeyboardInterrupt handler, and a SIGINT stop would wait out its timeout and SIGKILL.
        libc.signal(int(signal.SIGINT), int(signal.SIG_DFL))

    return preexec


def _stop_all_live() -> None:
    with _live_lock:
        live = list(_live)
    for proc in live:
        try:
            proc.stop()
        except Exception:  # atexit: keep stopping the others
            log.exception("failed to stop %s at exit", proc.name)


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""


class ManagedProcess:
    """One service process with its stdout+stderr appended to `log_path`.

    `stop_signal` is what `stop()` sends first: SIGTERM by default; Triton prefers SIGINT.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        global _atexit_registered
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        libc = _load_libc()
        with _live_lock:
            if not _atexit_registered:
                atexit.register(_stop_all_live)
                _atexit_registered = True
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                           f"{' '.join(self.argv)}\n".encode())
            log_file.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_make_preexec(os.getpid(), libc),
                )
            except OSError as e:
                raise ServiceStartError(f"{self.name}: cannot run {self.argv[0]!r}: {e}") from e
        self._started_at = time.monotonic()
        with _live_lock:
            _live.add(self)
        log.debug("%s started (pid %d), log %s", self.name, self._popen.pid, self.log_path)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def _failure(self, reason: str) -> ServiceStartError:
        """Stop the process and build an error that carries its log tail."""
        self.stop()
        tail = self.log_tail()
        return ServiceStartError(
            f"{self.name} failed to start: {reason}\n"
            f"--- last {_LOG_TAIL_LINES} lines of {self.log_path} ---\n{tail}"
        )

    def wait_ready(
        self, check: Callable[[], bool], timeout_s: float, poll_interval_s: float = 0.2
    ) -> float:
        """Poll `check` until it returns True; return the seconds since start().

        `check` returning False or raising an ordinary exception means "not ready yet"; raising
        ServiceStartError means "will never be ready" (e.g. a model failed to load) and aborts
        at once. On failure the process is stopped and ServiceStartError carries its log tail.
        """
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout_s
        last_error = ""
        try:
            while True:
                code = self._popen.poll()
                if code is not None:
                    raise self._failure(f"process exited with code {code} before it was ready")
                try:
                    if check():
                        return time.monotonic() - self._started_at
                    last_error = ""
                except ServiceStartError as e:
                    raise self._failure(str(e)) from e
                except Exception as e:  # not ready yet
                    last_error = f" (last check: {e!r})"
                    log.debug("%s not ready yet: %r", self.name, e)
                if time.monotonic() >= deadline:
                    raise self._failure(f"not ready after {timeout_s:.0f} s{last_error}")
                time.sleep(poll_interval_s)
        except BaseException:
            # Also on Ctrl-C: a caller's `with` block never reaches __exit__ if start() fails.
            self.stop()
            raise

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """True while a non-zombie process is in group `pgid`.

        Scans /proc rather than using killpg(pgid, 0): orphaned grandchildren are reparented
        to PID 1, which in a container may never reap them, and zombies would look alive.
        """
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # exited meanwhile
                continue
            # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False

    def stop(self, timeout_s: float = 10) -> None:
        """Stop the whole process group: `stop_signal`, wait up to timeout_s, then SIGKILL."""
        popen = self._popen
        if popen is None:
            return
        pgid = popen.pid  # start_new_session: the child leads its own group
        try:
            if popen.poll() is None or self._group_alive(pgid):
                try:
                    os.killpg(pgid, self.stop_signal)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + timeout_s
                # Wait for the leader *and* its descendants: a grandchild may outlive it.
                while time.monotonic() < deadline:
                    if popen.poll() is not None and not self._group_alive(pgid):
                        break
                    time.sleep(0.05)
                else:
                    log.warning("%s did not stop within %.0f s: SIGKILL", self.name, timeout_s)
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                popen.wait()
        finally:
            with _live_lock:
                _live.discard(self)
        log.debug("%s stopped (exit code %s)", self.name, popen.returncode)

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
