from __future__ import annotations

from refresh import history
from refresh.history import RunRecord


def test_records_round_trip_and_read_as_a_table(tmp_path):
    first = RunRecord(outcome=history.PROMOTED, reason="better", live_version=1, version=2,
                      events={"read": 10, "offsets": {"0": [0, 10]}}, items_added=["n1"],
                      live={"holdout": {"recall@10": 0.1}}, candidate={"holdout": {"recall@10": 0.2}},
                      gain=float("inf"))
    second = RunRecord(outcome=history.NOOP, reason="0 new events")
    history.append(tmp_path, first)
    history.append(tmp_path, second)
    back = history.read(tmp_path)
    assert [r.outcome for r in back] == ["promoted", "noop"]
    assert back[0].events["offsets"] == {"0": [0, 10]} and back[0].gain is None  # inf is not JSON
    text = history.table(back)
    lines = text.splitlines()
    assert len(lines) == 3 and "promoted" in lines[1] and "0.2000" in lines[1] and "noop" in lines[2]


def test_no_history_is_an_empty_list(tmp_path):
    assert history.read(tmp_path) == []
