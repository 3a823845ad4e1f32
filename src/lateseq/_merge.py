"""Merging a partition's segments into one order: what compaction writes, and what a
read of an uncompacted version must reproduce."""

from __future__ import annotations

import numpy as np

from ._events import Events
from ._format import TIME, LaidOut, encoded_type
from ._kernels import copy_runs, merge_runs, runs_hcum
from ._schema import Schema
from ._segments import Segment, column_table


def segment_events(segment: Segment, schema: Schema) -> Events:
    """A segment's events, decoded, in its order."""
    user = np.repeat(segment.user_ids, np.diff(np.append(segment.starts, segment.info.rows)))
    payload = {name: segment.payload(name, schema) for name in schema.columns}
    return Events(user, segment.decoded(TIME).astype(np.int64, copy=False), payload,
                  segment.decoded("_version").astype(np.uint32), segment.hashes())


def merge_segments(segments: list[Segment], schema: Schema) -> LaidOut:
    """The events of one partition's segments, oldest segment first, stably sorted by
    (user, time, tie-break) and laid out as a segment stores them: equal keys keep segment
    order, then row order, which is commit order, so the merge is the order a single
    commit of everything would have. Copied from the segments' stored columns run by run,
    each re-encoded on the way (no column is decoded, sorted or encoded whole: a merged
    copy of 4M events in 30-32 daily segments built in 0.3 -> 0.10-0.15 s)."""
    tables = {name: column_table(segments, name) for name in (TIME, schema.tiebreak) if name is not None}
    runs, user_ids, ends = merge_runs([s.user_ids for s in segments], [s.ends for s in segments],
                                      tables[TIME][:2], tables[schema.tiebreak][:2] if schema.tiebreak else None)
    rows = int(ends[-1]) if len(ends) else 0
    stored, bases = {}, {}
    for name, decoded in [(TIME, np.int64), *((n, _decoded_dtype(schema, n)) for n in schema.columns),
                          ("_version", np.uint32)]:
        table, source_bases, arrays = tables.pop(name, None) or column_table(segments, name)
        stored[name], bases[name] = _encoded_dtype(arrays, source_bases, np.dtype(decoded), rows)
        offsets = [b - bases[name] for b in source_bases.tolist()]
        copy_runs(runs, table, np.array(offsets, np.int64), stored[name])
    hcum = column_table(segments, "_hcum")  # (held: its arrays outlive its table)
    return LaidOut(user_ids, ends, stored, bases, runs_hcum(runs, hcum[0], rows))


def _decoded_dtype(schema: Schema, name: str) -> type:
    return np.uint8 if schema.columns[name] == "bool" else np.dtype(schema.columns[name]).type


def _encoded_dtype(arrays: list[np.ndarray], bases: np.ndarray, decoded: np.dtype,
                   rows: int) -> tuple[np.ndarray, int]:
    """(an empty output, base) of the merged column as ``_format._encode`` stores its values:
    above their least in the narrowest unsigned type that holds them all, or as they are."""
    if decoded.kind not in "iu" or not rows:
        return np.empty(rows, arrays[0].dtype if decoded.kind == "f" else decoded), 0
    spans = [(b + int(a.min()), b + int(a.max())) for a, b in zip(arrays, bases.tolist(), strict=True) if len(a)]
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    dtype = encoded_type(low, high)
    return (np.empty(rows, decoded), 0) if dtype is None else (np.empty(rows, dtype), low)
