"""The behaviour event: the one schema shared by the gateway (producer) and feature_service."""

from __future__ import annotations

import re
import time
import uuid
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Ids end up in Kafka keys and Redis keys: keep them short and printable. Pydantic's (Rust) regex
# reads ``$`` as the end of the text; Python's ``re.match`` also lets it match before a trailing
# newline, so Python code checks ids with ``is_valid_id`` (a full match), never ``re.match``.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is an id as ID_PATTERN means it (the whole string; "u1\\n" is not one)."""
    return _ID_RE.fullmatch(value) is not None


class EventType(str, Enum):
    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"


class Event(BaseModel):
    """One user behaviour event, as posted to the gateway and carried on the Kafka topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=ID_PATTERN)
    user_id: str = Field(pattern=ID_PATTERN)
    item_id: str = Field(pattern=ID_PATTERN)
    event_type: EventType
    ts_ms: int = Field(default_factory=lambda: int(time.time() * 1000), ge=0)
    context: dict[str, str] | None = Field(default=None, max_length=16)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        return cls.model_validate_json(raw)


class InvalidEvent(ValueError):
    """A message that is not an acceptable event; ``reason`` says why (for the dead-letter topic)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Far larger than any real event (the schema bounds every field); anything bigger is an abuse.
MAX_EVENT_BYTES = 4096
# Client clocks drift a little; an event from further ahead than this would sort after every real
# one in a user's history for as long as the clock skew lasts.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000


def check_event_time(event: Event, now_ms: int, max_future_skew_ms: int = MAX_FUTURE_SKEW_MS) -> None:
    ahead_ms = event.ts_ms - now_ms
    if ahead_ms > max_future_skew_ms:
        raise InvalidEvent(f"ts_ms: {ahead_ms} ms in the future (at most {max_future_skew_ms} ms allowed)")


def check_event_size(event: Event, max_bytes: int = MAX_EVENT_BYTES) -> None:
    """What parse_event checks of the message the producer will send (``event.to_bytes()``): lets
    the gateway refuse an event that the consumer would dead-letter."""
    size = len(event.to_bytes())
    if size > max_bytes:
        raise InvalidEvent(f"the event is {size} bytes serialized, larger than the {max_bytes}-byte "
                           "limit of the events topic (shorten or drop context values)")


def parse_event(raw: bytes | None, now_ms: int, *, max_bytes: int = MAX_EVENT_BYTES,
                max_future_skew_ms: int = MAX_FUTURE_SKEW_MS) -> Event:
    """Decode and check one message from the events topic, or raise InvalidEvent with the reason."""
    if raw is None:
        raise InvalidEvent("body: empty message (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"body: {len(raw)} bytes, larger than the {max_bytes}-byte limit")
    try:
        event = Event.from_bytes(raw)
    except ValidationError as exc:
        raise InvalidEvent(validation_reason(exc)) from None
    check_event_time(event, now_ms, max_future_skew_ms)
    return event


def validation_reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
