"""Training batches from sharded numpy files, read by NVIDIA DALI; and the in-memory counterpart.

Both loaders are iterables with the same contract, so a training loop can take either:
each ``iter()`` is one epoch that yields ``(histories LongTensor [B, L], targets LongTensor [B])``
(``L`` here is the width of a history row, whatever it packs: the trainer's rows are the item
indices and then the event-type codes of its sequence, see ``export.data.examples.build_examples``)
covering every training row exactly once; the last batch of an epoch is *kept* even when it holds
fewer than ``batch_size`` rows (as the original in-memory loop did). ``len()`` is the number of
batches per epoch, ``ceil(rows / batch_size)``.

- ``InMemoryBatches`` — arrays that fit in memory (MovieLens-100K: ~100k rows).
- ``DaliBatches`` — a directory written by ``write_shards``, for training sets larger than memory:
  only a bounded window of chunk files is held at a time, and DALI's worker threads read the
  next window while the model trains on the current one.

On-disk layout (``write_shards``): ``part-00000.npy``, ``part-00001.npy``, … each an int64 array
``[rows, L + 1]`` — the history in columns ``0..L-1`` and the target in column ``L`` — plus
``manifest.json``. One combined file per chunk rather than a histories file and a targets file,
because DALI's numpy reader treats one *file* as one sample: with the pair in one array the
reader's shuffle can never separate a history from its target (two readers would have to be kept
in lock-step), and every chunk costs one open instead of two.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_ROWS_PER_FILE = 16_384  # ~6.7 MB per file at L = 50: big enough for sequential reads
_PART_NAME = re.compile(r"part-\d{5,}\.npy")
# Rows that DALI pads onto the short last file (see DaliBatches) carry this value; real targets
# are catalog indices and never negative, which write_shards checks.
_PAD_VALUE = -1
_READER = "shards"

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ShardManifest:
    """What ``write_shards`` wrote: ``rows`` examples of ``sequence_length`` history items, in
    ``files`` (names relative to ``root``), each file holding ``file_rows[i]`` rows."""

    root: Path
    rows: int
    sequence_length: int
    rows_per_file: int
    files: tuple[str, ...]
    file_rows: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "layout": "int64 [rows, sequence_length + 1]: history columns, then the target",
            "rows": self.rows,
            "sequence_length": self.sequence_length,
            "rows_per_file": self.rows_per_file,
            "files": [{"name": n, "rows": r} for n, r in zip(self.files, self.file_rows, strict=True)],
        }

    @classmethod
    def load(cls, path: str | Path) -> ShardManifest:
        """From a shard directory or the path of its ``manifest.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        doc = json.loads(path.read_text())
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unsupported shard manifest format {doc.get('format')!r}")
        return cls(
            root=path.parent,
            rows=int(doc["rows"]),
            sequence_length=int(doc["sequence_length"]),
            rows_per_file=int(doc["rows_per_file"]),
            files=tuple(f["name"] for f in doc["files"]),
            file_rows=tuple(int(f["rows"]) for f in doc["files"]),
        )


def write_shards(
    histories: np.ndarray,
    targets: np.ndarray,
    out_dir: str | Path,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
) -> ShardManifest:
    """Write ``(histories [N, L], targets [N])`` as chunk files plus a manifest.

    Works one chunk at a time, so ``histories``/``targets`` may be ``np.memmap``s larger than
    memory; for data produced piece by piece use ``write_shard_chunks``.
    """
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories but {len(targets)} targets")

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(targets), rows_per_file):
            yield histories[start:start + rows_per_file], targets[start:start + rows_per_file]

    return write_shard_chunks(chunks(), out_dir, rows_per_file)


def write_shard_chunks(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
) -> ShardManifest:
    """Stream ``(histories [n, L], targets [n])`` chunks of any sizes into files of exactly
    ``rows_per_file`` rows (the last one shorter); at most about one file's rows plus one incoming
    chunk are held in memory.

    Rewriting a directory replaces its manifest and ``part-*.npy`` files. The manifest is removed
    first and written last, so an interrupted write leaves a directory no loader will accept.
    """
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)

    files: list[str] = []
    file_rows: list[int] = []
    length: int | None = None
    pending: list[np.ndarray] = []  # combined [n, L + 1] pieces not yet written
    pending_rows = 0

    def flush(n: int) -> None:
        nonlocal pending, pending_rows
        block = np.concatenate(pending) if len(pending) > 1 else pending[0]
        name = f"part-{len(files):05d}.npy"
        np.save(out / name, np.ascontiguousarray(block[:n]))
        files.append(name)
        file_rows.append(n)
        rest = block[n:]
        pending, pending_rows = ([rest] if len(rest) else []), len(rest)

    for hist, tgt in chunks:
        hist, tgt = np.asarray(hist), np.asarray(tgt)
        if hist.ndim != 2 or tgt.ndim != 1 or len(hist) != len(tgt):
            raise ValueError(f"expected histories [n, L] and targets [n], got {hist.shape} and {tgt.shape}")
        if length is None:
            length = hist.shape[1]
        elif hist.shape[1] != length:
            raise ValueError(f"sequence length changed from {length} to {hist.shape[1]}")
        if len(tgt) == 0:
            continue
        if tgt.min() < 0:
            raise ValueError("targets must be non-negative item indices")
        rows = np.empty((len(tgt), length + 1), dtype=np.int64)
        rows[:, :length] = hist
        rows[:, length] = tgt
        pending.append(rows)
        pending_rows += len(rows)
        while pending_rows >= rows_per_file:
            flush(rows_per_file)
    if pending_rows:
        flush(pending_rows)
    if not files:
        raise ValueError("no rows to write")

    for stale in out.glob("part-*.npy"):
        if _PART_NAME.fullmatch(stale.name) and stale.name not in files:
            stale.unlink()
    manifest = ShardManifest(root=out, rows=sum(file_rows), sequence_length=int(length),
                             rows_per_file=rows_per_file, files=tuple(files),
                             file_rows=tuple(file_rows))
    (out / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=1))
    return manifest


