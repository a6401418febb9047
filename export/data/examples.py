"""Training examples: (history, target) rows from users' step sequences.

Each row packs the L item indices of a target's history and then their L event-type codes, so
the loaders and the shard files carry one int64 array per example (``export.data.loaders``); the
same layout the gateway sends (``export.train.encode_histories``). Targets are the positions where
a user meets a new item (features/behaviour.py: repeats are history, never targets), or first
purchases for the next-purchase task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from features.behaviour import encode_types, step_type_of
from features.catalog import ItemCatalog
from features.sequence import pad_left


def build_examples(
    sequences: dict[str, list[str]], catalog: ItemCatalog, sequence_length: int,
    target: Literal["new_item", "purchase"] = "new_item", whole_history: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(histories [N, 2L], targets [N]) for every new-item position of every sequence (steps or
    plain item ids, oldest first); rows laid out as ``encode_histories`` lays them out.
    ``target="purchase"``: every first purchase of an item instead, viewed or carted before or not
    (the next-purchase task of export.evaluation.next_purchase).

    A target's history is every step before it **plus the other steps that share its timestamp**
    (``Step.ts_ms``; steps without a time share it with nothing), minus the target item's own
    steps. Events logged at the same moment have no known order (a day-resolution log, ratings
    saved in one batch): their file order is arbitrary. The evaluated target, the last new item,
    always sees the rest of its moment in its history, so a training target sees it too rather
    than an arbitrary part of it. See docs/model.md for what this changed.

    ``whole_history=True`` adds a second row per target (the user's first step included): the
    last L of **all** the user's other steps, later ones too, the target item's own left out
    (``TrainConfig.whole_history``).
    """
    L = sequence_length
    rows, targets = [], []
    for user in sorted(sequences):
        sequence = sequences[user]
        # Encoded once per user, then sliced: the same as encoding each prefix on its own.
        items = catalog.indices_of(sequence)
        types = encode_types(sequence, len(sequence))
        moment_end = _moment_ends(sequence)
        seen: set[str] = set()
        bought: set[str] = set()
        for t, item in enumerate(sequence):
            purchase = step_type_of(item) == "purchase"
            is_target = item not in seen if target == "new_item" else purchase and item not in bought
            if t and is_target:
                # steps after t in its moment (a log whose times are all equal is one moment per
                # user); the target item's own steps there are its future
                after = _last_steps_except(items, items[t], t + 1, moment_end[t], L)
                history, history_types = items[max(0, t - L):t], types[max(0, t - L):t]
                if after:
                    history = np.concatenate([history, items[after]])[-L:]
                    history_types = np.concatenate([history_types, types[after]])[-L:]
                rows.append(np.concatenate([pad_left(history, L), pad_left(history_types, L)]))
                targets.append(items[t])
            if whole_history and is_target:
                others = _last_steps_except(items, items[t], 0, len(sequence), L)
                if others:
                    rows.append(np.concatenate([pad_left(items[others], L),
                                                pad_left(types[others], L)]))
                    targets.append(items[t])
            seen.add(item)
            if purchase:
                bought.add(item)
    if not targets:
        return np.zeros((0, 2 * L), np.int64), np.zeros(0, np.int64)
    return np.stack(rows), np.asarray(targets, np.int64)


def _last_steps_except(items: np.ndarray, item: int, start: int, stop: int, limit: int) -> list[int]:
    """The last ``limit`` positions in [start, stop) whose item is not ``item``, oldest first
    (a backward scan: linear in ``limit`` plus the skipped steps, however long the range)."""
    found: list[int] = []
    for j in range(stop - 1, start - 1, -1):
        if len(found) == limit:
            break
        if items[j] != item:
            found.append(j)
    found.reverse()
    return found


def _moment_ends(sequence: Sequence[str]) -> list[int]:
    """For each position, one past the last step with the same ``ts_ms`` (a sequence is in time
    order, so a moment is a run of equal times); a step without a time is a moment of its own."""
    ends = list(range(1, len(sequence) + 1))
    for j in range(len(sequence) - 2, -1, -1):
        here = getattr(sequence[j], "ts_ms", None)
        if here is not None and here == getattr(sequence[j + 1], "ts_ms", None):
            ends[j] = ends[j + 1]
    return ends
