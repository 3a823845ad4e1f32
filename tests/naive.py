"""Plain, readable reference versions of lateseq's compiled kernels, one pointer or
event at a time. The tests compare every kernel in ``lateseq._kernels`` against these
(stumpy keeps its naive references in its tests the same way)."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser on 64-bit integers."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def partition_of_reference(user: int, partitions: int) -> int:
    """A user's partition: its id's 64 bits mixed, modulo the partitions."""
    return _mix(user & _MASK64) % partitions


def event_hash_reference(user: int, ts: int, payload: list[int | float | bool]) -> int:
    """One event's hash in plain Python integers, for the tests."""
    mix = _mix

    def bits(v: int | float | bool) -> int:
        if isinstance(v, float):
            return int(np.array(v, dtype=np.float64).view(np.uint64))
        return int(v) & _MASK64

    h = mix((bits(user) + 0x9E3779B97F4A7C15) & _MASK64)
    for v in (ts, *payload):
        h = mix(h ^ bits(v))
    return ((h >> 32) ^ h) & 0xFFFFFFFF


def locate_reference(user_lo, user_hi, ts, ts_base, ver, vmax, vmin, ver_base, hcum, late, arrival,
                     arrival_base, request_ts, visibility, max_len):
    """The same contract as ``locate``, written for clarity, one pointer at a time."""
    del vmax, vmin, late  # the reference needs no shortcut
    hashes = np.diff(hcum.astype(np.int64), prepend=0).astype(np.uint32)

    def visible(i: int, p: int) -> bool:
        v = ver_base + int(ver[i])
        late_ok = (v <= visibility.version_hi[p] and arrival is not None
                   and arrival_base + int(arrival[i]) < visibility.arrival_limit[p])
        return v <= visibility.version[p] or late_ok

    out = [[], [], [], [], []]
    for p in range(len(user_lo)):
        rows = [i for i in range(user_lo[p], user_hi[p])
                if ts_base + int(ts[i]) < request_ts[p] and visible(i, p)]
        window = rows[len(rows) - min(len(rows), max_len):]
        lo = window[0] if window else user_lo[p]
        hi = window[-1] + 1 if window else lo
        out[0].append(len(rows))
        out[1].append(int(hashes[rows].astype(np.uint64).sum()) & 0xFFFFFFFF)
        out[2].append(lo)
        out[3].append(hi)
        out[4].append(hi - lo != len(window))
    return (np.array(out[0], np.int64), np.array(out[1], np.uint32), np.array(out[2], np.int64),
            np.array(out[3], np.int64), np.array(out[4], np.bool_))


def copy_windows_reference(src, base, ver, ver_base, late, arrival, arrival_base, visibility, lo, hi,
                           holes, dst, out) -> None:
    del late  # every row of a window with holes is checked
    for p in range(len(lo)):
        rows = []
        for i in range(lo[p], hi[p]):
            v = ver_base + int(ver[i])
            late_ok = (arrival is not None and v <= visibility.version_hi[p]
                       and arrival_base + int(arrival[i]) < visibility.arrival_limit[p])
            if not holes[p] or v <= visibility.version[p] or late_ok:
                rows.append(i)
        values = np.asarray(src[rows]).astype(out.dtype)
        out[dst[p]:dst[p] + len(rows)] = values if out.dtype.kind == "f" else values + out.dtype.type(base)


def merge_newest_reference(head_offsets, head_ts, head_tb, tail_offsets, tail_ts, tail_tb, max_len):
    rows = len(head_offsets) - 1
    out, lengths = [], []
    for g in range(rows):
        items = [(head_ts[i], head_tb[i], 0, i) for i in range(head_offsets[g], head_offsets[g + 1])]
        items += [(tail_ts[j], tail_tb[j], 1, len(head_ts) + j)
                  for j in range(tail_offsets[g], tail_offsets[g + 1])]
        chosen = [index for *_, index in sorted(items)][-max_len:] if max_len else []
        out += chosen
        lengths.append(len(chosen))
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.array(out, np.int64)


