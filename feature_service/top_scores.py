"""The highest scores of a growing table, kept up to date instead of scanned for."""

from __future__ import annotations

import heapq
from collections.abc import ItemsView


def by_score(kv: tuple[str, float]) -> tuple[float, str]:
    """Sort key of (item, score) pairs: score, then item (the stores' trending order)."""
    return kv[1], kv[0]


class TopScores:
    """The ``size`` items with the highest (score, item), kept up to date as scores are set.

    Exact only because a score never decreases (``log_decayed_add`` only adds): an item outside
    the set scored below the set's floor when it last changed, and the floor never goes down. The
    floor is found in a min-heap with lazy deletion (stale entries are skipped, and the heap is
    rebuilt when they outnumber the members), so an update costs O(log size).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._scores: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def items(self) -> ItemsView[str, float]:
        return self._scores.items()

    def update(self, item: str, score: float) -> None:
        if item not in self._scores and len(self._scores) >= self.size:
            floor = self._floor()
            if (score, item) <= floor:
                return
            heapq.heappop(self._heap)
            del self._scores[floor[1]]
        self._scores[item] = score
        heapq.heappush(self._heap, (score, item))
        if len(self._heap) > 4 * self.size:
            self._heap = [(v, i) for i, v in self._scores.items()]
            heapq.heapify(self._heap)

    def _floor(self) -> tuple[float, str]:
        while self._scores.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # an old score of an item that has risen since
        return self._heap[0]
