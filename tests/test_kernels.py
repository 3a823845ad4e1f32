"""Numba kernels against the plain reference versions kept beside them in kernels.py.

Inputs imitate a segment: users' row ranges sorted by time, frame-of-reference encoded
columns (``base + stored``), versions with late arrivals (holes inside windows), an
optional arrival column, and pointers that see a version and, optionally, later
versions' events that arrived before a limit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import (
    copy_windows_reference,
    locate_reference,
    merge_order_reference,
    pairs_seen_reference,
    partition_of_reference,
    rows_since_reference,
    select_reference,
    version_bounds_reference,
)
from numba import njit

from lateseq._events import partition_of, rows_by_partition
from lateseq._kernels import (
    E_HASH,
    E_HI,
    E_LATE,
    E_LO,
    E_SEG,
    E_TMAX,
    E_TMIN,
    E_VMAX,
    ENTRY_WIDTH,
    NO_COLUMN,
    Visibility,
    _select,
    _sole_ranges,
    _window_runs,
    by_segment,
    copy_runs,
    frozen,
    late_index,
    late_rows,
    merge_runs,
    pairs_seen,
    prefetch,
    range_summaries,
    rank_index,
    remap_ranges,
    repeated_ids,
    rows_since,
    runs_hcum,
    segment_table,
    user_starts,
    version_bounds,
)
from lateseq._kernels import locate as locate_in_segments
from lateseq._segments import UserIndex


def locate(found, entries, ts, ts_base, ver, vmax, vmin, ver_base, hcum, late, arrival, arrival_base,
           request_ts, visibility, max_len, hint) -> tuple:
    """The kernel on one segment given column by column (a view of one segment)."""
    held = [frozen(a) for a in (ts, ver, vmax, vmin, hcum, late, late_index(late, len(ts)),
                                NO_COLUMN if arrival is None else arrival)]
    ts, ver, vmax, vmin, hcum, late, index, arrival_values = (segment_table([a]) for a in held)  # of one segment
    view = (entries, ts, np.array([ts_base], np.int64), ver, np.array([ver_base], np.int64),
            vmax, vmin, hcum, late, index, arrival_values, np.array([arrival_base], np.int64), arrival is not None)
    _, *out = locate_in_segments(found, view, request_ts, visibility, max_len, hint)
    del held  # the tables hold the arrays' addresses: they lived until here
    return tuple(out)


# (time, version) dtypes as a segment stores them: every width of each, drawn in pairs, as
# each pair is a compilation of the kernels (~10 s) and widths of columns never interact
STORED = [(np.uint8, np.uint8), (np.uint16, np.uint16), (np.uint32, np.uint8), (np.int64, np.uint16)]


@dataclass
class Case:
    user_lo: np.ndarray
    user_hi: np.ndarray
    ts: np.ndarray
    ts_base: int
    ver: np.ndarray
    vmax: np.ndarray
    vmin: np.ndarray
    ver_base: int
    hcum: np.ndarray
    arrival: np.ndarray | None
    arrival_base: int
    request_ts: np.ndarray
    visibility: Visibility
    max_len: int
    hint: np.ndarray  # right, wrong or absent (-1): it must never change a result

    def args(self) -> tuple:
        """The kernel's arguments: each pointer's user as a row of range summaries."""
        return (*summaries(self.user_lo, self.user_hi, self.ts, self.ts_base, self.vmax, self.ver_base, self.hcum,
                           self.late()), *self.reference_args()[2:], self.hint)

    def reference_args(self) -> tuple:
        return (self.user_lo, self.user_hi, self.ts, self.ts_base, self.ver, self.vmax, self.vmin, self.ver_base,
                self.hcum, self.late(), self.arrival, self.arrival_base, self.request_ts, self.visibility, self.max_len)

    def late(self) -> np.ndarray:
        return late_rows(self.ver, self.vmax, self.vmin, self.ver_base, self.hcum)

    def visible(self, i: int, p: int) -> bool:
        v = self.ver_base + int(self.ver[i])
        if v <= self.visibility.version[p]:
            return True
        return (self.arrival is not None and v <= self.visibility.version_hi[p]
                and self.arrival_base + int(self.arrival[i]) < self.visibility.arrival_limit[p])


def summaries(user_lo: np.ndarray, user_hi: np.ndarray, ts: np.ndarray, ts_base: int, vmax: np.ndarray,
              ver_base: int, hcum: np.ndarray, late: np.ndarray) -> tuple:
    """(each pointer's summary row, the summary rows) for the kernel: pointer p's is row p."""
    entries = np.zeros((len(user_lo), ENTRY_WIDTH), np.int64)
    entries[:, E_LO], entries[:, E_HI] = user_lo, user_hi
    for column, values in zip((E_TMIN, E_TMAX, E_VMAX, E_HASH, E_LATE),
                              range_summaries(user_lo, user_hi, ts, ts_base, vmax, ver_base, hcum, late), strict=True):
        entries[:, column] = values
    return np.arange(len(user_lo), dtype=np.int64), entries


@st.composite
def cases(draw, longest: int = 12, span: int = 6, versions: int = 4) -> Case:
    """Users of up to ``longest`` rows, times in [0, span], versions in [0, versions]."""
    sizes = draw(st.lists(st.integers(0, longest), min_size=1, max_size=5))
    ts_dtype, ver_dtype = draw(st.sampled_from([pair for pair in STORED if np.iinfo(pair[0]).max >= span]))
    ts_base = draw(st.integers(-(10**15), 10**15))
    ver_base = draw(st.integers(0, 4))
    with_arrival = draw(st.booleans())
    arrival_base = draw(st.integers(-100, 100))
    ts, ver, arrival, vmax, vmin = [], [], [], [], []
    for size in sizes:
        ts += sorted(draw(st.lists(st.integers(0, span), min_size=size, max_size=size)))  # ties
        drawn = draw(st.lists(st.integers(0, versions), min_size=size, max_size=size))
        ver += drawn
        vmax += np.maximum.accumulate(drawn).tolist() if size else []
        vmin += np.minimum.accumulate(drawn[::-1])[::-1].tolist() if size else []
        arrival += draw(st.lists(st.integers(0, 10), min_size=size, max_size=size))
    n = len(ts)
    hashes = np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)), np.uint32)
    ends = np.cumsum(sizes)
    starts = ends - np.array(sizes)

    pointers = draw(st.integers(0, 8))
    users = draw(st.lists(st.integers(0, len(sizes) - 1), min_size=pointers, max_size=pointers))
    request_ts = [ts_base + draw(st.integers(-1, span + 2)) for _ in users]
    version = [ver_base + draw(st.integers(-2, versions + 1)) for _ in users]
    if with_arrival:
        version_hi = [v + draw(st.integers(0, 4)) for v in version]
        limit = [arrival_base + draw(st.integers(-1, 12)) for _ in users]
    else:
        version_hi, limit = version, [0] * len(users)
    hint = []
    for u, t in zip(users, request_ts, strict=True):
        before = sum(ts_base + x < t for x in ts[starts[u]:ends[u]])  # where the history ends
        hint.append(draw(st.sampled_from([-1, before, before - 1, before + 1]) | st.integers(-3, 15)))
    return Case(
        np.array(starts[users] if users else [], np.int64), np.array(ends[users] if users else [], np.int64),
        np.array(ts, ts_dtype), ts_base if ts_dtype != np.int64 else 0,
        np.array(ver, ver_dtype), np.array(vmax, ver_dtype), np.array(vmin, ver_dtype), ver_base,
        np.cumsum(hashes, dtype=np.uint32),
        np.array(arrival, np.uint8) if with_arrival else None, arrival_base,
        np.array(request_ts, np.int64) if ts_dtype != np.int64 else np.array(request_ts, np.int64) - ts_base,
        Visibility(np.array(version, np.int64), np.array(version_hi, np.int64), np.array(limit, np.int64)),
        draw(st.integers(0, 14) | st.integers(0, 2 * longest)), np.array(hint, np.int64),
    )


def window_rows(case: Case, p: int, lo: int, hi: int, holes: bool) -> list[int]:
    """The rows a copy takes from window [lo, hi): all of them, or the visible ones."""
    return [i for i in range(lo, hi) if not holes or case.visible(i, p)]


@given(cases())
@settings(max_examples=400)
def test_locate_matches_reference(case):
    check_locate(case)


@given(cases(longest=400, span=300, versions=40))
@settings(max_examples=60, deadline=None)
def test_locate_matches_reference_over_many_blocks_of_late_rows(case):
    """Hundreds of late rows per user: the unseen ones are counted a block of
    ``LATE_BLOCK`` at a time, whole blocks partly visible included (s38B)."""
    check_locate(case)


def check_locate(case: Case) -> None:
    count, checksum, lo, hi, holes, _ = locate(*case.args())
    r_count, r_checksum, r_lo, r_hi, r_holes = locate_reference(*case.reference_args())
    for array, dtype in ((count, np.int64), (checksum, np.uint32), (lo, np.int64), (hi, np.int64)):
        assert array.dtype == dtype
    assert count.tolist() == r_count.tolist()
    assert checksum.tolist() == r_checksum.tolist()
    for p in range(len(count)):
        # windows may differ in where they start and end around invisible rows, never in
        # the rows they yield: the newest min(count, max_len) visible events
        assert case.user_lo[p] <= lo[p] <= hi[p] <= max(case.user_hi[p], case.user_lo[p])
        rows = window_rows(case, p, lo[p], hi[p], holes[p])
        assert rows == window_rows(case, p, r_lo[p], r_hi[p], r_holes[p])
        assert len(rows) == min(count[p], case.max_len)
        if not holes[p]:
            assert all(case.visible(i, p) for i in range(lo[p], hi[p]))
        for i in rows:
            assert case.ts_base + int(case.ts[i]) < case.request_ts[p]


def copy_windows(case: Case, src: np.ndarray, base: int, lo: np.ndarray, hi: np.ndarray, holes: np.ndarray,
                 late_at: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
    """The read path's copy of one segment's windows: runs planned once, then copied."""
    n = np.minimum(hi - lo, case.max_len)
    take = np.array([len(window_rows(case, p, lo[p], hi[p], holes[p])) for p in range(len(lo))], np.int64)
    n = np.where(holes, take, n)
    zeros = np.zeros(len(lo), np.int64)
    arrival = case.arrival if case.arrival is not None else np.zeros(1, np.int64)
    late = case.late()  # a table holds addresses: its arrays are kept alive here
    runs = _window_runs(np.arange(len(lo)), zeros, lo, hi, holes, late_at, n, zeros, np.zeros(len(lo), np.bool_),
                        np.append(dst, 0), segment_table([case.ver]), np.array([case.ver_base]),
                        segment_table([late]), segment_table([arrival]), np.array([case.arrival_base]),
                        case.visibility.version, case.visibility.version_hi, case.visibility.arrival_limit)
    copy_runs(tuple(runs), segment_table([src]), np.array([base]), out)


@given(cases(), st.sampled_from(["uint8", "uint16", "int64", "float32", "float64"]), st.data())
@settings(max_examples=300)
def test_copy_windows_matches_reference(case, kind, data):
    count, _, lo, hi, holes, late_at = locate(*case.args())
    r_count, _, r_lo, r_hi, r_holes = locate_reference(*case.reference_args())
    n = len(case.ts)
    if kind.startswith("float"):
        src = np.array(data.draw(st.lists(st.floats(width=int(kind[5:])), min_size=n, max_size=n)), kind)
        base, out_dtype = 0, np.dtype(kind)
    else:
        info = np.iinfo(kind)
        src = np.array(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)),
                       kind)
        base = data.draw(st.integers(-1000, 1000)) if kind != "int64" else 0
        out_dtype = np.dtype(np.int64)
    lengths = np.minimum(count, case.max_len)
    dst = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths
    args = (src, base, case.ver, case.ver_base, case.late(), case.arrival, case.arrival_base,
            case.visibility)
    out = np.full(int(lengths.sum()), 7, out_dtype)
    copy_windows(case, src, base, lo, hi, holes, late_at, dst, out)
    same_inputs = np.full_like(out, 7)
    copy_windows_reference(*args, lo, hi, holes, dst, same_inputs)
    from_reference = np.full_like(out, 7)
    copy_windows_reference(*args, r_lo, r_hi, r_holes, dst, from_reference)
    expected = [src[i] if kind.startswith("float") else base + int(src[i])
                for p in range(len(count)) for i in window_rows(case, p, r_lo[p], r_hi[p], r_holes[p])]
    expected = np.array(expected, out_dtype)
    width = np.uint64 if out_dtype.itemsize == 8 else np.uint32
    for got in (out, same_inputs, from_reference):
        assert got.view(width).tolist() == expected.view(width).tolist()  # bit for bit


@given(st.integers(1, 5), st.lists(st.integers(0, 4), max_size=40))
def test_runs_grouped_by_segment_keep_their_order_within_one(segments, seg):
    """The copy plan's runs, grouped by segment: a stable sort of every field."""
    seg = np.array([g % segments for g in seg], np.int64)
    fields = np.arange(3 * len(seg), dtype=np.int64).reshape(3, len(seg))
    grouped = by_segment((seg, *fields), segments)
    order = np.argsort(seg, kind="stable")
    assert [a.tolist() for a in grouped] == [seg[order].tolist(), *(f[order].tolist() for f in fields)]


@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 2), st.integers(-1, 1)), max_size=12),
                min_size=1, max_size=40), st.booleans(), st.sampled_from([np.uint8, np.uint16, np.int64]),
       st.integers(0, 3))
