from __future__ import annotations

import argparse

import pytest

from refresh import history
from refresh.__main__ import duration_s, main, parser, settings_from
from refresh.history import RunRecord


def test_durations():
    assert duration_s("15m") == 900 and duration_s("30s") == 30 and duration_s("2h") == 7200
    assert duration_s("90") == 90
    for bad in ("", "0m", "-5m", "15 minutes"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_s(bad)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_REFRESH_MARGIN", "0.5")
    monkeypatch.setenv("RECSYS_REFRESH_EPOCHS", "7")
    args = parser().parse_args(["run", "--once", "--epochs", "2", "--device", "cuda",
                                "--ab-weight", "0.1", "--items", "new.csv"])
    settings = settings_from(args)
    assert (settings.epochs, settings.margin, settings.device, settings.ab_weight,
            settings.items_path) == (2, 0.5, "cuda", 0.1, "new.csv")


def test_run_needs_once_or_every():
    with pytest.raises(SystemExit):
        parser().parse_args(["run"])


def test_history_prints_a_table(tmp_path, capsys):
    assert main(["history", "--state-dir", str(tmp_path)]) == 0
    assert "no refresh runs" in capsys.readouterr().out
    history.append(tmp_path, RunRecord(outcome=history.NOT_PROMOTED, reason="gain too small"))
    assert main(["history", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not_promoted" in out and "gain too small" in out
    assert main(["history", "--state-dir", str(tmp_path), "--json"]) == 0
    assert '"outcome": "not_promoted"' in capsys.readouterr().out


def test_run_once_exits_1_on_a_failed_run_and_serves_metrics(monkeypatch, tmp_path, capsys):
    import urllib.request

    from refresh import __main__ as cli
    from refresh import job as job_module
    from refresh.config import RefreshSettings
    from stack.ports import free_ports

    outcomes = iter([RunRecord(outcome=history.PROMOTED, reason="better"), RuntimeError("boom")])

    class FakeJob:
        def __init__(self, settings, metrics):
            self.metrics = metrics

        def run_once(self):
            outcome = next(outcomes)
            if isinstance(outcome, Exception):
                raise outcome
            self.metrics.runs.labels(outcome.outcome).inc()
            return outcome

    monkeypatch.setattr(job_module, "RefreshJob", FakeJob)
    port = free_ports(1)[0]
    settings = RefreshSettings(state_dir=str(tmp_path), metrics_port=port)
    assert cli.run(settings, every_s=None) == 0
    assert "promoted: better" in capsys.readouterr().out
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'refresh_runs_total{outcome="promoted"} 1.0' in body
    assert cli.run(RefreshSettings(state_dir=str(tmp_path)), every_s=None) == 1
