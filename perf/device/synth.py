"""Synthetic catalogs for the retrieval sweeps, made where they are measured (10M x 64 fp32 is
2.5 GB: never carried). For each size N: N seeded random unit vectors as the item embeddings of a
TorchScript ``export.model.retrieval.TopKRetrieval`` saved as ``<repository>/retrieve_<N>/1/model.pt``
(the config and model.py come with the bundle), and a perf_analyzer input JSON of random unit
user embeddings with a full EXCLUDE row each.

    python perf/device/synth.py --repository R --inputs I --items 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.model.retrieval import TopKRetrieval  # noqa: E402
from features.catalog import FIRST_ITEM_INDEX  # noqa: E402
from perf.device import plan as P  # noqa: E402


def unit_vectors(rows: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """[rows, dim] fp32 on the CPU, drawn on ``device`` in chunks (the same seed gives the same
    vectors on the same kind of device)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(rows, dim, dtype=torch.float32)
    chunk = 1 << 21
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        v = torch.randn(n, dim, generator=generator, device=device)
        out[start:start + n] = torch.nn.functional.normalize(v, dim=1).cpu()
    return out


def write_model(path: Path, items: int, dim: int, seed: int, device: torch.device) -> dict:
    started = time.perf_counter()
    embeddings = unit_vectors(items + FIRST_ITEM_INDEX, dim, seed, device)
    drawn = time.perf_counter()
    module = torch.jit.script(TopKRetrieval(embeddings))
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))
    return {"items": items, "bytes": path.stat().st_size, "draw_s": round(drawn - started, 2),
            "save_s": round(time.perf_counter() - drawn, 2)}


def input_json(items: int, dim: int, rows: int, k: int, seed: int) -> dict:
    """perf_analyzer rows for ``retrieve``: USER_EMBEDDING, EXCLUDE (EXCLUDE_WIDTH real items), K."""
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((rows, dim)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    exclude = rng.integers(FIRST_ITEM_INDEX, items + FIRST_ITEM_INDEX, (rows, P.EXCLUDE_WIDTH))
    return {"data": [{"USER_EMBEDDING": {"content": users[r].tolist(), "shape": [dim]},
                      "EXCLUDE": {"content": exclude[r].tolist(), "shape": [P.EXCLUDE_WIDTH]},
                      "K": {"content": [k], "shape": [1]}} for r in range(rows)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--items", type=int, nargs="+", required=True)
    parser.add_argument("--dim", type=int, default=P.DIM)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result", type=Path, required=True, help="JSON written here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.inputs.mkdir(parents=True, exist_ok=True)
    done = []
    for n in args.items:
        name = P.retrieve_name(n)
        info = write_model(args.repository / name / "1" / "model.pt", n, args.dim,
                           args.seed + n, device)
        (args.inputs / f"{name}.json").write_text(
            json.dumps(input_json(n, args.dim, args.rows, 10, args.seed)))
        done.append({**info, "model": name, "drawn_on": str(device)})
        print(f"{name}: {info}", flush=True)
        args.result.write_text(json.dumps(done, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
