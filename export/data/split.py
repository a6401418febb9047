"""The two evaluation splits of docs/evaluation.md.

* Leave-last-out (the headline protocol): per user, the last new item is the test target, the one
  before it the validation target, everything earlier is training history.
* Global temporal: one cut-off time for every user; the target is each user's first new item after
  the cut, the history everything the user did before it. Nothing after the cut is visible.

Histories are lists of ``features.behaviour.Step`` (every event, repeats included, with its type):
exactly what the user tower is served online. Targets are always new items, because full ranking
excludes what the user has already interacted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export.data.interactions import Dataset, steps_by_user
from features.behaviour import Step


@dataclass
class LeaveLastOutSplit:
    """Per user: last new item = test, the new item before it = validation; ``train`` = every
    step before the validation item, ``before_test`` = every step before the test item (the
    validation item and any repeats after it included)."""

    train: dict[str, list[Step]]
    valid: dict[str, str]
    test: dict[str, str]
    before_test: dict[str, list[Step]]

    def history_for(self, stage: str) -> dict[str, list[Step]]:
        """What the model may see when predicting ``stage`` ("valid" or "test")."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return self.before_test
        raise ValueError(f"unknown stage {stage!r}")


def leave_last_out(dataset: Dataset, min_interactions: int = 3) -> LeaveLastOutSplit:
    """The evaluation protocol of docs/evaluation.md; users with fewer than ``min_interactions``
    items are left out.

    The task is the next *new* item: a repeated interaction with an item (view, then cart, then
    purchase; re-views) is history, never a target, because full ranking excludes what the user
    has already seen, and serving does the same. ``min_interactions`` counts distinct items.
    Steps after the test item (repeats only, by construction) are not used.
    """
    train, valid, test, before_test = {}, {}, {}, {}
    for user, steps in dataset.user_steps().items():
        firsts = _first_positions(steps)
        if len(firsts) < min_interactions:
            continue
        v, t = firsts[-2], firsts[-1]
        train[user], valid[user] = steps[:v], str(steps[v])
        test[user], before_test[user] = str(steps[t]), steps[:t]
    return LeaveLastOutSplit(train, valid, test, before_test)


def _first_positions(steps: list[Step]) -> list[int]:
    """Positions where the user meets an item for the first time."""
    seen: set[str] = set()
    out = []
    for position, step in enumerate(steps):
        if step not in seen:
            seen.add(step)
            out.append(position)
    return out


TEST_QUANTILE = 0.9  # test = interactions at or after the timestamp at this quantile
VALID_QUANTILE = 0.8  # validation = the band between this quantile's timestamp and the test cut

# Why a user is not a target of the temporal protocol (TemporalSplit.left_out keys).
NO_HISTORY = "no_history_before_cut"  # every interaction at or after the cut (a new user)
INACTIVE_AFTER = "no_interaction_after_cut"
ONLY_REPEATS_AFTER = "only_seen_items_after_cut"  # active after the cut, but nothing new


def cutoff_timestamp(timestamps: np.ndarray, quantile: float) -> int:
    """The timestamp of the interaction at 0-based position ``floor(quantile * n)`` in time order.

    Interactions strictly before it are "before the cut"; the rest (ties included) are after it,
    so at least ``1 - quantile`` of all interactions are after the cut.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    ordered = np.sort(np.asarray(timestamps, dtype=np.int64))
    if len(ordered) == 0:
        raise ValueError("no interactions to cut")
    position = min(len(ordered) - 1, int(np.floor(quantile * len(ordered) + 1e-9)))
    return int(ordered[position])


@dataclass
class TemporalSplit:
    """Global temporal split: one cut-off time for all users (docs/evaluation.md).

    ``train``: per user, steps before ``valid_cutoff`` (what a model may train on).
    ``valid``: first item in ``[valid_cutoff, test_cutoff)`` not in that user's ``train``.
    ``before_cut``: per user, steps before ``test_cutoff`` (the test histories; what the
    baselines are fitted on). ``test``: first item at or after ``test_cutoff`` not in ``before_cut``.
    ``left_out``: users with no test target, by reason (``NO_HISTORY`` etc.).
    """

    train: dict[str, list[Step]]
    valid: dict[str, str]
    before_cut: dict[str, list[Step]]
    test: dict[str, str]
    valid_cutoff: int
    test_cutoff: int
    left_out: dict[str, int] = field(default_factory=dict)
    valid_quantile: float = VALID_QUANTILE
    test_quantile: float = TEST_QUANTILE

    def history_for(self, stage: str) -> dict[str, list[Step]]:
        """What the model may see when predicting ``stage`` ("valid" or "test"); may include users
        without a target (they still count as training data for the baselines)."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return self.before_cut
        raise ValueError(f"unknown stage {stage!r}")


def first_new_items(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, str]:
    """Per user with a history in ``before``: the first item of ``after`` not already in it."""
    targets = {}
    for user, history in before.items():
        seen = set(history)
        new = next((item for item in after.get(user, ()) if item not in seen), None)
        if new is not None:
            targets[user] = str(new)
    return targets


def _sequences(frame) -> dict[str, list[Step]]:
    # the frame is sorted by (user, time, event id), so each user's steps are in behaviour order
    return steps_by_user(frame)


def temporal_split(
    dataset: Dataset,
    test_quantile: float = TEST_QUANTILE,
    valid_quantile: float = VALID_QUANTILE,
) -> TemporalSplit:
    """One cut-off for all users at the ``test_quantile`` timestamp of all interactions; validation
    likewise at ``valid_quantile`` (times in epoch ms). Targets are each user's first *new* item
    after the cut (repeats of items seen before the cut are skipped, as full ranking excludes
    them); histories are every step before the cut. Users with no history before the cut, or no
    new item after it, are left out and counted in ``left_out``."""
    if not valid_quantile < test_quantile:
        raise ValueError("valid_quantile must be below test_quantile")
    frame = dataset.interactions
    ts = frame["ts_ms"].to_numpy()
    test_cut = cutoff_timestamp(ts, test_quantile)
    valid_cut = cutoff_timestamp(ts, valid_quantile)
    before_valid = _sequences(frame[ts < valid_cut])
    before_test = _sequences(frame[ts < test_cut])
    band = _sequences(frame[(ts >= valid_cut) & (ts < test_cut)])
    after_test = _sequences(frame[ts >= test_cut])

    test = first_new_items(before_test, after_test)
    users = set(frame["user_id"])
    left_out = {
        NO_HISTORY: len(users - set(before_test)),
        INACTIVE_AFTER: len(set(before_test) - set(after_test)),
        ONLY_REPEATS_AFTER: len((set(before_test) & set(after_test)) - set(test)),
    }
    return TemporalSplit(
        train=before_valid,
        valid=first_new_items(before_valid, band),
        before_cut=before_test,
        test=test,
        valid_cutoff=valid_cut,
        test_cutoff=test_cut,
        left_out=left_out,
        valid_quantile=valid_quantile,
        test_quantile=test_quantile,
    )
