"""What the concurrency tests of ``test_rollout_locking.py`` run in processes of their own (spawned:
a fresh interpreter each, as a second operator's command would be). Kept apart from the test module
so that a child imports only what it runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

NO_TRITON = "127.0.0.1:1"


def publish(repository: Path, source: Path, read_all, versions) -> None:
    """Read the state (as a command does when it starts), wait until every other process has read
    it too, then publish: without a lock each would write back its own stale copy."""
    from export.triton.rollout import Rollout

    rollout = Rollout(repository, NO_TRITON, lock_timeout_s=60)
    read_all.wait(timeout=60)
    versions.put(rollout.publish(source))


def hold_lock(repository: Path, command: str, held, release, record: str | None = None) -> None:
    """Hold the repository's lock as ``command`` would, until told to release it; ``record``: an
    action appended to the history meanwhile, as the holder's own update."""
    from export.triton.locking import RepositoryLock, write_atomic

    with RepositoryLock(repository, command, timeout_s=60):
        if record:
            path = Path(repository) / "rollout.json"
            state = json.loads(path.read_text())
            state["history"].append({"at_ms": 0, "action": record})
            write_atomic(path, json.dumps(state, indent=2))
        held.set()
        release.wait(timeout=60)


def retire_killed_mid_write(repository: Path, version: int, max_file_bytes: int) -> None:
    """Retire ``version`` in a process the kernel kills (SIGXFSZ) as soon as a write takes any file
    past ``max_file_bytes``: a crash in the middle of rewriting a config."""
    import resource
    import signal

    from export.triton.rollout import Rollout

    rollout = Rollout(repository, NO_TRITON, lock_timeout_s=60)  # imports done: no .pyc to write
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):  # pytest may have pointed them at a file: keep them off it
        os.dup2(devnull, fd)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    rollout.retire(version)
