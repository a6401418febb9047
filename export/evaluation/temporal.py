"""The global temporal protocol's part of the report (docs/evaluation.md, "Temporal protocol").

The split itself is ``export.data.split.temporal_split``; this module evaluates the baselines on it
and builds ``report["protocols"]["temporal"]``. The two-tower model trained for leave-last-out has
seen interactions after the temporal cut, so it is never evaluated here: the pipeline trains a
separate model per seed on the interactions before the cut when ``run(temporal=True)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from export.data.split import TemporalSplit
from export.evaluation.baselines import evaluate_baselines
from features.catalog import ItemCatalog

TEMPORAL_PROTOCOL = ("global temporal split: one cut-off time for all users (the timestamp at the "
                     "test quantile of all interactions); target = each user's first item after "
                     "the cut not seen before it; history = every interaction before the cut; "
                     "full ranking over all items the user has not interacted with before the cut; "
                     "validation = first new item in the band between the validation and test "
                     "cut-offs; models are trained on interactions before the validation cut-off")
MODEL_OFF = "not trained; run(temporal=True) trains one per seed on the data before the cut"


def utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cold_targets(split: TemporalSplit) -> int:
    """Test targets nobody interacted with before the cut (no model has seen them in training)."""
    seen = {item for history in split.before_cut.values() for item in history}
    return sum(item not in seen for item in split.test.values())


def untrainable(split: TemporalSplit) -> str | None:
    """Why no model can be trained and evaluated on ``split``, or None when one can."""
    if not split.test:
        return "no user has a new item after the test cut-off"
    if not split.valid:
        return "no user has a new item between the validation and test cut-offs"
    if not any(len(seq) > 1 for seq in split.train.values()):
        return "no user has two items before the validation cut-off"
    return None


def temporal_section(split: TemporalSplit, catalog: ItemCatalog, baselines: bool = True) -> dict:
    """``report["protocols"]["temporal"]`` with the baselines filled in (fitted on every user's
    history before the cut, evaluated on the users with a target); ``models`` gains the trained
    model and ``seeds`` its per-seed runs later, in the pipeline."""
    section = {
        "description": TEMPORAL_PROTOCOL,
        "users": len(split.test),
        "valid_users": len(split.valid),
        "cutoff_ms": split.test_cutoff,
        "cutoff_utc": utc(split.test_cutoff),
        "valid_cutoff_ms": split.valid_cutoff,
        "valid_cutoff_utc": utc(split.valid_cutoff),
        "quantiles": {"valid": split.valid_quantile, "test": split.test_quantile},
        "left_out": dict(split.left_out),
        "cold_targets": cold_targets(split),
        "models": {},
        "seeds": [],
    }
    if baselines and split.test:
        section["models"].update(evaluate_baselines(split.history_for("test"), split.test, catalog))
    return section