class InMemoryBatches:
    """Mini-batches of in-memory arrays, a fresh permutation per epoch.

    Randomness: one ``torch.Generator`` seeded with ``seed`` draws ``randperm(N)`` at the start of
    every epoch — the same draws the original training loop made, so results stay comparable.
    A new loader with the same seed repeats the same sequence of epochs.
    """

    def __init__(self, histories: np.ndarray, targets: np.ndarray, batch_size: int,
                 shuffle: bool = True, seed: int = 0) -> None:
        if len(histories) != len(targets):
            raise ValueError(f"{len(histories)} histories but {len(targets)} targets")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._x = torch.from_numpy(np.ascontiguousarray(histories, dtype=np.int64))
        self._y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def rows(self) -> int:
        return len(self._y)

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        # Drawn here, not lazily, so the epoch's order is fixed even if it is abandoned part-way.
        order = torch.randperm(self.rows, generator=self._generator) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: torch.Tensor | None) -> Iterator[Batch]:
        for start in range(0, self.rows, self.batch_size):
            if order is None:
                stop = start + self.batch_size
                yield self._x[start:stop], self._y[start:stop]
            else:
                idx = order[start:start + self.batch_size]
                # index_select, not x[idx]: advanced indexing is ~40x slower here (torch 2.5, CPU)
                yield self._x.index_select(0, idx), self._y.index_select(0, idx)


