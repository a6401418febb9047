"""Rollout state on a shared model repository: one exclusive lock for every command that changes it,
and files replaced whole, never rewritten in place (issue 15).

Two rollout commands at once (two operators, a CI job and a person) would each read the state,
write their own update, and one update would be lost. ``RepositoryLock`` is an ``fcntl.flock`` on
``.rollout.lock`` at the repository root, held for a command's whole read-modify-write; the kernel
drops it when the holder exits, crashed or not, so it can never go stale. While held, the file names
the holder (pid, command, since when, host), which is what a command that gave up waiting reports.
``write_atomic`` writes a temporary file next to the target, fsyncs it and renames it over the
target: a reader (a gateway polling ``rollout.json``, Triton loading a ``config.pbtxt``, ``status``)
sees the old file or the new one, and a crash at any point leaves the old one intact.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".rollout.lock"
DEFAULT_LOCK_TIMEOUT_S = 300.0
_POLL_S = (0.01, 0.2)  # first and longest pause between tries while another command holds the lock

log = logging.getLogger("export.triton.locking")


class LockTimeout(RuntimeError):  # noqa: N818 - reads as what happened: the wait timed out
    """Another command held the lock for longer than we were willing to wait."""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old content or the new one."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp's is 0600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # Triton may run as another user
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def read_holder(repository: Path, lock_file: str = LOCK_FILE) -> dict | None:
    """Who holds the lock, as its holder wrote it (None: nobody, or not written yet)."""
    try:
        return json.loads((Path(repository) / lock_file).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another command (it has not said which yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')!r}, "
            f"since {holder.get('since')})")


class RepositoryLock:
    """``with RepositoryLock(repo, "promote 3", timeout_s=60): ...`` - exclusive across processes
    (and across lock objects within one process). Waits at most ``timeout_s`` (0: one try), then
    raises ``LockTimeout`` naming the holder. ``lock_file``: another lock in the same folder (the
    refresh job's on its state directory)."""

    def __init__(self, repository: Path, command: str, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 on_wait=None, lock_file: str = LOCK_FILE) -> None:
        self.path = Path(repository) / lock_file
        self.command = command
        self.timeout_s = timeout_s
        self.on_wait = on_wait  # called once with the holder when we have to wait (tests, logs)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        pause, waited = _POLL_S[0], False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = read_holder(self.path.parent, self.path.name)
                    if not waited:
                        waited = True
                        log.info("waiting up to %.0f s for the rollout lock, held by %s",
                                 self.timeout_s, describe_holder(holder))
                        if self.on_wait is not None:
                            self.on_wait(holder)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeout(
                            f"{self.path.parent} is locked by {describe_holder(holder)}; gave up "
                            f"after {self.timeout_s:g} s (--lock-timeout-s). Wait for it to finish, "
                            "or make sure that process is gone (the lock goes with it)") from None
                    time.sleep(min(pause, left))
                    pause = min(2 * pause, _POLL_S[1])
            holder = {"pid": os.getpid(), "command": self.command, "host": socket.gethostname(),
                      "since": datetime.now(UTC).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the lock, if we got it
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it: nothing to name
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StepLock:
    """The lock as a rollout's steps take it: a step run by another step (promote runs load, smoke,
    shadow) holds the outer one's; ``on_acquire`` runs once it is held (re-read the state there);
    a timeout raises ``error``. ``enabled=False`` (a dry run) takes no lock."""

    def __init__(self, repository: Path, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 enabled: bool = True, on_acquire: Callable[[], None] = lambda: None,
                 error: type[LockTimeout] = LockTimeout) -> None:
        self.repository, self.timeout_s, self.enabled = Path(repository), timeout_s, enabled
        self.on_acquire, self.error = on_acquire, error
        self._depth = 0

    @contextmanager
    def held(self, command: str) -> Iterator[None]:
        if self._depth or not self.enabled:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        lock = RepositoryLock(self.repository, command, timeout_s=self.timeout_s)
        try:
            lock.acquire()
        except LockTimeout as exc:
            raise self.error(f"{command}: {exc}") from None
        self._depth = 1
        try:
            self.on_acquire()
            yield
        finally:
            self._depth = 0
            lock.release()


def exclusive(step):
    """Decorates a method of an object with a ``StepLock`` as ``lock``: the step runs under it,
    named in the lock file by its name and plain arguments (``promote 3``)."""
    @functools.wraps(step)
    def locked(self, *args, **kwargs):
        command = " ".join([step.__name__, *(str(a) for a in args if isinstance(a, int | str | Path))])
        with self.lock.held(command):
            return step(self, *args, **kwargs)
    return locked
