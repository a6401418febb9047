"""Input-pipeline benchmark: in-memory batches vs DALI reading sharded numpy files.

    python perf/bench_input_pipeline.py --rows 500000 --seq-len 50 --batch-size 256 --out perf/results

Builds seeded synthetic training arrays (random item indices), writes them as shards to a
temporary directory (shard write throughput), then for each loader — in-memory, DALI on CPU, and
DALI on GPU when CUDA is present — runs one untimed warm-up epoch and times the next epochs.
Only the loader is measured: batches are not fed to a model. Writes ``input_pipeline.json``,
``input_pipeline.csv`` and ``input_pipeline.png`` under ``--out``. Exits 1 if any loader delivered
a wrong number of rows, or not every row exactly once (checked on the sorted targets).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.data.loaders import (  # noqa: E402
    DEFAULT_ROWS_PER_FILE,
    DaliBatches,
    InMemoryBatches,
    write_shards,
)
from perf.harness import environment, figure, finish, write_csv, write_json  # noqa: E402

CSV_COLUMNS = ["measurement", "device", "value", "unit", "seconds", "startup_s", "ok"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--items", type=int, default=50_000, help="item indices are drawn from [2, items + 2)")
    p.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE)
    p.add_argument("--files-per-read", type=int, default=4)
    p.add_argument("--num-threads", type=int, default=2, help="DALI worker threads")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    return p.parse_args(argv)


def synthetic(rows: int, length: int, items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # 2 = first real item index (0 = PAD, 1 = OOV), as in features.catalog
    return (rng.integers(2, items + 2, size=(rows, length), dtype=np.int64),
            rng.integers(2, items + 2, size=rows, dtype=np.int64))


def measure(name: str, device: str, make, expected_targets: np.ndarray, epochs: int) -> dict:
    """Build the loader, run one warm-up epoch, then time ``epochs`` epochs."""
    t0 = time.perf_counter()
    loader = make()
    startup = time.perf_counter() - t0
    for _ in loader:  # warm-up: DALI threads and buffers, page cache, allocator
        pass
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
    delivered: list[list[torch.Tensor]] = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        targets = []
        for _, y in loader:
            targets.append(y)
        delivered.append(targets)
    sync()
    seconds = time.perf_counter() - t0

    rows = len(expected_targets)
    problems = []
    for epoch, targets in enumerate(delivered, start=1):
        got = torch.cat(targets).cpu().numpy()
        if len(got) != rows:
            problems.append(f"epoch {epoch}: {len(got)} rows, expected {rows}")
        elif not np.array_equal(np.sort(got), expected_targets):
            problems.append(f"epoch {epoch}: rows missing or repeated")
    return {
        "loader": name, "device": device, "startup_s": round(startup, 3),
        "epochs": epochs, "rows_per_epoch": rows, "batches_per_epoch": len(loader),
        "seconds": round(seconds, 3), "samples_per_s": round(rows * epochs / seconds),
        "ok": not problems, "problems": problems,
    }


def versions() -> dict:
    """The input pipeline's own facts for ``environment``: torch, DALI and the GPU (if any)."""
    import nvidia.dali

    return {"torch": torch.__version__, "dali": nvidia.dali.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def csv_rows(report: dict) -> list[dict]:
    """The shard write, then one row per loader (``CSV_COLUMNS``)."""
    s = report["shard_write"]
    return [{"measurement": "shard_write", "device": "cpu", "value": s["mb_per_s"], "unit": "MB/s",
             "seconds": s["seconds"], "startup_s": "", "ok": True},
            *({"measurement": r["loader"], "device": r["device"], "value": r["samples_per_s"],
               "unit": "samples/s", "seconds": r["seconds"], "startup_s": r["startup_s"], "ok": r["ok"]}
              for r in report["loaders"])]


def write_outputs(out: Path, report: dict) -> None:
    write_json(out / "input_pipeline.json", report)
    write_csv(out / "input_pipeline.csv", CSV_COLUMNS, csv_rows(report))

    c = report["config"]
    widths = {"width_ratios": [3, 1]}
    with figure(out / "input_pipeline.png", 2, (9, 4), gridspec_kw=widths) as (_, (left, right)):
        labels = [f"{r['loader']}\n({r['device']})" for r in report["loaders"]]
        values = [r["samples_per_s"] for r in report["loaders"]]
        bars = left.bar(labels, values, color=["#888888", "#76b900", "#3d7d00"][:len(values)])
        left.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        left.set_ylim(0, max(values) * 1.15)  # room for the value labels under the title
        left.set_ylabel("samples / s")
        left.set_title(f"input pipeline: {c['rows']:,} rows, L={c['seq_len']}, batch {c['batch_size']}")
        s = report["shard_write"]
        right.bar(["shard write"], [s["mb_per_s"]], color="#4477aa")
        right.bar_label(right.containers[0], labels=[f"{s['mb_per_s']:,.0f}"])
        right.set_ylim(0, s["mb_per_s"] * 1.15)
        right.set_ylabel("MB / s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    histories, targets = synthetic(args.rows, args.seq_len, args.items, args.seed)
    expected = np.sort(targets)
    loaders = []
    with tempfile.TemporaryDirectory(prefix="shards-") as shard_dir:
        t0 = time.perf_counter()
        manifest = write_shards(histories, targets, shard_dir, rows_per_file=args.rows_per_file)
        write_s = time.perf_counter() - t0
        written = sum(os.path.getsize(Path(shard_dir) / f) for f in manifest.files)
        shard_write = {"bytes": written, "files": len(manifest.files), "seconds": round(write_s, 3),
                       "mb_per_s": round(written / write_s / 1e6, 1),
                       "note": "np.save into the page cache; no fsync"}
        print(f"shards: {len(manifest.files)} files, {written / 1e6:.0f} MB in {write_s:.2f} s "
              f"= {shard_write['mb_per_s']:.0f} MB/s", flush=True)

        candidates = [("in_memory", "cpu",
                       lambda: InMemoryBatches(histories, targets, args.batch_size, seed=args.seed))]
        devices = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
        for device in devices:
            candidates.append(("dali", device, lambda device=device: DaliBatches(
                manifest, args.batch_size, seed=args.seed, device=device,
                num_threads=args.num_threads, files_per_read=args.files_per_read)))
        for name, device, make in candidates:
            result = measure(name, device, make, expected, args.epochs)
            loaders.append(result)
            print(f"{name:>10} ({device}): {result['samples_per_s']:>12,} samples/s  "
                  f"startup {result['startup_s']:.2f} s  {'ok' if result['ok'] else result['problems']}",
                  flush=True)

    report = {
        "config": {"rows": args.rows, "seq_len": args.seq_len, "batch_size": args.batch_size,
                   "items": args.items, "rows_per_file": args.rows_per_file,
                   "files_per_read": args.files_per_read, "num_threads": args.num_threads,
                   "timed_epochs": args.epochs, "warmup_epochs": 1, "seed": args.seed},
        "environment": environment(**versions()),
        "shard_write": shard_write,
        "loaders": loaders,
        "ok": all(r["ok"] for r in loaders),
    }
    write_outputs(args.out, report)
    problems = [f"{r['loader']} ({r['device']}): {p}" for r in loaders for p in r["problems"]]
    return finish(f"{args.out / 'input_pipeline.json'}, .csv, .png", problems, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
