"""Behaviour logs and item tables in, validated and normalised rows out.

``clean_interactions`` rejects malformed rows with counted reasons instead of training on them
silently, de-duplicates and sorts into the order of ``features.behaviour``; ``items_from_frame``
reads item attributes best-effort. Used by every source in ``export/data/interactions.py``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.behaviour import STEP_TYPES, UNKNOWN
from features.catalog import Item
from features.events import ID_PATTERN

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
INTERACTION_COLUMNS = (*REQUIRED_COLUMNS, "event_type", "value")
# Also read when present: a given event id (de-duplication and tie order as online), and the
# event's context (checked, not yet a model feature).
OPTIONAL_COLUMNS = ("event_id", "context")
# The gateway's event types, "rating" (explicit feedback such as MovieLens) and "unknown";
# lower-cased on read. These are the step types of features.behaviour.
EVENT_TYPES = STEP_TYPES
# A log without event types (or an empty cell) claims no intent it cannot show: the model reads
# such steps as "unknown".
DEFAULT_EVENT_TYPE = UNKNOWN
# An offline log without event ids gets these, in file order, so that ties in time keep file order
# under the (time, event id) order of features.behaviour. Not valid online ids: no clash.
GENERATED_ID_FORMAT = "row~{:012d}"
# More malformed rows than this (a fraction of all rows) means the wrong file or a broken export:
# fail loudly rather than train a model on the remainder.
MAX_REJECTED_FRACTION = 0.5
# Timestamps later than now + this are clock or unit errors (e.g. one row in milliseconds in a log
# in seconds).
MAX_CLOCK_SKEW_S = 24 * 3600
# Epoch numbers are seconds unless the column's median says otherwise: read as seconds, a median
# above 1e11 is after the year 5000, while read as milliseconds it is after 1973 (and above 1e14,
# as microseconds). Exports from Java and JavaScript systems, and many public logs, use them.
# (unit, median above, per second), largest first.
EPOCH_UNITS = (("us", 1e14, 1e6), ("ms", 1e11, 1e3))
EXAMPLES_PER_REASON = 3

# Rejection reasons, checked in this order; a row is counted under the first one it fails.
MISSING_VALUE = "missing_value"  # user_id, item_id or timestamp empty
BAD_ID = "bad_id"  # user_id, item_id or a given event_id does not match features.events.ID_PATTERN
BAD_TIMESTAMP = "bad_timestamp"  # neither epoch seconds nor ISO-8601, or before 1970
FUTURE_TIMESTAMP = "future_timestamp"  # later than now + MAX_CLOCK_SKEW_S
UNKNOWN_EVENT_TYPE = "unknown_event_type"  # not one of EVENT_TYPES
BAD_VALUE = "bad_value"  # value present but not a finite number
REASONS = (MISSING_VALUE, BAD_ID, BAD_TIMESTAMP, FUTURE_TIMESTAMP, UNKNOWN_EVENT_TYPE, BAD_VALUE)

_EPOCH = pd.Timestamp(0, tz="UTC")
_EXPLICIT_TZ = r"(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_ID_RE = re.compile(ID_PATTERN)


class DatasetError(RuntimeError):
    """The requested dataset cannot be found, read, or is too malformed to train on."""


@dataclass
class CleaningReport:
    """What cleaning did to one source: counts, reasons and a few offending rows per reason."""

    source: str
    rows_in: int
    rows_kept: int
    duplicates: int
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows, only reasons that occurred
    timestamp_unit: str = "s"  # of the epoch numbers in the timestamp column: "s", "ms" or "us"
    # reason -> first rows as read (plus "row": 0-based position among the data rows)
    examples: dict[str, list[dict[str, object]]] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.rejected.items()) or "none"
        unit = "" if self.timestamp_unit == "s" else f", epoch timestamps read as {self.timestamp_unit}"
        return (f"{self.source}: {self.rows_in} rows in, {self.rows_kept} kept, {self.duplicates} "
                f"duplicates, {self.rows_rejected} rejected ({reasons}){unit}")


def clean_interactions(
    frame: pd.DataFrame, *, source: str = "interactions", now_s: float | None = None
) -> tuple[pd.DataFrame, CleaningReport]:
    """Validate, normalise, de-duplicate and sort one behaviour log.

    Returns the ``Dataset.interactions`` frame and what was done to get it. Raises
    ``DatasetError`` for missing required columns, an empty log, a ``context`` cell that is not a
    JSON object, or more than ``MAX_REJECTED_FRACTION`` malformed rows.

    Duplicates: with an ``event_id`` column, a user's repeated id (the first row is kept, as the
    feature stores keep the first delivery; ids are scoped to their user, as there); without
    one, rows equal in every column after parsing (so ``1704067200`` and
    ``2024-01-01T00:00:00Z`` are the same time). Rows are sorted by (user, time,
    event id), the order of ``features.behaviour``; generated ids keep ties in file order, so the
    "last" interaction of a user is well defined and the same in every run.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing required column(s) {', '.join(missing)} "
                           f"(found: {', '.join(map(str, frame.columns)) or 'none'})")
    if frame.empty:
        raise DatasetError(f"{source}: no interactions")
    frame = frame.reset_index(drop=True)
    now_s = time.time() if now_s is None else now_s

    _check_contexts(frame.get("context"), source)
    users, items = _as_text(frame["user_id"]), _as_text(frame["item_id"])
    seconds, ts_missing, unit = _parse_timestamps(frame["timestamp"])
    given_ids = _as_text(frame["event_id"]) if "event_id" in frame.columns else None
    generated = pd.Series([GENERATED_ID_FORMAT.format(i) for i in range(len(frame))],
                          index=frame.index, dtype=object)
    event_ids = generated if given_ids is None else given_ids.mask(given_ids == "", generated)
    id_bad = pd.Series(False, index=frame.index) if given_ids is None else \
        (given_ids != "") & ~_valid_ids(given_ids)
    event_types = _parse_event_types(frame.get("event_type"), len(frame))
    values, value_bad = _parse_values(frame.get("value"), len(frame))

    reason = pd.Series(None, index=frame.index, dtype=object)
    checks = [
        (MISSING_VALUE, (users == "") | (items == "") | ts_missing),
        (BAD_ID, ~_valid_ids(users) | ~_valid_ids(items) | id_bad),
        (BAD_TIMESTAMP, seconds.isna() | (seconds < 0)),
        (FUTURE_TIMESTAMP, seconds > now_s + MAX_CLOCK_SKEW_S),
        (UNKNOWN_EVENT_TYPE, ~event_types.isin(EVENT_TYPES)),
        (BAD_VALUE, value_bad),
    ]
    for name, failed in checks:
        reason[failed & reason.isna()] = name
    keep = reason.isna()

    out = pd.DataFrame({
        "user_id": users[keep],
        "item_id": items[keep],
        # milliseconds, as events carry them online; rounded, not floored: 0.001 s is not exact in
        # binary and must not become 0 ms
        "ts_ms": np.round(seconds[keep] * 1000).astype(np.int64),
        "event_id": event_ids[keep],
        "event_type": event_types[keep],
        "value": values[keep],
    })
    deduped = (out.drop_duplicates(["user_id", "event_id"]) if given_ids is not None
               else out.drop_duplicates(out.columns.drop("event_id")))
    cleaned = deduped.sort_values(["user_id", "ts_ms", "event_id"], kind="stable").reset_index(drop=True)

    report = CleaningReport(
        source=source,
        rows_in=len(frame),
        rows_kept=len(cleaned),
        duplicates=len(out) - len(deduped),
        timestamp_unit=unit,
        rejected={r: int(n) for r in REASONS if (n := (reason == r).sum())},
        examples={r: _examples(frame, reason == r) for r in REASONS if (reason == r).any()},
    )
    _check_mostly_valid(report)
    if report.rows_rejected or report.duplicates:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return cleaned, report


