"""Pointers to sequences: each pointer's window copied out of the mapped segments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import pyarrow as pa

from . import _buffers, _kernels
from ._errors import ChecksumMismatch, reading_checks
from ._format import TIME
from ._jagged import JaggedBatch
from ._kernels import Visibility, by_segment, copy_runs
from ._locate import Located, Windows
from ._pointers import Pointers, pointers_from_log
from ._projection import Projection
from ._schema import UNIT_WORDS, Schema, coarser_unit_of, ticks_per_second
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
    verify, on_mismatch = reading_checks(verify, on_mismatch)
    if not isinstance(pointers, Pointers):
        pointers = pointers_from_log(pointers, store.schema)
    columns = projection.resolve(store.schema)
    visibility = pointers.visibility
    located = store.locate(pointers.user_id, pointers.request_ts, visibility, projection.max_len, pointers.length)

    mismatched = compare(pointers, located, verify, on_mismatch, store)
    store._record_reads(located, projection.max_len)
    lengths = np.minimum(located.count, projection.max_len)
    offsets = np.zeros(len(pointers) + 1, np.int64)
    np.add.accumulate(lengths, out=offsets[1:])
    # a batch's runs are made before its output where its merges fit the budget (made after, the runs' growing
    # buffers faulted in fresh pages every batch: merging batches 15-40% slower, a stranger's); else as copied
    plans = [copy_plan(store, located, w, visibility, offsets) for w in located.partitions]
    if int(lengths[located.merge].sum()) <= MERGE_BUDGET:
        plans = [list(plan) for plan in plans]
    dtypes = {name: output_dtype(store.schema, name) for name in columns}
    values = {name: _buffers.empty(name, int(offsets[-1]), np.uint8 if dtype == np.bool_ else dtype)
              for name, dtype in dtypes.items()}
    for w, plan in zip(located.partitions, plans, strict=True):
        for runs in plan:
            for name, out in values.items():
                copy_runs(runs, *w.view.column(TIME if name == store.schema.time_col else name), out)
    return JaggedBatch(offsets, {name: out.view(dtypes[name]) for name, out in values.items()}, mismatched)


def compare(pointers: Pointers, located: Located, verify: bool, on_mismatch: Literal["raise", "flag"],
            store: Store | None = None) -> np.ndarray:
    """Which rebuilt histories differ from their pointer's length and checksum (all False
    without ``verify``); with ``on_mismatch="raise"``, raises ChecksumMismatch on any,
    saying which of them are users deleted from ``store``."""
    mismatched = np.zeros(len(pointers), bool)
    if verify:
        mismatched = (located.count != pointers.length) | (located.checksum != pointers.checksum)
        if on_mismatch == "raise" and mismatched.any():
            rows = np.flatnonzero(mismatched)
            deleted = 0 if store is None else int(store.deleted_after(pointers.user_id[rows],
                                                                      pointers.version[rows]).sum())
            why = (f"{deleted} of them are examples of users deleted from the store (Store.delete): drop those "
                   "examples from the log, or read with drop_deleted, which leaves them out: "
                   "lateseq.torch.ExampleDataset(drop_deleted=True), lateseq.ray.materialized(drop_deleted=True), "
                   "materialize_log(drop_deleted=True), materialize_log_tenants(drop_deleted=True) (lateseq loader "
                   "or materialize --drop-deleted)" if deleted else
                   _coarser_times(pointers.request_ts[rows], store) +
                   "the store lost or gained events those pointers counted, the log's pointer columns "
                   "(user_id, request_ts, uih_*) were changed since they were logged (a change that leaves a "
                   "history as it was is not seen: the checksum vouches for the history), or the log was logged "
                   "against another store (most of a batch differing says so)")
            raise ChecksumMismatch(
                f"{len(rows)} of {len(pointers)} rebuilt histories differ from what online saw "
                f"(first rows: {rows[:5].tolist()}); {why}.", rows.tolist(),
                "materialize and iter_batches take on_mismatch='flag' to keep the batch and mark them; "
                "the loaders (lateseq.torch, lateseq.ray) take verify=False to read them unchecked.")
    return mismatched


def _coarser_times(request_ts: np.ndarray, store: Store | None) -> str:
    """Why histories differ where their request times look rewritten in a coarser unit than
    the store's (a log's request_ts as Spark's unix_millis against a store in us: s51A),
    else nothing."""
    unit = None if store is None else store.schema.time_unit
    coarse = unit and coarser_unit_of(int(request_ts.min()), int(request_ts.max()), unit)
    # not where the store's own events are as early (its bases: each segment's oldest time)
    oldest = min((info.bases.get(TIME, 0) for info in store.segment_infos), default=0) if coarse else 0
    if not coarse or coarser_unit_of(oldest, oldest, unit):
        return ""
    return (f"their request_ts all fall in 1970's first weeks counted in the store's unit ({UNIT_WORDS[unit]}) "
            f"and in 1990-2100 counted in {UNIT_WORDS[coarse]}: if the log's times were rewritten in "
            f"{UNIT_WORDS[coarse]}, convert them back (request_ts * "
            f"{ticks_per_second(unit) // ticks_per_second(coarse)}) or write them as timestamps; else ")


def copy_plan(store: Store, located: Located, w: Windows, visibility: Visibility,
              offsets: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Every run (segment, lo, hi, output position) that copies this partition's part of
    the batch, found once for all columns: its windows', grouped by segment, then its
    merged pointers', pointer by pointer, ``MERGE_BUDGET`` events of them at a time (where
    segments interleave, a run may hold one event: a batch's runs held at once took 3.4x
    a full-history batch's output, a stranger's). Grouped, the windows of daily segments
    copied 1.15x faster at N=256 (a day's segment stays in cache while its runs are
    copied); merged pointers' runs, short and in a few segments, 1.2x faster left in
    output order. So were the windows of pointers whose events lie in one range
    (``single``: a joined view's, whose segments are compacted partitions side by side,
    each user's rows in one of them; most of a tiered store's, in its big segment):
    grouping kept the reads in one partition, no smaller than the whole, and scattered
    the writes (64 partitions, the copy prefetching the run ahead in any segment, in one
    process, interleaved: 1.38x at N=256, 1.10x at 1024, 1.04x at 4096 on the
    benchmark's realistic store in log order, 1.20/1.09/1.14x shuffled; 1.10-1.18x on
    short uniform histories, s51B's)."""
    runs = window_runs(store, located, w, visibility, offsets)
    yield runs if w.single else by_segment(runs, len(w.view.segments))
    rows = w.rows[located.merge[w.rows]] if not w.single else w.rows[:0]
    for start, end in budget_chunks(offsets[rows + 1] - offsets[rows]) if len(rows) else ():
        yield merge_runs(store, located, w, rows[start:end], visibility, offsets)