def test_merge_runs_copy_the_stable_sort_of_sorted_segments(segments, with_tiebreak, stored_as, below):
    """Segments each sorted by (user, time, tie-break), with ties inside and across them
    (equal keys keep segment order, then row order), some empty, times stored above a base
    of each segment's own: the runs, end to end, hold the rows in ``np.lexsort``'s order
    (a user's rows of many segments, interleaved, need more runs than first made room for);
    the users and their ends are the sort's, and the running hash sum is the sum of the
    sorted rows' hashes."""
    rows = [sorted(segment, key=lambda e: e if with_tiebreak else e[:2]) for segment in segments]
    user, ts, tb = (np.array([e[k] for segment in rows for e in segment], np.int64) for k in range(3))
    firsts = np.cumsum([0] + [len(segment) for segment in rows])
    parts = [slice(firsts[g], firsts[g + 1]) for g in range(len(rows))]
    user_ids, ends, times, ties, bases = [], [], [], [], []
    for part in parts:
        ids, counts = np.unique(user[part], return_counts=True)
        user_ids.append(ids)
        ends.append(np.cumsum(counts).astype(np.int64))
        bases.append(int(ts[part].min()) - below if len(ts[part]) else 0)
        times.append((ts[part] - bases[-1]).astype(stored_as))
        ties.append((tb[part] + 1).astype(np.uint8))
    tiebreak = (segment_table(ties), np.full(len(rows), -1, np.int64)) if with_tiebreak else None
    runs, merged_users, merged_ends = merge_runs(user_ids, ends, (segment_table(times), np.array(bases, np.int64)),
                                                 tiebreak)
    seg, lo, hi, dst = runs
    order = [firsts[g] + r for g, a, b in zip(seg.tolist(), lo.tolist(), hi.tolist(), strict=True) for r in range(a, b)]
    assert dst.tolist() == np.cumsum(np.append(0, hi - lo))[:-1].tolist()  # end to end
    assert order == merge_order_reference(user, ts, tb if with_tiebreak else None).tolist()
    ids, counts = np.unique(user, return_counts=True)
    assert merged_users.tolist() == ids.tolist() and merged_ends.tolist() == np.cumsum(counts).tolist()
    hashes = np.random.default_rng(len(user)).integers(0, 2**32, len(user), dtype=np.uint64).astype(np.uint32)
    hcums = [np.cumsum(hashes[part], dtype=np.uint32) for part in parts]
    assert runs_hcum(runs, segment_table(hcums), len(user)).tolist() == np.cumsum(hashes[order],
                                                                                 dtype=np.uint32).tolist()


