"""What the gateway needs to know about the model Triton serves: item catalog, popular items; and,
during an A/B experiment (features.experiment), which version answers which user."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from features import contract as sig
from features.catalog import ItemCatalog
from features.experiment import Experiment


@dataclass(frozen=True)
class ServedModel:
    version: int
    catalog: ItemCatalog
    popular_items: list[str]
    sequence_length: int
    arm: str | None = None  # the experiment arm this copy serves (None: no experiment)


def load_served_model(repository: Path, version: int | None = None) -> ServedModel:
    """Read the catalog of ``version`` (default: the live one, see ``features.contract``)."""
    version = sig.live_version(repository) if version is None else version
    version_dir = repository / sig.RETRIEVE / str(version)
    info = json.loads((version_dir / sig.SERVING_FILE).read_text())
    return ServedModel(
        version=version,
        catalog=ItemCatalog.from_json(version_dir / sig.CATALOG_FILE),
        popular_items=list(info.get("popular_items", [])),
        sequence_length=int(info["sequence_length"]),
    )


@dataclass(frozen=True)
class ServedArms:
    """A running experiment and, per arm, its version's model tagged with the arm's name."""

    experiment: Experiment
    by_arm: Mapping[str, ServedModel]

    @classmethod
    def build(cls, experiment: Experiment, models: Mapping[int, ServedModel]) -> ServedArms:
        """``models``: every arm's version, loaded (a KeyError names one that is missing)."""
        return cls(experiment, {arm.name: dataclasses.replace(models[arm.version], arm=arm.name)
                                for arm in experiment.arms})

    def pick(self, user_id: str) -> ServedModel:
        return self.by_arm[self.experiment.arm_for(user_id).name]
