"""Training throughput of the two towers (examples/s) at given batch sizes, with the project's own
loop (``export.train.train``, one epoch over a fixed number of batches) on the carried ML-100K
training examples.

On CUDA: if ``TrainConfig`` has a ``device`` field, ``train`` is asked for "cuda" and moves what
it needs; otherwise model, batches and log_q are put on CUDA here. An error there is recorded as
it is (the code not being device-correct yet is a result too) and the same batch size is then
measured on the CPU, labelled so.

    python perf/device/train_bench.py --data DIR --batch-sizes 256 4096 --seconds 12 --result R
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def ensure_tqdm() -> str:
    """export.train imports tqdm, which the GPU machine's torch environment may lack: a do-nothing
    stand-in then (progress bars only). Returns which one is used."""
    try:
        importlib.import_module("tqdm.auto")
        return "tqdm"
    except ImportError:
        pass

    class _Bar:
        def __init__(self, iterable=None, *args, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, *args, **kwargs):
            pass

    tqdm = types.ModuleType("tqdm")
    auto = types.ModuleType("tqdm.auto")
    auto.tqdm = tqdm.tqdm = _Bar
    tqdm.auto = auto
    sys.modules.update({"tqdm": tqdm, "tqdm.auto": auto})
    return "stand-in (tqdm not installed)"


class Limited:
    """The first ``steps`` batches of an InMemoryBatches epoch, moved to ``device`` (None: left)."""

    def __init__(self, batches, steps: int, device: torch.device | None) -> None:
        self.batches, self.steps, self.device = batches, steps, device

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            if i == self.steps:
                return
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(config, device: torch.device):
    """Whether ``train`` autocasts (export.train.resolve_amp where it exists)."""
    try:
        from export.train import resolve_amp
    except ImportError:
        return None
    try:
        return bool(resolve_amp(getattr(config, "amp", None), device))
    except Exception:
        return None


def measure(data: dict, batch: int, seconds: float, device: torch.device) -> dict:
    from export.data.loaders import InMemoryBatches
    from export.train import TrainConfig, new_model, target_log_frequencies, train
    from features.catalog import ItemCatalog

    catalog = ItemCatalog.from_json(data["dir"] / "catalog.json")
    histories, targets = data["histories"], data["targets"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config_device = "device" in names and device.type != "cpu"
    extra = {"device": str(device)} if "device" in names else {}
    config = TrainConfig(epochs=1, batch_size=batch, sequence_length=data["sequence_length"],
                         **extra)
    torch.manual_seed(0)
    model = new_model(catalog, config)
    log_q = target_log_frequencies(targets, catalog.num_embeddings)
    move = None if config_device or device.type == "cpu" else device
    if move is not None:
        model, log_q = model.to(move), log_q.to(move)
    loader = InMemoryBatches(histories, targets, batch, seed=0)

    per_epoch = len(loader)

    def timed(steps: int) -> tuple[int, float]:
        """``train`` over about ``steps`` batches, as whole epochs of at most ``per_epoch``
        batches; returns (batches trained, seconds)."""
        epochs = -(-steps // per_epoch)
        each = -(-steps // epochs)
        run_config = dataclasses.replace(config, epochs=epochs)
        _sync(device)
        t0 = time.perf_counter()
        train(model, Limited(loader, each, move), run_config, log_q=log_q)
        _sync(device)
        return epochs * each, time.perf_counter() - t0

    warm = timed(min(3, per_epoch))[1]  # kernels, allocator, optimizer state
    # Longer and longer runs until one lasts half of ``seconds``: examples/s of the last one.
    wanted, spent = 5, 0.0
    while True:
        steps, took = timed(wanted)
        spent += took
        if took >= seconds / 2 or spent >= 1.5 * seconds:
            break
        wanted = max(2 * steps, int(steps * 0.6 * seconds / max(took, 1e-3)))
    where = next(model.parameters()).device
    return {"batch_size": batch, "device": str(device), "params_on": str(where),
            "moved_by": "TrainConfig.device" if config_device else ("here" if move else "cpu"),
            "amp": _amp(config, device), "steps": steps, "seconds": round(took, 3),
            "warmup_s": round(warm, 3), "measuring_s": round(spent, 3),
            "examples_per_s": round(steps * batch / took, 1),
            "epoch_examples": int(len(targets))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the bundle's train/ folder")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per size")
    parser.add_argument("--cpu-seconds", type=float, default=4.0, help="the CPU fallback's")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default). On a busy 2-core machine two "
                             "threads made a batch-256 step 30x slower than one (OpenMP contention)")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    arrays = np.load(args.data / "examples.npz")
    info = json.loads((args.data / "info.json").read_text())
    data = {"dir": args.data, "histories": arrays["histories"].astype(np.int64),
            "targets": arrays["targets"].astype(np.int64),
            "sequence_length": int(info["sequence_length"])}
    result = {"tqdm": ensure_tqdm(), "torch": torch.__version__, "device": str(device),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_threads": torch.get_num_threads(), "runs": []}
    for batch in args.batch_sizes:
        try:
            result["runs"].append(measure(data, batch, args.seconds, device))
        except Exception as exc:  # recorded, then the CPU for the same size
            result["runs"].append({"batch_size": batch, "device": str(device),
                                   "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc(limit=6)[-3000:]})
            if device.type != "cpu":
                try:
                    result["runs"].append({**measure(data, batch, args.cpu_seconds,
                                                     torch.device("cpu")), "fallback": True})
                except Exception as cpu_exc:
                    result["runs"].append({"batch_size": batch, "device": "cpu",
                                           "error": f"{type(cpu_exc).__name__}: {cpu_exc}"})
        print(json.dumps(result["runs"][-1])[:400], flush=True)
        args.result.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