def test_copy_runs_narrow_output_wraps_like_the_column_type():
    """int8 columns stored as uint8 above base -128 decode back into int8 exactly."""
    values = np.array([-128, -1, 0, 127], np.int8)
    stored = (values.astype(np.int64) + 128).astype(np.uint8)
    out = np.empty(4, np.int8)
    runs = (np.array([0]), np.array([0]), np.array([4]), np.array([0]))
    copy_runs(runs, segment_table([stored]), np.array([-128]), out)
    assert out.tolist() == values.tolist()


def test_locate_fast_path_and_slow_path_agree_on_a_late_arrival():
    # one user, times 1..4; the event at time 3 arrived in version 2 (a hole for version 1)
    ts = np.array([1, 2, 3, 4], np.uint8)
    ver = np.array([1, 1, 2, 1], np.uint8)
    vmax = np.maximum.accumulate(ver)
    vmin = np.minimum.accumulate(ver[::-1])[::-1]
    hcum = np.cumsum(np.array([10, 20, 30, 40], np.uint32))
    vis = Visibility.of_versions(np.array([1, 2, 1, 1]))
    late = late_rows(ver, vmax, vmin, 0, hcum)
    args = (*summaries(np.zeros(4, np.int64), np.full(4, 4, np.int64), ts, 0, vmax, 0, hcum, late),
            ts, 0, ver, vmax, vmin, 0, hcum, late,
            None, 0, np.array([5, 5, 3, 4]), vis, 2, np.full(4, -1))
    count, checksum, lo, hi, holes, _ = locate(*args)
    assert count.tolist() == [3, 4, 2, 2]
    assert checksum.tolist() == [70, 100, 30, 30]
    assert holes.tolist()[:2] == [True, False]
    assert (lo[1], hi[1]) == (2, 4)


