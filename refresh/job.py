"""One refresh cycle: read -> merge -> warm start + fine-tune -> evaluate -> decide -> publish ->
commit -> record.

Guarantees (docs/refresh.md):

* Offsets are committed last, after the candidate is published and promoted (or the decision not
  to promote is recorded) and the merged data is saved. A run that fails anywhere before that
  commits nothing and changes nothing the gateways see: the live version keeps serving, and the
  next run reads the same events again (new events already in the saved data are recognised by
  user and event id and not counted twice).
* A candidate that is not better by the margin is not promoted, with the reason recorded. Its
  events still count as consumed: the offsets are committed and the events join the saved data,
  so the next run trains on them with whatever arrives next, instead of re-reading them forever.
* Too few new events (``min_events``) is a no-op: a log line and a history line, no version,
  nothing committed. So is a read with no new event for a known item inside the window, except
  that its offsets are committed: what it read is already in the data, too old, or pending.
* Events for unknown items are counted and kept in the pending file, never trained on or dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from export.data.cleaning import items_from_frame
from export.data.interactions import read_table
from export.pipeline import popular_items
from export.triton.locking import LockTimeout, RepositoryLock
from export.triton.repository import export_repository
from features.catalog import Item
from refresh import catalog as catalogs
from refresh import data, history
from refresh.config import RefreshSettings
from refresh.evaluate import Split, decide, ranking_metrics, time_split
from refresh.history import RunRecord
from refresh.metrics import RefreshMetrics
from refresh.publish import Publisher, RolloutPublisher
from refresh.source import KafkaEventSource
from refresh.warm_start import finetune, finetune_config, load_live, refit_item_item, warm_start

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STAGING = "staging"
LOCK_FILE = ".refresh.lock"


@dataclass
class Hooks:
    """Test seams: called between the steps they are named after."""

    after_training: Callable[[], None] | None = None
    before_publish: Callable[[], None] | None = None  # only when the candidate is to be published


class RefreshJob:
    def __init__(self, settings: RefreshSettings, *, publisher: Publisher | None = None,
                 source_factory: Callable[[], KafkaEventSource] | None = None,
                 catalog_reader: Callable[[], dict] | None = None,
                 metrics: RefreshMetrics | None = None, hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.publisher = publisher or RolloutPublisher(Path(settings.repository), settings.triton_url,
                                                       shadow_requests=settings.shadow_requests)
        self.source_factory = source_factory or self._kafka_source
        self.catalog_reader = catalog_reader or self._catalog_updates
        self.metrics = metrics
        self.hooks = hooks or Hooks()

    def _kafka_source(self) -> KafkaEventSource:
        s = self.settings
        return KafkaEventSource(s.kafka_bootstrap_servers, s.events_topic, s.group_id,
                                timeout_s=s.read_timeout_s, max_poll_records=s.max_poll_records)

    def _catalog_updates(self) -> dict:
        s = self.settings
        if not s.catalog_topic:
            return {}
        from refresh.catalog_feed import read_catalog_updates

        return read_catalog_updates(s.kafka_bootstrap_servers, s.catalog_topic, s.catalog_timeout_s)

    def checkpoint_path(self, version: int) -> Path:
        return self.state_dir / CHECKPOINTS / f"v{version}.pt"

    def live_checkpoint(self, live: int) -> Path:
        """The live version's checkpoint; for a version this job did not publish (cold items
        added by ``export.triton.cold_items``), the newest older one this job published, else
        ``base_checkpoint``: ``load_live`` extends it to the live catalog as cold_items did."""
        if (path := self.checkpoint_path(live)).is_file():
            return path
        older = sorted((int(p.stem[1:]), p) for p in (self.state_dir / CHECKPOINTS).glob("v*.pt")
                       if p.stem[1:].isdigit() and int(p.stem[1:]) < live)
        if older:
            return older[-1][1]
        if self.settings.base_checkpoint is None:
            raise FileNotFoundError(f"no checkpoint of live version {live} in {self.state_dir}: the "
                                    "first refresh needs --base-checkpoint")
        return Path(self.settings.base_checkpoint)

    # --- the cycle ----------------------------------------------------------------------------

    def run_once(self) -> RunRecord:
        """One cycle; its record is appended to the history whatever happens. An error is
        recorded as a failed run and raised again. ``RefreshBusy`` (nothing recorded) while
        another run holds the state directory."""
        with exclusive(self.state_dir):
            return self._run_once()

    def _run_once(self) -> RunRecord:
        record = RunRecord()
        started = time.perf_counter()
        try:
            self._cycle(record)
        except BaseException as exc:
            record.outcome, record.reason = history.FAILED, f"{type(exc).__name__}: {exc}"
            log.error("refresh failed, nothing committed, the live version serves on: %s", exc)
            raise
        finally:
            record.seconds = round(time.perf_counter() - started, 2)
            history.append(self.state_dir, record)
            self._count(record)
        log.info("refresh %s in %.0f s: %s", record.outcome, record.seconds, record.reason)
        return record

    def _cycle(self, record: RunRecord) -> None:
        s, steps = self.settings, Timer(record)
        live = record.live_version = self.publisher.live_version()
        live_catalog = self.publisher.catalog(live)
        checkpoint = self.live_checkpoint(live)

        source = self.source_factory()
        try:
            with steps("read"):
                read = source.read()
            record.events = {"read": len(read.rows), "messages": read.messages,
                             "invalid": dict(read.invalid), "offsets": read.offsets()}
            if len(read.rows) < s.min_events:
                record.outcome = history.NOOP
                record.reason = (f"{len(read.rows)} new events, fewer than min_events="
                                 f"{s.min_events}: no new version, nothing committed")
                log.info("%s", record.reason)
                return
            self._train_and_publish(record, read, live, live_catalog, checkpoint, steps, source)
        finally:
            source.close()

    def _train_and_publish(self, record, read, live, live_catalog, checkpoint, steps, source) -> None:
        s = self.settings
        with steps("merge"):
            change = catalogs.extend(live_catalog, self.catalog_reader(), self._items_file())
            record.items_added, record.items_changed = change.added, len(change.changed)
            pending = data.read_pending(self.state_dir)
            new = data.rows_frame([*map(data.event_row, pending), *read.rows])
            merged = data.merge(data.load_base(self.state_dir, s.base_data), new, change.catalog,
                                int(s.window_days * data.DAY_MS))
            record.window = merged.summary()
            record.events.update(pending_before=len(pending), unknown_item=len(merged.unknown),
                                 unknown_items=_top(merged.unknown["item_id"]))
            if len(merged.unknown):
                log.warning("%d events for %d unknown items kept pending (e.g. %s)", len(merged.unknown),
                            merged.unknown["item_id"].nunique(), _top(merged.unknown["item_id"]))
        if merged.new.empty:
            # Every event read is already in the data (a run that crashed after saving it),
            # older than the window, or kept pending: reading them again would change nothing,
            # so they are committed (not committing would re-read them forever).
            data.write_pending(self.state_dir, merged.unknown)
            source.commit()
            record.outcome = history.NOOP
            record.reason = (f"no new events for known items inside the window ({merged.duplicates} "
                             f"already in the data, {merged.outside_window} rows outside it, "
                             f"{len(merged.unknown)} for unknown items kept pending): no new "
                             "version; offsets committed")
            log.info("%s", record.reason)
            return

        split = time_split(merged.data, merged.new, s.holdout_fraction, s.valid_fraction)
        record.split = split.summary()
        live_model, live_config = load_live(checkpoint, live_catalog)
        config = finetune_config(live_config, epochs=s.epochs, patience=s.patience,
                                 learning_rate=s.learning_rate, batch_size=s.batch_size,
                                 device=s.device, seed=s.seed)
        L = config.sequence_length
        with steps("evaluate_live"):
            record.live = self._numbers(live_model, live_catalog, split, L)
        with steps("train"):
            candidate = warm_start(live_model, live_catalog, change.catalog, config)
            validate = None
            if split.valid:
                def validate(m):
                    return ranking_metrics(m, change.catalog, split.train, split.valid, L)
            epochs, examples = finetune(candidate, change.catalog, split.train, config, validate)
            candidate = refit_item_item(candidate, change.catalog, split.train, config)
        with steps("evaluate_candidate"):
            record.candidate = {**self._numbers(candidate, change.catalog, split, L), "epochs": epochs,
                                "train_examples": examples}
        if self.hooks.after_training:
            self.hooks.after_training()

        decision = decide(record.live["holdout"], record.candidate["holdout"], s.margin)
        record.gain, record.reason = decision.gain, decision.reason
        if decision.promote:
            if self.hooks.before_publish:
                self.hooks.before_publish()
            with steps("publish"):
                self._publish(record, candidate, change.catalog, merged.data, split, L, config)
        else:
            record.outcome = history.NOT_PROMOTED
            log.info("not promoted: %s", decision.reason)
        with steps("commit"):
            # The data first: a crash between the two re-reads events the data already holds,
            # which the merge recognises; the other order would lose them.
            data.save_data(self.state_dir, merged.data)
            data.write_pending(self.state_dir, merged.unknown)
            source.commit()

    def _numbers(self, model, catalog, split: Split, length: int) -> dict:
        return {"valid": ranking_metrics(model, catalog, split.train, split.valid, length),
                "holdout": ranking_metrics(model, catalog, split.before_test, split.test, length)}

    def _items_file(self) -> list[Item]:
        path = self.settings.items_path
        return items_from_frame(read_table(Path(path)), source=str(path)) if path else []

    def _publish(self, record, candidate, catalog, frame, split: Split, length, config) -> None:
        s = self.settings
        staging = self.state_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        metadata = {"dataset": "refresh", "popular_items": popular_items(frame["item_id"]),
                    "metrics": record.candidate["holdout"],
                    "refresh": {"from_version": record.live_version, "started_ms": record.started_ms,
                                "items_added": len(record.items_added)}}
        export_repository(candidate.cpu().eval(), catalog, staging, sequence_length=length,
                          target=s.target, metadata=metadata)
        # Saved before publishing: the published version must never lack its checkpoint, or the
        # next refresh could not start from it.
        pending = self.state_dir / CHECKPOINTS / "candidate.pt"
        pending.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": candidate.state_dict(), "config": config.as_dict(),
                    "epochs": record.candidate.get("epochs", [])}, pending)
        version = record.version = self.publisher.publish(staging)
        os.replace(pending, self.checkpoint_path(version))
        shadow = {u: split.before_test[u] for u in sorted(split.test)[:s.shadow_requests]}
        if s.ab_weight is not None:
            record.checks = self.publisher.start_ab(version, s.ab_weight)
            record.outcome = history.AB_STARTED
        else:
            record.checks = self.publisher.promote(version, shadow, s.min_shadow_overlap)
            record.outcome = history.PROMOTED
        log.info("version %d %s: %s", version, record.outcome, record.reason)

    def _count(self, record: RunRecord) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        m.runs.labels(record.outcome).inc()
        m.events.inc(record.events.get("read", 0))
        m.invalid.inc(sum(record.events.get("invalid", {}).values()))
        m.unknown.inc(record.events.get("unknown_item", 0))
        m.duration.set(record.seconds)
        if record.outcome != history.FAILED:
            m.last_success.set(time.time())
        if record.outcome == history.PROMOTED and record.version is not None:
            m.live_version.set(record.version)
        elif record.live_version is not None:
            m.live_version.set(record.live_version)


class RefreshBusy(RuntimeError):
    """Another refresh run holds the state directory: runs must not overlap (they would read and
    publish the same events)."""


@contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    """The rollout's ``flock`` (``export.triton.locking``) on the state directory for a whole run,
    one try: the kernel drops it when the holder exits, crashed or not, so it never goes stale."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = RepositoryLock(state_dir, "refresh run", timeout_s=0, lock_file=LOCK_FILE)
        lock.acquire()
    except LockTimeout as busy:
        raise RefreshBusy(f"another refresh run holds {state_dir / LOCK_FILE}: {busy}") from None
    try:
        yield
    finally:
        lock.release()


class Timer:
    """``with steps("name"):`` adds the step's seconds to the record."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def __call__(self, name: str):
        return _Step(self.record, name)


class _Step:
    def __init__(self, record: RunRecord, name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.record.seconds_by_step[self.name] = round(time.perf_counter() - self.started, 2)


def _top(ids, n: int = 5) -> list[str]:
    return [str(i) for i, _ in Counter(ids).most_common(n)]
