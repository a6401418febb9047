"""The refresh job's command line (settings: ``RECSYS_REFRESH_*``, docs/settings.md; flags win).

    python -m refresh run --once                        # one cycle, exit 0 / 1 on failure
    python -m refresh run --every 15m --metrics-port 9108
    python -m refresh run --once --base-checkpoint build/artifacts/checkpoints/seed0/best.pt \\
        --base-data data/interactions.csv              # the first run of a repository
    python -m refresh history                           # what each run saw and decided
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from refresh import history
from refresh.config import RefreshSettings

log = logging.getLogger("refresh")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}
# flag -> settings field, for the flags that override a setting
OVERRIDES = {"bootstrap_servers": "kafka_bootstrap_servers", "topic": "events_topic",
             "catalog_topic": "catalog_topic", "repository": "repository",
             "triton_url": "triton_url", "state_dir": "state_dir",
             "base_checkpoint": "base_checkpoint", "base_data": "base_data", "items": "items_path",
             "device": "device", "epochs": "epochs", "margin": "margin",
             "window_days": "window_days", "ab_weight": "ab_weight", "metrics_port": "metrics_port"}


def duration_s(text: str) -> float:
    """``900``, ``30s``, ``15m``, ``1h`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive number with s, m or h (15m)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refresh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one refresh cycle, or one every interval")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true")
    when.add_argument("--every", type=duration_s, help="interval between starts, e.g. 15m")
    run.add_argument("--bootstrap-servers")
    run.add_argument("--topic", help="the events topic")
    run.add_argument("--catalog-topic")
    run.add_argument("--repository", help="the live model repository")
    run.add_argument("--triton-url", help="Triton's HTTP endpoint (host:port)")
    run.add_argument("--state-dir", help="checkpoints, merged data, pending events, history")
    run.add_argument("--base-checkpoint", help="first run: the live version's training checkpoint")
    run.add_argument("--base-data", help="first run: the interactions file it was trained on")
    run.add_argument("--items", help="an items file with new or changed items (docs/data.md)")
    run.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--epochs", type=int)
    run.add_argument("--margin", type=float, help="relative holdout Recall@10 gain needed (0.02)")
    run.add_argument("--window-days", type=float)
    run.add_argument("--ab-weight", type=float, help="start an A/B arm with this share instead")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    show = sub.add_parser("history", help="the runs so far, as a table")
    show.add_argument("--state-dir")
    show.add_argument("--json", action="store_true", help="the raw JSON lines")
    return p


def settings_from(args: argparse.Namespace) -> RefreshSettings:
    given = {field: getattr(args, flag) for flag, field in OVERRIDES.items()
             if getattr(args, flag, None) is not None}
    return RefreshSettings(**given)


def run(settings: RefreshSettings, every_s: float | None) -> int:
    from refresh.job import RefreshJob  # torch and the exporter load only for a run
    from refresh.metrics import RefreshMetrics

    metrics = RefreshMetrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
        log.info("metrics on port %d", settings.metrics_port)
    job = RefreshJob(settings, metrics=metrics)
    if every_s is None:
        try:
            record = job.run_once()
        except Exception:  # noqa: BLE001 - recorded in the history; the exit code says it
            return 1
        print(f"{record.outcome}: {record.reason}")
        return 0
    while True:
        started = time.monotonic()
        try:
            job.run_once()
        except Exception:  # noqa: BLE001 - a failed run is recorded; the schedule goes on
            log.exception("refresh run failed; next run in %.0f s", every_s)
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "history":
        state_dir = Path(args.state_dir or RefreshSettings().state_dir)
        records = history.read(state_dir)
        if args.json:
            print("\n".join(r.to_json() for r in records))
        else:
            print(history.table(records) if records else f"no refresh runs in {state_dir}")
        return 0
    return run(settings_from(args), args.every)


if __name__ == "__main__":
    sys.exit(main())
