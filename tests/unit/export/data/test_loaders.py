from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.data.loaders import (
    DaliBatches,
    InMemoryBatches,
    ShardManifest,
    _define_pipeline,
    write_shard_chunks,
    write_shards,
)

ROWS, LENGTH, ROWS_PER_FILE, BATCH = 1000, 5, 96, 64


def make_arrays(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Row i: target i, history [10i, 10i+1, ...] — every row names itself, in both arrays."""
    ids = np.arange(rows, dtype=np.int64)
    return ids[:, None] * 10 + np.arange(LENGTH), ids


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardManifest:
    histories, targets = make_arrays()
    return write_shards(histories, targets, tmp_path_factory.mktemp("shards"), rows_per_file=ROWS_PER_FILE)


def epoch_ids(loader) -> list[int]:
    """Row ids of one epoch in delivery order, checking every batch on the way."""
    batches = list(loader)
    assert len(batches) == len(loader) == -(-ROWS // BATCH)
    ids = []
    for i, (histories, targets) in enumerate(batches):
        assert histories.dtype == torch.int64 and targets.dtype == torch.int64
        expected = BATCH if i < len(batches) - 1 else ROWS - BATCH * (len(batches) - 1)
        assert histories.shape == (expected, LENGTH) and targets.shape == (expected,)
        torch.testing.assert_close(histories, targets[:, None] * 10 + torch.arange(LENGTH))  # aligned
        ids += targets.tolist()
    return ids


def dali(shards: ShardManifest, **kwargs) -> DaliBatches:
    return DaliBatches(shards.root, BATCH, files_per_read=3, **kwargs)


def in_memory(shards: ShardManifest, **kwargs) -> InMemoryBatches:
    return InMemoryBatches(*make_arrays(), BATCH, **kwargs)


LOADERS = pytest.mark.parametrize("make", [dali, in_memory], ids=["dali", "in_memory"])


def test_write_shards_splits_into_files_and_describes_them(shards):
    assert shards.rows == ROWS and shards.sequence_length == LENGTH
    assert shards.file_rows == (ROWS_PER_FILE,) * 10 + (ROWS - 10 * ROWS_PER_FILE,)
    assert ShardManifest.load(shards.root) == shards
    stored = np.concatenate([np.load(shards.root / name) for name in shards.files])
    histories, targets = make_arrays()
    assert stored.dtype == np.int64
    np.testing.assert_array_equal(stored, np.column_stack([histories, targets]))


def test_write_shard_chunks_streams_uneven_chunks_into_even_files(tmp_path, shards):
    histories, targets = make_arrays()
    edges = [0, 7, 7, 250, 251, 600, ROWS]  # chunk sizes unrelated to the file size, one empty

    def chunks():
        for a, b in zip(edges, edges[1:], strict=False):
            # Streaming: every full file is on disk before the next chunk is asked for.
            assert len(list(tmp_path.glob("part-*.npy"))) == a // ROWS_PER_FILE
            yield histories[a:b], targets[a:b]

    manifest = write_shard_chunks(chunks(), tmp_path, rows_per_file=ROWS_PER_FILE)
    assert manifest.file_rows == shards.file_rows
    for name in manifest.files:
        np.testing.assert_array_equal(np.load(tmp_path / name), np.load(shards.root / name))


def test_rewriting_a_directory_replaces_old_parts(tmp_path):
    histories, targets = make_arrays()
    write_shards(histories, targets, tmp_path, rows_per_file=100)
    (tmp_path / "notes.txt").write_text("not ours")
    manifest = write_shards(histories[:150], targets[:150], tmp_path, rows_per_file=100)
    assert sorted(p.name for p in tmp_path.glob("part-*.npy")) == list(manifest.files)
    assert (tmp_path / "notes.txt").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["rows"] == 150


def test_write_shards_rejects_bad_input(tmp_path):
    histories, targets = make_arrays(10)
    with pytest.raises(ValueError, match="non-negative"):
        write_shards(histories, targets - 1, tmp_path)
    with pytest.raises(ValueError):
        write_shards(histories, targets[:5], tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        write_shards(histories[:0], targets[:0], tmp_path)
    assert not (tmp_path / "manifest.json").exists()


@LOADERS
def test_every_row_exactly_once_per_epoch_and_epochs_differ(make, shards):
    loader = make(shards, seed=3)
    first, second = epoch_ids(loader), epoch_ids(loader)
    assert sorted(first) == sorted(second) == list(range(ROWS))
    assert first != second
    assert first != list(range(ROWS))
    assert len({i // ROWS_PER_FILE for i in first[:BATCH]}) > 1  # a batch mixes chunk files


@LOADERS
def test_same_seed_same_order_other_seed_other_order(make, shards):
    a, b, c = make(shards, seed=7), make(shards, seed=7), make(shards, seed=8)
    orders_a = [epoch_ids(a), epoch_ids(a)]
    assert orders_a == [epoch_ids(b), epoch_ids(b)]
    assert orders_a[0] != epoch_ids(c)


@LOADERS
def test_without_shuffle_rows_come_in_stored_order(make, shards):
    assert epoch_ids(make(shards, shuffle=False)) == list(range(ROWS))


@LOADERS
def test_an_abandoned_epoch_does_not_shorten_the_next(make, shards):
    loader = make(shards, seed=1)
    for _ in loader:
        break
    assert sorted(epoch_ids(loader)) == list(range(ROWS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_gpu_without_cuda_is_a_clear_error(shards):
    with pytest.raises(RuntimeError, match="CUDA"):
        DaliBatches(shards.root, BATCH, device="gpu")


@pytest.mark.parametrize("rows_per_file, files_per_read", [(7, 1), (7, 5), (100, 3), (1000, 4)])
def test_dali_coverage_for_other_file_and_window_sizes(tmp_path, rows_per_file, files_per_read):
    """Windows smaller than a batch (carry-over across several windows), no short last file,
    and a single file."""
    write_shards(*make_arrays(), tmp_path, rows_per_file=rows_per_file)
    loader = DaliBatches(tmp_path, BATCH, seed=2, files_per_read=files_per_read)
    for _ in range(2):
        assert sorted(epoch_ids(loader)) == list(range(ROWS))


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_pipeline_places_the_window_on_the_requested_device(shards, device):
    """Only the graph is defined, so the GPU variant is checked on a machine without one."""
    pipe, output = _define_pipeline(shards, device=device, shuffle=True, seed=0, num_threads=1,
                                    prefetch_queue_depth=1, files_per_read=2)
    assert output.device == device
    assert pipe.device_id == (0 if device == "gpu" else None)
