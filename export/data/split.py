"""Leave-last-out split: per user, the last new item is the test target, the one before it the
validation target, everything earlier is training history (docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass

from export.data.interactions import Dataset


@dataclass
class LeaveLastOutSplit:
    """Per user: last interaction = test, second last = validation, the rest = train."""

    train: dict[str, list[str]]
    valid: dict[str, str]
    test: dict[str, str]

    def history_for(self, stage: str) -> dict[str, list[str]]:
        """What the model may see when predicting ``stage`` ("valid" or "test")."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return {u: self.train[u] + [self.valid[u]] for u in self.test}
        raise ValueError(f"unknown stage {stage!r}")


def leave_last_out(dataset: Dataset, min_interactions: int = 3) -> LeaveLastOutSplit:
    """The evaluation protocol of docs/evaluation.md; users with fewer than ``min_interactions``
    items are left out.

    The task is the next *new* item: repeated interactions with an item (view, then cart, then
    purchase; re-views) keep only the first, because full ranking excludes what the user has
    already seen, and serving does the same. MovieLens has one rating per (user, item), so this
    changes nothing there.
    """
    train, valid, test = {}, {}, {}
    for user, seq in dataset.user_sequences(first_occurrence_only=True).items():
        if len(seq) < min_interactions:
            continue
        train[user], valid[user], test[user] = seq[:-2], seq[-2], seq[-1]
    return LeaveLastOutSplit(train, valid, test)