def items_from_frame(frame: pd.DataFrame, *, source: str = "items") -> list[Item]:
    """Catalog entries from an item-attributes table.

    Rows without a valid ``item_id`` are dropped (the same mostly-malformed limit applies);
    a repeated id keeps its first row; an unparseable attribute becomes unknown rather than
    dropping the item, because the item still exists and can be recommended.
    """
    if "item_id" not in frame.columns:
        raise DatasetError(f"{source}: missing required column(s) item_id "
                           f"(found: {', '.join(map(str, frame.columns)) or 'none'})")
    frame = frame.reset_index(drop=True)
    ids = _as_text(frame["item_id"])
    valid = _valid_ids(ids)
    if len(frame) and (~valid).mean() > MAX_REJECTED_FRACTION:
        raise DatasetError(f"{source}: {(~valid).sum()} of {len(frame)} rows have no valid item_id "
                           f"(e.g. {ids[~valid].head(EXAMPLES_PER_REASON).tolist()})")
    repeated = valid & ids.duplicated()
    if (~valid).any() or repeated.any():
        log.warning("%s: dropped %d rows without a valid item_id and %d repeated ids",
                    source, (~valid).sum(), repeated.sum())
    keep = valid & ~repeated

    n = len(frame)
    titles = _as_text(frame["title"]) if "title" in frame.columns else pd.Series("", index=frame.index)
    categories = frame["categories"] if "categories" in frame.columns else pd.Series(None, index=frame.index)
    years = _parse_optional_number(frame.get("year"), n)
    prices = _parse_optional_number(frame.get("price"), n)
    items = []
    for i in np.flatnonzero(keep.to_numpy()):
        year, price = years.iat[i], prices.iat[i]
        items.append(Item(
            item_id=ids.iat[i],
            title=titles.iat[i] or ids.iat[i],
            categories=_split_categories(categories.iat[i]),
            year=int(year) if np.isfinite(year) and year == int(year) else None,
            price=float(price) if np.isfinite(price) and price >= 0 else None,
        ))
    return items