def test_locate_of_an_old_pointer_ends_its_window_at_the_visible_prefix():
    # versions arrive in time order; the store has moved on past the pointer's version 1
    ts = np.array([1, 2, 3, 4, 5], np.uint8)
    ver = np.array([1, 1, 1, 2, 3], np.uint8)
    hcum = np.cumsum(np.array([10, 20, 30, 40, 50], np.uint32))
    late = np.zeros((0, 4), np.int64)
    vmax = np.maximum.accumulate(ver)
    args = (*summaries(np.zeros(1, np.int64), np.full(1, 5, np.int64), ts, 0, vmax, 0, hcum, late),
            ts, 0, ver, vmax,
            np.minimum.accumulate(ver[::-1])[::-1], 0, hcum, late, None, 0, np.array([9]),
            Visibility.of_versions(np.array([1])), 2, np.array([3]))
    count, checksum, lo, hi, holes, _ = locate(*args)
    assert (count[0], checksum[0], lo[0], hi[0], holes[0]) == (3, 60, 1, 3, False)  # a plain copy


def sole_ranges_reference(users, request_ts, version, version_hi, ids, first, entries, ver_b) -> list[int]:
    """Each pointer's only range that can hold events it sees (a user of one range: that
    one, seen or not), -1 for none, -2 for several."""
    out = []
    for user, t, v, v_hi in zip(users, request_ts, version, version_hi, strict=True):
        u = ids.index(user) if user in ids else -1
        ranges = list(range(first[u], first[u + 1])) if u >= 0 else []
        seen = [e for e in ranges if entries[e][E_TMIN] < t and max(v, v_hi) >= ver_b[entries[e][E_SEG]]]
        out.append(ranges[0] if len(ranges) == 1 else -1 if not seen else seen[0] if len(seen) == 1 else -2)
    return out


@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), min_size=1, max_size=4,
                         unique_by=lambda r: r[0]), max_size=12),
       st.booleans(), st.lists(st.integers(0, 5), min_size=4, max_size=4), st.data())
@settings(max_examples=300)
def test_sole_ranges_matches_reference(users, sparse, ver_b, data):
    """Users of 1-4 (segment, first time) ranges; ids dense (a direct lookup) or sparse (a
    binary search); pointers of users with and without ranges, at any time and versions."""
    ids = [k * (10**6 if sparse else 1) + 3 for k in range(len(users))]
    ranges = [sorted(r) for r in users]  # a user's ranges in segment order, as the view keeps them
    first = np.cumsum([0] + [len(r) for r in ranges]).astype(np.int64)
    entries = np.zeros((int(first[-1]), ENTRY_WIDTH), np.int64)
    for e, (g, tmin) in enumerate(r for user in ranges for r in user):
        entries[e, E_SEG], entries[e, E_TMIN] = g, tmin
    n = data.draw(st.integers(0, 30))
    pointer_users = data.draw(st.lists(st.sampled_from(ids + [0, 2, 4, 10**9]), min_size=n, max_size=n))
    request_ts, version, version_hi = (data.draw(st.lists(st.integers(0, 11), min_size=n, max_size=n))
                                       for _ in range(3))
    index = UserIndex(np.array(ids, np.int64))
    assert index.hashed == sparse or len(ids) < 2
    out = np.empty(n, np.int64)
    _sole_ranges(np.array(pointer_users, np.int64), np.array(request_ts, np.int64), np.array(version, np.int64),
                 np.array(version_hi, np.int64), index.ids, np.int64(index.low), index.slots, index.hashed, first,
                 entries, np.array(ver_b, np.int64), out)
    assert out.tolist() == sole_ranges_reference(pointer_users, request_ts, version, version_hi, ids, first.tolist(),
                                                 entries.tolist(), ver_b)


ID_PATTERNS = {  # ids as services make them: counters, hashes, and strides that share low or high bits
    "dense": lambda k: k,
    "hashed": lambda k: int.from_bytes(hashlib.sha256(k.to_bytes(8, "little")).digest()[:8], "little", signed=True),
    "stride 2**32": lambda k: k << 32,
    "stride 2**40": lambda k: (k << 40) - (1 << 62),
    "high bits": lambda k: -(2**63) + k * (2**63 // 5000),
}


@given(st.sampled_from(sorted(ID_PATTERNS)), st.integers(0, 3000), st.integers(-3, 3), st.data())
@settings(max_examples=150)
def test_user_index_finds_each_user_as_a_dict_would(pattern, n, shift, data):
    """Each user's position among the sorted ids, or -1, whether the index looks users up
    directly (dense ids) or through its hash table (any other ids), ids at both ends of
    int64 and in patterns that share bits; pointers' users from inside and outside."""
    made = {ID_PATTERNS[pattern](k) + shift for k in range(n)}
    ids = sorted({user for user in made if -(2**63) <= user < 2**63}
                 | set(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5))))
    index = UserIndex(np.array(ids, np.int64))
    position = {user: k for k, user in enumerate(ids)}
    asked = data.draw(st.lists(st.sampled_from(ids) if ids else st.just(0), max_size=200))
    asked += data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50)) + [-(2**63), 2**63 - 1, 0]
    assert index.find(np.array(asked, np.int64)).tolist() == [position.get(user, -1) for user in asked]


