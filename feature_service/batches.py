"""A poll's messages on their way through the feature consumer: parsed, then applied by the store."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from kafka import TopicPartition

from feature_service.store import StoreUnavailable
from features.events import Event


@dataclass
class Batch:
    """One poll's messages, parsed."""

    messages: dict[TopicPartition, list]
    valid: list[tuple[Event, object]] = field(default_factory=list)  # (event, message)
    invalid: list[tuple[object, str]] = field(default_factory=list)  # (message, reason)
    # Partitions rewound while this batch was in the store: not dead-lettered or committed here.
    skip: set[TopicPartition] = field(default_factory=set)

    def without(self, partitions: set[TopicPartition]) -> Batch:
        return Batch({tp: ms for tp, ms in self.messages.items() if tp not in partitions},
                      [(e, m) for e, m in self.valid if (m.topic, m.partition) not in partitions],
                      [(m, why) for m, why in self.invalid if (m.topic, m.partition) not in partitions])


def outcome_of(future: Future) -> list[bool] | StoreUnavailable:
    try:
        return future.result()
    except StoreUnavailable as exc:
        return exc
