"""Two rollout commands at once (issue 15): every command that changes the repository holds its
lock for its whole read-modify-write, so neither loses the other's update; a command that cannot
get the lock in time says who holds it; files are replaced whole, so a crash never leaves half of
one. Other processes are real ones (spawned), synchronised by events and barriers, never sleeps."""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
import threading

import pytest
import torch

from export.model.towers import TwoTower
from export.triton.locking import LOCK_FILE, RepositoryLock, read_holder
from export.triton.repository import export_repository, read_config
from export.triton.rollout import Rollout, RolloutError, RolloutState, main
from features import contract as sig
from tests.unit.export.triton import rollout_procs

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 60  # only ever reached when something is broken


def export(catalog, root, seed=0):
    torch.manual_seed(seed)
    return export_repository(TwoTower(catalog, dim=8).eval(), catalog, root, sequence_length=5)


@pytest.fixture
def live(catalog, tmp_path):
    repo = export(catalog, tmp_path / "live")
    RolloutState.read(repo).write(repo)  # a pointer and a history to keep
    return repo


@pytest.fixture
def holder(live):
    """Another process holding the lock as ``promote 7`` (its update already in the history)."""
    held, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=rollout_procs.hold_lock,
                            args=(live, "promote 7", held, release, "promote-by-someone-else"))
    process.start()
    try:
        assert held.wait(WAIT_S), "the holder never got the lock"
        yield process, release
    finally:
        release.set()
        process.join(WAIT_S)
    assert process.exitcode == 0


def rollout(repo, **kw):
    return Rollout(repo, rollout_procs.NO_TRITON, **kw)


def actions(repo):
    return [h["action"] for h in RolloutState.read(repo).history]


def test_concurrent_publishes_each_get_a_version_and_a_history_entry(catalog, live, tmp_path):
    n = 3
    candidates = [export(catalog, tmp_path / f"candidate{i}", seed=i + 1) for i in range(n)]
    read_all, versions = SPAWN.Barrier(n), SPAWN.Queue()
    processes = [SPAWN.Process(target=rollout_procs.publish, args=(live, c, read_all, versions))
                 for c in candidates]
    for p in processes:
        p.start()
    for p in processes:
        p.join(WAIT_S)
    assert [p.exitcode for p in processes] == [0] * n
    got = sorted(versions.get(timeout=WAIT_S) for _ in range(n))
    assert got == [2, 3, 4]
    state = RolloutState.read(live)
    assert sorted(h["version"] for h in state.history if h["action"] == "publish") == got
    assert sorted(state.published.values()) == got and state.live == 1
    for version in got:
        serving = json.loads((live / sig.RETRIEVE / str(version) / sig.SERVING_FILE).read_text())
        assert serving["version"] == version
    for name in sig.VERSIONED_MODELS:
        assert list(read_config(live / name / "config.pbtxt").version_policy.specific.versions) == [1]
        assert not [p.name for p in (live / name).iterdir() if p.name.startswith(".")]  # no leftovers


def test_a_second_command_waits_for_the_lock_then_keeps_the_first_ones_update(catalog, live, tmp_path,
                                                                             holder):
    candidate = export(catalog, tmp_path / "candidate", seed=1)
    waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting" in record.getMessage() and "promote 7" in record.getMessage():
                waiting.set()

    logger, handler = logging.getLogger("export.triton.locking"), Waiting()
    logger.addHandler(handler)
    old_level, result = logger.level, {}
    logger.setLevel(logging.INFO)
    r = rollout(live, lock_timeout_s=WAIT_S)  # reads the state before the holder is done with it
    worker = threading.Thread(target=lambda: result.update(version=r.publish(candidate)))
    try:
        worker.start()
        assert waiting.wait(WAIT_S), "publish did not wait for the lock"
        assert not (live / sig.RETRIEVE / "2").exists() and actions(live)[-1] == "promote-by-someone-else"
        assert rollout(live).status()["live"] == 1  # reading needs no lock
        holder[1].set()  # the holder finishes
        worker.join(WAIT_S)
    finally:
        holder[1].set()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert result == {"version": 2}
    assert actions(live) == ["promote-by-someone-else", "publish"]
    assert read_holder(live) is None  # released, nobody named


def test_a_command_that_cannot_get_the_lock_in_time_names_the_holder_and_changes_nothing(
        catalog, live, tmp_path, holder, caplog):
    candidate = export(catalog, tmp_path / "candidate", seed=1)
    process, _ = holder
    before = sorted(str(p) for p in live.rglob("*") if p.name != LOCK_FILE)
    named = rf"locked by pid {process.pid} on .*\('promote 7', since 20.*--lock-timeout-s"
    with pytest.raises(RolloutError, match=named):
        rollout(live, lock_timeout_s=0.05).publish(candidate)
    with pytest.raises(RolloutError, match=named):
        rollout(live, lock_timeout_s=0).rollback()
    with caplog.at_level(logging.ERROR, "export.triton.rollout"):
        assert main(["--repository", str(live), "--triton-url", rollout_procs.NO_TRITON,
                     "--lock-timeout-s", "0", "publish", "--from", str(candidate)]) == 2
    assert any(f"pid {process.pid}" in r.getMessage() and "promote 7" in r.getMessage()
               for r in caplog.records)
    assert sorted(str(p) for p in live.rglob("*") if p.name != LOCK_FILE) == before
    assert rollout(live, dry_run=True).publish(candidate) == 2  # a dry run takes no lock


def test_a_crash_in_the_middle_of_a_write_leaves_the_old_file_and_frees_the_lock(catalog, live,
                                                                                tmp_path):
    r = rollout(live)
    r.publish(export(catalog, tmp_path / "candidate", seed=1))  # version 2, configs pinned to [1]
    r._serve_versions = lambda versions: [r._write_policy(n, versions) for n in sig.VERSIONED_MODELS]
    r.load(2)  # configs: [1, 2]
    configs = {n: (live / n / "config.pbtxt").read_text() for n in sig.VERSIONED_MODELS}
    pointer = (live / sig.ROLLOUT_FILE).read_text()
    limit = min(len(c) for c in configs.values()) // 2  # the rewrite of any config dies halfway
    process = SPAWN.Process(target=rollout_procs.retire_killed_mid_write, args=(live, 2, limit))
    process.start()
    process.join(WAIT_S)
    assert process.exitcode == -signal.SIGXFSZ  # killed, not a clean failure
    for name, text in configs.items():
        assert (live / name / "config.pbtxt").read_text() == text, name
        assert list(read_config(live / name / "config.pbtxt").version_policy.specific.versions) == [1, 2]
    assert (live / sig.ROLLOUT_FILE).read_text() == pointer
    with RepositoryLock(live, "next command", timeout_s=0):  # the kernel dropped the dead one's
        pass
