"""The read path's first step: where each pointer's visible events are.

A ``PartitionView`` lays out the segments of one partition of a version for the fused
kernels: one user index over all of them, and each column as a table of its segments'
arrays. A batch then costs a few kernel calls whatever the number of segments, and a
history spread over time-ordered segments is copied slice by slice; only where late
events make segments overlap are events merged one by one (in a compiled kernel).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import _kernels
from ._errors import PointerError
from ._events import partition_of, rows_by_partition
from ._forks import fork_safe
from ._format import TIME
from ._kernels import (
    E_HASH,
    E_HI,
    E_LATE,
    E_LO,
    E_SEG,
    E_TMAX,
    E_TMIN,
    E_VMAX,
    ENTRY_WIDTH,
    Visibility,
    frozen,
    range_summaries,
    segment_table,
)
from ._schema import Schema
from ._segments import Segment, UserIndex, column_table


class PartitionView:
    """The segments of one partition of a version (oldest first), ready for the kernels."""

    def __init__(self, segments: list[Segment], schema: Schema):
        self.segments = segments
        self.schema = schema
        self._remaps = [s.remaps for s in segments]  # as they were when it was made: see ``remapped``
        ids = np.concatenate([s.user_ids for s in segments])
        seg = np.repeat(np.arange(len(segments)), [len(s.user_ids) for s in segments])
        order = np.lexsort((seg, ids))  # by user, then segment order
        ids = ids[order]
        new = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, bool)
        self.users = UserIndex(ids[new])
        self.first = np.append(np.flatnonzero(new), len(ids)).astype(np.int64)
        # one row per (user, segment) range, a cache line each: a user's rows are adjacent,
        # and the summary lets the kernel settle a range wholly before a request (every
        # older segment of a time-ordered history) without a probe into the segment
        self.entries = np.zeros((len(ids), ENTRY_WIDTH), np.int64)
        self.entries[:, E_SEG] = seg[order]
        self.entries[:, E_LO] = np.concatenate([s.starts for s in segments])[order]
        self.entries[:, E_HI] = np.concatenate([s.ends for s in segments])[order]
        for column, values in zip((E_TMIN, E_TMAX, E_VMAX, E_HASH, E_LATE), zip(*map(_summary, segments)),
                                  strict=True):
            self.entries[:, column] = np.concatenate(values)[order]
        self._columns: dict[str | None, tuple[tuple[np.ndarray, ...], np.ndarray, list[np.ndarray]]] = {}
        self._tables: dict[str, tuple[tuple[np.ndarray, ...], list[np.ndarray]]] = {}
        self._locate_arguments: tuple | None = None
        self._lock = fork_safe(threading.Lock())
        self.derived: dict = {}  # views made from this one (its filtered copies), by what made them

    def ranges(self, found: np.ndarray) -> int:
        """How many (user, segment) ranges the users at ``found`` have (window capacity)."""
        found = found[found >= 0]
        return int((self.first[found + 1] - self.first[found]).sum())

    def column(self, name: str | None) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(segment table, bases) of a column across the segments (``column_table``)."""
        with self._lock:
            if name not in self._columns:
                self._columns[name] = column_table(self.segments, name)  # (its arrays kept: they outlive the table)
            return self._columns[name][:2]

    def remapped(self) -> bool:
        """Whether a segment was decoded again since this view was made (a column failed its
        digest): the column tables it keeps point into the map written into."""
        return any(s.remaps != r for s, r in zip(self.segments, self._remaps, strict=True))

    def locate_arguments(self) -> tuple:
        """The view's side of ``_kernels.locate``, made once."""
        with self._lock:
            known = self._locate_arguments
        if known is None:
            known = ((self.entries, *self.column(TIME),
                      *self.column("_version"), self.column("_vmax")[0], self.column("_vmin")[0],
                      self.column("_hcum")[0], self.late(), self.late_index(), *self.column(self.schema.arrival_col),
                      self.schema.arrival_col is not None))
            with self._lock:
                self._locate_arguments = known
        return known

    def late(self) -> tuple[np.ndarray, ...]:
        """Each segment's ``Segment.late`` rows, as a segment table."""
        return self._table("late")

    def late_index(self) -> tuple[np.ndarray, ...]:
        """Each segment's ``Segment.late_index``, as a segment table."""
        return self._table("late_index")

    def _table(self, attribute: str) -> tuple[np.ndarray, ...]:
        with self._lock:
            if attribute not in self._tables:
                arrays = [getattr(s, attribute) for s in self.segments]
                self._tables[attribute] = (segment_table(arrays), arrays)  # the arrays outlive their table
            return self._tables[attribute][0]