class DaliBatches:
    """Mini-batches from a ``write_shards`` directory, read by a DALI pipeline.

    Create it once and iterate it once per epoch (``for epoch ...: for x, y in loader``). The DALI
    pipeline is built, and its first window read, in the constructor.

    How rows are read: DALI's numpy reader yields one chunk file per sample; one DALI batch is a
    *window* of ``files_per_read`` chunk files (up to ``files_per_read * rows_per_file`` rows).
    DALI reads the next windows in its worker threads (``num_threads``, ``prefetch_queue_depth``)
    while the current one is cut into training batches. Rows left over at the end of a window
    (fewer than ``batch_size``) are carried over and topped up from the next window, so only the
    epoch's final batch can be short. Because each file is one sample, the shorter last file is
    padded by the reader (``out_of_bounds_policy="pad"``, value -1) to a uniform shape and those
    rows are dropped here.

    Randomness, when ``shuffle`` is true, in two stages:

    1. File order: the reader's ``shuffle_after_epoch`` permutes the whole file list every epoch
       (the first included) from ``shuffle_after_epoch_seed=seed`` and DALI's epoch counter —
       a true permutation, so every file is read exactly once per epoch.
    2. Row order: a permutation of each window's rows, from a numpy generator seeded by
       ``(seed, epoch)``, picks the rows of each batch.

    So a batch mixes rows of ``files_per_read`` random files, not of the whole data set; smaller
    files or more files per read mix more (at the cost of more memory per window). A new loader
    with the same seed and files repeats the same sequence of epochs. Without ``shuffle`` the
    rows come in file order.

    ``device="gpu"`` runs the pipeline on GPU 0: the reader stays on the CPU (the GPU numpy
    reader needs GPUDirect Storage) and its output is moved with ``.gpu()``, so batches arrive as
    CUDA tensors on ``cuda:0``.
    """

    def __init__(
        self,
        manifest_or_dir: ShardManifest | str | Path,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str = "cpu",
        num_threads: int = 2,
        prefetch_queue_depth: int = 2,
        files_per_read: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', not {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("DaliBatches(device='gpu') needs a CUDA device, and torch sees none; "
                               "use device='cpu'")
        self.manifest = (manifest_or_dir if isinstance(manifest_or_dir, ShardManifest)
                         else ShardManifest.load(manifest_or_dir))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self._epoch = 0
        self._dali_mid_epoch = False
        self._iterator = self._build(num_threads, prefetch_queue_depth,
                                     max(1, min(files_per_read, len(self.manifest.files))))

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def _build(self, num_threads: int, prefetch_queue_depth: int, files_per_read: int):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe, _ = _define_pipeline(self.manifest, device=self.device, shuffle=self.shuffle,
                                   seed=self.seed, num_threads=num_threads,
                                   prefetch_queue_depth=prefetch_queue_depth,
                                   files_per_read=files_per_read)
        pipe.build()
        return DALIGenericIterator(pipe, ["rows"], reader_name=_READER, auto_reset=True,
                                   last_batch_policy=LastBatchPolicy.PARTIAL)

    def __iter__(self) -> Iterator[Batch]:
        # A DALI iterator cannot be reset mid-epoch: finish an abandoned epoch first, or the
        # next one would start where it stopped.
        if self._dali_mid_epoch:
            with contextlib.suppress(StopIteration):
                while True:  # not `for`: iter() on a DALI iterator mid-epoch warns and does nothing
                    next(self._iterator)
            self._dali_mid_epoch = False
        # One stream per (seed, epoch): an epoch's order does not depend on how much of the
        # previous epochs was consumed.
        rng = np.random.default_rng([self.seed, self._epoch]) if self.shuffle else None
        self._epoch += 1
        return self._batches(rng)

    def _batches(self, rng: np.random.Generator | None) -> Iterator[Batch]:
        length, size = self.manifest.sequence_length, self.batch_size
        carry: Batch | None = None  # fewer than `size` rows left over from the previous window
        self._dali_mid_epoch = True
        for out in self._iterator:  # auto_reset: one pass is one epoch
            window = self._drop_padding(out[0]["rows"])
            # numpy, not torch.randperm: torch's parallel CPU ops cost milliseconds each on
            # small machines, and this runs once per window.
            order = (torch.from_numpy(rng.permutation(len(window))).to(window.device)
                     if rng is not None else None)
            start = 0
            if carry is not None:  # top the carried rows up to a full batch first
                start = min(size - len(carry[1]), len(window))
                top_up = _take(window, order, 0, start, length)
                carry = (torch.cat([carry[0], top_up[0]]), torch.cat([carry[1], top_up[1]]))
                if len(carry[1]) < size:  # a window smaller than the gap: keep collecting
                    continue
                yield carry
                carry = None
            full = start + (len(window) - start) // size * size
            for begin in range(start, full, size):
                yield _take(window, order, begin, begin + size, length)
            if full < len(window):
                carry = _take(window, order, full, len(window), length)
        self._dali_mid_epoch = False
        if carry is not None:
            yield carry

    def _drop_padding(self, block: torch.Tensor) -> torch.Tensor:
        """[files, rows_per_file, L + 1] from DALI -> [rows, L + 1] without the pad rows.

        Only the manifest's last file can be short, and its padding fills the end of its block,
        so looking at each block's last row is enough — no pass over the whole window.
        """
        m = self.manifest
        width, short = m.sequence_length + 1, m.file_rows[-1]
        if short == m.rows_per_file:
            return block.reshape(-1, width)
        padded = (block[:, -1, m.sequence_length] == _PAD_VALUE).tolist()
        if not any(padded):
            return block.reshape(-1, width)
        return torch.cat([rows[:short] if pad else rows for rows, pad in zip(block, padded, strict=True)])


def _define_pipeline(manifest: ShardManifest, *, device: str, shuffle: bool, seed: int,
                     num_threads: int, prefetch_queue_depth: int, files_per_read: int):
    """The DALI pipeline (not yet built) and its output node: one chunk file per sample."""
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    m = manifest
    pipe = Pipeline(batch_size=files_per_read, num_threads=num_threads,
                    device_id=0 if device == "gpu" else None,
                    prefetch_queue_depth=prefetch_queue_depth, seed=seed)
    with pipe:
        rows = fn.readers.numpy(
            name=_READER,
            file_root=str(m.root),
            files=list(m.files),
            shuffle_after_epoch=shuffle,
            **({"shuffle_after_epoch_seed": seed} if shuffle else {}),
            # Repeat the last file to fill the epoch's last DALI batch; the iterator drops the
            # repeats (it learns of the padding from the reader), so the next epoch starts complete.
            pad_last_batch=True,
            # Every sample must have the same shape for a dense torch tensor: read a fixed
            # [rows_per_file, L + 1] region, padding the short last file.
            roi_start=[0, 0],
            roi_shape=[m.rows_per_file, m.sequence_length + 1],
            out_of_bounds_policy="pad",
            fill_value=_PAD_VALUE,
            prefetch_queue_depth=prefetch_queue_depth,
        )
        # The reader stays on the CPU (the GPU numpy reader needs GPUDirect Storage); DALI moves
        # the window to the GPU in its own stream.
        output = rows.gpu() if device == "gpu" else rows
        pipe.set_outputs(output)
    return pipe, output


# Copies, so nothing handed on is a view of DALI's output buffer. index_select rather than
# window[idx]: advanced indexing is ~40x slower for these shapes (torch 2.5, CPU).
def _take(window: torch.Tensor, order: torch.Tensor | None, start: int, stop: int, length: int) -> Batch:
    if order is None:
        rows = window[start:stop]
        return (rows[:, :length].clone(memory_format=torch.contiguous_format),
                rows[:, length].clone(memory_format=torch.contiguous_format))
    idx = order[start:stop]
    return window[:, :length].index_select(0, idx), window[:, length].index_select(0, idx)
