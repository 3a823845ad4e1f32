"""Jagged batches: rebuilt sequences as one values array per column sharing offsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ._errors import SchemaError, exact_bool, exact_integer
from ._events import row_ranges
from ._kernels import pad_rows


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

    def take(self, rows: np.ndarray) -> JaggedBatch:
        """The batch of ``rows`` (indices of this one's rows, in that order, or a mask of
        them: ``take(~batch.mismatched)``)."""
        rows = np.asarray(rows)
        if rows.dtype == np.bool_:
            if rows.shape != (len(self),):
                raise SchemaError(f"a mask of rows must have one entry per row ({len(self)}), got shape {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return JaggedBatch(offsets, {name: v[index] for name, v in self.values.items()}, self.mismatched[rows])

    def slice(self, start: int, stop: int) -> JaggedBatch:
        """Rows ``start`` to ``stop`` (0 <= start <= stop <= len), sharing this batch's
        values (numpy views, as slicing makes: the part keeps the whole batch alive): a
        read of several loader batches at once hands each its part without a copy."""
        if not (type(start) is int and type(stop) is int and 0 <= start <= stop <= len(self)):  # (the loaders')
            start = exact_integer("slice: start", start, 0, len(self))
            stop = exact_integer("slice: stop", stop, start, len(self))
        offsets = self.offsets[start:stop + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        return JaggedBatch(offsets - lo, {name: v[lo:hi] for name, v in self.values.items()},
                           self.mismatched[start:stop])

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

    def padded(self, name: str, length: int | None = None, *, side: Literal["right", "left"] = "right",
               pad_value: Any = 0) -> np.ndarray:
        """A dense (rows, length) array of one column: each row's newest ``length`` events,
        oldest first, padded on ``side`` (``length`` None: the longest here). ``side`` and
        ``pad_value`` are keywords: positional, the two classes' orders could be confused."""
        check_padding(self.values, name, side, pad_value)
        width = (int(self.lengths.max(initial=0)) if length is None
                 else exact_integer("padded: length", length, 0, 2**63 - 1))
        return pad_rows(self.values[name], self.offsets, width, side == "left", pad_value)

    def to_arrow(self) -> pa.Table:
        """One list column per projected column, one row per pointer."""
        offsets = pa.array(self.offsets.astype(np.int32 if self.offsets[-1] < 2**31 else np.int64))
        make = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        return pa.table({name: make.from_arrays(offsets, pa.array(v)) for name, v in self.values.items()})

    def to_torch(self, device: Any = None, pin_memory: bool = False) -> dict[str, Any]:
        """Tensors: ``offsets``, ``lengths`` and one values tensor per column (in page-locked
        memory with ``pin_memory``, on a machine with an accelerator to pin for)."""
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_torch needs PyTorch: pip install 'lateseq[torch]'") from exc
        arrays = {"offsets": self.offsets, "lengths": self.lengths, **self.values}
        pin_memory = exact_bool("pin_memory", pin_memory) and has_accelerator()  # torch raises without one
        out = {}
        for name, array in arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if pin_memory:
                tensor = tensor.pin_memory()
            out[name] = tensor.to(device, non_blocking=pin_memory) if device is not None else tensor
        return out


def has_accelerator() -> bool:
    """Whether torch has a device to pin memory for (pinning without one raises)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA alone before
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def check_padding(values: dict, name: str, side: str, pad_value: Any, dtype: np.dtype | None = None) -> None:
    """SchemaError for a column a batch lacks, a side that is not 'right' or 'left'
    (anything else would quietly pad on the right), or a pad value the column's ``dtype``
    (its values' by default) cannot hold: numpy and torch cast it silently, 1.7 into an id
    column padding with item 1, -1 into a bool one with True."""
    if name not in values:
        raise SchemaError(f"batch has no column {name!r}; it has {sorted(values)}")
    if side not in ("right", "left"):
        raise SchemaError(f"side must be 'right' or 'left', got {side!r}")
    dtype = np.dtype(values[name].dtype if dtype is None else dtype)
    if not _holds(dtype, pad_value):
        raise SchemaError(f"pad_value {pad_value!r} does not fit column {name!r} of {dtype}: give one it holds "
                          "exactly (padding that reads as another value would pass for an event)")


def _holds(dtype: np.dtype, value: Any) -> bool:
    """Whether ``value`` is a number that ``dtype`` holds exactly (NaN and infinities in floats)."""
    if isinstance(value, bool | np.bool_):  # into a bool column only: True padding ids is item 1
        return dtype.kind == "b"
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(value, int | np.integer):
            if dtype.kind == "b":
                return value in (0, 1)
            if dtype.kind == "f":
                cast = dtype.type(value)
                return bool(np.isfinite(cast)) and int(cast) == int(value)
            return np.iinfo(dtype).min <= int(value) <= np.iinfo(dtype).max
        if isinstance(value, float | np.floating):
            if dtype.kind == "f":
                return not np.isfinite(value) or bool(np.isfinite(dtype.type(value)))
            return float(value).is_integer() and _holds(dtype, int(value))
    return False


def _bits(values: np.ndarray) -> np.ndarray:
    """Each value as an unsigned integer of the same width, so floats compare by their bits."""
    return values.view(f"u{values.dtype.itemsize}") if values.dtype.itemsize in (1, 2, 4, 8) else values


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