def _summary(segment: Segment) -> tuple[np.ndarray, ...]:
    """``range_summaries`` of each user's rows of ``segment``."""
    return range_summaries(segment.starts, segment.ends.astype(np.int64), segment.stored(TIME), segment.base(TIME),
                           segment.stored("_vmax"), segment.base("_version"), segment.stored("_hcum"), segment.late)


@dataclass
class Windows:
    """One partition's windows: (pointer, segment, lo, hi, holes, where the late rows
    inside a window with holes begin, events taken, offset in the pointer's output, the
    time of its newest row: for the merge, so zeros where one segment never merges),
    pointer by pointer, segments in order."""

    view: PartitionView
    rows: np.ndarray
    single: bool  # one window per pointer (``_locate_sole``): no window is merged
    ptr: np.ndarray
    seg: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    holes: np.ndarray
    late: np.ndarray
    n: np.ndarray
    off: np.ndarray
    top: np.ndarray


@dataclass
class Located:
    """Where each pointer's visible events are, as found by :func:`locate`.

    ``merge`` marks pointers whose windows overlap in time (late events in uncompacted
    versions): their events are merged one by one; every other window is a slice.
    """

    count: np.ndarray
    checksum: np.ndarray
    merge: np.ndarray
    first_window: np.ndarray
    end_window: np.ndarray
    partitions: list[Windows] = field(default_factory=list)
    partition: np.ndarray | None = None  # each pointer's partition (None: one partition)


def locate(schema: Schema, views: Callable[[int], PartitionView | None], version: int, users: np.ndarray,
           request_ts: np.ndarray, visibility: Visibility, max_len: int, lengths: np.ndarray | None = None,
           joined: Callable[[np.ndarray], PartitionView | dict[int, PartitionView | None]] | None = None,
           lower: np.ndarray | None = None) -> Located:
    """Finds each pointer's visible events (time before the request, and ``visibility``)
    in the ``views(partition)`` of a handle at ``version``; a batch of several partitions
    in one view ``joined(those partitions)`` of them all when it gives one (else it gives
    each one's view), so that its cost does not grow with the partitions it touches (a
    kernel call per partition would). ``lengths`` (the pointers' recorded lengths) saves
    most searches for where a history ends; never trusted. ``lower`` (per pointer, or None)
    is the earliest time every reader of the result keeps (tenants' windows): a compacted
    history's window need not reach below it."""
    if len(users) and (visibility.version_hi.max() > version or visibility.version.min() < 0):
        raise PointerError(
            f"pointers need versions up to {int(visibility.version_hi.max())} but this handle "
            f"is at version {version}; open the store at a version >= every pointer's"
        )
    if schema.arrival_col is None and visibility.bounded_by_arrival:
        raise PointerError("pointers bounded by arrival (version_hi, arrival_limit) need a store "
                           "whose schema names an arrival_col; this one has none")
    n = len(users)
    located = Located(np.zeros(n, np.int64), np.zeros(n, np.uint32), np.zeros(n, bool),
                      np.zeros(n, np.int64), np.zeros(n, np.int64))
    users = frozen(users, np.int64)
    request_ts = frozen(request_ts, np.int64)
    hint = frozen(np.full(n, -1, np.int64) if lengths is None else lengths, np.int64)
    parts = partition_of(users, schema.partitions)
    if schema.partitions == 1:
        touched = np.zeros(1, np.int64)
    else:  # a count per partition beats a sort where partitions are not far more than pointers
        touched = np.flatnonzero(np.bincount(parts)) if schema.partitions <= 4 * n + 64 else np.unique(parts)
    if len(touched) == 1:
        groups = [(views(int(touched[0])), np.arange(n))]
    else:
        view = joined(touched) if joined is not None else {int(p): views(int(p)) for p in touched}
        if isinstance(view, PartitionView):
            located.partition = parts
            groups = [(view, np.arange(n))]
        else:  # read one by one
            groups = [(view[p], rows) for p, rows in rows_by_partition(parts)]
    for view, rows in groups:
        if view is None:
            continue
        sole = _sole_ranges(view, rows, users, request_ts, visibility)
        several = sole == -2
        mixed = bool(several.any())  # (else every pointer's: no copies of rows and sole without them)
        if not mixed or not several.all():
            alone = ~several if mixed else slice(None)
            located.partitions.append(_locate_sole(view, rows[alone], sole[alone], request_ts, visibility,
                                                   max_len, hint, located, lower))
        if not mixed:
            continue
        rows = rows[several]
        # by user: a user's pointers find its ranges, and its windows' runs (copied segment by
        # segment) read its rows, while they are in cache; a log in time order scatters them
        # (best of 3 passes, one core, alternated: 30 daily segments 1.33-1.41 -> 1.23-1.56 us
        # an example at N=256, 1.72-2.08 -> 1.81-1.85 at 1024; 32 with late events 2.21-2.59 ->
        # 1.98-2.54 at 256, 3.82-4.48 -> 3.20-3.48 at 1024, 8.06-8.24 -> 7.39-7.72 at 4096)
        rows = rows[np.argsort(users[rows], kind="stable")]
        index = view.users.find(users[rows])  # each pointer's user in the view
        capacity = view.ranges(index)
        w = Windows(view, rows, False, np.empty(capacity, np.int64), np.empty(capacity, np.int64),
                    np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.bool_),
                    np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.int64),
                    np.empty(capacity, np.int64))
        tb = view.column(schema.tiebreak)
        found = _kernels._locate_view(
            rows, index, request_ts, visibility.version, visibility.version_hi, visibility.arrival_limit,
            np.int64(max_len), hint, view.first, view.entries, *view.column(TIME), *view.column("_version"),
            view.column("_vmax")[0], view.column("_vmin")[0], view.column("_hcum")[0], view.late(), view.late_index(),
            *view.column(schema.arrival_col), *tb,
            schema.tiebreak is not None, located.count, located.checksum, located.merge,
            located.first_window, located.end_window, w.ptr, w.seg, w.lo, w.hi, w.holes, w.late, w.n, w.off, w.top)
        for name in ("ptr", "seg", "lo", "hi", "holes", "late", "n", "off", "top"):
            setattr(w, name, getattr(w, name)[:found])
        located.partitions.append(w)
    return located


