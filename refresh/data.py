"""The training data of a refresh: what the live version was built from, plus the new events,
inside a time window.

Frames have ``Dataset.interactions``' columns (``COLUMNS``) and its order (user, time, event id).
The data a version was built from is kept as ``DATA_FILE`` in the job's state directory and
rewritten after every run that consumed events; the very first run starts from the interactions
file the live version was trained on (``RefreshSettings.base_data``).

Events for items that neither the candidate's catalog nor any catalog update knows are never
trained on and never dropped: they are counted and appended to ``PENDING_FILE``, and every run
tries them again, so they join the data once their item arrives.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from export.data.interactions import Dataset, load_interactions_file
from features.catalog import ItemCatalog
from features.events import Event

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "ts_ms", "event_id", "event_type", "value")
DATA_FILE = "data.parquet"
PENDING_FILE = "pending_events.jsonl"
DAY_MS = 86_400_000


@dataclass
class Merged:
    """``data``: the window of old and new interactions (what the candidate sees, holdout
    included); ``new``: the new events inside it; ``unknown``: new events for unknown items."""

    data: pd.DataFrame
    new: pd.DataFrame
    unknown: pd.DataFrame
    window_start_ms: int
    window_end_ms: int
    outside_window: int  # old and new rows older than the window, left out
    duplicates: int  # new events already in the data (same user and event id)

    def summary(self) -> dict:
        return {"start_ms": self.window_start_ms, "end_ms": self.window_end_ms,
                "interactions": len(self.data), "new_events": len(self.new),
                "unknown_item_events": len(self.unknown), "outside_window": self.outside_window,
                "duplicates": self.duplicates}


def event_row(event: Event) -> tuple[str, str, int, str, str]:
    """An event as a row: (user_id, item_id, ts_ms, event_id, event_type)."""
    return event.user_id, event.item_id, event.ts_ms, event.event_id, event.event_type.value


def events_frame(events: Iterable[Event]) -> pd.DataFrame:
    return rows_frame(event_row(e) for e in events)


def rows_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    """Event rows as interaction rows (``value`` unknown: events carry none)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS[:-1]))
    frame["ts_ms"] = frame["ts_ms"].astype(np.int64)
    frame["value"] = np.nan
    return frame


def sort(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "ts_ms", "event_id"], kind="stable").reset_index(drop=True)


def merge(base: pd.DataFrame, new: pd.DataFrame, catalog: ItemCatalog, window_ms: int) -> Merged:
    """The new events joined to ``base`` within ``window_ms`` of the newest event; new events for
    items not in ``catalog`` go to ``unknown`` (old rows are all known: they were trained on)."""
    key = ["user_id", "event_id"]
    seen = pd.MultiIndex.from_frame(base[key]) if len(base) else pd.MultiIndex.from_arrays([[], []])
    repeated = pd.MultiIndex.from_frame(new[key]).isin(seen) if len(new) else np.zeros(0, bool)
    fresh = new[~repeated].drop_duplicates(subset=key)
    duplicates = len(new) - len(fresh)
    ids = {item.item_id for item in catalog.items}
    known = fresh["item_id"].isin(ids) if len(fresh) else np.zeros(0, bool)
    unknown, fresh = fresh[~known], fresh[known]
    stamps = [f["ts_ms"].max() for f in (base, fresh) if len(f)]
    end = int(max(stamps)) + 1 if stamps else 0
    start = end - window_ms
    both = pd.concat([base[list(COLUMNS)], fresh[list(COLUMNS)]], ignore_index=True)
    inside = both["ts_ms"] >= start
    fresh_inside = fresh[fresh["ts_ms"] >= start]
    if duplicates:
        log.info("%d new events were already in the data (a re-read): skipped", duplicates)
    return Merged(sort(both[inside]), sort(fresh_inside), sort(unknown), start, end,
                  int((~inside).sum()), duplicates)


def dataset(frame: pd.DataFrame, catalog: ItemCatalog, name: str = "refresh") -> Dataset:
    return Dataset(name, frame.reset_index(drop=True), catalog)


# --- files ------------------------------------------------------------------------------------


def load_base(state_dir: Path, base_data: str | Path | None) -> pd.DataFrame:
    """The data the live version was built from: the state directory's, else (first run) the
    interactions file, cleaned as export cleans it."""
    path = state_dir / DATA_FILE
    if path.is_file():
        return pd.read_parquet(path)
    if base_data is None:
        raise FileNotFoundError(f"no {path}: the first refresh needs the live version's training "
                                "data (--base-data / RECSYS_REFRESH_BASE_DATA)")
    frame = load_interactions_file(Path(base_data)).interactions
    return sort(frame[list(COLUMNS)])


def save_data(state_dir: Path, frame: pd.DataFrame) -> None:
    _replace(state_dir / DATA_FILE, lambda tmp: frame[list(COLUMNS)].to_parquet(tmp, index=False))


def read_pending(state_dir: Path) -> list[Event]:
    path = state_dir / PENDING_FILE
    if not path.is_file():
        return []
    return [Event.model_validate_json(line) for line in path.read_text().splitlines() if line]


def write_pending(state_dir: Path, unknown: pd.DataFrame) -> None:
    """Replace the pending file with ``unknown`` (the previous pending events were read into this
    run, so they are either in the data now or still in ``unknown``)."""
    def write(tmp: Path) -> None:
        with tmp.open("w") as out:
            for row in unknown.itertuples(index=False):
                out.write(json.dumps({"event_id": row.event_id, "user_id": row.user_id,
                                      "item_id": row.item_id, "event_type": row.event_type,
                                      "ts_ms": int(row.ts_ms)}) + "\n")
    _replace(state_dir / PENDING_FILE, write)


def _replace(path: Path, write) -> None:
    """Written aside and renamed: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