def select_reference(c_ptr, c_seg, c_lo, c_hi, c_holes, lower, has_window, max_len,
                     ts_l, ts_b, ver_l, ver_b, arr_l, arr_b, version, version_hi, arrival_limit, pointers):
    """The contract of ``_kernels._select``, one row at a time: for each of ``pointers``,
    its candidate rows (newest first: candidates in the given order, each read from its
    last row down) that are visible (checked only in candidates with holes) and at or
    after ``lower[p]`` (with ``has_window``); the first ``max_len`` of them.

    Returns (lengths, runs): runs as sorted (pointer, segment, lo, hi, place) tuples, a run
    being a maximal stretch of consecutive chosen rows of one candidate and ``place`` the
    position of its first (oldest) row in the pointer's output, oldest first."""
    lengths = np.zeros(pointers, np.int64)
    runs = []

    def keeps(c: int, i: int, p: int) -> bool:
        g = int(c_seg[c])
        if c_holes[c]:
            v = int(ver_b[g]) + int(ver_l[g][i])
            seen = v <= version[p] or (v <= version_hi[p] and int(arr_b[g]) + int(arr_l[g][i]) < arrival_limit[p])
            if not seen:
                return False
        return not (has_window and int(ts_b[g]) + int(ts_l[g][i]) < lower[p])

    for p in range(pointers):
        newest_first = [(c, i) for c in range(len(c_ptr)) if c_ptr[c] == p
                        for i in range(int(c_hi[c]) - 1, int(c_lo[c]) - 1, -1) if keeps(c, i, p)]
        chosen = newest_first[:max_len]
        lengths[p] = len(chosen)
        # place of the k-th newest chosen row: len(chosen) - 1 - k
        k = 0
        while k < len(chosen):
            c, top = chosen[k]
            end = k
            while end + 1 < len(chosen) and chosen[end + 1] == (c, chosen[end][1] - 1):
                end += 1
            low = chosen[end][1]
            runs.append((p, int(c_seg[c]), low, top + 1, len(chosen) - 1 - end))
            k = end + 1
    return lengths, sorted(runs)


def merge_order_reference(user, ts, tiebreak):
    """``merge_runs``' order: the rows of segments laid end to end sorted by (user, time,
    tie-break), ties in row order."""
    keys = [ts, user] if tiebreak is None else [tiebreak, ts, user]
    return np.lexsort(keys)


def pairs_seen_reference(user, ids, known_user, known_ids):
    """``pairs_seen``: per row, whether an earlier row has its (user, id) pair, and whether
    the known pairs hold it."""
    known = set(zip(known_user.tolist(), known_ids.tolist(), strict=True))
    seen: set[tuple[int, int]] = set()
    repeat, found = [], []
    for pair in zip(user.tolist(), ids.tolist(), strict=True):
        repeat.append(pair in seen)
        found.append(pair in known)
        seen.add(pair)
    return repeat, found


def version_bounds_reference(version, starts):
    """``version_bounds``: per user, the running max of the version, and the running min
    taken from the user's last row backwards."""
    vmax, vmin = list(version), list(version)
    bounds = [*map(int, starts), len(version)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        for i in range(a + 1, b):
            vmax[i] = max(vmax[i - 1], version[i])
        for i in range(b - 2, a - 1, -1):
            vmin[i] = min(vmin[i + 1], version[i])
    return vmax, vmin


def rows_since_reference(w_ptr, w_seg, w_lo, w_hi, ts_by_segment, lower, pointers):
    """Per pointer, its windows' rows [lo, hi) whose time is at least the pointer's lower bound."""
    out = [0] * pointers
    for p, g, lo, hi in zip(w_ptr, w_seg, w_lo, w_hi, strict=True):
        out[p] += sum(1 for t in ts_by_segment[g][lo:hi] if t >= lower[p])
    return out