def _sole_ranges(view: PartitionView, rows: np.ndarray, users: np.ndarray, request_ts: np.ndarray,
                 visibility: Visibility) -> np.ndarray:
    """``_kernels._sole_ranges`` of the pointers at ``rows``."""
    if len(rows) < len(users):  # else rows are 0..n-1: nothing to gather
        users, request_ts, visibility = frozen(users[rows]), frozen(request_ts[rows]), visibility.take(rows)
    sole = np.empty(len(rows), np.int64)
    _kernels._sole_ranges(users, request_ts, visibility.version, visibility.version_hi, view.users.ids,
                          np.int64(view.users.low), view.users.slots, view.users.hashed, view.first, view.entries,
                          view.column("_version")[1], sole)
    return sole


def _locate_sole(view: PartitionView, rows: np.ndarray, sole: np.ndarray, request_ts: np.ndarray,
                 visibility: Visibility, max_len: int, hint: np.ndarray, located: Located,
                 lower: np.ndarray | None) -> Windows:
    """Pointers each of whose visible events lie in one range of rows, ``sole`` (every
    pointer of a compacted version, one partition or several side by side; most of a
    tiered one's, whose big old segment holds every event before most requests, its newer
    ones beginning after them): one window each (empty for a user without events before
    the request), found by ``_kernels.locate``, twice as fast a pointer as
    ``_locate_view``, which finds several (on the tiered store of
    ``benchmarks/materialize.py``, 20k users, N=256, one range held 99.6% of pointers'
    events: locate 313 -> 167 ns a pointer, the whole read 820 -> 665 ns an example, as
    fast as the same events compacted into one segment)."""
    everyone = len(rows) == len(located.count)  # one view: rows are 0..n-1, nothing to gather
    seg, count, checksum, lo, hi, holes, late = _kernels.locate(
        sole, view.locate_arguments(), request_ts if everyone else request_ts[rows],
        visibility if everyone else visibility.take(rows), max_len, hint if everyone else hint[rows],
        lower if everyone or lower is None else lower[rows])
    if everyone:
        located.count, located.checksum = count, checksum
    else:
        located.count[rows], located.checksum[rows] = count, checksum
    zeros = np.zeros(len(rows), np.int64)
    return Windows(view, rows, True, rows, seg, lo, hi, holes, late, np.minimum(count, max_len), zeros, zeros)
