"""Training batches for the HSTU examples from two sources, in one form the trainer reads.

- **lateseq**: ``lateseq.torch.ExampleDataset`` over a store and an example log of
  pointers; each ``Batch`` is turned into a ``SeqBatch`` with ``Batch.to_hstu``.
- **Fat Rows**: a Parquet file whose rows carry their histories as list columns, read by
  a plain map-style ``torch.utils.data.Dataset`` under a ``DataLoader``.

The Fat Row loader deals rows into batches in exactly the order ``ExampleDataset`` does
(the same torch-free plan, ``lateseq._sampling.ShardPlan``), so with one seed both
sources must yield bit-identical batches: ``SeqBatch.checksum`` is what the example and
the tests compare. Everything is vectorised per batch: no Python loop over rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

import lateseq
import lateseq.torch
from lateseq._sampling import ShardPlan  # the plan ExampleDataset deals by; lateseq has no public name for it


@dataclass
class SeqBatch:
    """Newest events of each example, right-padded with 0 to the batch's longest, int64.

    A *training* batch (``target`` None) holds sequences whose every position predicts
    the next. A *request* batch holds each example's history before its ``target`` item
    (at ``target_ts``, seconds), and optionally ``seen``/``seen_offsets``: every item
    the user had rated before the target (jagged), however long the model's window.
    """

    ids: torch.Tensor
    ts: torch.Tensor  # seconds
    lengths: torch.Tensor
    target: torch.Tensor | None = None
    target_ts: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    seen_offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def checksum(self) -> str:
        """sha256 of every tensor's name, dtype, shape and bytes: equal iff the batches are."""
        h = hashlib.sha256()
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None:
                h.update(f"{f.name}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def to(self, device: torch.device | str) -> SeqBatch:
        return SeqBatch(**{f.name: None if getattr(self, f.name) is None else
                           getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def _loader(dataset: Dataset, sampler: object = None, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches as the dataset makes them; its own generator, so loading never draws from
    the global RNG the model's dropout uses (the two sources then stay in step)."""
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      multiprocessing_context="spawn" if workers else None, generator=torch.Generator())


# ---------------------------------------------------------------------- lateseq


class LateseqSource:
    """Batches of one example log through ``lateseq.torch.ExampleDataset``.

    ``history`` events are materialized per example (the projection's ``max_len``);
    ``window`` (<= history) of them, the newest, are the model's input. ``time_scale``
    divides stored times into seconds (1000 for ML-1M, whose store keeps a tie rank in
    the milliseconds). Request logs carry a ``target`` column. ``workers`` > 0 rebuild
    sequences in spawned DataLoader workers (``pin_memory`` for a GPU); ``options`` go to
    ``ExampleDataset``.
    """

    def __init__(self, store: lateseq.Store, log: str | Path, history: int, window: int, batch_size: int,
                 *, shuffle: bool, seed: int = 0, time_scale: int = 1, seen: bool = False, workers: int = 0,
                 pin_memory: bool = False, **options: object):
        names = pq.read_schema(log).names
        self.request = "target" in names
        self.window, self.time_scale, self.seen = window, time_scale, seen
        self.dataset = lateseq.torch.ExampleDataset(
            store, log, lateseq.Projection(history, ("item_id", "ts")), batch_size=batch_size, shuffle=shuffle,
            seed=seed, example_columns=["target", "request_ts"] if self.request else [], **options)
        self.workers, self.pin_memory = workers, pin_memory

    def batches(self, epoch: int) -> DataLoader:
        """The epoch's ``lateseq.torch.Batch``es (jagged: move them to the device, then ``convert``)."""
        self.dataset.set_epoch(epoch)
        return _loader(self.dataset, workers=self.workers, pin_memory=self.pin_memory)

    def epoch(self, epoch: int) -> Iterator[SeqBatch]:
        for batch in self.batches(epoch):
            yield self.convert(batch)

    def convert(self, batch: lateseq.torch.Batch) -> SeqBatch:
        """Padded on ``batch``'s device: a GPU trainer copies the jagged batch, then pads."""
        width = min(self.window, int(batch.lengths.max()))
        h = batch.to_hstu(max_len=width)
        out = SeqBatch(h["past_ids"], h["past_payloads"]["timestamps"] // self.time_scale, h["past_lengths"])
        if self.request:
            out.target = batch.examples["target"]
            out.target_ts = batch.examples["request_ts"] // self.time_scale
            if self.seen:
                out.seen, out.seen_offsets = batch.values["item_id"].to(torch.int64), batch.offsets
        return out


# ---------------------------------------------------------------------- Fat Rows


def pad_newest(values: np.ndarray, offsets: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's newest ``width`` values, oldest first, right-padded with 0; and their counts."""
    lengths = np.minimum(np.diff(offsets), width)
    col = np.arange(width)
    mask = col[None, :] < lengths[:, None]
    src = offsets[1:, None] - lengths[:, None] + col[None, :]
    out = np.zeros((len(lengths), width), np.int64)
    out[mask] = values[src[mask]]
    return out, lengths.astype(np.int64)


class FatRowDataset(Dataset):
    """A Fat Row file (``item_id`` and ``ts`` list columns, oldest first) read batch by batch:
    ``dataset[rows]`` is the ``SeqBatch`` of those rows."""

    def __init__(self, path: str | Path, window: int, seen: bool = False):
        self.table = pq.read_table(path)
        self.request = "target" in self.table.column_names
        self.window, self.seen = window, seen
        meta = pq.ParquetFile(path).metadata
        self.row_groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, rows: np.ndarray) -> SeqBatch:
        part = self.table.take(pa.array(rows))
        items = part.column("item_id").combine_chunks()
        offsets = items.offsets.to_numpy() - items.offsets[0].as_py()
        item_values = items.flatten().to_numpy()
        ts_values = part.column("ts").combine_chunks().flatten().to_numpy()
        width = min(self.window, int(np.diff(offsets).max()))
        ids, lengths = pad_newest(item_values, offsets, width)
        ts, _ = pad_newest(ts_values, offsets, width)
        out = SeqBatch(torch.from_numpy(ids), torch.from_numpy(ts), torch.from_numpy(lengths))
        if self.request:
            out.target = torch.from_numpy(part.column("target").to_numpy().astype(np.int64))
            out.target_ts = torch.from_numpy(part.column("target_ts").to_numpy().astype(np.int64))
            if self.seen:
                out.seen = torch.from_numpy(item_values.astype(np.int64))
                out.seen_offsets = torch.from_numpy(offsets.astype(np.int64))
        return out


class FatRowSource:
    """Batches of a Fat Row file in ``ExampleDataset``'s order for the same seed and epoch."""

    def __init__(self, path: str | Path, window: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 seen: bool = False):
        self.dataset = FatRowDataset(path, window, seen)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def epoch(self, epoch: int) -> Iterator[SeqBatch]:
        plan = ShardPlan(num_rows=len(self.dataset), batch_size=self.batch_size, shuffle=self.shuffle,
                         seed=self.seed, epoch=epoch, row_groups=self.dataset.row_groups)
        yield from _loader(self.dataset, list(plan.batches()))


def write_fat_rows(table: pa.Table, path: str | Path) -> int:
    """Writes Fat Rows as Parquet with pyarrow's defaults (zstd); returns the file's bytes."""
    pq.write_table(table, path, compression="zstd")
    return Path(path).stat().st_size
