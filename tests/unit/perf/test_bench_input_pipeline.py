"""perf/bench_input_pipeline.py: the row check of ``measure`` and the files ``write_outputs`` writes."""

import csv
import json

import numpy as np
import torch

from perf.bench_input_pipeline import CSV_COLUMNS, measure, synthetic, write_outputs


class _Batches:
    """A loader delivering ``targets`` in batches of 2 (``drop`` rows left out of every epoch)."""

    def __init__(self, targets: np.ndarray, drop: int = 0):
        self.targets = torch.from_numpy(targets[drop:])

    def __len__(self):
        return (len(self.targets) + 1) // 2

    def __iter__(self):
        for lo in range(0, len(self.targets), 2):
            y = self.targets[lo:lo + 2]
            yield torch.zeros((len(y), 3)), y


def test_measure_accepts_every_row_once_and_flags_missing_rows():
    _, targets = synthetic(9, 3, items=100, seed=0)
    expected = np.sort(targets)
    good = measure("fake", "cpu", lambda: _Batches(targets), expected, epochs=2)
    assert good["ok"] and good["problems"] == [] and good["batches_per_epoch"] == 5
    assert good["rows_per_epoch"] == 9 and good["epochs"] == 2
    bad = measure("fake", "cpu", lambda: _Batches(targets, drop=1), expected, epochs=1)
    assert not bad["ok"] and bad["problems"] == ["epoch 1: 8 rows, expected 9"]


def _report():
    loaders = [{"loader": "in_memory", "device": "cpu", "startup_s": 0.001, "seconds": 0.5,
                "samples_per_s": 1_000_000, "ok": True, "problems": []},
               {"loader": "dali", "device": "cpu", "startup_s": 0.25, "seconds": 1.5,
                "samples_per_s": 300_000, "ok": False, "problems": ["epoch 1: rows missing or repeated"]}]
    return {"config": {"rows": 1000, "seq_len": 10, "batch_size": 64},
            "environment": {"cpu_count": 2},
            "shard_write": {"bytes": 88_000, "files": 2, "seconds": 0.002, "mb_per_s": 44.0},
            "loaders": loaders, "ok": False}


def test_outputs_are_the_documented_files(tmp_path):
    out = tmp_path / "results"  # created on demand
    write_outputs(out, _report())
    assert {p.name for p in out.iterdir()} == {
        "input_pipeline.json", "input_pipeline.csv", "input_pipeline.png"}
    with open(out / "input_pipeline.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [CSV_COLUMNS,
                    ["shard_write", "cpu", "44.0", "MB/s", "0.002", "", "True"],
                    ["in_memory", "cpu", "1000000", "samples/s", "0.5", "0.001", "True"],
                    ["dali", "cpu", "300000", "samples/s", "1.5", "0.25", "False"]]
    assert json.loads((out / "input_pipeline.json").read_text()) == _report()
    assert (out / "input_pipeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
