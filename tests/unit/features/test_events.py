import pytest
from pydantic import ValidationError

from features.events import Event, EventType


def test_round_trip_and_defaults():
    event = Event(user_id="u1", item_id="42", event_type="cart")
    again = Event.from_bytes(event.to_bytes())
    assert again == event and again.event_type is EventType.CART
    assert len(event.event_id) == 32 and event.ts_ms > 0


@pytest.mark.parametrize("payload", [
    {"user_id": "u1", "item_id": "42", "event_type": "like"},  # unknown type
    {"user_id": "u1", "event_type": "view"},  # missing item
    {"user_id": "u 1", "item_id": "42", "event_type": "view"},  # bad id characters
    {"user_id": "u1", "item_id": "42", "event_type": "view", "ts_ms": -5},
    {"user_id": "u1", "item_id": "42", "event_type": "view", "surprise": 1},  # unknown field
])
def test_invalid_events_are_rejected(payload):
    with pytest.raises(ValidationError):
        Event.model_validate(payload)


def test_malformed_json_is_rejected():
    with pytest.raises(ValidationError):
        Event.from_bytes(b"{not json")
