"""One refresh cycle against fakes of the topic and the rollout: what is committed, published and
recorded in each outcome, and that a crash leaves everything as it was."""

from __future__ import annotations

import pytest

from features.events import Event
from refresh import data, history
from refresh.config import RefreshSettings
from refresh.job import Hooks, RefreshBusy, RefreshJob, exclusive
from refresh.metrics import RefreshMetrics
from tests.unit.refresh.conftest import FakePublisher, FakeSource


class Crash(RuntimeError):
    pass


def settings(shop, tmp_path, **overrides) -> RefreshSettings:
    values = dict(state_dir=str(tmp_path / "state"), base_checkpoint=str(shop.checkpoint),
                  base_data=str(shop.base_file), catalog_topic=None, epochs=1, batch_size=64,
                  window_days=60, margin=0.0, shadow_requests=5)
    return RefreshSettings(**{**values, **overrides})


def job(shop, tmp_path, source, publisher=None, hooks=None, metrics=None, **overrides):
    publisher = publisher or FakePublisher({1: shop.catalog})
    return RefreshJob(settings(shop, tmp_path, **overrides), publisher=publisher,
                      source_factory=lambda: source, catalog_reader=dict, hooks=hooks,
                      metrics=metrics), publisher


def test_no_new_events_is_a_no_op_with_a_record(shop, tmp_path, caplog):
    caplog.set_level("INFO", logger="refresh")
    source = FakeSource([])
    refresh, publisher = job(shop, tmp_path, source, min_events=1)
    record = refresh.run_once()
    assert record.outcome == history.NOOP and "no new version" in record.reason
    assert source.commits == 0 and publisher.published == [] and source.closed
    assert "fewer than min_events" in caplog.text
    assert [r.outcome for r in history.read(tmp_path / "state")] == ["noop"]


def test_only_unknown_items_is_a_no_op_that_keeps_them(shop, tmp_path):
    stray = [Event(event_id=f"x{i}", user_id="u00001", item_id="nobody-knows", event_type="view",
                   ts_ms=1_800_000_000_000 + i) for i in range(3)]
    source = FakeSource(stray)
    refresh, publisher = job(shop, tmp_path, source)
    record = refresh.run_once()
    assert record.outcome == history.NOOP and record.events["unknown_item"] == 3
    assert source.commits == 1 and publisher.published == []  # kept in the pending file
    assert [e.event_id for e in data.read_pending(tmp_path / "state")] == ["x0", "x1", "x2"]


def test_a_crash_after_training_commits_nothing_and_the_next_run_completes(shop, tmp_path):
    source = FakeSource(shop.events)
    publisher = FakePublisher({1: shop.catalog})

    def crash():
        raise Crash("injected")

    refresh, _ = job(shop, tmp_path, source, publisher, hooks=Hooks(after_training=crash))
    with pytest.raises(Crash):
        refresh.run_once()
    state = tmp_path / "state"
    assert source.commits == 0 and publisher.published == [] and publisher.live == 1
    assert not (state / data.DATA_FILE).exists()  # the merged data is not saved either
    assert [(r.outcome, r.reason) for r in history.read(state)] == [("failed", "Crash: injected")]

    metrics = RefreshMetrics()
    refresh, _ = job(shop, tmp_path, source, publisher, metrics=metrics)
    record = refresh.run_once()
    assert record.outcome == history.PROMOTED, record.reason
    assert source.commits == 1 and publisher.promoted == [2] and record.version == 2
    assert (state / "checkpoints" / "v2.pt").is_file()
    saved = data.load_base(state, None)
    assert set(saved["event_id"]) >= {e.event_id for e in shop.events}
    assert record.live["holdout"]["users"] == record.candidate["holdout"]["users"] > 0
    assert metrics.runs.labels("promoted")._value.get() == 1
    assert metrics.events._value.get() == len(shop.events)

    # The next run starts from version 2's checkpoint and the saved data; nothing new: no-op.
    again, _ = job(shop, tmp_path, FakeSource([]), publisher)
    assert again.run_once().outcome == history.NOOP


def test_a_candidate_below_the_margin_is_not_promoted_but_its_events_are_consumed(shop, tmp_path):
    source = FakeSource(shop.events)
    refresh, publisher = job(shop, tmp_path, source, margin=1e9)
    record = refresh.run_once()
    assert record.outcome == history.NOT_PROMOTED and "below the margin" in record.reason
    assert publisher.published == [] and source.commits == 1
    assert (tmp_path / "state" / data.DATA_FILE).is_file()
    assert record.candidate["epochs"] and record.live["valid"]["users"] > 0


class CommitFails(FakeSource):
    def commit(self) -> None:
        raise ConnectionError("broker gone")


def test_a_crash_between_saving_the_data_and_committing_is_completed_by_the_next_run(shop, tmp_path):
    publisher = FakePublisher({1: shop.catalog})
    refresh, _ = job(shop, tmp_path, CommitFails(shop.events), publisher)
    with pytest.raises(ConnectionError):
        refresh.run_once()
    assert publisher.live == 2  # published and promoted before the commit failed
    source = FakeSource(shop.events)  # the same events again: all already in the saved data
    again, _ = job(shop, tmp_path, source, publisher)
    record = again.run_once()
    assert record.outcome == history.NOOP and record.window["duplicates"] == len(shop.events)
    assert source.commits == 1 and publisher.promoted == [2]  # no second version


def test_runs_do_not_overlap(tmp_path):
    with exclusive(tmp_path):
        with pytest.raises(RefreshBusy):
            with exclusive(tmp_path):
                pass
    with exclusive(tmp_path):  # released with its holder
        pass


def test_the_live_checkpoint_falls_back_to_the_newest_older_one_then_the_base(shop, tmp_path):
    refresh, _ = job(shop, tmp_path, FakeSource([]))
    for version in (2, 5):
        path = refresh.checkpoint_path(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert refresh.live_checkpoint(5).name == "v5.pt"
    assert refresh.live_checkpoint(7).name == "v5.pt"  # 6 and 7 added cold items to 5
    assert refresh.live_checkpoint(1) == shop.checkpoint


def test_an_ab_weight_starts_an_experiment_instead_of_promoting(shop, tmp_path):
    source = FakeSource(shop.events)
    refresh, publisher = job(shop, tmp_path, source, ab_weight=0.2)
    record = refresh.run_once()
    assert record.outcome == history.AB_STARTED, record.reason
    assert publisher.promoted == [] and record.version == 2 and record.checks == {"experiment": "x"}
    assert source.commits == 1
