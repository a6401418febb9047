"""The gateway's checks of an event (features.events) agree with what the consumer's parse_event
accepts: the id pattern as a full match, the size of the serialized event."""

import pytest

from features.events import Event, InvalidEvent, check_event_size, is_valid_id, parse_event

NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize("value, valid", [
    ("u1", True), ("a.b:c-d_e", True), ("x" * 64, True),
    ("u1\n", False),  # re.match with `$` would take it: `$` matches before a trailing newline
    ("", False), ("x" * 65, False), ("u 1", False), ("\nu1", False), ("u1\n\n", False),
])
def test_ids_are_checked_as_a_full_match(value, valid):
    assert is_valid_id(value) is valid


def _event_of_size(size: int) -> Event:
    base = Event(event_id="e1", user_id="u1", item_id="i1", event_type="view", ts_ms=NOW_MS,
                 context={"k": ""})
    pad = size - len(base.to_bytes())
    return base.model_copy(update={"context": {"k": "x" * pad}})


def test_the_size_check_refuses_exactly_what_parse_event_dead_letters():
    at_limit, over = _event_of_size(4096), _event_of_size(4097)
    assert len(at_limit.to_bytes()) == 4096 and len(over.to_bytes()) == 4097
    check_event_size(at_limit)
    assert parse_event(at_limit.to_bytes(), NOW_MS) == at_limit
    with pytest.raises(InvalidEvent, match="4097 bytes serialized, larger than the 4096-byte limit"):
        check_event_size(over)
    with pytest.raises(InvalidEvent):
        parse_event(over.to_bytes(), NOW_MS)


def test_the_size_limit_is_a_parameter():
    event = _event_of_size(500)
    check_event_size(event, max_bytes=500)
    with pytest.raises(InvalidEvent, match="larger than the 499-byte limit"):
        check_event_size(event, max_bytes=499)
