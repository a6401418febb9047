"""The refresh job's view of the catalog topic: every item's latest update, and the items file that
training and the cold-item path read.

The reading itself lives in features/catalog_stream.py, which the cold-item path (export/) shares:
export may not import refresh/.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from features.catalog_stream import read_catalog_topic
from features.catalog_updates import CATEGORY_SEPARATOR, ItemUpdate

__all__ = ["ITEMS_COLUMNS", "read_catalog_updates", "write_items_csv"]

# The items file's columns (docs/data.md; read by export.data.cleaning.items_from_frame). Stock is
# not a model attribute: the gateway's inventory holds it.
ITEMS_COLUMNS = ("item_id", "title", "categories", "year", "price")


def read_catalog_updates(bootstrap_servers: str, topic: str,
                         timeout_s: float = 30) -> dict[str, ItemUpdate]:
    """item id -> its latest update on ``topic``, read from the beginning to the end offsets at the
    time of the call; invalid records are logged, counted and skipped (with the counts:
    ``features.catalog_stream.read_catalog_topic``). An absent topic: no updates. TimeoutError
    when the end is not reached within ``timeout_s``."""
    return read_catalog_topic(bootstrap_servers, topic, timeout_s).updates


def write_items_csv(updates: Mapping[str, ItemUpdate] | Iterable[ItemUpdate], path: Path | str) -> int:
    """Write the items file (``ITEMS_COLUMNS``, categories "|"-separated, unknown values empty) of
    ``updates`` in item-id order (the same file from the same updates); returns the rows written.
    Written to a temporary file and renamed, so a reader never sees half a file."""
    rows = sorted(updates.values() if isinstance(updates, Mapping) else updates,
                  key=lambda u: u.item_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(ITEMS_COLUMNS)
            for u in rows:
                writer.writerow([u.item_id, u.title, CATEGORY_SEPARATOR.join(u.categories),
                                 "" if u.year is None else u.year,
                                 "" if u.price is None else repr(u.price)])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)