def _check_mostly_valid(report: CleaningReport) -> None:
    if report.rows_rejected <= MAX_REJECTED_FRACTION * report.rows_in:
        return
    examples = "; ".join(f"{r}: {rows[0]}" for r, rows in report.examples.items())
    raise DatasetError(
        f"{report.source}: {report.rows_rejected} of {report.rows_in} rows are malformed "
        f"(more than {MAX_REJECTED_FRACTION:.0%}); refusing to build a model from the rest. "
        f"Reasons: {report.rejected}. First example per reason: {examples}"
    )


def _examples(frame: pd.DataFrame, mask: pd.Series) -> list[dict[str, object]]:
    rows = frame[mask].head(EXAMPLES_PER_REASON)
    return [{"row": int(i), **{str(c): _raw(v) for c, v in row.items()}} for i, row in rows.iterrows()]


def _raw(value: object) -> object:
    """A cell as a plain Python value (None when missing), readable in logs and JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _as_text(column: pd.Series) -> pd.Series:
    """Cells as stripped strings, "" when missing.

    Integral floats lose their ".0": an integer column with gaps comes back from Parquet as float,
    but its ids are still "42". Works on the distinct values only: ids repeat a lot.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    texts = np.array([_cell_text(v) for v in uniques] + [""], dtype=object)
    return pd.Series(texts[codes], index=column.index, dtype=object)  # code -1 (missing) -> ""


