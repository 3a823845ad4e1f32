"""Pointers to sequences: the copy of each pointer's window out of the mapped segments."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from ._errors import ChecksumMismatch
from ._events import row_ranges
from ._format import TIME
from ._jagged import JaggedBatch
from ._kernels import Visibility, copy_windows
from ._locate import Located
from ._pointers import Pointers, pointers_from_log
from ._projection import Projection
from ._segments import Segment
from ._store import Store


def gather(
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
        pointers = pointers_from_log(pointers, store.schema)
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