MERGE_BUDGET = 1 << 22  # events of overlapping windows merged at once (their runs: at most ~170 MB)


def budget_chunks(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Ranges of consecutive rows whose ``sizes`` sum to at most ``MERGE_BUDGET`` (a row
    alone may hold more)."""
    total = np.cumsum(sizes)
    if not len(total) or total[-1] <= MERGE_BUDGET:
        return [(0, len(sizes))]
    chunks, start = [], 0
    while start < len(sizes):
        before = total[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(total, before + MERGE_BUDGET, side="right")))
        chunks.append((start, end))
        start = end
    return chunks


def window_runs(store: Store, located: Located, w: Windows, visibility: Visibility,
                offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs (segment, lo, hi, output position) that copy this partition's windows of
    pointers not merged: a window without holes is one run of its rows, one with holes
    is cut around its invisible rows (late rows from newer versions, rows past an
    arrival limit)."""
    if w.single and not w.holes.any():  # one window per pointer, no invisible rows: each is one run
        return w.seg, w.lo, w.lo + w.n, offsets[w.ptr] + w.off
    runs = _kernels._window_runs(
        w.ptr, w.seg, w.lo, w.hi, w.holes, w.late, w.n, w.off, located.merge, offsets, *w.view.column("_version"),
        w.view.late(), *w.view.column(store.schema.arrival_col), visibility.version, visibility.version_hi,
        visibility.arrival_limit)
    return tuple(runs)


def merge_runs(store: Store, located: Located, w: Windows, rows: np.ndarray, visibility: Visibility,
               offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs (segment, lo, hi, output position) holding the events of ``rows``, pointers of
    this partition whose windows overlap in time, chosen newest first by (time,
    tie-break, segment order)."""
    schema = store.schema
    return tuple(_kernels._merge_view(
        rows, offsets, located.first_window, located.end_window, w.seg, w.lo, w.hi, w.holes, w.late, w.top,
        w.view.late(), *w.view.column(TIME), *w.view.column(schema.tiebreak), schema.tiebreak is not None,
        *w.view.column("_version"), *w.view.column(schema.arrival_col), visibility.version,
        visibility.version_hi, visibility.arrival_limit))



def output_dtype(schema: Schema, name: str) -> np.dtype:
    """The dtype a column is returned in (times as int64, bools as bool)."""
    if name == schema.time_col:
        return np.dtype(np.int64)
    dtype = schema.columns[name]
    return np.dtype(np.bool_ if dtype == "bool" else dtype)
