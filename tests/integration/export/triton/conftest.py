"""Fixtures shared by the rollout tests of this folder."""

from __future__ import annotations

import shutil

import pytest

from stack.triton import TritonServer


@pytest.fixture
def served(exported, tmp_path):
    """A copy of the session's export, served by a Triton of its own (rollouts change it)."""
    repo = tmp_path / "repo"
    shutil.copytree(exported.repository, repo)
    with TritonServer(repo, log_path=tmp_path / "triton.log") as triton:
        yield repo, triton
