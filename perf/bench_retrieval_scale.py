"""Retrieval at catalog scale: exact brute force vs faiss HNSW / IVF on CPU.

    python perf/bench_retrieval_scale.py --sizes 10000 100000 1000000 --dim 64 --queries 500 --k 10 \
        --out perf/results

For each catalog size, builds seeded synthetic item embeddings and queries (see ``synthetic``), then
for each index kind (``export.model.ann.config_for(kind, size)`` knobs) measures: build time, index memory,
single-query latency p50/p95/p99 (batch 1, the serving case, after a warm-up), throughput at batch
``--batch`` and recall@k against exact search — without exclusions and with ``--exclude`` seen
items per query. Writes ``retrieval_scale.json``, ``.csv`` and ``.png`` under ``--out``.

Exits 1 if any result is malformed: a row with fewer than k items, a duplicate, a reserved
(PAD/OOV) or excluded id, unsorted scores, or exact search disagreeing with the reference.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.model.ann import KINDS, RetrievalIndex, build_index, choose_index, config_for  # noqa: E402
from features.catalog import FIRST_ITEM_INDEX  # noqa: E402
from perf.harness import environment, figure, finish, write_csv, write_json  # noqa: E402

LATENCY_BUDGET_MS = 20.0  # the target: top-k over 1M items, p99
WARMUP_QUERIES = 20

# Synthetic embedding space (see ``synthetic``): a Gaussian mixture in a low-dimensional latent
# space, mapped linearly to D dims, plus isotropic noise.
LATENT_DIM = 32
CLUSTER_SPREAD = 1.0  # latent std around a cluster centre (centres are ~N(0, I))
ISOTROPIC_NOISE = 0.5  # full-rank noise, relative to the latent signal
QUERY_NOISE = 0.7  # extra noise on queries: a user is near, not on, the items they like
CLUSTER_ZIPF = 0.8  # cluster sizes ~ rank^-0.8: a few big categories, a long tail of niches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="catalog sizes (real items)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=500, help="timed queries per measurement")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurement")
    p.add_argument("--exclude", type=int, default=100, help="excluded (seen) items per query")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    return p.parse_args(argv)


def synthetic(num_items: int, dim: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm item embeddings [num_items + FIRST_ITEM_INDEX, dim] and queries [num_queries, dim].

    Why not uniform random vectors: in 64 dims they are all nearly orthogonal, so the "nearest"
    neighbours are barely nearer than anything else — k-means lists and graph neighbourhoods carry
    no signal and ANN recall looks unrealistically bad; near-duplicate clusters make it look
    unrealistically good. Learned item embeddings sit in between: they cluster (categories, genres)
    and their spectrum decays (effective rank well below D). So: ~sqrt(N) clusters with Zipf sizes
    in a LATENT_DIM space, a random linear map to ``dim``, full-rank noise on top. Queries are drawn
    the same way with extra noise; the top-1 cosine ends up around 0.7.
    """
    rng = np.random.default_rng(seed)
    clusters = max(8, int(np.sqrt(num_items)))
    centres = rng.standard_normal((clusters, LATENT_DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** CLUSTER_ZIPF
    weights /= weights.sum()
    projection = (rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)

    def draw(n: int, extra: float) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, 100_000):  # chunks bound the float64 temporaries at 1M items
            m = min(100_000, n - start)
            z = centres[rng.choice(clusters, m, p=weights)]
            z = z + np.hypot(CLUSTER_SPREAD, extra) * rng.standard_normal((m, LATENT_DIM), dtype=np.float32)
            x = z @ projection
            x += np.hypot(ISOTROPIC_NOISE, extra) * np.sqrt(LATENT_DIM / dim) * rng.standard_normal(
                (m, dim), dtype=np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    items = draw(num_items, 0.0)
    queries = draw(num_queries, QUERY_NOISE)
    # Reserved rows are a trap: aimed at the queries, so any kind that indexed them would return them.
    reserved = np.repeat(queries.mean(axis=0, keepdims=True), FIRST_ITEM_INDEX, axis=0)
    reserved /= np.linalg.norm(reserved, axis=1, keepdims=True)
    return np.vstack([reserved, items]), queries


def seen_items(reference: RetrievalIndex, queries: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` excluded ids per query, drawn from its exact top ``2 * count``: a user has seen items
    the model scores highly, so exclusions eat into the result list (random ids would not)."""
    rng = np.random.default_rng(seed + 1)
    top, _ = reference.search(queries, 2 * count)
    return [rng.choice(row, count, replace=False) for row in top]


def check(ids: np.ndarray, scores: np.ndarray, k: int, num_embeddings: int,
          exclude: list[np.ndarray] | None) -> list[str]:
    """Contract violations in one set of results (empty list = well-formed)."""
    problems = []
    if ids.shape != (len(scores), k) or ids.dtype != np.int64 or scores.dtype != np.float32:
        return [f"shape/dtype {ids.shape} {ids.dtype} {scores.dtype}"]
    for row, (r_ids, r_scores) in enumerate(zip(ids, scores, strict=True)):
        if (r_ids < FIRST_ITEM_INDEX).any() or (r_ids >= num_embeddings).any():
            problems.append(f"query {row}: reserved, missing or out-of-range id")
        if len(set(r_ids.tolist())) != k:
            problems.append(f"query {row}: duplicate ids")
        if not np.all(r_scores[:-1] >= r_scores[1:]):
            problems.append(f"query {row}: scores not sorted")
        if exclude is not None and np.isin(r_ids, exclude[row]).any():
            problems.append(f"query {row}: excluded id returned")
    return problems[:10]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(index: RetrievalIndex, queries: np.ndarray, k: int, batch: int,
            exclude: list[np.ndarray] | None) -> dict:
    """Batch-1 latency percentiles over every query (after a warm-up), then batched throughput."""
    def excl(lo: int, hi: int) -> list[np.ndarray] | None:
        return None if exclude is None else exclude[lo:hi]

    for i in range(min(WARMUP_QUERIES, len(queries))):
        index.search(queries[i:i + 1], k, excl(i, i + 1))
    latencies = np.empty(len(queries))
    single_ids = np.empty((len(queries), k), dtype=np.int64)
    single_scores = np.empty((len(queries), k), dtype=np.float32)
    for i in range(len(queries)):
        t0 = time.perf_counter()
        ids, scores = index.search(queries[i:i + 1], k, excl(i, i + 1))
        latencies[i] = time.perf_counter() - t0
        single_ids[i], single_scores[i] = ids[0], scores[0]

    index.search(queries[:batch], k, excl(0, batch))  # warm-up at the batch shape
    batched = []
    t0 = time.perf_counter()
    for lo in range(0, len(queries), batch):
        batched.append(index.search(queries[lo:lo + batch], k, excl(lo, lo + batch)))
    seconds = time.perf_counter() - t0
    p50, p95, p99 = np.percentile(latencies * 1e3, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
        f"qps_batch{batch}": round(len(queries) / seconds),
        "_single": (single_ids, single_scores),
        "_batched": (np.concatenate([b[0] for b in batched]), np.concatenate([b[1] for b in batched])),
    }


def run_size(num_items: int, args: argparse.Namespace) -> list[dict]:
    t0 = time.perf_counter()
    embeddings, queries = synthetic(num_items, args.dim, args.queries, args.seed)
    print(f"\n== {num_items:,} items: data in {time.perf_counter() - t0:.1f} s", flush=True)
    reference = build_index(embeddings, config_for("exact", num_items))
    exclude = seen_items(reference, queries, args.exclude, args.seed)
    truth = {0: reference.search(queries, args.k, None),
             args.exclude: reference.search(queries, args.k, exclude)}
    chosen = choose_index(num_items).kind
    rows = []
    for kind in args.kinds:
        config = config_for(kind, num_items)
        gc.collect()
        t0 = time.perf_counter()
        index = reference if kind == "exact" else build_index(embeddings, config)
        build_s = 0.0 if kind == "exact" else time.perf_counter() - t0
        memory = index.memory_bytes()
        print(f"{kind:>6}: built in {build_s:.1f} s, {memory / 1e6:.0f} MB", flush=True)
        for excluded, excl in ((0, None), (args.exclude, exclude)):
            m = measure(index, queries, args.k, args.batch, excl)
            problems = []
            single = m.pop("_single")
            for label, (ids, scores) in (("batch 1", single), ("batched", m.pop("_batched"))):
                problems += [f"{label}: {p}" for p in check(ids, scores, args.k, len(embeddings), excl)]
                # scores, not ids: batch 1 and batched matmuls may round differently and swap ties
                if kind == "exact" and not np.allclose(scores, truth[excluded][1], atol=1e-5):
                    problems.append(f"{label}: exact search differs from the reference")
            row = {
                "num_items": num_items, "kind": kind, "excluded_per_query": excluded,
                "params": {k: v for k, v in vars(config).items() if k.startswith(kind)},
                "build_s": round(build_s, 2), "memory_bytes": memory, **m,
                "recall_at_k": round(recall(single[0], truth[excluded][0]), 4),
                "meets_p99_budget": m["p99_ms"] <= LATENCY_BUDGET_MS, "chosen": kind == chosen,
                "ok": not problems, "problems": problems,
            }
            rows.append(row)
            print(f"        excl {excluded:>3}: p50 {row['p50_ms']:7.2f}  p95 {row['p95_ms']:7.2f}  "
                  f"p99 {row['p99_ms']:7.2f} ms  {row[f'qps_batch{args.batch}']:>7,} q/s @{args.batch}  "
                  f"recall@{args.k} {row['recall_at_k']:.4f}  {'ok' if row['ok'] else problems}", flush=True)
        del index
    return rows


def runtime_facts() -> dict:
    """This benchmark's own facts for ``environment``: library versions, thread counts, load."""
    import faiss

    return {
        "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
        # other processes on the box inflate tails, most of all the memory-bound exact search
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def csv_columns(batch: int) -> list[str]:
    return ["num_items", "kind", "excluded_per_query", "build_s", "memory_mb", "p50_ms", "p95_ms",
            "p99_ms", f"qps_batch{batch}", "recall_at_k", "meets_p99_budget", "chosen", "params", "ok"]


def write_outputs(out: Path, report: dict) -> None:
    c = report["config"]
    write_json(out / "retrieval_scale.json", report)
    write_csv(out / "retrieval_scale.csv", csv_columns(c["batch"]),
              ({**r, "memory_mb": round(r["memory_bytes"] / 1e6, 1), "params": json.dumps(r["params"])}
               for r in report["results"]))

    results, budget = report["results"], LATENCY_BUDGET_MS
    colours = {"exact": "#888888", "hnsw": "#76b900", "ivf": "#4477aa"}
    with figure(out / "retrieval_scale.png", 2, (11, 4.2)) as (_, (left, right)):
        for kind in c["kinds"]:
            for excluded, style in ((0, "-"), (c["exclude"], "--")):
                rows = [r for r in results if r["kind"] == kind and r["excluded_per_query"] == excluded]
                sizes = [r["num_items"] for r in rows]
                line = {"marker": "o", "color": colours[kind],
                        "label": f"{kind}" + (f", {excluded} excluded" if excluded else "")}
                left.plot(sizes, [r["p99_ms"] for r in rows], style, **line)
                right.plot(sizes, [r["recall_at_k"] for r in rows], style, **line)
        left.axhline(budget, color="#cc3311", lw=1, ls=":", label=f"{budget:g} ms budget")
        left.set(xscale="log", yscale="log", xlabel="catalog size (items)",
                 ylabel="p99 latency, batch 1 (ms)",
                 title=f"top-{c['k']} latency, D={c['dim']}, {report['environment']['cpu_count']} CPU cores")
        right.set(xscale="log", xlabel="catalog size (items)", ylabel=f"recall@{c['k']} vs exact",
                  title="recall of the approximate indexes")
        right.set_ylim(min(r["recall_at_k"] for r in results) - 0.02, 1.005)
        for ax in (left, right):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)


def table(report: dict) -> str:
    """The results as a markdown table, for the README / issue."""
    c = report["config"]
    qps = f"qps_batch{c['batch']}"
    lines = [f"| items | kind | excluded | build s | memory MB | p50 ms | p95 ms | p99 ms | "
             f"q/s @{c['batch']} | recall@{c['k']} |", "|" + "---|" * 10]
    for r in report["results"]:
        lines.append(f"| {r['num_items']:,} | {r['kind']}{' (chosen)' if r['chosen'] else ''} | "
                     f"{r['excluded_per_query']} | {r['build_s']:.1f} | {r['memory_bytes'] / 1e6:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r[qps]:,} | "
                     f"{r['recall_at_k']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    results = []
    for size in args.sizes:
        results += run_size(size, args)
        gc.collect()
    largest = max(args.sizes)
    report = {
        "config": {"sizes": args.sizes, "dim": args.dim, "queries": args.queries, "k": args.k,
                   "batch": args.batch, "exclude": args.exclude, "kinds": args.kinds, "seed": args.seed,
                   "warmup_queries": WARMUP_QUERIES, "latency_budget_ms": LATENCY_BUDGET_MS},
        "data": {"generator": "gaussian mixture in a latent space, linear map to dim, isotropic noise",
                 "latent_dim": LATENT_DIM, "clusters": "max(8, sqrt(num_items))",
                 "cluster_spread": CLUSTER_SPREAD, "isotropic_noise": ISOTROPIC_NOISE,
                 "query_noise": QUERY_NOISE, "cluster_zipf": CLUSTER_ZIPF,
                 "excluded_ids": f"{args.exclude} per query, drawn from its exact top {2 * args.exclude}"},
        "environment": environment(**runtime_facts(), load_average_1m_at_start=load_at_start),
        "choose_index": {str(s): choose_index(s).kind for s in args.sizes},
        "budget": {kind: r["meets_p99_budget"] for r in results
                   for kind in [r["kind"]] if r["num_items"] == largest and r["excluded_per_query"] == 0},
        "results": results,
        "total_s": round(time.perf_counter() - started, 1),
        "ok": all(r["ok"] for r in results),
    }
    write_outputs(args.out, report)
    print("\n" + table(report))
    print(f"\np99 <= {LATENCY_BUDGET_MS:g} ms at {largest:,} items: {report['budget']}; "
          f"total {report['total_s']:.0f} s")
    problems = [f"{r['num_items']} items, {r['kind']}, {r['excluded_per_query']} excluded: {p}"
                for r in results for p in r["problems"]]
    return finish(f"{args.out / 'retrieval_scale.json'}, .csv, .png", problems)


if __name__ == "__main__":
    sys.exit(main())
