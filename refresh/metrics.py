"""Prometheus metrics of the refresh job, in a registry of their own (created with the job, so
importing this module registers nothing), served by ``python -m refresh run --metrics-port``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from refresh.history import OUTCOMES


class RefreshMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("refresh_runs_total", "Refresh runs, by outcome", ["outcome"],
                            registry=self.registry)
        for outcome in OUTCOMES:  # every outcome visible at 0 from the start
            self.runs.labels(outcome)
        self.events = Counter("refresh_events_read_total", "Valid events read from the events topic",
                              registry=self.registry)
        self.invalid = Counter("refresh_invalid_messages_total",
                               "Messages of the events topic that were not valid events (skipped)",
                               registry=self.registry)
        self.unknown = Counter("refresh_unknown_item_events_total",
                               "Events for items no catalog knows (kept pending, not trained on)",
                               registry=self.registry)
        self.duration = Gauge("refresh_last_run_seconds", "Duration of the last run",
                              registry=self.registry)
        self.last_success = Gauge("refresh_last_success_timestamp_seconds",
                                  "When the last run that did not fail ended (Unix time)",
                                  registry=self.registry)
        self.live_version = Gauge("refresh_live_version", "The live version after the last run",
                                  registry=self.registry)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
