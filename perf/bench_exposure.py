"""CPU per served list of the exposure log (record + serialisation + kafka-python ``send`` + its
sender thread), in this process, against a real broker: process CPU time over N lists, with and
without the log, alternating (perf/README.md, "The exposure log's CPU").

    PYTHONPATH=. .venv/bin/python perf/bench_exposure.py --lists 2000 --rate 100 --partitions 6

``time.process_time`` counts every thread of the process, so the producer's sender thread is in.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.exposure import ExposureLog, create_producer
from gateway.schemas import Recommendations, RecommendedItem
from stack.kafka import KafkaBroker

TOPIC = "impressions"


def served_list(n: int) -> Recommendations:
    return Recommendations(request_id=f"{n:032x}", user_id=str(n % 943), source="model",
                           cold_start=False, degraded=False, model_version=1,
                           items=[RecommendedItem(item_id=str(i), title="A title (1995)",
                                                  categories=["Drama"], score=0.5) for i in range(10)])


async def serve(bootstrap: str | None, lists: int, rate: float) -> tuple[float, float]:
    """(ms CPU per list, wall seconds) for ``lists`` lists at ``rate`` per second; the log writes
    to ``bootstrap`` (None: no log, the baseline)."""
    log = None
    if bootstrap is not None:
        log = ExposureLog(create_producer(bootstrap), TOPIC)
        log.start()
    served = [served_list(n) for n in range(lists)]
    cpu0, t0 = time.process_time(), time.monotonic()
    for n, recs in enumerate(served):
        if log is not None:
            log.record(recs, "feed")
        if n % 20 == 19:  # paced in small bursts, as a server answering at ``rate`` would be
            await asyncio.sleep(max(0.0, t0 + (n + 1) / rate - time.monotonic()))
    if log is not None:
        await log.close()
    return (time.process_time() - cpu0) / lists * 1000, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lists", type=int, default=2000, help="lists per measurement")
    p.add_argument("--rate", type=float, default=100.0, help="lists per second")
    p.add_argument("--partitions", type=int, default=6, help="of the topic (the gateway creates 6)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d, KafkaBroker(Path(d) / "kafka") as kafka:
        kafka.create_topics([TOPIC], partitions=args.partitions)
        for _ in range(args.repeats):
            for bootstrap in (kafka.bootstrap_servers, None):
                ms, wall = asyncio.run(serve(bootstrap, args.lists, args.rate))
                print(f"{'with' if bootstrap else 'without'} the log: {ms:.3f} ms CPU per list "
                      f"({args.lists} lists at {args.rate:g}/s, {wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
