"""Hot kernels, each beside a plain reference version that the tests compare against.

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

import numpy as np
from numba import njit

_MASK64 = (1 << 64) - 1


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


def event_hashes(user: np.ndarray, ts: np.ndarray, payload: list[np.ndarray]) -> np.ndarray:
    """A 32-bit content hash per event: user, time and payload, in schema order.

    Content only (never the version or position), so the same event hashes the same
    before and after compaction, in the online tail and in the store.
    """
    with np.errstate(over="ignore"):
        h = _mix64(value_bits(user) + np.uint64(0x9E3779B97F4A7C15))
        for column in (ts, *payload):
            h = _mix64(h ^ value_bits(column))
    return ((h >> np.uint64(32)) ^ h).astype(np.uint32)


def event_hash_reference(user: int, ts: int, payload: list[int | float | bool]) -> int:
    """One event's hash in plain Python integers, for the tests."""

    def mix(x: int) -> int:
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)

    def bits(v: int | float | bool) -> int:
        if isinstance(v, float):
            return int(np.array(v, dtype=np.float64).view(np.uint64))
        return int(v) & _MASK64

    h = mix((bits(user) + 0x9E3779B97F4A7C15) & _MASK64)
    for v in (ts, *payload):
        h = mix(h ^ bits(v))
    return ((h >> 32) ^ h) & 0xFFFFFFFF


# ---------------------------------------------------------------- locate


@njit(cache=True, nogil=True)
def _locate(
    user_lo, user_hi, ts, ts_base, ver, vmax, ver_base, hcum, request_ts, version, max_len,
    count, checksum, lo, hi, holes,
):  # pragma: no cover - compiled; the reference below is what coverage and tests read
    for p in range(user_lo.shape[0]):
        start = user_lo[p]
        end = user_hi[p]
        limit = version[p] - ver_base
        count[p] = 0
        checksum[p] = 0
        lo[p] = start
        hi[p] = start
        holes[p] = False
        if start == end or limit < 0:
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
        if np.int64(vmax[cut - 1]) <= limit:
            n = cut - start
            count[p] = n
            before = hcum[start - 1] if start > 0 else np.uint32(0)
            checksum[p] = hcum[cut - 1] - before
            take = min(n, max_len)
            lo[p] = cut - take
            hi[p] = cut
            continue
        # slow path: late events from newer versions sit among the visible ones
        n = 0
        s = np.uint32(0)
        window_lo = cut
        for i in range(cut - 1, start - 1, -1):
            if np.int64(ver[i]) <= limit:
                h = hcum[i] - (hcum[i - 1] if i > 0 else np.uint32(0))
                s += h
                if n < max_len:
                    window_lo = i
                n += 1
            elif n < max_len:
                holes[p] = True
        count[p] = n
        checksum[p] = s
        lo[p] = window_lo
        hi[p] = cut if n > 0 else window_lo


def locate(
    user_lo: np.ndarray,
    user_hi: np.ndarray,
    ts: np.ndarray,
    ts_base: int,
    ver: np.ndarray,
    vmax: np.ndarray,
    ver_base: int,
    hcum: np.ndarray,
    request_ts: np.ndarray,
    version: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (count, checksum, lo, hi, holes), one entry per pointer."""
    n = user_lo.shape[0]
    count = np.empty(n, np.int64)
    checksum = np.empty(n, np.uint32)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    holes = np.empty(n, np.bool_)
    _locate(
        user_lo, user_hi, ts, np.int64(ts_base), ver, vmax, np.int64(ver_base), hcum,
        request_ts, version, np.int64(max_len), count, checksum, lo, hi, holes,
    )
    return count, checksum, lo, hi, holes


def locate_reference(user_lo, user_hi, ts, ts_base, ver, vmax, ver_base, hcum, request_ts,
                     version, max_len):
    """The same contract as ``locate``, written for clarity, one pointer at a time."""
    del vmax  # the reference needs no shortcut
    hashes = np.diff(hcum.astype(np.int64), prepend=0).astype(np.uint32)
    out = [[], [], [], [], []]
    for p in range(len(user_lo)):
        rows = [
            i for i in range(user_lo[p], user_hi[p])
            if ts_base + int(ts[i]) < request_ts[p] and ver_base + int(ver[i]) <= version[p]
        ]
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


# ---------------------------------------------------------------- copy


@njit(cache=True, nogil=True)
def _copy_windows(src, base, ver, ver_base, version, lo, hi, holes, dst, out):  # pragma: no cover
    for p in range(lo.shape[0]):
        d = dst[p]
        if not holes[p]:
            for i in range(lo[p], hi[p]):
                out[d] = base + src[i]
                d += 1
        else:
            limit = version[p] - ver_base
            for i in range(lo[p], hi[p]):
                if np.int64(ver[i]) <= limit:
                    out[d] = base + src[i]
                    d += 1


def copy_windows(src, base, ver, ver_base, version, lo, hi, holes, dst, out) -> None:
    """Copies each pointer's visible window of ``src`` (decoded) to ``out[dst[p]:]``."""
    _copy_windows(src, out.dtype.type(base), ver, np.int64(ver_base), version, lo, hi, holes,
                  dst, out)


def copy_windows_reference(src, base, ver, ver_base, version, lo, hi, holes, dst, out) -> None:
    for p in range(len(lo)):
        rows = [i for i in range(lo[p], hi[p])
                if not holes[p] or ver_base + int(ver[i]) <= version[p]]
        out[dst[p]:dst[p] + len(rows)] = np.asarray(src[rows]).astype(out.dtype) + out.dtype.type(base)
