"""The exact scoring product in both layouts of the item matrix: rows [N, D] vs columns [D, N].

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python perf/bench_item_matrix.py \\
        --items 1684 12500 --dims 64 192 448 --batch 1 16 --rounds 5 --out perf/results/item_matrix

``TopKRetrieval`` scores a batch of queries against every item with one product. With the matrix
stored as rows (one per item), a query takes N short dot products; stored as columns (one row per
dimension, what ``export.model.retrieval`` keeps), it streams the matrix front to back and adds
one scaled row per dimension. The arithmetic is the same; the memory traffic differs.

For every (items, dim, batch), seeded random matrices and queries are timed in both layouts, in
turn, ``--calls`` calls each after a warm-up, on one thread, and in two cache states:
``warm`` (calls back to back: the matrix stays in the caches it fits in) and ``flushed``
(``--flush-mb`` MB are written before each call, as other work between two served requests
would). Both layouts' products must agree to 1e-4 (relative to the largest score) or the run
fails. Writes ``item_matrix.json`` (every round, medians with min-max, the columns/rows ratio,
the environment), ``item_matrix.csv`` (one row per round and case) and ``item_matrix.png``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYOUTS = ("rows", "columns")
CACHES = ("warm", "flushed")
CSV_COLUMNS = ["round", "items", "dim", "batch", "cache", "layout", "us"]


def operands(items: int, dim: int, batch: int, seed: int = 0):
    """Queries [batch, dim], the matrix as rows [items, dim] and as columns [dim, items]."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(items, dim, generator=generator)
    queries = torch.randn(batch, dim, generator=generator)
    return queries, rows, rows.t().contiguous()


def products(queries, rows, columns) -> dict:
    """The scoring product in each layout (what is timed)."""
    return {"rows": lambda: queries @ rows.T, "columns": lambda: queries @ columns}


def relative_difference(queries, rows, columns) -> float:
    by_rows, by_columns = (f() for f in products(queries, rows, columns).values())
    return float((by_rows - by_columns).abs().max() / by_rows.abs().max())


def time_calls(product, calls: int, flush) -> float:
    """Microseconds per call (median); ``flush`` (a tensor or None) is written before each."""
    import statistics

    for _ in range(20):
        product()
    times = []
    for _ in range(calls):
        if flush is not None:
            flush.add_(1.0)
        started = time.perf_counter()
        product()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def plot(path: Path, summary: list[dict]) -> None:
    from perf.harness import figure

    cases = sorted({(s["items"], s["dim"], s["batch"]) for s in summary})

    def median(case, cache, layout) -> float:
        return next(s["us"]["median"] for s in summary
                    if (s["items"], s["dim"], s["batch"], s["cache"], s["layout"]) == (*case, cache, layout))

    with figure(path, len(CACHES), (2 + 1.4 * len(cases), 3.4)) as (_, axes):
        for ax, cache in zip(axes, CACHES, strict=True):
            ax.bar(range(len(cases)), [median(c, cache, "columns") / median(c, cache, "rows") for c in cases])
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xticks(range(len(cases)), [f"{n} x {d}\nbatch {b}" for n, d, b in cases], fontsize=7)
            ax.set_ylabel("columns / rows (median time)")
            ax.set_title(f"scoring product, {cache} caches, one thread")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[1684, 12500])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 192, 448])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--flush-mb", type=int, default=32, help="written before each flushed call")
    p.add_argument("--out", type=Path, default=Path("perf/results/item_matrix"))
    args = p.parse_args(argv)

    import torch

    from perf.harness import environment, finish, ratio, spread, write_rounds

    torch.set_num_threads(1)
    started = time.perf_counter()
    flush = torch.zeros(args.flush_mb * 1024 * 1024 // 4)
    cases = list(itertools.product(args.items, args.dims, args.batch))
    built = {case: operands(*case) for case in cases}
    problems = [f"{case}: the layouts' products differ by {d:.1e} of the largest score"
                for case, d in ((c, relative_difference(*built[c])) for c in cases) if d > 1e-4]
    rows = []
    for round_ in range(1, args.rounds + 1):
        for case in cases:
            for cache in CACHES:
                for layout, product in products(*built[case]).items():
                    us = time_calls(product, args.calls, flush if cache == "flushed" else None)
                    rows.append(dict(zip(CSV_COLUMNS, [round_, *case, cache, layout, round(us, 2)],
                                         strict=True)))
        print(f"round {round_} done", flush=True)
    summary = []
    for case in cases:
        for cache in CACHES:
            sides = {layout: spread([r["us"] for r in rows if (r["items"], r["dim"], r["batch"])
                                     == case and (r["cache"], r["layout"]) == (cache, layout)])
                     for layout in LAYOUTS}
            summary += [{"items": case[0], "dim": case[1], "batch": case[2], "cache": cache,
                         "layout": layout, "us": sides[layout]} for layout in LAYOUTS]
            print(f"{case[0]} items x {case[1]} dims, batch {case[2]}, {cache}: "
                  + ", ".join(f"{lay} {v['median']} us ({v['min']}-{v['max']})" for lay, v in sides.items())
                  + f", columns/rows {ratio(sides['columns']['median'], sides['rows']['median'])}")
    written = write_rounds(args.out, "item_matrix", CSV_COLUMNS, rows, summary,
                           environment(calls=args.calls, flush_mb=args.flush_mb, torch_threads=1), plot)
    return finish(written, problems, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
