"""Hot kernels. Each has a plain reference version in ``tests/naive.py`` that the tests
compare it against.

Kernels take validated numpy arrays only and do no I/O; the materializer prepares the
arrays and wraps the results. Integer columns arrive frame-of-reference encoded
(``base + stored``), so every kernel decodes with ``base + int64(stored[i])``.

Per segment and pointer, ``locate`` finds the user's events visible to the pointer
(event time strictly before the request, committed in a version <= the pointer's) and
returns their count, their checksum, and the window ``[lo, hi)`` holding the newest
``max_len`` of them. ``holes`` marks windows that also hold invisible events (late
arrivals from newer versions), which ``copy_windows`` then skips one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

# ---------------------------------------------------------------- event hashing


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser; uint64 arithmetic wraps, as intended."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def value_bits(values: np.ndarray) -> np.ndarray:
    """The 64 bits that identify each value: integers by value, floats by IEEE bits."""
    if values.dtype.kind == "f":
        return values.astype(np.float64).view(np.uint64)
    return values.astype(np.int64).view(np.uint64)


@njit(cache=True, nogil=True)
def _hash_rows(bits):  # pragma: no cover - compiled; event_hash_reference is its reference
    out = np.empty(bits.shape[1], np.uint32)
    for i in range(bits.shape[1]):
        h = bits[0, i] + np.uint64(0x9E3779B97F4A7C15)
        for c in range(bits.shape[0]):
            if c > 0:
                h ^= bits[c, i]
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
        out[i] = np.uint32((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF)))
    return out


def event_hashes(user: np.ndarray, ts: np.ndarray, payload: list[np.ndarray]) -> np.ndarray:
    """A 32-bit content hash per event: user, time and payload, in schema order.

    Content only (never the version or position), so the same event hashes the same
    before and after compaction, in the online tail and in the store.
    """
    bits = np.empty((2 + len(payload), len(user)), np.uint64)
    for row, column in enumerate((user, ts, *payload)):
        bits[row] = value_bits(np.asarray(column))
    return _hash_rows(bits)


# ---------------------------------------------------------------- locate


@njit(cache=True, nogil=True, inline="always")
def _visible(i, ver, ver_base, arrival, arrival_base, version, version_hi, arrival_limit):  # pragma: no cover
    v = ver_base + np.int64(ver[i])
    return v <= version or (v <= version_hi and arrival_base + np.int64(arrival[i]) < arrival_limit)


@njit(cache=True, nogil=True)
def _locate(
    user_lo, user_hi, ts, ts_base, ver, vmax, vmin, ver_base, hcum, arrival, arrival_base,
    request_ts, version, version_hi, arrival_limit, max_len, count, checksum, lo, hi, holes,
):  # pragma: no cover - compiled; tests/naive.py holds its reference
    for p in range(user_lo.shape[0]):
        start = user_lo[p]
        end = user_hi[p]
        count[p] = 0
        checksum[p] = 0
        lo[p] = start
        hi[p] = start
        holes[p] = False
        if start == end or max(version[p], version_hi[p]) < ver_base:
            continue
        # first event at or after the request time
        a = start
        b = end
        t = request_ts[p]
        while a < b:
            mid = (a + b) >> 1
            if ts_base + np.int64(ts[mid]) < t:
                a = mid + 1
            else:
                b = mid
        cut = a
        if cut == start:
            continue
        if ver_base + np.int64(vmax[cut - 1]) <= version[p]:
            n = cut - start
            count[p] = n
            before = hcum[start - 1] if start > 0 else np.uint32(0)
            checksum[p] = hcum[cut - 1] - before
            take = min(n, max_len)
            lo[p] = cut - take
            hi[p] = cut
            continue
        # slow path: events invisible to this pointer sit among the visible ones. _vmax
        # never decreases within a user, so every row before the first _vmax > version
        # is visible: count and checksum that prefix in one step. _vmin (the smallest
        # version from a row to the user's end) says whether any later row can be
        # visible at all; only then are the rows up to the cut scanned one by one.
        a = start
        b = cut
        while a < b:
            mid = (a + b) >> 1
            if ver_base + np.int64(vmax[mid]) <= version[p]:
                a = mid + 1
            else:
                b = mid
        prefix_end = a
        n = 0
        s = np.uint32(0)
        newest = -1  # the newest visible row after the prefix
        window_lo = prefix_end
        if ver_base + np.int64(vmin[prefix_end]) <= max(version[p], version_hi[p]):
            for i in range(cut - 1, prefix_end - 1, -1):
                if _visible(i, ver, ver_base, arrival, arrival_base, version[p], version_hi[p],
                            arrival_limit[p]):
                    s += hcum[i] - (hcum[i - 1] if i > 0 else np.uint32(0))
                    if newest < 0:
                        newest = i
                    if n < max_len:
                        window_lo = i
                    n += 1
                elif n < max_len and newest >= 0:
                    holes[p] = True
        if prefix_end > start:
            before = hcum[start - 1] if start > 0 else np.uint32(0)
            s += hcum[prefix_end - 1] - before
            if n < max_len:
                window_lo = max(start, prefix_end - (max_len - n))
            n += prefix_end - start
        count[p] = n
        checksum[p] = s
        if min(n, max_len) > 0:
            lo[p] = window_lo
            hi[p] = newest + 1 if newest >= 0 else prefix_end


@dataclass(frozen=True)
class Visibility:
    """Which events each pointer sees, besides event time strictly before its request.

    An event is visible when its version is <= ``version``, or when its version is <=
    ``version_hi`` and it arrived strictly before ``arrival_limit`` (the second clause
    rebuilds an online tail from the versions that later absorbed it). Plain pointers
    have ``version_hi == version``, which makes arrival irrelevant.
    """

    version: np.ndarray
    version_hi: np.ndarray
    arrival_limit: np.ndarray

    @classmethod
    def of_versions(cls, version: np.ndarray) -> Visibility:
        version = np.asarray(version, np.int64)
        return cls(version, version, np.zeros(len(version), np.int64))

    def take(self, rows: np.ndarray) -> Visibility:
        return Visibility(self.version[rows], self.version_hi[rows], self.arrival_limit[rows])


_NO_ARRIVAL = np.zeros(1, np.int64)


def locate(
    user_lo: np.ndarray,
    user_hi: np.ndarray,
    ts: np.ndarray,
    ts_base: int,
    ver: np.ndarray,
    vmax: np.ndarray,
    vmin: np.ndarray,
    ver_base: int,
    hcum: np.ndarray,
    arrival: np.ndarray | None,
    arrival_base: int,
    request_ts: np.ndarray,
    visibility: Visibility,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (count, checksum, lo, hi, holes), one entry per pointer."""
    if arrival is None and np.any(visibility.version_hi != visibility.version):
        raise ValueError("arrival bounds need an arrival column")
    n = user_lo.shape[0]
    count = np.empty(n, np.int64)
    checksum = np.empty(n, np.uint32)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    holes = np.empty(n, np.bool_)
    _locate(
        user_lo, user_hi, ts, np.int64(ts_base), ver, vmax, vmin, np.int64(ver_base), hcum,
        _NO_ARRIVAL if arrival is None else arrival, np.int64(arrival_base), request_ts,
        visibility.version, visibility.version_hi, visibility.arrival_limit, np.int64(max_len),
        count, checksum, lo, hi, holes,
    )
    return count, checksum, lo, hi, holes


