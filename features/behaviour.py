"""A user's behaviour events -> the steps the user tower reads. One rule for training and serving.

Training (``export/``), the feature stores (``feature_service/``) and the gateway all build a
user's model input through this module, so what the model learns from and what it is served can
not disagree. The rules (docs/features.md, "From events to model inputs"):

* **Order:** event time, ties broken by event id. Both stores and the offline loader sort this way
  (an offline log without event ids gets ids that keep its file order).
* **Every event is a step, repeats included.** A view -> cart -> purchase funnel on one item is
  three steps: the progression *is* the behaviour signal, and the step's event type tells the model
  which stage it saw. Dropping repeats would hide that a user came back to an item; merging them
  would need a merge window that the stream and the batch log could draw differently.
* **The input is the last ``sequence_length`` steps**, left-padded, most recent last. The stores
  keep at least that many events per user (``FeatureRules.history_items``).
* **What the model predicts is the next new item** (full ranking excludes what the user has
  seen); repeats are history, never targets. In training, a target also sees the other steps that
  share its timestamp, whose order is unknown (``export.data.examples.build_examples``).

A ``Step`` *is* its item id (a ``str``), with the event type attached, so every consumer that only
needs items (catalog lookups, exclusions, the classical baselines) works on steps unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Protocol

import numpy as np

from features.sequence import pad_left

# Event types the user tower has an embedding for, by code. 0 pads short histories; "unknown" is
# any type the model was not built with (a log without types, a type added later), so a new type
# online is accepted and read as "unknown" rather than failing the request.
PAD_TYPE = 0
STEP_TYPES = ("unknown", "view", "click", "cart", "purchase", "rating")
UNKNOWN = "unknown"
_CODES = {name: code for code, name in enumerate(STEP_TYPES, start=1)}
NUM_TYPE_CODES = len(STEP_TYPES) + 1  # rows of the type-embedding table (PAD included)


def type_name(event_type: object) -> str:
    """A known step type name for an ``EventType``, a string or None (anything else: unknown)."""
    if isinstance(event_type, Enum):
        event_type = event_type.value
    name = str(event_type).lower() if event_type is not None else UNKNOWN
    return name if name in _CODES else UNKNOWN


def type_code(event_type: object) -> int:
    return _CODES[type_name(event_type)]


class Step(str):
    """One event as the user tower reads it: the item id (this object *is* that string) plus its
    event type (a name from ``STEP_TYPES``) and, when known, its time (``ts_ms``, epoch ms).

    The model never reads the time; training uses it to tell which steps happened at the same
    moment (``export.data.examples.build_examples``)."""

    event_type: str
    ts_ms: int | None

    def __new__(cls, item_id: str, event_type: object = UNKNOWN, ts_ms: int | None = None) -> Step:
        step = super().__new__(cls, item_id)
        step.event_type = type_name(event_type)
        step.ts_ms = None if ts_ms is None else int(ts_ms)
        return step

    def __reduce__(self):  # pickle (worker processes) keeps the type and time
        return Step, (str(self), self.event_type, self.ts_ms)

    def __repr__(self) -> str:
        return f"Step({str(self)!r}, {self.event_type!r}, {self.ts_ms!r})"


class BehaviourEvent(Protocol):
    """What the builder needs of an event: ``features.user_state.RecentEvent`` online, a row of the
    offline log in ``export/``."""

    event_id: str
    item_id: str
    event_type: object
    ts_ms: int


def event_order(event: BehaviourEvent) -> tuple[int, str]:
    """The one sort key of behaviour: event time, then event id."""
    return event.ts_ms, event.event_id


def steps_of(events: Iterable[BehaviourEvent]) -> list[Step]:
    """A user's events as steps, oldest first (the order of ``event_order``)."""
    return [Step(e.item_id, e.event_type, e.ts_ms) for e in sorted(events, key=event_order)]


def step_type_of(item: str) -> str:
    """The event type of a step; a plain item id (no type known) is "unknown"."""
    return getattr(item, "event_type", UNKNOWN)


def encode_types(history: Sequence[str], length: int) -> np.ndarray:
    """Type codes of the last ``length`` steps, aligned with ``encode_history``'s item indices."""
    tail = history[-length:] if length else ()
    return pad_left(np.fromiter((type_code(step_type_of(s)) for s in tail), dtype=np.int64,
                                count=len(tail)), length)