@given(st.sampled_from(sorted(ID_PATTERNS)), st.integers(0, 1500), st.data())
@settings(max_examples=150)
def test_repeated_ids_counts_the_ids_seen_before_as_a_set_would(pattern, n, data):
    """A batch's examples whose user already has one in it: ids in the patterns above, at
    both ends of int64, each drawn again any number of times, in any order."""
    made = [ID_PATTERNS[pattern](k) for k in range(n)]
    made = [user for user in made if -(2**63) <= user < 2**63] + [-(2**63), 2**63 - 1, 0]
    ids = data.draw(st.lists(st.sampled_from(made), max_size=600)) + made[:data.draw(st.integers(0, len(made)))]
    ids = data.draw(st.permutations(ids))
    assert repeated_ids(np.array(ids, np.int64)) == len(ids) - len(set(ids))


# ---------------------------------------------------------------- selection (windows)


@st.composite
def select_cases(draw) -> dict:
    """Candidates as ``select`` gets them: each pointer's history (sorted by time, ties
    included) cut into ranges, listed newest first, each range ascending rows of one of
    a few segments (frame-of-reference encoded). A range with holes also holds rows the
    pointer cannot see; one without holds only visible rows (the kernel's contract)."""
    segments = draw(st.integers(1, 3))
    ts_dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int64]))
    with_arrival = draw(st.booleans())
    origin = draw(st.integers(-(10**12), 10**12))
    ts_b = [0 if ts_dtype == np.int64 else origin - draw(st.integers(0, 40)) for _ in range(segments)]
    ver_b = [draw(st.integers(0, 2)) for _ in range(segments)]
    arr_b = [draw(st.integers(-5, 5)) if with_arrival else 0 for _ in range(segments)]
    cols = {name: [[] for _ in range(segments)] for name in ("ts", "ver", "arr")}

    pointers = draw(st.integers(0, 5))
    version = [draw(st.integers(2, 6)) for _ in range(pointers)]
    version_hi = [v + (draw(st.integers(0, 3)) if with_arrival else 0) for v in version]
    limit = [draw(st.integers(0, 12)) if with_arrival else 0 for _ in range(pointers)]
    c_ptr, c_seg, c_lo, c_hi, c_holes = [], [], [], [], []
    for p in range(pointers):
        sizes = draw(st.lists(st.integers(1, 7), max_size=4))
        times = sorted(draw(st.lists(st.integers(0, 14), min_size=sum(sizes), max_size=sum(sizes))))
        chunks, at = [], 0
        for size in sizes:
            chunks.append(times[at:at + size])
            at += size
        for chunk in reversed(chunks):  # newest first
            g = draw(st.integers(0, segments - 1))
            holes = draw(st.booleans())
            lo = len(cols["ts"][g])
            for t in chunk:
                cols["ts"][g].append(origin + t - ts_b[g])
                if holes:  # any version; the pointer may or may not see the row
                    cols["ver"][g].append(draw(st.integers(ver_b[g], ver_b[g] + 9)) - ver_b[g])
                else:  # only rows it sees
                    cols["ver"][g].append(draw(st.integers(ver_b[g], max(ver_b[g], version[p]))) - ver_b[g])
                cols["arr"][g].append(draw(st.integers(0, 14)) if with_arrival else 0)
            c_ptr.append(p)
            c_seg.append(g)
            c_lo.append(lo)
            c_hi.append(len(cols["ts"][g]))
            c_holes.append(holes)
    has_window = draw(st.booleans())
    return {
        "candidates": tuple(np.array(a, dtype) for a, dtype in (
            (c_ptr, np.int64), (c_seg, np.int64), (c_lo, np.int64), (c_hi, np.int64), (c_holes, np.bool_))),
        "lower": np.array([origin + draw(st.integers(-2, 16)) for _ in range(pointers)], np.int64),
        "has_window": has_window,
        "max_len": np.int64(draw(st.sampled_from([1, 2, 3]) | st.integers(1, 30))),
        "ts": ([np.array(c, ts_dtype) for c in cols["ts"]], np.array(ts_b, np.int64)),
        "ver": ([np.array(c, np.uint8) for c in cols["ver"]], np.array(ver_b, np.int64)),
        "arr": ([np.array(c, np.int64) if with_arrival else np.zeros(1, np.int64) for c in cols["arr"]],
                np.array(arr_b, np.int64)),
        "visibility": (np.array(version, np.int64), np.array(version_hi, np.int64), np.array(limit, np.int64)),
        "pointers": pointers,
    }


def select_args(case: dict) -> tuple:
    """The arguments every selection kernel and the reference share."""
    return (*case["candidates"], case["lower"], case["has_window"])


def shared_args(case: dict, tables: bool = False) -> tuple:
    """Each column as its segments' arrays (for the reference) or their table (for the
    kernels; the case keeps the arrays alive)."""
    columns = [(segment_table(arrays) if tables else arrays, bases) for arrays, bases in
               (case["ts"], case["ver"], case["arr"])]
    return (*(part for column in columns for part in column), *case["visibility"])


def reference(case: dict) -> tuple[np.ndarray, list]:
    return select_reference(*select_args(case), case["max_len"], *shared_args(case), case["pointers"])


