"""Decoding the two topics' messages: a served list (``impressions``) and a behaviour event.

Anything that is not a valid record raises BadRecord with a short reason, a Prometheus label
value: the consumer counts it and goes on. The reason set is closed (REASONS), so a stream of
garbage cannot grow the number of series.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.events import (
    ID_PATTERN,
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW_MS,
    Event,
    InvalidEvent,
    parse_event,
)

# An exposure record holds a whole list (ids, scores): larger than an event, still bounded.
MAX_EXPOSURE_BYTES = 256 * 1024
NO_ARM = "none"  # the label of a list served outside any experiment (arm null)
# Label values come from the records: bounded and printable like ids.
LABEL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"

REASONS = ("empty", "too_large", "not_json", "invalid")


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# (surface, model_version, arm). The version as the gateway writes it, a number (a version
# directory of the model repository); a string is kept only when it is not a number's digits, so
# that 3 and "3" are one key (and one set of Prometheus labels).
Key = tuple[str, int | str, str]


@dataclass(frozen=True)
class Exposure:
    """One served list: where it was served, by what, when, and its items."""

    request_id: str
    key: Key
    ts_ms: int
    positions: dict[str, int]  # item id -> its first position in the list
    size: int  # items in the list

    @property
    def surface(self) -> str:
        return self.key[0]


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    position: int = Field(ge=0)
    item_id: str = Field(pattern=ID_PATTERN)


class _ExposureRecord(BaseModel):
    """What gateway/exposure.py writes; fields this service does not read are ignored, so the
    gateway may add some without breaking it."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(pattern=ID_PATTERN)
    surface: str = Field(pattern=LABEL_PATTERN)
    model_version: Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=LABEL_PATTERN)]
    arm: str | None = Field(default=None, pattern=LABEL_PATTERN)
    items: list[_Item] = Field(max_length=1000)
    ts_ms: int = Field(ge=0)


def _loads(raw: bytes | None, max_bytes: int) -> Any:
    if raw is None or not raw:
        raise BadRecord("empty")
    if len(raw) > max_bytes:
        raise BadRecord("too_large", f"{len(raw)} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord("not_json", str(exc)) from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def parse_exposure(raw: bytes | None, now_ms: int | None = None,
                   max_bytes: int = MAX_EXPOSURE_BYTES) -> Exposure:
    """Decode one message of the impressions topic, or raise BadRecord."""
    data = _loads(raw, max_bytes)
    try:
        record = _ExposureRecord.model_validate(data)
    except ValidationError as exc:
        raise BadRecord("invalid", str(exc.errors()[:1])) from None
    # A list from far ahead would move the lists' time on, and every event waiting for its list
    # would be given up at once: refused, as the events topic refuses such events.
    ahead_ms = record.ts_ms - (_now_ms() if now_ms is None else now_ms)
    if ahead_ms > MAX_FUTURE_SKEW_MS:
        raise BadRecord("invalid", f"ts_ms: {ahead_ms} ms in the future")
    version = record.model_version
    if isinstance(version, str) and version.isascii() and version.isdigit() and len(version) < 19:
        version = int(version)
    positions: dict[str, int] = {}
    for item in sorted(record.items, key=lambda i: i.position):
        positions.setdefault(item.item_id, item.position)
    return Exposure(record.request_id, (record.surface, version, record.arm or NO_ARM),
                    record.ts_ms, positions, len(record.items))


def parse_user_event(raw: bytes | None, now_ms: int | None = None,
                     max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode one message of the events topic with the feature service's own rules (the same
    events are valid for both), or raise BadRecord."""
    data = _loads(raw, max_bytes)  # not_json apart from invalid: they mean different bugs
    if not isinstance(data, dict):
        raise BadRecord("invalid", "not an object")
    try:
        return parse_event(raw, _now_ms() if now_ms is None else now_ms,
                           max_bytes=max_bytes)
    except InvalidEvent as exc:
        raise BadRecord("invalid", exc.reason) from None
