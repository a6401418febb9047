"""Run one service in the foreground until Ctrl-C / SIGTERM.

    python -m stack triton --model-repository DIR [--load-model NAME ...]
    python -m stack kafka [--data-dir DIR] [--topic NAME ...]
    python -m stack redis
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stack.kafka import KafkaBroker
from stack.process import ServiceStartError
from stack.redis import RedisServer
from stack.triton import TritonServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="service", required=True)

    triton = sub.add_parser("triton", help="Triton Inference Server (python backend, CPU)")
    triton.add_argument("--model-repository", type=Path, required=True)
    triton.add_argument("--load-model", action="append", dest="load_models", metavar="NAME",
                        help="model to load at start-up (repeatable; default: all)")
    triton.add_argument("--http-port", type=int)
    triton.add_argument("--grpc-port", type=int)
    triton.add_argument("--metrics-port", type=int)
    triton.add_argument("--log-path", type=Path)

    kafka = sub.add_parser("kafka", help="single-node Kafka broker (KRaft)")
    kafka.add_argument("--data-dir", type=Path,
                       help="kept between runs; default: a temporary dir removed on exit")
    kafka.add_argument("--port", type=int)
    kafka.add_argument("--controller-port", type=int)
    kafka.add_argument("--heap-mb", type=int, default=512)
    kafka.add_argument("--topic", action="append", dest="topics", default=[], metavar="NAME",
                       help="topic to create (repeatable; 3 partitions)")

    redis = sub.add_parser("redis", help="redis-server (in memory unless --persistent)")
    redis.add_argument("--port", type=int)
    redis.add_argument("--persistent", action="store_true",
                       help="append-only file with an fsync per write, kept across restarts")
    return parser


def _build(args: argparse.Namespace, temp_dirs: list[Path]) -> Any:
    if args.service == "triton":
        return TritonServer(args.model_repository, log_path=args.log_path,
                            http_port=args.http_port, grpc_port=args.grpc_port,
                            metrics_port=args.metrics_port, load_models=args.load_models)
    if args.service == "kafka":
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="kafka-"))
            temp_dirs.append(data_dir)
        return KafkaBroker(data_dir, port=args.port, controller_port=args.controller_port,
                           heap_mb=args.heap_mb)
    return RedisServer(port=args.port, persistent=args.persistent)


def _addresses(service: Any) -> list[str]:
    if isinstance(service, TritonServer):
        return [f"http    {service.http_url}", f"grpc    {service.grpc_url}",
                f"metrics http://127.0.0.1:{service.metrics_port}/metrics",
                f"log     {service.log_path}"]
    if isinstance(service, KafkaBroker):
        return [f"bootstrap_servers {service.bootstrap_servers}",
                f"data_dir          {service.data_dir}", f"log               {service.log_path}"]
    return [f"url {service.url}", f"log {service.log_path}"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's connection chatter
    # SIGTERM (CI, `kill`) gets the same clean shutdown as Ctrl-C, even during start-up. SIGINT
    # is set explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    temp_dirs: list[Path] = []
    service = _build(args, temp_dirs)
    try:
        service.start()
        if isinstance(service, KafkaBroker) and args.topics:
            service.create_topics(args.topics)
        print(f"{args.service} ready after {service.ready_after_s:.1f} s")
        for line in _addresses(service):
            print(f"  {line}")
        print("Ctrl-C to stop.", flush=True)
        while service.running:
            time.sleep(0.5)
        print(f"error: {args.service} exited unexpectedly; see its log", file=sys.stderr)
        return 1
    except ServiceStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopping {args.service} ...", flush=True)
        return 0
    finally:
        service.stop()
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
