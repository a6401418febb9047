"""CLI: ``python -m export --dataset ml-100k --repository model_repository --artifacts build``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from export.pipeline import format_table, run
from export.train import TrainConfig


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--artifacts", type=Path, default=Path("build"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--dim", type=int, default=defaults.dim)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(epochs=args.epochs, dim=args.dim, seed=args.seed)
    result = run(args.dataset, args.repository, args.artifacts, config, version=args.version)
    print(format_table(result.report))
    print(f"repository: {args.repository}   report: {args.artifacts / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