@given(select_cases())
@settings(max_examples=300)
def test_select_matches_reference(case):
    candidates = case["candidates"]
    size = int((candidates[3] - candidates[2]).sum()) + len(candidates[0])
    r_lengths, r_runs = reference(case)
    lengths = np.full(case["pointers"], 0, np.int64)
    runs = tuple(np.full(size, -1, np.int64) for _ in range(5))
    found, scanned = _select(*select_args(case), case["max_len"], *shared_args(case, tables=True), lengths, *runs)
    assert lengths.tolist() == r_lengths.tolist()
    got = sorted(zip(*(r[:found].tolist() for r in runs), strict=True))
    assert got == r_runs
    assert 0 <= scanned <= size
    # the runs of a pointer tile its output exactly: places 0 .. length - 1, each once
    for p in range(case["pointers"]):
        places = sorted(at + k for q, _, lo, hi, at in got if q == p for k in range(hi - lo))
        assert places == list(range(int(lengths[p])))


def test_prefetch_is_only_a_hint():
    """Prefetching far outside an array (a wrong hint, a damaged length) neither faults
    nor changes a value."""
    @njit
    def touch(values, far):
        total = 0
        for i in range(values.shape[0]):
            prefetch(values, i + far)
            prefetch(values, i - far)
            total += values[i]
        return total

    values = np.arange(100, dtype=np.int64)
    for far in (1, 8, 10**6, 2**40):
        assert touch(values, far) == values.sum()
    assert "@llvm.prefetch" in "".join(touch.inspect_llvm().values())  # a real prefetch, not dropped


@given(st.lists(st.integers(0, 200), unique=True), st.lists(st.tuples(st.integers(0, 210), st.integers(0, 30))),
       st.sampled_from([np.int64, np.uint32]))
@settings(max_examples=200)
def test_remap_ranges_matches_searchsorted(kept, ranges, dtype):
    rows = np.array(sorted(kept), dtype)
    lo = np.array([a for a, _ in ranges], np.int64)
    hi = lo + np.array([n for _, n in ranges], np.int64)
    got_lo, got_hi = remap_ranges(rank_index(rows, 241), lo, hi)
    assert got_lo.tolist() == np.searchsorted(rows, lo).tolist()
    assert got_hi.tolist() == np.searchsorted(rows, hi).tolist()


@given(st.integers(0, 300), st.data())
@settings(max_examples=200)
def test_rank_index_counts_the_rows_before_every_place(n, data):
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1)) if n else st.just(set()))), np.int64)
    places = np.arange(64 * ((n >> 6) + 1))
    got, _ = remap_ranges(rank_index(rows, n), places, places)
    assert got.tolist() == np.searchsorted(rows, places).tolist()


@pytest.mark.parametrize(("rows", "n"), [([3, 2], 10), ([2, 2], 10), ([-1], 10), ([10], 10)])
def test_rank_index_refuses_rows_it_cannot_rank(rows, n):
    with pytest.raises(ValueError, match="distinct, sorted"):
        rank_index(np.array(rows, np.int64), n)


def test_remap_ranges_refuses_places_outside_the_index():
    index = rank_index(np.array([1, 5]), 10)
    for lo, hi in ((-1, 0), (0, 64)):
        with pytest.raises(ValueError, match="must lie in"):
            remap_ranges(index, np.array([lo]), np.array([hi]))


@st.composite
def windows_in_segments(draw):
    segments = [np.array(sorted(draw(st.lists(st.integers(-50, 50), max_size=12))), np.int64)
                for _ in range(draw(st.integers(1, 3)))]
    pointers = draw(st.integers(1, 4))
    windows = []
    for _ in range(draw(st.integers(0, 8))):
        g = draw(st.integers(0, len(segments) - 1))
        lo = draw(st.integers(0, len(segments[g])))
        windows.append((draw(st.integers(0, pointers - 1)), g, lo, draw(st.integers(lo, len(segments[g])))))
    lower = [draw(st.integers(-60, 60)) for _ in range(pointers)]
    return segments, windows, lower


@given(windows_in_segments(), st.sampled_from([np.uint8, np.uint16, np.int64]))
@settings(max_examples=200)
def test_rows_since_matches_reference(case, dtype):
    segments, windows, lower = case
    bases = np.array([(int(s.min()) if len(s) else 0) for s in segments], np.int64)
    stored = [(s - b).astype(dtype) for s, b in zip(segments, bases, strict=True)]  # as segments store times
    w_ptr, w_seg, w_lo, w_hi = (np.array([w[i] for w in windows], np.int64) for i in range(4))
    out = np.zeros(len(lower), np.int64)
    rows_since(w_ptr, w_seg, w_lo, w_hi, segment_table(stored), bases, np.array(lower, np.int64), out)
    assert out.tolist() == rows_since_reference(w_ptr, w_seg, w_lo, w_hi, segments, lower, len(lower))


# ---------------------------------------------------------------- where compiled code is cached

_NOWHERE_TO_CACHE = """
import warnings, tempfile, pyarrow as pa
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import lateseq
print([str(w.message) for w in caught if "nowhere to cache" in str(w.message)])
if {read}:
    store = lateseq.create(tempfile.mkdtemp(), lateseq.Schema({{"item": "int64"}}))
    store = store.commit(pa.table({{"user_id": [1, 1], "ts": [1, 2], "item": [7, 8]}}))
    log = lateseq.log_examples(store, pa.table({{"user_id": [1], "request_ts": [3]}}))
    print(lateseq.materialize(store, log, lateseq.Projection(5, ("item",))).values["item"].tolist())
"""


@pytest.mark.skipif(tuple(map(int, numba.__version__.split(".")[:2])) < (0, 62),
                    reason="NUMBA_CACHE_LOCATOR_CLASSES, which takes numba's places away here, came with numba 0.62")
