"""Many projections from one pass: each history located once, then every tenant's
window, filter and length chosen from it, and only the chosen rows copied.

``locate`` runs as deep as the tenants reach (``reach``): its length and checksum are
the pointer's whatever a tenant keeps, and its windows span the newest events any tenant
can take: the longest tenant's, or the whole visible history where a tenant filters. Each
tenant then walks those windows newest first: a slice it takes whole costs one binary
search (a window cut) or none, and becomes a run. A filtered tenant walks the same
windows in the filtered copies of the segments (``_derived``: the rows that pass, made
once per host), where each window is a slice again, its ends found by a memory read each
(``remap_ranges``); so a filter costs about what a shorter history does, not a test of
every row. Only the columns a tenant reads are copied, from the runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from . import _buffers, _kernels
from ._derived import filtered_view
from ._errors import TransformOverflow
from ._format import TIME
from ._gather import merge_runs, output_dtype
from ._jagged import JaggedBatch
from ._kernels import Visibility, copy_runs, rows_since
from ._locate import Located, PartitionView, Windows
from ._pointers import Pointers
from ._projection import Projection
from ._schema import Schema, ticks_per_second
from ._store import Store

FULL = 1 << 62  # "no length limit" for locate: windows span the whole visible history
_CHUNK_RUNS = 1 << 20  # runs sized per kernel call (40 MiB): a chunk of pointers at a time


@dataclass
class Touched:
    """What a tenant's read touched in the store's columns, in bytes: rows copied out of
    the columns it reads (a filtered tenant's, out of its filtered copies), and rows
    scanned one by one (ranges holding late events the pointer cannot see)."""

    copied: int = 0
    scanned: int = 0

    @property
    def total(self) -> int:
        return self.copied + self.scanned


def reach(tenants: Iterable[Projection]) -> int:
    """How many of a history's newest events some tenant can take: a window keeps only
    the newest (those after its start), so without a filter the longest tenant's length;
    the newest events that pass a filter may lie anywhere in it (FULL). Locating deeper
    only merges more (an uncompacted store with late events: 5-8x at a few hundred
    segments, in a stranger's trial)."""
    tenants = list(tenants)
    if any(p.where is not None for p in tenants):
        return FULL
    return min(FULL, max((p.max_len for p in tenants), default=0))


def earliest_kept(store: Store, pointers: Pointers, tenants: Mapping[str, Projection]) -> np.ndarray | None:
    """Per pointer, the earliest event time any tenant keeps, where every tenant has a
    window (else None): a window of no length limit over a compacted history with late
    events backfilled deep into it visited every stretch between them down to its first
    event (2 s for 3,000 pointers of a 1.5M-event user, s38B)."""
    windows = [p.window_in(store.schema) for p in tenants.values()]
    if not windows or any(w is None for w in windows):
        return None
    return _window_start(pointers.request_ts, max(windows))


def merge_depths(store: Store, pointers: Pointers, located: Located, tenants: Mapping[str, Projection],
                 depth: int) -> int | np.ndarray:
    """How many of each pointer's newest visible events a merge (``located.merge``) must
    give the tenants: ``depth``, or fewer where each tenant that could take more has a
    window that holds fewer rows. A window of the last days with no length limit, or with
    a filter, merged the whole history of a never-compacted store with late events, to
    keep the few events of its days (time and memory in the history's size: 4.5 s for a
    4M-event user, a stranger's trial)."""
    if not located.merge.any() or all(p.window is None for p in tenants.values()):
        return depth
    bounds = []
    for projection in tenants.values():
        bound = FULL if projection.where is not None else projection.max_len
        window = projection.window_in(store.schema)
        if window is None:
            if bound >= depth:  # this tenant alone takes all ``depth``
                return depth
            bounds.append(np.full(len(pointers), bound, np.int64))
            continue
        since = np.zeros(len(pointers), np.int64)
        lower = _window_start(pointers.request_ts, window)
        for w in located.partitions:
            if not w.single:  # (one window per pointer: never merged)
                merged = located.merge[w.ptr]
                rows_since(w.ptr[merged], w.seg[merged], w.lo[merged], w.hi[merged], *w.view.column(TIME), lower,
                           since)
        bounds.append(np.minimum(bound, since))
    return np.where(located.merge, np.minimum(depth, np.maximum.reduce(bounds)), depth)


def select(store: Store, pointers: Pointers, located: Located, tenants: Mapping[str, Projection],
           mismatched: np.ndarray, depth: int | np.ndarray) -> dict[str, tuple[JaggedBatch, Touched]]:
    """Each tenant's sequences for ``pointers``, from ``located`` (made at length ``depth``,
    at least ``reach(tenants)``; the newest ``depth`` (per pointer where an array, as
    ``merge_depths`` gives) are what its merges give)."""
    schema = store.schema
    candidates = [_candidates(store, located, w, pointers.visibility, depth) for w in located.partitions]
    out = {}
    for name, projection in tenants.items():
        columns = projection.resolve(schema)
        window = projection.window_in(schema)
        lower = pointers.request_ts if window is None else _window_start(pointers.request_ts, window)
        lengths = np.zeros(len(pointers), np.int64)
        touched = Touched()
        picked = []
        for w, cand in zip(located.partitions, candidates, strict=True):
            view = w.view
            if projection.where is not None:  # the same walk over the copy of the rows that pass
                filtered = filtered_view(view, projection.where, store.cache_dir, store._segments)
                view = filtered.view
                store._note_read([view])
                cand = (cand[0], cand[1], *filtered.remap(*cand[1:4]), cand[4])
            chosen, scanned = _runs(schema, view, cand, projection, lower, pointers.visibility, located.count,
                                    lengths)
            picked.append((view, chosen))
            touched.scanned += scanned * _scan_bytes(view, projection)
        offsets = np.zeros(len(pointers) + 1, np.int64)
        np.add.accumulate(lengths, out=offsets[1:])
        values = {}
        for column in columns:
            stored = TIME if column == schema.time_col else column
            dtype = output_dtype(schema, column)
            target = _buffers.empty((name, column), int(offsets[-1]), np.uint8 if dtype == np.bool_ else dtype)
            for view, (ptr, seg, lo, hi, at) in picked:
                copy_runs((seg, lo, hi, offsets[ptr] + at), *view.column(stored), target)
            if picked:  # every chosen row, at the column's stored width
                touched.copied += int(offsets[-1]) * picked[0][0].segments[0].stored(stored).dtype.itemsize
            values[column] = target.view(np.bool_) if dtype == np.bool_ else target
        batch = JaggedBatch(offsets, values, mismatched.copy())  # each tenant's own, as its values (s45B)
        try:
            out[name] = (transform(batch, projection, schema, pointers.request_ts), touched)
        except TransformOverflow as exc:
            raise exc.of_tenant(name) if name else exc from None
    return out


def _window_start(request_ts: np.ndarray, window: int) -> np.ndarray:
    """``request_ts - window`` exactly, the smallest int64 where it is below it (a window
    of any width, 2**63 and wider included, never wraps around)."""
    floor = np.iinfo(np.int64).min
    if window >= 1 << 64:
        return np.full(len(request_ts), floor, np.int64)
    sign = np.uint64(1 << 63)
    above_floor = np.ascontiguousarray(request_ts, np.int64).view(np.uint64) ^ sign  # request_ts - floor
    width = np.uint64(window)
    return np.where(above_floor >= width, ((above_floor - width) ^ sign).view(np.int64), floor)


def transform(batch: JaggedBatch, projection: Projection, schema: Schema, request_ts: np.ndarray) -> JaggedBatch:
    """``batch`` with ``projection.transforms`` applied (a new array per transformed column)."""
    for name, how in projection.transforms.items():
        events, requests = batch.values[name], np.repeat(request_ts, np.diff(batch.offsets))
        per = ticks_per_second(schema.time_unit) if how == "age_s" else 1
        if per > 1:  # floor((request - event) / per) from the quotients: the difference in ticks may not fit
            age = (requests // per - events // per) - (requests % per < events % per)  # where this always does
        else:
            age = requests - events
            if np.any(age <= 0):  # every event is before its request: only wrapping around int64 gives this
                event = int(np.flatnonzero(age <= 0)[0])
                row = int(np.searchsorted(batch.offsets, event, side="right")) - 1
                raise TransformOverflow(f"the {how!r} of an event of {{where}} does not fit int64 (its request at "
                                        f"{int(request_ts[row])}, the event at {int(events[event])})", row)
        batch.values[name] = age
    return batch


def _candidates(store: Store, located: Located, w: Windows, visibility: Visibility,
                depth: int | np.ndarray) -> tuple[np.ndarray, ...]:
    """(pointer, segment, lo, hi, holes) of every range the newest ``depth`` events of a
    pointer's history lie in, grouped by pointer, newest first: its windows, or where they
    overlap in time (late events, uncompacted) the runs the merge kernel orders them into."""
    if w.single:
        return w.ptr, w.seg, w.lo, w.hi, w.holes
    plain = ~located.merge[w.ptr]
    ptr, seg, lo, hi, holes = (a[plain][::-1] for a in (w.ptr, w.seg, w.lo, w.hi, w.holes))
    merging = w.rows[located.merge[w.rows]]
    if len(merging):
        offsets = np.zeros(len(located.count) + 1, np.int64)
        np.cumsum(np.where(located.merge, np.minimum(located.count, depth), 0), out=offsets[1:])
        g_seg, g_lo, g_hi, g_dst = merge_runs(store, located, w, merging, visibility, offsets)
        g_ptr = np.searchsorted(offsets, g_dst, side="right") - 1
        ptr, seg, lo, hi = (np.concatenate(pair) for pair in ((ptr, g_ptr), (seg, g_seg), (lo, g_lo), (hi, g_hi)))
        holes = np.concatenate([holes, np.zeros(len(g_seg), bool)])
    order = np.argsort(ptr, kind="stable")  # by pointer; each pointer's ranges stay newest first
    return ptr[order], seg[order], lo[order], hi[order], holes[order]


def _runs(schema: Schema, view: PartitionView, cand: tuple[np.ndarray, ...], projection: Projection,
          lower: np.ndarray, visibility: Visibility, count: np.ndarray,
          lengths: np.ndarray) -> tuple[tuple[np.ndarray, ...], int]:
    """The runs (pointer, segment, lo, hi, place in the pointer's output) one tenant takes
    from one partition's candidates (ranges of ``view``'s segments), and the rows it scanned
    one by one. A run is a slice of a candidate, or in a candidate with holes as few as one
    row: the run arrays are sized for the worst case, a chunk of pointers at a time to bound
    their memory."""
    fixed = (lower, projection.window is not None, np.int64(projection.max_len),
             *view.column(TIME), *view.column("_version"), *view.column(schema.arrival_col),
             visibility.version, visibility.version_hi, visibility.arrival_limit, lengths)
    ptr = cand[0]
    if not len(ptr):
        return tuple(np.zeros(0, np.int64) for _ in range(5)), 0
    first_of_pointer = np.empty(len(ptr), bool)
    first_of_pointer[0] = True
    np.not_equal(ptr[1:], ptr[:-1], out=first_of_pointer[1:])
    starts = np.flatnonzero(first_of_pointer)
    bound = np.empty(len(starts), np.int64)  # candidates per pointer
    np.subtract(starts[1:], starts[:-1], out=bound[:-1])
    bound[-1] = len(ptr) - starts[-1]
    if cand[4].any():  # rows scanned one by one: a run per row at worst
        bound += np.minimum(count[ptr[starts]], projection.max_len)
    one_chunk = int(bound.sum()) <= _CHUNK_RUNS  # a batch's usual case
    parts, scanned, first = [], 0, 0
    while first < len(starts):
        last = len(starts) if one_chunk else max(
            first + 1, int(np.searchsorted(np.cumsum(bound[first:]), _CHUNK_RUNS, side="right")) + first)
        lo, hi = starts[first], starts[last] if last < len(starts) else len(ptr)
        runs = np.empty((5, int(bound[first:last].sum())), np.int64)
        found, rows = _kernels._select(*(a[lo:hi] for a in cand), *fixed, *runs)
        # sized for the worst case, mostly unused where a window cut the scan of a range with
        # holes: a slice would keep each chunk's pages (1.6 GB for 24,000 pointers, s38B)
        parts.append(tuple(r[:found] if one_chunk else r[:found].copy() for r in runs))
        scanned += rows
        first = last
    if len(parts) == 1:
        return parts[0], scanned
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True)), scanned


def _scan_bytes(view: PartitionView, projection: Projection) -> int:
    """Bytes per row a row-by-row scan (a range with holes) reads: the version, and the
    time for a window."""
    names = ["_version"] + ([TIME] if projection.window is not None else [])
    return sum(view.segments[0].stored(n).dtype.itemsize for n in names)
