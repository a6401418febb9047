"""The refresh history: one JSON line per run, appended, in the job's state directory.

A line says when the run started and how long it took, which events it read (offsets per
partition, invalid messages), the window it trained on, the items it added, the live and the
candidate's validation and holdout numbers, the decision and its reason, and the version it
published (if any). ``python -m refresh history`` prints them as a table.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HISTORY_FILE = "history.jsonl"

# Outcomes of a run.
PROMOTED = "promoted"
AB_STARTED = "ab_started"
NOT_PROMOTED = "not_promoted"
NOOP = "noop"  # nothing (or too little) new to train on: no version, nothing committed
FAILED = "failed"  # an error; nothing committed, the live version unchanged
OUTCOMES = (PROMOTED, AB_STARTED, NOT_PROMOTED, NOOP, FAILED)


@dataclass
class RunRecord:
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    outcome: str = FAILED
    reason: str = ""
    seconds: float = 0.0
    live_version: int | None = None
    version: int | None = None  # published by this run
    events: dict = field(default_factory=dict)  # read, invalid, offsets, unknown_item, pending
    window: dict = field(default_factory=dict)
    items_added: list[str] = field(default_factory=list)
    items_changed: int = 0
    split: dict = field(default_factory=dict)
    live: dict = field(default_factory=dict)  # {"valid": {...}, "holdout": {...}}
    candidate: dict = field(default_factory=dict)  # the same, plus "epochs"
    gain: float | None = None
    checks: dict = field(default_factory=dict)  # shadow overlap, experiment name
    seconds_by_step: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), sort_keys=True)


def _finite(value):
    """JSON has no infinity: an unbounded gain (live recall 0) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append(state_dir: Path, record: RunRecord) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / HISTORY_FILE).open("a") as out:
        out.write(record.to_json() + "\n")
        out.flush()


def read(state_dir: Path) -> list[RunRecord]:
    path = state_dir / HISTORY_FILE
    if not path.is_file():
        return []
    names = RunRecord.__dataclass_fields__
    return [RunRecord(**{k: v for k, v in json.loads(line).items() if k in names})
            for line in path.read_text().splitlines() if line.strip()]


def table(records: list[RunRecord]) -> str:
    """One row per run, oldest first: what a person reads to see why versions came and went."""
    header = ("started (UTC)", "outcome", "live", "new", "events", "items+", "live R@10",
              "cand R@10", "gain", "s", "reason")
    rows = [header]
    for r in records:
        holdout_live, holdout_cand = r.live.get("holdout", {}), r.candidate.get("holdout", {})
        rows.append((
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.started_ms / 1000)), r.outcome,
            _text(r.live_version), _text(r.version), _text(r.events.get("read")),
            str(len(r.items_added)), _number(holdout_live.get("recall@10")),
            _number(holdout_cand.get("recall@10")),
            "-" if r.gain is None else f"{r.gain:+.1%}", f"{r.seconds:.0f}", r.reason,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join([c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]])
                     for row in rows)


def _text(value) -> str:
    return "-" if value is None else str(value)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"
