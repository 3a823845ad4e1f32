"""The materializer: turns a batch of pointers back into the exact sequences online saw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .errors import ChecksumMismatch
from .kernels import Visibility, copy_windows
from .pointer import Pointers
from .projection import Projection
from .segment import TIME, Segment, row_ranges
from .store import Located, Store


@dataclass
class JaggedBatch:
    """Sequences as one values array per column sharing ``offsets`` (oldest event first).

    ``mismatched`` flags rows whose rebuilt history differs from the pointer's length
    or checksum (only possible with ``on_mismatch="flag"``): drop them before training.
    """

    offsets: np.ndarray
    values: dict[str, np.ndarray]
    mismatched: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def concat(cls, batches: list[JaggedBatch]) -> JaggedBatch:
        """One batch holding the rows of ``batches`` (which share their columns), in order."""
        lengths = np.concatenate([b.lengths for b in batches])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = {name: np.concatenate([b.values[name] for b in batches]) for name in batches[0].values}
        return cls(offsets, values, np.concatenate([b.mismatched for b in batches]))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows_differ(self, other: JaggedBatch) -> np.ndarray:
        """Per row: a different length, or a value of one of this batch's columns that
        differs in its bits (so -0.0 is not 0.0); every row when a column is missing
        from ``other`` or has another dtype there."""
        if len(other) != len(self):
            raise ValueError(f"cannot compare {len(self)} rows with {len(other)}")
        differ = self.lengths != other.lengths
        same = np.flatnonzero(~differ)
        mine = row_ranges(self.offsets[same], self.offsets[same + 1])
        theirs = row_ranges(other.offsets[same], other.offsets[same + 1])
        owner = np.repeat(same, self.lengths[same])
        for name, values in self.values.items():
            their_values = other.values.get(name)
            if their_values is None or their_values.dtype != values.dtype:
                return np.ones(len(self), bool)
            differ[owner[_bits(values[mine]) != _bits(their_values[theirs])]] = True
        return differ

    def padded(self, name: str, length: int | None = None, pad_value: Any = 0,
               side: Literal["right", "left"] = "right") -> np.ndarray:
        """A dense (rows, length) array of one column; ``side`` is where padding goes."""
        lengths = self.lengths
        width = int(lengths.max(initial=0)) if length is None else length
        values = self.values[name]
        out = np.full((len(self), width), pad_value, dtype=values.dtype)
        keep = np.minimum(lengths, width)
        rows = np.repeat(np.arange(len(self)), keep)
        # keep the newest `width` events of each row
        first = self.offsets[1:] - keep
        src = np.arange(keep.sum()) - np.repeat(np.cumsum(keep) - keep, keep) + np.repeat(first, keep)
        cols = src - np.repeat(first, keep)
        if side == "left":
            cols = cols + np.repeat(width - keep, keep)
        out[rows, cols] = values[src]
        return out

    def to_arrow(self) -> pa.Table:
        """One list column per projected column, one row per pointer."""
        offsets = pa.array(self.offsets.astype(np.int32 if self.offsets[-1] < 2**31 else np.int64))
        make = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        return pa.table({name: make.from_arrays(offsets, pa.array(v)) for name, v in self.values.items()})

    def to_torch(self, device: Any = None, pin_memory: bool = False) -> dict[str, Any]:
        """Tensors: ``offsets``, ``lengths`` and one values tensor per column."""
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_torch needs PyTorch: pip install 'lateseq[torch]'") from exc
        arrays = {"offsets": self.offsets, "lengths": self.lengths, **self.values}
        out = {}
        for name, array in arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if pin_memory:
                tensor = tensor.pin_memory()
            out[name] = tensor.to(device, non_blocking=pin_memory) if device is not None else tensor
        return out


def materialize(
    store: Store,
    pointers: Pointers | pa.Table | pa.RecordBatch,
    projection: Projection,
    *,
    verify: bool = True,
    on_mismatch: Literal["raise", "flag"] = "raise",
) -> JaggedBatch:
    """Rebuilds, for each pointer, the newest ``projection.max_len`` events it saw.

    Events are those of the pointer's user with event time strictly before the request,
    visible in the pointer's version, oldest first. With ``verify`` (the default, and
    nearly free), each history's length and checksum are compared with the pointer's;
    a difference raises ChecksumMismatch, or with ``on_mismatch="flag"`` marks the row.
    """
    if not isinstance(pointers, Pointers):
        pointers = Pointers.from_arrow(pointers)
    columns = projection.resolve(store.schema)
    visibility = pointers.visibility
    located = store.locate(pointers.user_id, pointers.request_ts, visibility, projection.max_len)

    mismatched = np.zeros(len(pointers), bool)
    if verify:
        mismatched = (located.count != pointers.length) | (located.checksum != pointers.checksum)
        if on_mismatch == "raise" and mismatched.any():
            rows = np.flatnonzero(mismatched)
            raise ChecksumMismatch(
                f"{len(rows)} of {len(pointers)} rebuilt histories differ from what online saw "
                f"(first rows: {rows[:5].tolist()}); the store lost or gained events those "
                "pointers counted. Use on_mismatch='flag' to keep the batch and drop them.",
                rows.tolist(),
            )

    lengths = np.minimum(located.count, projection.max_len)
    offsets = np.zeros(len(pointers) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gathered = _merge_spread(store, located, visibility, projection.max_len, offsets) if located.spread.any() else None
    # windows of histories held by one segment: copied column by column below
    runs = []
    for segment, idx, lo, hi, holes in located.windows:
        single = ~located.spread[idx]
        idx = idx[single]
        runs.append((segment, lo[single], hi[single], holes[single], visibility.take(idx), offsets[idx]))
    values = {}
    arrival = store.schema.arrival_col
    for name in columns:
        dtype = _output_dtype(store, name)
        out = np.empty(int(offsets[-1]), np.uint8 if dtype == np.bool_ else dtype)
        stored = TIME if name == store.schema.time_col else name
        for segment, lo, hi, holes, seen_by, dst in runs:
            copy_windows(segment.stored(stored), segment.base(stored), segment.stored("_version"),
                         segment.base("_version"), *segment.encoded(arrival), seen_by, lo, hi, holes,
                         dst, out)
        if gathered is not None:
            for segment, rows, dst in gathered:
                out[dst] = segment.decoded(stored, rows)
        values[name] = out.view(np.bool_) if dtype == np.bool_ else out
    return JaggedBatch(offsets, values, mismatched)


def _bits(values: np.ndarray) -> np.ndarray:
    """Each value as an unsigned integer of the same width, so floats compare by their bits."""
    return values.view(f"u{values.dtype.itemsize}") if values.dtype.itemsize in (1, 2, 4, 8) else values


def _output_dtype(store: Store, name: str) -> np.dtype:
    if name == store.schema.time_col:
        return np.dtype(np.int64)
    dtype = store.schema.columns[name]
    return np.dtype(np.bool_ if dtype == "bool" else dtype)


def _merge_spread(store: Store, located: Located, visibility: Visibility, max_len: int,
                  offsets: np.ndarray) -> list[tuple[Segment, np.ndarray, np.ndarray]]:
    """For histories spread over several segments: merge candidates by (time, tie-break).

    Each segment's window already holds its newest ``max_len`` visible events, so the
    newest ``max_len`` of their union are the answer. Ties keep segment order (older
    commits first), then row order, exactly as compaction would.
    """
    parts = []  # (pointer, ts, tiebreak, segment order, row)
    for order, (segment, idx, lo, hi, _) in enumerate(located.windows):
        spread = located.spread[idx]
        idx, lo, hi = idx[spread], lo[spread], hi[spread]
        if len(idx) == 0:
            continue
        rows = row_ranges(lo, hi)
        ptr = np.repeat(idx, hi - lo)
        version = segment.decoded("_version", rows)
        visible = version <= visibility.version[ptr]
        if store.schema.arrival_col:
            late = segment.decoded(store.schema.arrival_col, rows) < visibility.arrival_limit[ptr]
            visible |= (version <= visibility.version_hi[ptr]) & late
        rows, ptr = rows[visible], ptr[visible]
        tiebreak = (segment.decoded(store.schema.tiebreak, rows) if store.schema.tiebreak
                    else np.zeros(len(rows), np.int64))
        parts.append((ptr, segment.decoded(TIME, rows), tiebreak, np.full(len(rows), order), rows))
    ptr, ts, tiebreak, seg, rows = (np.concatenate(c) for c in zip(*parts, strict=True))
    chosen, kept = newest_per_group(ptr, [ts, tiebreak, seg, rows], max_len, len(offsets) - 1)
    ptr, seg, rows = ptr[chosen], seg[chosen], rows[chosen]
    dst = offsets[ptr] + np.arange(len(ptr)) - np.repeat(np.cumsum(kept) - kept, kept)
    return [(located.windows[s][0], rows[seg == s], dst[seg == s]) for s in np.unique(seg)]


def newest_per_group(group: np.ndarray, keys: list[np.ndarray], max_len: int,
                     groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorts rows by (group, *keys) and keeps each group's last ``max_len``.

    Returns the chosen row indices, grouped and in order, and how many each group kept.
    """
    order = np.lexsort((*reversed(keys), group))
    counts = np.bincount(group, minlength=groups)
    group_end = np.repeat(np.cumsum(counts), counts)
    chosen = order[group_end - np.arange(len(order)) <= max_len]
    return chosen, np.minimum(counts, max_len)


def stitch(parts: list[tuple[np.ndarray, JaggedBatch]], rows: int) -> JaggedBatch:
    """One batch from batches that each answer some of ``rows`` rows (given by index)."""
    lengths = np.zeros(rows, np.int64)
    mismatched = np.zeros(rows, bool)
    for index, batch in parts:
        lengths[index] = batch.lengths
        mismatched[index] = batch.mismatched
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    names = next((list(b.values) for _, b in parts), [])
    values = {n: np.empty(int(offsets[-1]), parts[0][1].values[n].dtype) for n in names}
    for index, batch in parts:
        dst = np.repeat(offsets[index] - batch.offsets[:-1], batch.lengths) + np.arange(batch.offsets[-1])
        for n in names:
            values[n][dst] = batch.values[n]
    return JaggedBatch(offsets, values, mismatched)