def _cell_text(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "" if np.isnan(value) else str(value)
        return str(int(value)) if float(value).is_integer() else str(value)
    return "" if value is None or value is pd.NA else str(value).strip()


def _valid_ids(ids: pd.Series) -> pd.Series:
    codes, uniques = pd.factorize(ids)
    ok = np.array([_ID_RE.fullmatch(u) is not None for u in uniques] + [False], dtype=bool)
    return pd.Series(ok[codes], index=ids.index)


def _parse_timestamps(column: pd.Series) -> tuple[pd.Series, pd.Series, str]:
    """Epoch seconds (float, NaN when unparseable; fractions kept to the millisecond), a
    missing-cell mask, and the unit the column's epoch numbers were read in (``EPOCH_UNITS``).

    Accepts integer/float epoch seconds (or milliseconds or microseconds, decided once for the
    column), datetime columns (naive = UTC) and text holding either epoch numbers or ISO-8601.
    """
    if pd.api.types.is_datetime64_any_dtype(column):
        utc = column.dt.tz_convert("UTC") if column.dt.tz is not None else column.dt.tz_localize("UTC")
        return (utc - _EPOCH) // pd.Timedelta(milliseconds=1) / 1000, column.isna(), "s"
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        seconds = column.astype(float)
        missing = seconds.isna()
        iso = pd.Series(False, index=column.index)
    else:
        text = _as_text(column)
        missing = text == ""
        seconds = pd.to_numeric(text, errors="coerce").astype(float)
        iso = ~missing & seconds.isna()
    seconds[~np.isfinite(seconds)] = np.nan
    numbers = seconds[~iso].dropna()
    median = float(numbers.median()) if len(numbers) else 0.0
    unit, per_second = next(((u, n) for u, above, n in EPOCH_UNITS if median > above), ("s", 1.0))
    seconds = seconds / per_second
    if iso.any():
        seconds[iso] = _parse_iso(text[iso])
    return seconds, missing, unit


def _parse_iso(text: pd.Series) -> pd.Series:
    """ISO-8601 text to epoch seconds (NaN when unparseable); no offset means UTC."""
    out = pd.Series(np.nan, index=text.index)
    # Parsed apart because pandas 2.2 applies an earlier element's offset to later naive strings.
    explicit = text.str.contains(_EXPLICIT_TZ, regex=True)
    for part in (text[explicit], text[~explicit]):
        if len(part):
            parsed = pd.to_datetime(part, utc=True, errors="coerce", format="ISO8601")
            out[part.index] = (parsed - _EPOCH) / pd.Timedelta(seconds=1)
    return out


def _check_contexts(column: pd.Series | None, source: str) -> None:
    """Every non-empty ``context`` cell must be a JSON object of strings, as events carry it online
    (features.events.Event.context). The model does not read context yet; a malformed column
    still fails loudly, naming the row, because it means the file is not what it claims to be."""
    if column is None:
        return
    for row, cell in enumerate(column.tolist()):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)) or cell == "":
            continue
        try:
            value = json.loads(cell) if isinstance(cell, str) else cell
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}: context of data row {row} is not JSON ({exc.msg}): "
                               f"{str(cell)[:80]!r}") from None
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise DatasetError(f"{source}: context of data row {row} must be a JSON object of "
                               f"strings, got {str(cell)[:80]!r}")


def _parse_event_types(column: pd.Series | None, n: int) -> pd.Series:
    if column is None:
        return pd.Series(DEFAULT_EVENT_TYPE, index=pd.RangeIndex(n), dtype=object)
    text = _as_text(column)
    text = text.map({t: t.lower() or DEFAULT_EVENT_TYPE for t in text.unique()})
    return text


def _parse_values(column: pd.Series | None, n: int) -> tuple[pd.Series, pd.Series]:
    """Float values (NaN when absent) and a mask of cells that hold something non-numeric."""
    if column is None:
        return pd.Series(np.nan, index=pd.RangeIndex(n)), pd.Series(False, index=pd.RangeIndex(n))
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.astype(float)
        bad = np.isinf(values)
    else:
        text = _as_text(column)
        values = pd.to_numeric(text, errors="coerce").astype(float)
        bad = (text != "") & ~np.isfinite(values)
    return values.mask(bad), bad


def _parse_optional_number(column: pd.Series | None, n: int) -> pd.Series:
    """Float per row, NaN when absent or unparseable (attributes are best-effort)."""
    if column is None:
        return pd.Series(np.nan, index=pd.RangeIndex(n))
    text = column if pd.api.types.is_numeric_dtype(column) else _as_text(column)
    return pd.to_numeric(text, errors="coerce").astype(float)


def _split_categories(cell: object) -> tuple[str, ...]:
    """ "a|b" text, or a list from a Parquet list column; empty parts dropped, order kept."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        parts = [str(c) for c in cell]
    elif isinstance(cell, str):
        parts = cell.split("|")
    else:
        return ()
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
