"""The behaviour event: the one schema shared by the gateway (producer) and feature_service."""

from __future__ import annotations

import time
import uuid
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

# Ids end up in Kafka keys and Redis keys: keep them short and printable.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"


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
