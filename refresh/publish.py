"""The rollout side of a refresh: the live version and its catalog, and publishing a candidate
through ``export.triton.rollout`` (publish -> load -> smoke -> shadow -> promote, or an A/B arm).

A failed check raises ``RolloutError`` and leaves the live version serving (the rollout's own
guarantee); the refresh then records the run as failed and commits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from export.triton.rollout_state import RolloutError
from features import contract as sig
from features.catalog import ItemCatalog

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def live_version(self) -> int: ...

    def catalog(self, version: int) -> ItemCatalog: ...

    def publish(self, staging: Path) -> int: ...

    def promote(self, version: int, shadow_histories: dict[str, Sequence[str]] | None,
                min_overlap: float | None) -> dict:
        """Shadow (when histories are given), then the rollout's promote: load, smoke, switch."""
        ...

    def start_ab(self, version: int, candidate_weight: float) -> dict: ...


class RolloutPublisher:
    """The live repository and the Triton serving it (explicit model control)."""

    def __init__(self, repository: Path, triton_url: str, *, shadow_requests: int = 100) -> None:
        self.repository = Path(repository)
        self.triton_url = triton_url
        self.shadow_requests = shadow_requests

    def _rollout(self):
        # Imported here: tritonclient is only needed once a candidate is published.
        from export.triton.rollout import Rollout

        return Rollout(self.repository, self.triton_url)

    def live_version(self) -> int:
        return sig.live_version(self.repository)

    def catalog(self, version: int) -> ItemCatalog:
        return ItemCatalog.from_json(self.repository / sig.RETRIEVE / str(version) / sig.CATALOG_FILE)

    def publish(self, staging: Path) -> int:
        return self._rollout().publish(staging)

    def promote(self, version: int, shadow_histories: dict[str, Sequence[str]] | None,
                min_overlap: float | None) -> dict:
        """Shadow (when histories are given), then the rollout's promote: load, smoke, switch."""
        rollout = self._rollout()
        checks: dict = {}
        if shadow_histories and self.shadow_requests:
            rollout.load(version)
            report = rollout.shadow(version, dict(shadow_histories), requests=self.shadow_requests)
            checks["shadow_overlap_at_10"] = round(report.overlap_at_k, 4)
            checks["shadow_p50_ms"] = {"live": report.live_ms.get("p50"),
                                       "candidate": report.candidate_ms.get("p50")}
            if min_overlap is not None and report.overlap_at_k < min_overlap:
                raise RolloutError(f"shadow overlap@10 {report.overlap_at_k:.3f} is below "
                                   f"{min_overlap}: version {rollout.state.live} stays live")
        rollout.promote(version)  # load, smoke, switch: the shadow above was its gate
        checks["smoke"] = "ok"
        return checks

    def start_ab(self, version: int, candidate_weight: float) -> dict:
        from export.triton import ab

        experiment = ab.start(self._rollout(), version, live_weight=round(1 - candidate_weight, 6),
                              candidate_weight=candidate_weight)
        return {"experiment": experiment.name, "candidate_weight": candidate_weight}