# ---------------------------------------------------------------- copy


@njit(cache=True, nogil=True)
def _copy_windows(src, base, ver, ver_base, arrival, arrival_base, version, version_hi,
                  arrival_limit, lo, hi, holes, dst, out, add_base):  # pragma: no cover
    for p in range(lo.shape[0]):
        d = dst[p]
        if not holes[p]:
            # slices with a plain counter: the form LLVM vectorizes (2.3x over a running index)
            window = src[lo[p]:hi[p]]
            target = out[d:d + window.shape[0]]
            if add_base:
                for k in range(window.shape[0]):
                    target[k] = base + window[k]
            else:
                for k in range(window.shape[0]):
                    target[k] = window[k]
        else:
            for i in range(lo[p], hi[p]):
                if _visible(i, ver, ver_base, arrival, arrival_base, version[p], version_hi[p],
                            arrival_limit[p]):
                    out[d] = base + src[i] if add_base else src[i]
                    d += 1


def copy_windows(src, base, ver, ver_base, arrival, arrival_base, visibility, lo, hi, holes,
                 dst, out) -> None:
    """Copies each pointer's visible window of ``src`` (decoded) to ``out[dst[p]:]``.

    Floats are never encoded and are copied bit for bit: adding a zero base would turn
    -0.0 into 0.0 and quieten signalling NaNs.
    """
    _copy_windows(src, out.dtype.type(base), ver, np.int64(ver_base),
                  _NO_ARRIVAL if arrival is None else arrival, np.int64(arrival_base),
                  visibility.version, visibility.version_hi, visibility.arrival_limit,
                  lo, hi, holes, dst, out, out.dtype.kind != "f")


# ---------------------------------------------------------------- merge with a tail


@njit(cache=True, nogil=True)
def _merge_newest(head_offsets, head_ts, head_tb, tail_offsets, tail_ts, tail_tb, max_len,
                  out_offsets, out):  # pragma: no cover
    tail_base = head_ts.shape[0]
    for g in range(head_offsets.shape[0] - 1):
        i = head_offsets[g + 1] - 1
        j = tail_offsets[g + 1] - 1
        pos = out_offsets[g + 1] - 1
        while pos >= out_offsets[g]:
            take_tail = j >= tail_offsets[g] and (
                i < head_offsets[g] or tail_ts[j] > head_ts[i]
                or (tail_ts[j] == head_ts[i] and tail_tb[j] >= head_tb[i]))
            if take_tail:
                out[pos] = tail_base + j
                j -= 1
            else:
                out[pos] = i
                i -= 1
            pos -= 1


def merge_newest(head_offsets: np.ndarray, head_ts: np.ndarray, head_tb: np.ndarray,
                 tail_offsets: np.ndarray, tail_ts: np.ndarray, tail_tb: np.ndarray,
                 max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges two sorted jagged runs per row (head from the store, tail from online)
    by (time, tie-break), the tail after the head on equal keys, keeping the newest
    ``max_len``. Returns (offsets, indices into head ++ tail)."""
    lengths = np.minimum(np.diff(head_offsets) + np.diff(tail_offsets), max_len)
    out_offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), np.int64)
    _merge_newest(head_offsets, head_ts, head_tb, tail_offsets, tail_ts, tail_tb, np.int64(max_len),
                  out_offsets, out)
    return out_offsets, out