def test_kernels_are_cached_in_a_private_temporary_folder_where_numba_has_no_place(tmp_path):
    """A read-only install run by a user without a writable home (many containers): numba
    found no place to cache a kernel and raised at the decorator, so ``import lateseq``
    failed (a stranger's). Here numba is given no place the same way, whatever this
    user may write: its only locator is NUMBA_CACHE_DIR's, unset."""
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator", "TMPDIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", _NOWHERE_TO_CACHE.format(read=True)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    warned, values = run.stdout.splitlines()
    folder = tmp_path / f"lateseq-numba-{os.getuid()}"
    assert f"caches it in {folder}" in warned and values == "[7, 8]"
    assert any(folder.rglob("*.nbi")) and folder.stat().st_mode & 0o777 == 0o700
    shutil.rmtree(folder)
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # another user's could be: never taken
    run = subprocess.run([sys.executable, "-c", _NOWHERE_TO_CACHE.format(read=False)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "cannot cache it" in run.stdout and not any(folder.rglob("*"))
    no_temporary = "import tempfile\ndef none():\n    raise FileNotFoundError('No usable temporary directory')\n" \
                   "tempfile.gettempdir = none\n"  # a read-only container: import lateseq raised this
    run = subprocess.run([sys.executable, "-c", no_temporary + _NOWHERE_TO_CACHE.format(read=False)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "cannot cache it (the temporary directory is not this user's alone)" in run.stdout


# ---------------------------------------------------------------- partitions


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50), st.integers(1, 2**40))
def test_partition_of_matches_reference(users, partitions):
    got = partition_of(np.array(users, np.int64), partitions)
    assert got.tolist() == [partition_of_reference(u, partitions) for u in users]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=60))
def test_rows_by_partition_are_each_partitions_rows_in_order(parts):
    parts = np.array(parts, np.int64)
    got = [(p, rows.tolist()) for p, rows in rows_by_partition(parts)]
    assert got == [(p, [i for i, q in enumerate(parts) if q == p]) for p in sorted(set(parts.tolist()))]


def test_partitions_stay_what_they_were():
    """A store's partitions are on disk and in co-partitioned logs: the hash never changes."""
    ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789, 42], np.int64)
    assert partition_of(ids, 2).tolist() == [0, 1, 1, 1, 0, 0, 0]
    assert partition_of(ids, 16).tolist() == [0, 5, 11, 13, 10, 0, 2]
    assert partition_of(ids, 1000).tolist() == [0, 789, 67, 533, 50, 584, 962]


PAIR_VALUES = st.integers(-3, 3) | st.sampled_from([-(2**63), 2**63 - 1, 2**62, -1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PAIR_VALUES, PAIR_VALUES), max_size=60),
       st.lists(st.tuples(PAIR_VALUES, PAIR_VALUES), max_size=60))
def test_pairs_seen_matches_reference(rows, known):
    """Few distinct values, so pairs repeat and the table's probe chains run long; ids at
    the ends of int64 (the hash takes their 64 bits)."""
    def columns(pairs):
        return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))

    repeat, found = pairs_seen(*columns(rows), *columns(known))
    assert (repeat.tolist(), found.tolist()) == pairs_seen_reference(*columns(rows), *columns(known))


def test_pairs_seen_at_scale_matches_reference():
    """Thousands of rows among a million known pairs, a tenth of them redelivered."""
    rng = np.random.default_rng(5)
    known_user, known_ids = rng.integers(0, 500, 1_000_000), rng.integers(0, 10**6, 1_000_000)
    pick = rng.integers(0, 1_000_000, 500)
    user = np.concatenate([rng.integers(0, 500, 4500), known_user[pick]])
    ids = np.concatenate([rng.integers(0, 10**6, 4500), known_ids[pick]])
    order = rng.permutation(len(user))
    user, ids = np.concatenate([user[order], user[:300]]), np.concatenate([ids[order], ids[:300]])
    repeat, found = pairs_seen(user, ids, known_user, known_ids)
    want_repeat, want_found = pairs_seen_reference(user, ids, known_user, known_ids)
    assert repeat.tolist() == want_repeat and found.tolist() == want_found and sum(want_found) >= 500


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12), max_size=20),
       st.sampled_from(["uint8", "uint16", "uint32", "int64"]))
def test_version_bounds_match_reference(users, dtype):
    top = np.iinfo(dtype).max
    version = np.array([v % (top + 1) for rows in users for v in rows], dtype)
    starts = np.cumsum([0] + [len(rows) for rows in users[:-1]]).astype(np.int64)[:len(users)]
    vmax, vmin = version_bounds(version, starts)
    assert vmax.dtype == vmin.dtype == version.dtype
    want = version_bounds_reference(version.tolist(), starts.tolist())
    assert vmax.tolist() == want[0] and vmin.tolist() == want[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40))
def test_user_starts_are_np_unique_of_sorted_users_and_refuse_unsorted(users):
    user = np.sort(np.array(users, np.int64))
    assert np.array_equal(user_starts(user), np.unique(user, return_index=True)[1])
    if len(np.unique(user)) > 1:
        with pytest.raises(ValueError, match="sorted by user"):
            user_starts(user[::-1].copy())


# (stored, output) dtypes the read path pairs: integers stored unsigned under a base and
# decoded to the column type (narrower, equal or wider), floats and bools bit for bit
COPY_PAIRS = [("uint8", "int8"), ("uint8", "int64"), ("uint16", "int32"), ("uint32", "int32"), ("uint32", "int64"),
              ("uint64", "int64"), ("uint64", "int32"), ("uint8", "uint8"), ("bool", "uint8"), ("float32", "float32"),
              ("float64", "float64")]


