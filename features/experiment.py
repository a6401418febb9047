"""A/B experiments between model versions: the arms, their weights, and which arm a user is in.

The experiment lives in the rollout pointer (``rollout.json``, key ``"experiment"``) next to the live
version; ``python -m export.triton.rollout ab start|status|stop`` writes it and every gateway reads
it. A user's arm is a pure function of the experiment's name and the user id (a SHA-256 of both,
read as a number in [0, 1) and placed on the arms' cumulative weights), so it is the same on every
gateway, across restarts, and needs no shared table. A new experiment (a new name) reshuffles
users; changing nothing else keeps everyone where they were.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from features.contract import RETRIEVE, ROLLOUT_FILE, latest_version
from features.events import is_valid_id

LIVE_ARM = "live"  # the arm that serves the live version; requests without a user id are served by it
WEIGHT_TOLERANCE = 1e-6  # weights read from a command line ("0.9", "0.1") add up to 1 within this


class InvalidExperiment(ValueError):
    """Arms that cannot be served: a weight outside [0, 1], weights not summing to 1, bad names."""


@dataclass(frozen=True)
class Arm:
    name: str
    version: int
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    started_at_ms: int

    def __post_init__(self) -> None:
        problem = arms_problem(self.name, self.arms)
        if problem:
            raise InvalidExperiment(problem)

    def arm_for(self, user_id: str) -> Arm:
        """The user's arm: stable across processes and restarts (see the module docstring)."""
        digest = hashlib.sha256(f"{self.name}\0{user_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        edge = 0.0
        for arm in self.arms:
            edge += arm.weight
            if point < edge:
                return arm
        # Weights sum to 1 within WEIGHT_TOLERANCE: a point past the last edge belongs to the last
        # arm that takes traffic at all.
        return next(arm for arm in reversed(self.arms) if arm.weight > 0)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise InvalidExperiment(f"no arm {name!r} in experiment {self.name!r}; arms: "
                                f"{', '.join(a.name for a in self.arms)}")

    @property
    def versions(self) -> set[int]:
        return {arm.version for arm in self.arms}

    def to_dict(self) -> dict:
        return {"name": self.name, "started_at_ms": self.started_at_ms,
                "arms": [{"name": a.name, "version": a.version, "weight": a.weight} for a in self.arms]}

    @classmethod
    def from_dict(cls, raw: dict) -> Experiment:
        try:
            arms = tuple(Arm(str(a["name"]), int(a["version"]), float(a["weight"])) for a in raw["arms"])
            return cls(str(raw["name"]), arms, int(raw.get("started_at_ms", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidExperiment):
                raise
            raise InvalidExperiment(f"malformed experiment {raw!r}: {exc!r}") from None


def arms_problem(name: str, arms: tuple[Arm, ...]) -> str | None:
    """Why these arms cannot be an experiment, or None."""
    if not is_valid_id(name):
        return f"experiment name {name!r}: letters, digits and _.:- only, 1 to 64 characters"
    if len(arms) < 2:
        return f"an experiment needs at least two arms, got {len(arms)}"
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        return f"arm names must differ, got {names}"
    if len({arm.version for arm in arms}) != len(arms):
        return f"each arm must serve its own version, got {[arm.version for arm in arms]}"
    for arm in arms:
        if not is_valid_id(arm.name):
            return f"arm name {arm.name!r}: letters, digits and _.:- only, 1 to 64 characters"
        if not (math.isfinite(arm.weight) and 0.0 <= arm.weight <= 1.0):
            return f"arm {arm.name!r}: weight {arm.weight} is outside [0, 1]"
    total = sum(arm.weight for arm in arms)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        return (f"arm weights must sum to 1, got {' + '.join(str(a.weight) for a in arms)} = "
                f"{total:g}")
    return None


def read_pointer(repository: Path) -> tuple[int, Experiment | None]:
    """The live version and the running experiment (or None) of a model repository, read from
    one reading of the rollout pointer, so the two always belong together. Without a pointer the
    newest version is live. A malformed experiment raises InvalidExperiment (a gateway then keeps
    serving what it serves)."""
    pointer = Path(repository) / ROLLOUT_FILE
    if not pointer.is_file():
        return latest_version(Path(repository) / RETRIEVE), None
    raw = json.loads(pointer.read_text())
    experiment = raw.get("experiment")
    return int(raw["live"]), None if experiment is None else Experiment.from_dict(experiment)
