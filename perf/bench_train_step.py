"""Training and user-tower speed, a base git revision vs the working tree, side by side.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python perf/bench_train_step.py --base 642218f \\
        --rounds 4 --out perf/results/train_step

Each round runs, base then new, one subprocess per side with only that side's root on PYTHONPATH
(``--measure ROOT``): a one-model two-tower of the default architecture on a synthetic catalog
(``--items`` items, 20 categories, history length 50), ``--steps`` optimiser steps at each
``--batch`` (``export.train.train_step``, the sampled loss, after 3 warm-up steps), and the
TorchScript user tower at batch 1 (500 calls after 50 warm-up calls). The inputs are seeded, so
both sides do the same work; alternating rounds spread a shared machine's noise over both.
Writes ``train_step.json`` (every round, the medians, the environment) and ``train_step.csv``
(one row per round, side, measurement) and prints the median over rounds with the min-max and
the new/base ratio. Exits 1 if a side failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDES = ("base", "new")
CSV_COLUMNS = ["round", "side", "measurement", "ms"]


def synthetic_catalog(items: int):
    """``items`` items in 20 categories, one price: the catalog the benchmarks time on."""
    from features.catalog import Item, ItemCatalog

    return ItemCatalog(items=[Item(str(i), str(i), (f"c{i % 20}",), price=10.0) for i in range(items)],
                       categories=[f"c{j}" for j in range(20)])


def measure(items: int, batches: list[int], steps: int) -> dict[str, float]:
    """Milliseconds per training step per batch size and per batch-1 user-tower call, for the
    ``export`` package first on sys.path."""
    import numpy as np
    import torch

    from export.train import TrainConfig, new_model, target_log_frequencies, train_step
    from features.catalog import FIRST_ITEM_INDEX

    torch.set_num_threads(1)
    length = 50
    catalog = synthetic_catalog(items)
    rng = np.random.default_rng(0)
    first = FIRST_ITEM_INDEX
    log_q = target_log_frequencies(rng.integers(first, items + first, 10 * items), catalog.num_embeddings)
    out: dict[str, float] = {}
    for size in batches:
        config = TrainConfig(batch_size=size, sequence_length=length, members=1)
        torch.manual_seed(0)
        model = new_model(catalog, config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        data = [(torch.from_numpy(np.concatenate([rng.integers(first, items + first, (size, length)),
                                                  np.ones((size, length), dtype=np.int64)], 1)),
                 torch.from_numpy(rng.integers(first, items + first, size))) for _ in range(steps + 3)]
        cpu = torch.device("cpu")
        for i, batch in enumerate(data):
            if i == 3:
                started = time.perf_counter()
            train_step(model, optimizer, batch, config, cpu, log_q=log_q, generator=None, amp=False)
        out[f"train_step_b{size}"] = (time.perf_counter() - started) / steps * 1000
    model.eval()
    tower = torch.jit.script(model.user_tower)
    history, types = data[0][0][:1, :length], data[0][0][:1, length:]
    with torch.no_grad():
        for _ in range(50):
            tower(history, types)
        started = time.perf_counter()
        for _ in range(500):
            tower(history, types)
    out["user_tower_b1"] = (time.perf_counter() - started) / 500 * 1000
    return out


def run_side(root: Path, args: argparse.Namespace) -> dict[str, float]:
    from perf.harness import side_env

    command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(root),
               "--items", str(args.items), "--steps", str(args.steps),
               "--batch", *map(str, args.batch)]
    done = subprocess.run(command, capture_output=True, text=True, env=side_env(root))
    if done.returncode != 0:
        raise RuntimeError(f"{root}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="642218f", help="git revision to compare the working tree with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("perf/results/train_step"))
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # a side's subprocess
    args = p.parse_args(argv)
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        print(json.dumps(measure(args.items, args.batch, args.steps)))
        return 0

    from perf.harness import REPO_ROOT, environment, finish, ratio, spread, worktree, write_csv, write_json

    started = time.perf_counter()
    rows, problems = [], []
    with tempfile.TemporaryDirectory() as work, worktree(args.base, Path(work) / "base") as base:
        roots = {"base": base, "new": REPO_ROOT}
        for round_ in range(1, args.rounds + 1):
            for side in SIDES:
                try:
                    result = run_side(roots[side], args)
                except RuntimeError as error:
                    problems.append(str(error))
                    continue
                rows += [{"round": round_, "side": side, "measurement": k, "ms": round(v, 4)}
                         for k, v in result.items()]
                print(f"round {round_} {side}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in result.items()),
                      flush=True)
    summary = {}
    for name in sorted({r["measurement"] for r in rows}):
        sides = {s: spread([r["ms"] for r in rows if r["side"] == s and r["measurement"] == name])
                 for s in SIDES}
        summary[name] = {**sides,
                         "ratio_new_over_base": ratio(sides["new"]["median"], sides["base"]["median"])}
        print(f"{name}: " + ", ".join(f"{s} {v['median']} ms ({v['min']}-{v['max']})"
                                      for s, v in sides.items())
              + f", new/base {summary[name]['ratio_new_over_base']}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "train_step.json", {"base": args.base, "rounds": rows, "summary": summary,
                                              "environment": environment(items=args.items)})
    write_csv(args.out / "train_step.csv", CSV_COLUMNS, rows)
    return finish(f"{args.out}/train_step.{{json,csv}}", problems, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