@given(st.sampled_from(COPY_PAIRS), st.booleans(), st.integers(1, 3), st.data())
@settings(max_examples=300)
def test_copy_runs_matches_a_plain_copy_on_runs_of_every_length(pair, masked, segments, data):
    """Runs from empty to past two vectors (the masked moves' limit: 8-64 items by width)
    and beyond, in several segments, into disjoint places of one output: every item
    decoded as the column type says (wrapping), floats bit for bit, nothing else written.
    Both copies run on any CPU (masked moves are emulated where not native)."""
    stored_dtype, out_dtype = np.dtype(pair[0]), np.dtype(pair[1])
    sizes = data.draw(st.lists(st.integers(0, 300), min_size=segments, max_size=segments))
    bits = np.dtype(f"u{stored_dtype.itemsize}")
    stored = [np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool) if stored_dtype.kind == "b"
              else np.frombuffer(data.draw(st.binary(min_size=n * stored_dtype.itemsize,
                                                     max_size=n * stored_dtype.itemsize)), bits).view(stored_dtype)
              for n in sizes]
    info = np.iinfo(out_dtype) if out_dtype.kind in "iu" else None
    bases = np.array([data.draw(st.integers(int(info.min), int(info.max))) if info else 0 for _ in sizes])
    runs, at = [], 0
    for _ in range(data.draw(st.integers(0, 12))):
        g = data.draw(st.integers(0, segments - 1))
        lo = data.draw(st.integers(0, sizes[g]))
        hi = data.draw(st.integers(lo, sizes[g]))
        at += data.draw(st.integers(0, 3))  # gaps the copy must leave alone
        runs.append((g, lo, hi, at))
        at += hi - lo
    out_bits = np.dtype(f"u{out_dtype.itemsize}")
    out = np.frombuffer(b"\xa5" * ((at + 5) * out_dtype.itemsize), out_dtype).copy()
    expected = out.view(out_bits).copy()
    for g, lo, hi, d in runs:
        for i in range(hi - lo):
            raw = stored[g][lo + i]
            decoded = int(np.array(raw).view(bits)) + (int(bases[g]) if info else 0)
            expected[d + i] = decoded % (1 << (8 * out_dtype.itemsize))
    fields = tuple(np.array([r[k] for r in runs], np.int64) for k in range(4))
    copy_runs(fields, segment_table(stored), bases.astype(out_dtype), out, masked=masked)
    assert out.view(out_bits).tolist() == expected.tolist()


@pytest.mark.parametrize("run", [(0, 2, 6, 0), (0, 0, 3, 2), (0, 0, 2, 2**63 - 2), (0, 2**63 - 3, 2**63 - 1, 0),
                                 (0, 0, 5, 9), (0, -2, 3, 0), (0, 0, 3, -2), (0, 3, -2**63, 0),
                                 (0, 2**62 + 1, -2**62, 0)])
@pytest.mark.parametrize("masked", [False, True])
def test_a_copy_run_past_its_column_or_output_never_writes_outside_the_output(run, masked):
    """Runs come from the kernels that locate windows, never from a user; still, one past
    the output wrote past it (its slice was cut short, the loop ran the run's length: s43A
    reached such a write through the copy's internals), and one whose end lies far below
    its start read past the column (its length wrapped: s44A)."""
    backing = np.full(16, 7777, np.uint32)  # what lies past the column
    stored = backing[:5]
    stored[:] = np.arange(5)
    whole = np.full(12, -1, np.int64)
    out = whole[4:8]
    copy_runs(tuple(np.array([v]) for v in run), segment_table([stored]), np.array([10]), out, masked=masked)
    assert whole[:4].tolist() == [-1] * 4 and whole[8:].tolist() == [-1] * 4
    assert set(out.tolist()) <= {-1, 10, 11, 12, 13, 14}


@pytest.mark.parametrize("masked", [False, True])
def test_copy_runs_refuses_what_it_cannot_copy_exactly(masked):
    """A strided output (the masked moves address items by position: they wrote the
    neighbouring columns of a 2-D array, and past a reversed view: s44A), a run naming a
    segment the column lacks (read through a wild address), floats into another dtype
    (copied bit for bit by one path, converted by the other)."""
    stored = np.arange(1, 4, dtype=np.uint64)
    runs = tuple(np.array([v]) for v in (0, 0, 3, 0))
    table = np.zeros((4, 3), np.int64)
    for out in (table[:, 0], np.zeros(8, np.int64)[::-2]):
        with pytest.raises(ValueError, match="C-contiguous"):
            copy_runs(runs, segment_table([stored]), np.array([100]), out, masked=masked)
    assert not table.any()
    for g in (1, -1):
        with pytest.raises(ValueError, match=f"names segment {g} of a column of 1 segments"):
            copy_runs((np.array([g]), *runs[1:]), segment_table([stored]), np.array([100]), np.zeros(3, np.int64),
                      masked=masked)
    for stored_dtype, out_dtype in (("float32", "float64"), ("float64", "int64"), ("uint8", "float64")):
        with pytest.raises(TypeError, match="floats bit for bit"):
            copy_runs(runs, segment_table([stored.astype(stored_dtype)]), np.array([0]), np.zeros(3, out_dtype),
                      masked=masked)


def test_a_process_forked_while_another_thread_compiles_compiles_in_the_child():
    """numba compiles under one process-wide lock: forked while another thread held it (a
    DataLoader forking its workers while a prefetch thread compiled a kernel), the child's
    first compile hung (s53C). The fork waits for the compile; the child's lock is free."""
    import threading
    import time

    from forking import answer_of_forked_child
    from numba.core.compiler_lock import global_compiler_lock

    held, forked = threading.Event(), []

    def compiling() -> None:  # holds the lock as a compile would, a moment past the fork's start
        with global_compiler_lock:
            held.set()
            time.sleep(1.0)
            forked.append(len(forked))

    thread = threading.Thread(target=compiling)
    thread.start()
    assert held.wait(30)
    try:
        answer = answer_of_forked_child(lambda: bytes([njit(lambda x: x + 1)(6)]))  # a new function: compiled there
    finally:
        thread.join()
    assert answer == bytes([7])
    assert forked == [0]  # the compile ended before the fork (it waited)
