"""What a rollout keeps and reports: the pointer file (``rollout.json``), the check reports, and
the helpers that read a repository's versions. The steps themselves are export/triton/rollout.py.

``rollout.json``: ``{"live": N, "previous": M | null, "experiment": {...} | null, "published":
{content hash: version}, "history": [every step, with its details]}``. Gateways read ``live`` and
``experiment`` (``features.experiment.read_pointer``); the rest is the rollout's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.triton.locking import write_atomic
from features import contract as sig
from features.experiment import Experiment


class RolloutError(RuntimeError):
    """A step refused or a check failed; the live version is unchanged."""


@dataclass
class RolloutState:
    live: int
    previous: int | None = None
    published: dict[str, int] = field(default_factory=dict)  # content hash -> version
    history: list[dict] = field(default_factory=list)
    experiment: dict | None = None  # features.experiment.Experiment.to_dict(), while one runs

    @classmethod
    def read(cls, repository: Path) -> RolloutState:
        path = repository / sig.ROLLOUT_FILE
        if path.is_file():
            raw = json.loads(path.read_text())
            return cls(raw["live"], raw.get("previous"), raw.get("published", {}), raw.get("history", []),
                       raw.get("experiment"))
        # First rollout on this repository: adopt what Triton serves by default, the newest.
        return cls(live=sig.latest_version(repository / sig.RETRIEVE))

    @property
    def running(self) -> Experiment | None:
        return None if self.experiment is None else Experiment.from_dict(self.experiment)

    def serving(self) -> set[int]:
        """The versions requests are answered by now: the live one and every experiment arm's."""
        running = self.running
        return {self.live} | (running.versions if running else set())

    def write(self, repository: Path) -> None:
        # gateways poll this file: never let them (or a crash) leave half of it
        write_atomic(repository / sig.ROLLOUT_FILE, json.dumps(self.__dict__, indent=2))


@dataclass
class SmokeReport:
    version: int
    requests: int
    id_overlap: float  # mean fraction of the reference top-k that Triton returned
    max_score_diff: float
    # The same for similar_items (None: a reference exported before it had one)
    similar_overlap: float | None = None
    similar_max_score_diff: float | None = None

    @property
    def ok(self) -> bool:
        similar_ok = self.similar_overlap is None or (
            self.similar_overlap >= 0.9 and (self.similar_max_score_diff or 0.0) <= 1e-3)
        return self.id_overlap >= 0.9 and self.max_score_diff <= 1e-3 and similar_ok


@dataclass
class ShadowReport:
    live: int
    candidate: int
    requests: int
    k: int
    overlap_at_k: float  # mean |live top-k ∩ candidate top-k| / k
    live_ms: dict[str, float]
    candidate_ms: dict[str, float]


def versions_on_disk(model_dir: Path) -> set[int]:
    return {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def tree_hash(dirs: list[Path]) -> str:
    digest = hashlib.sha256()
    for root in dirs:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.name == sig.SERVING_FILE:
                continue  # carries the version number, which publishing rewrites
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}
