"""Hot kernels. Each has a plain reference version in ``tests/naive.py`` that the tests
compare it against.

Kernels take validated numpy arrays only and do no I/O; the materializer prepares the
arrays and wraps the results. Integer columns arrive frame-of-reference encoded
(``base + stored``), so every kernel decodes with ``base + int64(stored[i])``.

Per segment and pointer, ``locate`` finds the user's events visible to the pointer
(event time strictly before the request, committed in a version <= the pointer's) and
returns their count, their checksum, and the window ``[lo, hi)`` holding the newest
``max_len`` of them. ``holes`` marks windows that also hold invisible events (late
arrivals from newer versions), which the copy skips: for a pointer that sees one
version, only a segment's late rows (``late_rows``) can be invisible below the first
row of a newer version, so those are the rows visited, not every row.

A batch is copied in two steps: ``_window_runs`` cuts every window into runs of visible
rows once, then ``copy_runs`` copies the runs of each column. Visibility is settled once
for all columns, and the copy kernel is compiled per (stored, output) dtype pair only.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import carray, config, njit, types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._compat import cached_property

# ---------------------------------------------------------------- compiled, and cached on disk

# numba compiles under one process-wide lock. A process forked while another thread
# compiled (a DataLoader forking its workers while an in-process loader's prefetch thread
# compiled a kernel for a new column type) got the lock held by no thread of its own, and
# its first compile hung (s53C). A fork waits for the compile under way; the child starts
# with the lock free.
os.register_at_fork(before=global_compiler_lock.acquire, after_in_parent=global_compiler_lock.release,
                    after_in_child=global_compiler_lock.release)


def _cached(**options: object) -> Callable:
    """``njit(cache=True, **options)``: machine code kept on disk where numba finds a
    writable place (``NUMBA_CACHE_DIR``, beside this file, ``~/.cache/numba``). Where it
    finds none (a read-only install run by a user without a writable home, as in many
    containers), numba refused the decorator, and ``import lateseq`` failed: the code is
    then cached in a folder of this user's in the system's temporary directory, or not
    at all (every process compiles again), with a warning."""
    def decorate(function: Callable) -> Callable:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
            if "no locator available" not in str(exc):
                raise
        folder = _private_cache()
        if folder is not None:
            previous, config.CACHE_DIR = config.CACHE_DIR, folder  # read as the decorator finds a place
            try:
                return njit(cache=True, **options)(function)
            except RuntimeError:
                pass
            finally:
                config.CACHE_DIR = previous
        return njit(**options)(function)
    return decorate


@functools.cache
def _private_cache() -> str | None:
    """A folder of the system's temporary directory that only this user can write (cached
    code is run as it is read: another user's folder must not be taken), or None."""
    folder = "the temporary directory"
    try:
        folder = os.path.join(tempfile.gettempdir(), f"lateseq-numba-{os.getuid()}")  # (raises where there is none)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
    except OSError:
        private = False
    where = f"caches it in {folder}" if private else f"cannot cache it ({folder} is not this user's alone)"
    warnings.warn(f"numba has nowhere to cache lateseq's compiled kernels ({os.path.dirname(__file__)} and "
                  f"~/.cache/numba are not writable): lateseq {where}; set NUMBA_CACHE_DIR to a writable folder "
                  "(kept across runs, or each process compiles its kernels again, seconds per process)",
                  RuntimeWarning, stacklevel=2)
    return folder if private else None


kernel = _cached(nogil=True)
inline_kernel = _cached(nogil=True, inline="always")

# ---------------------------------------------------------------- prefetch

# Windows and pointers sit at random places in a segment, so each read of one starts with
# a cache miss; the kernels ask for the lines of the one AHEAD places on while they work
# on this one (copies 1.5x, locate 1.9x faster on 4M events, 100k random pointers).
AHEAD = 8


def _item_bits(array: types.Array) -> int:
    """Bits an item of ``array`` takes in memory (numba's booleans have no bitwidth: a byte)."""
    return 8 if isinstance(array.dtype, types.Boolean) else array.dtype.bitwidth


def _item_address(context, builder, array_type: types.Array, array, index) -> ir.Value:
    """The address (an i8 pointer) of item ``index`` of a contiguous ``array``, unchecked."""
    data = context.make_array(array_type)(context, builder, array).data
    offset = builder.mul(index, context.get_constant(types.intp, _item_bits(array_type) // 8))
    return builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [offset])


@intrinsic
def prefetch(typingctx, array, index):
    """Asks the CPU to bring ``array[index]``'s cache line in, without waiting for it
    (a hint: no fault, no bounds check is needed)."""
    def codegen(context, builder, signature, args):
        address = _item_address(context, builder, signature.args[0], args[0], args[1])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
            "llvm.prefetch")  # unmangled: LLVM names it for its pointer type (typed or opaque) itself
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


@intrinsic
def _pointer(typingctx, address):
    """An int64 address as a void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


# ---------------------------------------------------------------- segment tables

# A column of a partition's segments goes to the kernels as a table: each segment's
# address and length, and an empty array of the column's dtype (and row width). Segment g's
# array is made from it in a nanosecond; an item of a numba typed list cost ~25 ns (its
# reference count is changed atomically, twice), paid at every segment a kernel visits.


def segment_table(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The table of ``arrays`` (C-contiguous, of one dtype and row width), which must
    outlive it: it holds their addresses, not them."""
    like = np.empty((0, *arrays[0].shape[1:]), arrays[0].dtype)
    if any(not a.flags.c_contiguous or a.dtype != like.dtype or a.shape[1:] != like.shape[1:] for a in arrays):
        raise ValueError("a segment table's arrays must be C-contiguous, of one dtype and row width")
    return (np.array([a.ctypes.data for a in arrays], np.int64), np.array([len(a) for a in arrays], np.int64), like)


@inline_kernel
def segment(table, g):  # pragma: no cover - compiled
    """Segment ``g``'s array of a 1-D column table."""
    addresses, lengths, like = table
    return carray(_pointer(addresses[g]), lengths[g], like.dtype)


@inline_kernel
def segment_rows(table, g):  # pragma: no cover - compiled
    """Segment ``g``'s array of a 2-D table (rows of a fixed width)."""
    addresses, lengths, like = table
    return carray(_pointer(addresses[g]), (lengths[g], like.shape[1]), like.dtype)


@inline_kernel
def borrowed(array):  # pragma: no cover - compiled
    """``array`` without its owner's reference count, for a kernel its caller keeps it
    alive through. Inlined helpers given an owned array changed its count atomically at
    every call where numba could not prune the pair (a helper called from two places in a
    loop): ``_cut_windows`` took 12.6 ns a window with two ``_put_run`` calls, 3.3 given
    its runs borrowed (an array of a segment table has no owner either)."""
    return carray(_pointer(array.ctypes.data), array.shape, array.dtype)


# ---------------------------------------------------------------- event hashing


@kernel
def _partition_of(users, partitions, out):  # pragma: no cover - compiled; partition_of_reference is its reference
    for i in range(users.shape[0]):
        x = np.uint64(users[i])  # the id's 64 bits: negative ids wrap, as intended
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finaliser
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = np.int64((x ^ (x >> np.uint64(31))) % np.uint64(partitions))


@inline_kernel
def _pair_slot(user, event_id, mask):  # pragma: no cover - compiled
    """A (user, event id) pair's first slot in a table of ``mask + 1`` (a power of two)."""
    x = np.uint64(user) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(event_id)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finaliser
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.int64((x ^ (x >> np.uint64(31))) & np.uint64(mask))


@kernel
def _pairs_seen(user, ids, known_user, known_ids, repeat, known):  # pragma: no cover - naive.py: pairs_seen_reference
    """Per row of (``user``, ``ids``): whether an earlier row has its pair (``repeat``),
    and whether the known pairs hold it (``known``). The rows' pairs go in a hash table
    once, and each known pair is looked up: linear in both, where sorting every known
    pair with the rows made each commit into an event-id store cost a sort of the ids of
    every user it touched (s52C: 75% of a 6,000-event day's commit into 2.2M events)."""
    n = user.shape[0]
    size = 2
    while size < 2 * n:
        size *= 2
    mask = size - 1
    slots = np.full(size, -1, np.int64)
    first = np.empty(n, np.int64)  # the first row of each row's pair
    for i in range(n):
        h = _pair_slot(user[i], ids[i], mask)
        while slots[h] >= 0 and (user[slots[h]] != user[i] or ids[slots[h]] != ids[i]):
            h = (h + 1) & mask
        if slots[h] < 0:
            slots[h] = i
        first[i] = slots[h]
        repeat[i] = slots[h] != i
        known[i] = False
    for k in range(known_user.shape[0]):
        h = _pair_slot(known_user[k], known_ids[k], mask)
        while slots[h] >= 0 and (user[slots[h]] != known_user[k] or ids[slots[h]] != known_ids[k]):
            h = (h + 1) & mask
        if slots[h] >= 0:
            known[slots[h]] = True
    for i in range(n):
        known[i] = known[first[i]]


def pairs_seen(user: np.ndarray, ids: np.ndarray, known_user: np.ndarray,
               known_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(repeat, known) masks of the rows' (user, event id) pairs: see ``_pairs_seen``."""
    repeat, known = np.empty(len(user), np.bool_), np.empty(len(user), np.bool_)
    _pairs_seen(frozen(user, np.int64), frozen(ids, np.int64), frozen(known_user, np.int64),
                frozen(known_ids, np.int64), repeat, known)
    return repeat, known


@kernel
def _version_bounds(version, starts, vmax, vmin):  # pragma: no cover - compiled; version_bounds_reference
    for u in range(starts.shape[0]):
        a = starts[u]
        b = starts[u + 1] if u + 1 < starts.shape[0] else version.shape[0]
        high = version[a]
        for i in range(a, b):
            high = max(high, version[i])
            vmax[i] = high
        low = version[b - 1]
        for i in range(b - 1, a - 1, -1):
            low = min(low, version[i])
            vmin[i] = low


def version_bounds(version: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's highest version so far in its user's rows and lowest from it on (users
    start at ``starts``, each non-empty), in ``version``'s dtype: what ``locate`` skips
    whole runs of one version by. One pass each way into the two outputs; the numpy form
    (a keyed running max, a reversed running min) made seven arrays of the segment's
    length, and a merged copy's build first-touches every page it allocates."""
    vmax, vmin = np.empty_like(version), np.empty_like(version)
    if len(version):
        _version_bounds(version, np.ascontiguousarray(starts, np.int64), vmax, vmin)
    return vmax, vmin


def user_starts(user: np.ndarray) -> np.ndarray:
    """The first row of each user's run in ``user``, sorted by user (checked): what
    ``np.unique(user, return_index=True)`` gives sorted input, without sorting a copy."""
    if len(user) > 1 and bool((user[1:] < user[:-1]).any()):
        raise ValueError("events must be sorted by user")
    return np.flatnonzero(np.concatenate([[len(user) > 0], user[1:] != user[:-1]]))


def value_bits(values: np.ndarray) -> np.ndarray:
    """The 64 bits that identify each value: integers by value, floats by the IEEE bits of
    their float64. Widening sets a signalling NaN's quiet bit (with no warning: the value
    is valid input), so it hashes as that quiet NaN; kept so, for the checksums pointers hold."""
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return values.astype(np.float64).view(np.uint64)
    return values.astype(np.int64).view(np.uint64)


@kernel
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


@inline_kernel
def _visible(i, ver, ver_base, arrival, arrival_base, version, version_hi, arrival_limit):  # pragma: no cover
    v = ver_base + np.int64(ver[i])
    return v <= version or (v <= version_hi and arrival_base + np.int64(arrival[i]) < arrival_limit)


@inline_kernel
def _first_at_least(values, base, a, b, bound):  # pragma: no cover - compiled
    """The first i in [a, b) with ``base + values[i] >= bound`` (b if none), for values
    that never decrease over [a, b)."""
    while a < b:
        mid = (a + b) >> 1
        if base + np.int64(values[mid]) < bound:
            a = mid + 1
        else:
            b = mid
    return a


@inline_kernel
def _first_at_least_from_end(values, base, a, b, bound):  # pragma: no cover - compiled
    """``_first_at_least`` for an answer expected near ``b``: steps of 1, 2, 4, ... down
    from ``b``, then a binary search in the last step."""
    step = 1
    while b - step > a:
        if base + np.int64(values[b - step]) < bound:
            return _first_at_least(values, base, b - step + 1, b, bound)
        b -= step
        step *= 2
    return _first_at_least(values, base, a, b, bound)


@inline_kernel
def _first_at_least_from_start(values, base, a, b, bound):  # pragma: no cover - compiled
    """``_first_at_least`` for an answer expected near ``a``: steps of 1, 2, 4, ... up
    from ``a``, then a binary search in the last step."""
    step = 1
    while a + step < b:
        if base + np.int64(values[a + step - 1]) >= bound:
            return _first_at_least(values, base, a, a + step - 1, bound)
        a += step
        step *= 2
    return _first_at_least(values, base, a, b, bound)


@inline_kernel
def _visible_slice(start, top, hcum, before, max_len):  # pragma: no cover - compiled
    """``_locate_range``'s answer for a pointer that sees every row of [start, top) and
    none after (``before``: the running hash before ``start``)."""
    if top == start:
        return 0, np.uint32(0), start, start, False, 0
    n = top - start
    return n, np.uint32(hcum[top - 1] - before), top - min(n, max_len), top, False, 0


@inline_kernel
def _request_cut(start, end, ts, ts_base, t, hint):  # pragma: no cover - compiled
    """The first row of [start, end) at or after time t (end if none), found where the
    ``hint`` (rows before it, checked) says, else searched for."""
    hinted = 0 <= hint < end - start
    h = start + hint
    if hinted and ts_base + np.int64(ts[h]) >= t and (hint == 0 or ts_base + np.int64(ts[h - 1]) < t):
        return h
    if start < end and ts_base + np.int64(ts[end - 1]) >= t:
        return _first_at_least(ts, ts_base, start, end, t)
    return end


@inline_kernel
def _hash_before(summary_hash):  # pragma: no cover - compiled
    """The running hash before a range, from its summary's E_HASH (``range_summaries``)."""
    return np.uint32(summary_hash >> 32)


@inline_kernel
def _range_hash(summary_hash):  # pragma: no cover - compiled
    """The hash of a range's rows, from its summary's E_HASH (``range_summaries``)."""
    return np.uint32(summary_hash & 0xFFFFFFFF)


# a call from _locate_view, which compiles once it serves both locate kernels: inlined
# there, it tripled that kernel's compilation (a kernel per column dtypes: CI compiles
# dozens from a cold cache), and the call costs 0-7% on 30 daily segments. Inlined into
# _locate (every compacted read), where the call was a third of the kernel's time: 25-40
# us a batch of 1024 pointers, for 1.1 s more compilation (_locate_range_inlined, below)
@kernel
def _locate_range(start, end, ts, ts_base, ver, vmax, vmin, ver_base, hcum, before, late, late_start, late_index,
                  arrival, arrival_base, t, version, version_hi, arrival_limit, max_len, hint,
                  lower):  # pragma: no cover - compiled
    """One pointer in one user's row range [start, end) of one segment: (count,
    checksum, lo, hi, holes, late_at) of its visible events and the window of the newest
    ``max_len`` of them. ``lo`` and ``hi - 1`` are always visible rows. ``late[late_start]``
    is the range's first late row, if it has any (``late_index``: the segment's index of
    them). ``hint`` is a guess of how many rows come before the request (the pointer's
    recorded length): checked, it saves a search.
    ``lower`` (NO_LOWER: none) is the earliest time a reader keeps (a window's start): a
    window with holes need not reach below it (its rows are visited one late row at a time).
    A window with holes that sees one version has every late row inside it that it cannot
    see at ``late[late_at:]`` (0 otherwise): the copy starts there, without a search."""
    if start == end or max(version, version_hi) < ver_base:
        return 0, np.uint32(0), start, start, False, 0
    # first event at or after the request time (none when the user's newest is before it:
    # the common case for the older segments of an uncompacted version)
    hinted = 0 <= hint < end - start
    h = start + hint
    a = -1  # the first row newer than every version the pointer sees, before the request
    cut = end
    if hinted and ts_base + np.int64(ts[h]) >= t and (hint == 0 or ts_base + np.int64(ts[h - 1]) < t):
        cut = h  # the first row at or after the request, as the hint says
    elif (hinted and version_hi == version and ts_base + np.int64(ts[h]) < t
          and ver_base + np.int64(vmin[h]) > version and (hint == 0 or ver_base + np.int64(vmin[h - 1]) <= version)):
        # the hint is where the rows newer than the pointer's version begin, before the
        # request (the day's events online had not seen yet): the slow path's ``a`` below,
        # found without searching for the cut
        a = h
    elif hinted and version_hi == version and ts_base + np.int64(ts[h]) < t and ver_base + np.int64(vmin[h]) <= version:
        # late rows the pointer cannot see lie below: the rows newer than its version (or
        # the cut) begin that many rows above the hint, found by stepping up from it
        a = _first_at_least_from_start(vmin, ver_base, h + 1, end, version + 1)
        if a == end or ts_base + np.int64(ts[a]) >= t:
            cut = _first_at_least(ts, ts_base, h + 1, a, t)  # the request falls in (h, a]
            a = -1
    elif ts_base + np.int64(ts[end - 1]) >= t:
        cut = _first_at_least(ts, ts_base, start, end, t)
    if a < 0:
        if cut == start or ver_base + np.int64(vmax[cut - 1]) <= version:
            return _visible_slice(start, cut, hcum, before, max_len)
        # slow path: events invisible to this pointer sit among the visible ones. _vmin
        # (the smallest version from a row to the user's end) never decreases: rows from
        # the first whose _vmin is past every version the pointer can see are all
        # invisible (today's events before a request against yesterday's version). That
        # row is near the cut: searched from there.
        a = _first_at_least_from_end(vmin, ver_base, start, cut, max(version, version_hi) + 1)
    if version_hi == version:  # one call site: the kernels inlining this compile once
        if a == start or ver_base + np.int64(vmax[a - 1]) <= version:
            # every row below ``a`` is visible (its late ones too): those the pointer does not
            # see are the rows from ``a`` on (its request's day, newer than its version), and
            # the window is a slice found without a late row: half the pointers against the
            # version online read (late-compacted locate at N=256: 39 -> 34 ms a pass, s42)
            return _visible_slice(start, a, hcum, before, max_len)
        return _locate_late(start, a, hcum, before, late, late_start, late_index, version, max_len, ts, ts_base, lower)
    # bounded by arrival too: the rows up to ``a`` are scanned one by one. _vmax never
    # decreases within a user either, so every row before the first _vmax > version is
    # visible: only the rows from there to ``a`` are
    prefix_end = _first_at_least(vmax, ver_base, start, a, version + 1)
    n = 0
    s = np.uint32(0)
    holes = False
    newest = -1  # the newest visible row after the prefix
    window_lo = prefix_end
    for i in range(a - 1, prefix_end - 1, -1):
        if _visible(i, ver, ver_base, arrival, arrival_base, version, version_hi, arrival_limit):
            s += hcum[i] - (hcum[i - 1] if i > 0 else np.uint32(0))
            if newest < 0:
                newest = i
            if n < max_len:
                window_lo = i
            n += 1
        elif n < max_len and newest >= 0:
            holes = True
    if prefix_end > start:
        s += hcum[prefix_end - 1] - before
        if n < max_len:
            window_lo = max(start, prefix_end - (max_len - n))
        n += prefix_end - start
    if min(n, max_len) == 0:
        return n, s, start, start, False, 0
    return n, s, window_lo, newest + 1 if newest >= 0 else prefix_end, holes, 0


_locate_range_inlined = inline_kernel(_locate_range.py_func)


@inline_kernel
def _past_version(late, a, b, version):  # pragma: no cover - compiled
    """(count, hash) of the late rows in [a, b) with a version past ``version``, row by row."""
    count = 0
    hashed = np.uint32(0)
    for i in range(a, b):
        if late[i, LATE_VERSION] > version:
            count += 1
            hashed += np.uint32(late[i, LATE_HASH])
    return count, hashed


@inline_kernel
def _unseen_late(late, a, b, version):  # pragma: no cover - compiled
    """``_past_version`` a whole block (``late_rows``) at a time: a binary search in its
    sorted versions, the running hash there giving the hash of those past it."""
    first = min(b, -(-a // LATE_BLOCK) * LATE_BLOCK)  # the first block boundary at or after a
    last = max(first, b - b % LATE_BLOCK)  # the last at or before b
    count, hashed = _past_version(late, a, first, version)
    for i in range(first, last, LATE_BLOCK):
        seen = _first_at_least(late[i:i + LATE_BLOCK, LATE_SORTED], 0, 0, LATE_BLOCK, version + 1)
        if seen < LATE_BLOCK:
            count += LATE_BLOCK - seen
            hashed += np.uint32(late[i + LATE_BLOCK - 1, LATE_SORTED_HASH])
            if seen > 0:
                hashed -= np.uint32(late[i + seen - 1, LATE_SORTED_HASH])
    tail, tail_hash = _past_version(late, last, b, version)
    return count + tail, hashed + tail_hash


@inline_kernel
def _late_from(late, late_index, row):  # pragma: no cover - compiled
    """The first late row at or after ``row``: a step or two from its block's in ``late_index``."""
    k = late_index[row // LATE_INDEX_STEP]
    while k < late.shape[0] and late[k, LATE_ROW] < row:
        k += 1
    return k


@inline_kernel
def _locate_late(start, a, hcum, before, late, late_start, late_index, version, max_len, ts, ts_base,
                 lower):  # pragma: no cover - compiled
    """The slow path of ``_locate_range`` for a pointer that sees one version: below
    ``a`` a row is invisible only if it is late (``late_rows``) with a version past the
    pointer's. Those from the first whose _vmax is past the pointer's version (every row
    before it is visible) are counted a block at a time (``_unseen_late``); the window
    then visits them newest first, as far down as it reaches."""
    k1 = _late_from(late, late_index, a)
    n = a - start
    s = np.uint32(hcum[a - 1] - before) if a > start else np.uint32(0)
    # the oldest late row that can be invisible: _vmax never decreases within a user, and
    # every row before the first past the pointer's version is visible
    k0 = _first_at_least_from_end(late[:, LATE_VMAX], 0, late_start, k1, version + 1)
    unseen, unseen_hash = _unseen_late(late, k0, k1, version)
    n -= unseen
    s -= unseen_hash
    remaining = min(n, max_len)
    if remaining > 0 and lower > NO_LOWER and ts_base + np.int64(ts[start]) < lower:  # rows before it need no window
        floor = _first_at_least(ts, ts_base, start, a, lower)
        above, _ = _unseen_late(late, max(k0, _late_from(late, late_index, floor)), k1, version)
        remaining = min(remaining, a - floor - above)
    if remaining == 0:
        return n, s, start, start, False, 0
    # the window, newest first: stretches of visible rows between invisible late rows
    cur = a
    hi = -1
    holes = False
    k = k1 - 1
    while True:
        while k >= k0 and late[k, LATE_VERSION] <= version:
            k -= 1
        below = late[k, LATE_ROW] if k >= k0 else start - 1  # the next invisible row down
        avail = cur - below - 1
        if avail > 0:
            if hi < 0:
                hi = cur
            if remaining <= avail:  # the invisible late rows inside: from past ``below`` on
                return n, s, cur - remaining, hi, holes, max(k + 1, k0)
            remaining -= avail
        holes = hi >= 0  # rows are still owed below an invisible one: the window spans it
        cur = below
        k -= 1


_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33))


@inline_kernel
def _user_hash(user, mask):  # pragma: no cover - compiled
    """A user id's bucket in a table of ``mask + 1`` (a power of two) buckets: the id mixed
    (MurmurHash3's 64-bit finalizer, a bijection) so that every bit of it moves the low
    bits: ids that are counters, strides of a power of two, or hashes all spread evenly."""
    x = np.uint64(user)
    x = (x ^ (x >> _MIX[2])) * _MIX[0]
    x = (x ^ (x >> _MIX[2])) * _MIX[1]
    return np.int64((x ^ (x >> _MIX[2])) & np.uint64(mask))


@kernel
def hash_slots(ids, table):  # pragma: no cover - compiled; tests/test_kernels.py checks find_users
    """Fills ``table`` (all -1, a power of two long, at least twice the ids) with each id's
    position in ``ids`` (unique), at its bucket or the first free one after it."""
    mask = table.shape[0] - 1
    for s in range(ids.shape[0]):
        h = _user_hash(ids[s], mask)
        while table[h] >= 0:
            h = (h + 1) & mask
        table[h] = s


@kernel
def _repeats(ids, table):  # pragma: no cover - compiled; tests/test_kernels.py checks repeated_ids
    mask = table.shape[0] - 1
    repeats = 0
    for i in range(ids.shape[0]):
        h = _user_hash(ids[i], mask)
        while table[h] >= 0 and ids[table[h]] != ids[i]:
            h = (h + 1) & mask
        if table[h] >= 0:
            repeats += 1
        else:
            table[h] = i
    return repeats


def repeated_ids(ids: np.ndarray) -> int:
    """How many of ``ids`` equal one before them (a loader batch's examples whose user
    already has one in it), through a hash table: sorting a batch of 1024 took 14 us, 4%
    of making it at N=256."""
    if len(ids) < 2:
        return 0
    table = np.full(1 << (2 * len(ids) - 1).bit_length(), -1, np.int64)
    return int(_repeats(frozen(ids, np.int64), table))


@kernel
def find_users(users, ids, low, slots, hashed, out):  # pragma: no cover - compiled; tests/test_kernels.py
    """Each user's position in ``ids`` (-1: absent), through ``slots``: where the ids are
    dense, indexed by ``user - low``; else ``hash_slots``'s table. Each is one lookup where
    a binary search took a cache miss a step (63-bit ids, 20k users: 0.42x the mapped Arrow
    Fat Row at N=256, against 0.53x with dense ids, s58B)."""
    n = users.shape[0]
    if not hashed:
        for p in range(n):
            off = users[p] - low
            out[p] = slots[off] if 0 <= off < slots.shape[0] else -1
        return
    mask = slots.shape[0] - 1
    for p in range(n):
        # a user's bucket and then its id lie at random places: each fetched ahead in turn
        if p + 2 * AHEAD < n:
            prefetch(slots, _user_hash(users[p + 2 * AHEAD], mask))
        if p + AHEAD < n:
            ahead = slots[_user_hash(users[p + AHEAD], mask)]
            if ahead >= 0:
                prefetch(ids, ahead)
        h = _user_hash(users[p], mask)
        s = slots[h]
        while s >= 0 and ids[s] != users[p]:
            h = (h + 1) & mask
            s = slots[h]
        out[p] = s


@kernel
def _sole_ranges(users, request_ts, version, version_hi, v_users, v_low, v_slots, v_hashed, v_first, entries, ver_b,
                 out):  # pragma: no cover - compiled; tests/test_kernels.py holds its reference
    """Each pointer's one (user, segment) range that can hold events it sees, as a row of
    ``entries``: -1 where none can (no event before its request in its versions), -2
    where several can. A user of one range needs no look at it."""
    # each pointer's user (-1: none), in a loop of its own (one that went on to the ranges
    # took 3x as long)
    find_users(users, v_users, v_low, v_slots, v_hashed, out)
    n = users.shape[0]
    if entries.shape[0] == v_users.shape[0]:  # a range per user: the user's
        return
    for p in range(n):
        if p + AHEAD < n and out[p + AHEAD] >= 0:  # the first two ranges: most pointers of a user
            u = out[p + AHEAD]  # of many see both (30 daily segments: 45 -> 28 ns a pointer)
            for e in range(v_first[u], min(v_first[u + 1], v_first[u] + 2)):
                prefetch(entries, e * ENTRY_WIDTH)
        u = out[p]
        if u < 0:
            continue
        sole = v_first[u]
        if v_first[u + 1] - sole > 1:
            sole = -1
            for e in range(v_first[u], v_first[u + 1]):  # as _locate_view skips a range
                if entries[e, E_TMIN] < request_ts[p] and max(version[p], version_hi[p]) >= ver_b[entries[e, E_SEG]]:
                    if sole >= 0:
                        sole = -2
                        break
                    sole = e
        out[p] = sole


@kernel
def _locate(
    found, entries, ts_l, ts_b, ver_l, ver_b, vmax_l, vmin_l, hcum_l, late_l, lidx_l, arr_l, arr_b, request_ts,
    version, version_hi, arrival_limit, max_len, hint, lower, seg, count, checksum, lo, hi, holes, late_at,
):  # pragma: no cover - compiled; tests/naive.py holds its reference
    n = found.shape[0]
    for p in range(n):
        # pointers are users at random: every read below misses the cache. Prefetched in
        # stages, a pointer's summary row first, then (with it at hand) the rows its hint
        # names, so that many misses are in flight at once (1.9x here); for a pointer older
        # than its user's newest rows, the late rows there (through ``late_index``) last
        q = p + 2 * AHEAD
        if q < n and found[q] >= 0:
            prefetch(entries, found[q] * ENTRY_WIDTH)
        q = p + AHEAD
        if q < n and found[q] >= 0:
            e = entries[found[q]]
            g = e[E_SEG]
            h = e[E_LO] + max(hint[q], 0)
            prefetch(segment(ts_l, g), h)
            prefetch(segment(hcum_l, g), h - 1)
            if e[E_VMAX] > version[q]:
                prefetch(segment(vmax_l, g), h - 1)
                prefetch(segment(vmin_l, g), h - 1)
                prefetch(segment(lidx_l, g), h // LATE_INDEX_STEP)
        if found[p] < 0:  # a user without events
            seg[p], count[p], checksum[p], lo[p], hi[p], holes[p], late_at[p] = 0, 0, 0, 0, 0, False, 0
            continue
        entry = entries[found[p]]
        g = entry[E_SEG]
        seg[p] = g
        if entry[E_VMAX] <= version[p]:  # every row of the range is visible: a slice up to the request
            cut = _request_cut(entry[E_LO], entry[E_HI], segment(ts_l, g), ts_b[g], request_ts[p], hint[p])
            count[p], checksum[p], lo[p], hi[p], holes[p], late_at[p] = _visible_slice(
                entry[E_LO], cut, segment(hcum_l, g), _hash_before(entry[E_HASH]), max_len)
            continue
        count[p], checksum[p], lo[p], hi[p], holes[p], late_at[p] = _locate_range_inlined(
            entry[E_LO], entry[E_HI], segment(ts_l, g), ts_b[g], segment(ver_l, g), segment(vmax_l, g),
            segment(vmin_l, g), ver_b[g], segment(hcum_l, g), _hash_before(entry[E_HASH]), segment_rows(late_l, g),
            entry[E_LATE], segment(lidx_l, g), segment(arr_l, g), arr_b[g], request_ts[p], version[p], version_hi[p],
            arrival_limit[p], max_len, hint[p], lower[p])


def frozen(array: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """``array`` as a read-only contiguous view (copied only to change its dtype or layout).
    Numba compiles a kernel per argument type, and read-only is part of the type: kernels
    get read-only inputs always (memory-mapped columns are), not whichever the caller had,
    so one compilation serves both."""
    if (isinstance(array, np.ndarray) and not array.flags.writeable and array.flags.c_contiguous
            and (dtype is None or array.dtype == dtype)):  # as it is: no new view on the hot path
        return array
    view = np.ascontiguousarray(array, dtype).view()
    view.setflags(write=False)
    return view


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

    def __post_init__(self) -> None:
        for name in ("version", "version_hi", "arrival_limit"):
            object.__setattr__(self, name, frozen(getattr(self, name), np.int64))

    @classmethod
    def of_versions(cls, version: np.ndarray) -> Visibility:
        version = frozen(version, np.int64)  # one array for both bounds: see ``bounded_by_arrival``
        return cls(version, version, np.zeros(len(version), np.int64))

    @cached_property
    def bounded_by_arrival(self) -> bool:
        """Whether any pointer has ``version_hi != version`` (found without a look at
        each pointer for plain pointers, whose two bounds are one array: every batch asks)."""
        return self.version_hi is not self.version and bool(np.any(self.version_hi != self.version))

    def take(self, rows: np.ndarray) -> Visibility:
        version = self.version[rows]
        return Visibility(version, version if self.version_hi is self.version else self.version_hi[rows],
                          self.arrival_limit[rows])


NO_COLUMN = frozen(np.zeros(1, np.int64))  # stands in for an absent arrival or tie-break column


# the columns of ``late_rows``; the last two: each LATE_BLOCK of rows' versions sorted, and
# the running hash in that order (what counts a block's rows newer than a version at once)
LATE_ROW, LATE_VERSION, LATE_VMAX, LATE_HASH, LATE_SORTED, LATE_SORTED_HASH = range(6)
LATE_WIDTH = 6
LATE_BLOCK = 64
LATE_INDEX_STEP = 64  # rows of a segment per entry of its ``late_index``
NO_LOWER = np.int64(np.iinfo(np.int64).min)  # ``_locate_range``'s ``lower`` where no window bounds a read


def late_rows(ver: np.ndarray, vmax: np.ndarray, vmin: np.ndarray, ver_base: int, hcum: np.ndarray) -> np.ndarray:
    """The rows of a segment whose version exceeds that of a later row of the same user
    (``vmin`` is the smallest version from a row to its user's end): late arrivals. Every
    other row is visible to any version at least its own, which is what lets the read
    path check only these one by one. One row each: its row, version, _vmax and hash,
    side by side so that visiting them reads a few cache lines, not one per late row;
    and, per block of LATE_BLOCK rows, their versions sorted with a running hash, so that
    the late rows a pointer cannot see are counted a block at a time (``_unseen_late``):
    late events backfilled far into a history, compacted, made every pointer against an
    older version visit all of its user's late rows (17 s for 24,000 pointers, s38B)."""
    rows = np.flatnonzero(ver > vmin)
    late = np.empty((len(rows), LATE_WIDTH), np.int64)
    late[:, LATE_ROW] = rows
    late[:, LATE_VERSION] = ver_base + ver[rows].astype(np.int64)
    late[:, LATE_VMAX] = ver_base + vmax[rows].astype(np.int64)
    late[:, LATE_HASH] = hcum[rows] - np.where(rows > 0, hcum[np.maximum(rows - 1, 0)], np.uint32(0))
    whole = len(rows) - len(rows) % LATE_BLOCK  # a last, partial block is visited row by row
    versions = late[:whole, LATE_VERSION].reshape(-1, LATE_BLOCK)
    order = np.argsort(versions, axis=1, kind="stable")
    late[:whole, LATE_SORTED] = np.take_along_axis(versions, order, axis=1).ravel()
    hashes = np.take_along_axis(late[:whole, LATE_HASH].reshape(-1, LATE_BLOCK).astype(np.uint32), order, axis=1)
    late[:whole, LATE_SORTED_HASH] = np.cumsum(hashes, axis=1, dtype=np.uint32).ravel()
    late[whole:, LATE_SORTED] = late[whole:, LATE_SORTED_HASH] = 0
    return late


def late_index(late: np.ndarray, rows: int) -> np.ndarray:
    """Per LATE_INDEX_STEP rows of a segment (and one past its end), its first late row at
    or after them: ``_locate_late`` finds where a pointer's late rows end a step or two
    from there. A search from the user's first late row cost a miss a probe over a heavy
    user's hundreds (a pass of 200k pointers in a late-compacted store, N=256: 44 -> 39 ms)."""
    return np.searchsorted(late[:, LATE_ROW], np.arange(0, rows + 2 * LATE_INDEX_STEP, LATE_INDEX_STEP))


# the columns of a PartitionView's (user, segment) range summaries, one row per range
E_SEG, E_LO, E_HI, E_TMIN, E_TMAX, E_VMAX, E_HASH, E_LATE = range(8)  # E_LATE: its first late row's index
ENTRY_WIDTH = 8  # a 64-byte cache line


def range_summaries(lo: np.ndarray, hi: np.ndarray, ts: np.ndarray, ts_base: int, vmax: np.ndarray, ver_base: int,
                    hcum: np.ndarray, late: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per range [lo, hi) of a segment's rows: its first time, last time, newest version,
    hash and where its late rows begin in ``late`` (columns E_TMIN, E_TMAX, E_VMAX, E_HASH
    and E_LATE). The hash of its rows (as the kernels read them: absolute int64 values, the
    hash's bits) takes E_HASH's low 32 bits (``_range_hash``), the running hash before the
    range (``hcum[lo - 1]``) its high 32 (``_hash_before``): a pointer's checksum then takes
    one line of ``hcum``, not two; and one that sees every row of its range by version reads no line of
    ``_vmax`` (``_locate``). The benchmark's compacted locate 1.35-1.5x faster, s63."""
    if not len(ts):
        return (np.zeros(len(lo), np.int64),) * 5
    last = np.maximum(hi - 1, 0)
    tmin = ts_base + ts[np.minimum(lo, len(ts) - 1)].astype(np.int64)
    tmax = ts_base + ts[last].astype(np.int64)
    newest = ver_base + vmax[last].astype(np.int64)
    before = np.where(lo > 0, hcum[np.maximum(lo - 1, 0)], np.uint32(0)).astype(np.uint32)
    hashed = (hcum[last] - before).astype(np.uint64) | (before.astype(np.uint64) << np.uint64(32))
    return tmin, tmax, newest, hashed.view(np.int64), np.searchsorted(late[:, LATE_ROW], lo)


def locate(found: np.ndarray, view: tuple, request_ts: np.ndarray, visibility: Visibility, max_len: int,
           hint: np.ndarray, lower: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Returns (segment, count, checksum, lo, hi, holes, late_at), one entry per pointer
    (see ``_locate_range``), for pointers each of whose visible events lie in one range of
    rows, ``found[p]`` (a row of the range summaries; -1: none): every pointer of a view
    whose users have one range each (one segment, or compacted partitions side by side),
    and most of a tiered store's (``_sole_ranges``). ``view`` is (the range summaries, of
    which E_SEG, E_LO, E_HI, E_VMAX and E_LATE are read; then segment tables and bases of
    time, version, _vmax, _vmin, _hcum, the ``late_rows``, their ``late_index`` and
    arrival, and whether there is an arrival column). ``hint[p]`` is a guess of the
    pointer's count (its recorded length, or -1), checked before it is used; ``lower[p]``
    the earliest time its reader keeps (None: every time)."""
    *arguments, has_arrival = view
    if not has_arrival and visibility.bounded_by_arrival:
        raise ValueError("arrival bounds need an arrival column")
    n = found.shape[0]
    out = (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.uint32), np.empty(n, np.int64),
           np.empty(n, np.int64), np.empty(n, np.bool_), np.empty(n, np.int64))
    _locate(frozen(found, np.int64), *arguments, frozen(request_ts, np.int64), visibility.version,
            visibility.version_hi, visibility.arrival_limit, np.int64(max_len), frozen(hint, np.int64),
            _unbounded(n) if lower is None else frozen(lower, np.int64), *out)
    return out


_UNBOUNDED = frozen(np.full(0, NO_LOWER))


def _unbounded(n: int) -> np.ndarray:
    """``n`` NO_LOWERs, read-only: a view of one array, grown as asked (a read filled a new
    one each time, 5 us of 8,192 pointers). Threads racing to grow it each return a view
    of the array they made or saw, at least ``n`` long, whichever one is kept."""
    global _UNBOUNDED
    unbounded = _UNBOUNDED
    if len(unbounded) < n:
        unbounded = _UNBOUNDED = frozen(np.full(max(n, 2 * len(unbounded)), NO_LOWER))
    return unbounded[:n]


# ---------------------------------------------------------------- merging segments


@inline_kernel
def _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, g, row):  # pragma: no cover - compiled
    """(time, tie-break) of row ``row`` of segment ``g``, decoded (tie-break 0 without one)."""
    ts = ts_b[g] + np.int64(segment(ts_l, g)[row])
    return ts, (tb_b[g] + np.int64(segment(tb_l, g)[row]) if has_tb else np.int64(0))


@inline_kernel
def _head_before(heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g, a, b):  # pragma: no cover - compiled
    """Whether range a's head row comes before range b's: by key, equal keys in range (segment) order."""
    ts_a, tb_a = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[a], heads[a])
    ts_c, tb_c = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[b], heads[b])
    return _window_before(ts_a, tb_a, a, ts_c, tb_c, b)


@inline_kernel
def _sift_ranges(heap, size, heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g):  # pragma: no cover - compiled
    i = 0
    while 2 * i + 1 < size:
        c = 2 * i + 1
        if c + 1 < size and _head_before(heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g, heap[c + 1], heap[c]):
            c += 1
        if not _head_before(heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g, heap[c], heap[i]):
            return
        heap[i], heap[c] = heap[c], heap[i]
        i = c


@inline_kernel
def _user_before(head_user, a, b):  # pragma: no cover - compiled
    return head_user[a] < head_user[b] or (head_user[a] == head_user[b] and a < b)


@inline_kernel
def _push_segment(heap, size, head_user, g):  # pragma: no cover - compiled
    heap[size] = g
    i = size
    while i > 0 and _user_before(head_user, heap[i], heap[(i - 1) // 2]):
        heap[i], heap[(i - 1) // 2] = heap[(i - 1) // 2], heap[i]
        i = (i - 1) // 2
    return size + 1


@inline_kernel
def _pop_segment(heap, size, head_user):  # pragma: no cover - compiled
    size -= 1
    heap[0] = heap[size]
    i = 0
    while 2 * i + 1 < size:
        c = 2 * i + 1
        if c + 1 < size and _user_before(head_user, heap[c + 1], heap[c]):
            c += 1
        if not _user_before(head_user, heap[c], heap[i]):
            break
        heap[i], heap[c] = heap[c], heap[i]
        i = c
    return size


@kernel
def _merge_runs(runs, k, state, heap, cursor, head_user, u_l, e_l, ts_l, ts_b, tb_l, tb_b, has_tb, out_users,
                out_ends, m_g, heads, m_hi, m_heap):  # pragma: no cover - compiled; tests/test_kernels.py
    """Cuts the merge of a partition's segments into runs from ``runs[:, k]`` on; returns the
    runs written. ``state`` (output row, users written, segments in ``heap``) and the heap
    of segments by their next user carry over a return for want of room in ``runs``. Its
    helpers are given borrowed arrays (``borrowed``): owned ones cost 1 us a run."""
    return _cut_merge(borrowed(runs), k, borrowed(state), borrowed(heap), borrowed(cursor), borrowed(head_user),
                      _borrowed_table(u_l), _borrowed_table(e_l), _borrowed_table(ts_l), borrowed(ts_b),
                      _borrowed_table(tb_l), borrowed(tb_b), has_tb, borrowed(out_users), borrowed(out_ends),
                      borrowed(m_g), borrowed(heads), borrowed(m_hi), borrowed(m_heap))


@inline_kernel
def _borrowed_table(table):  # pragma: no cover - compiled
    return borrowed(table[0]), borrowed(table[1]), borrowed(table[2])


@inline_kernel
def _cut_merge(runs, k, state, heap, cursor, head_user, u_l, e_l, ts_l, ts_b, tb_l, tb_b, has_tb, out_users,
               out_ends, m_g, heads, m_hi, m_heap):  # pragma: no cover - compiled
    dst, written, size = state[0], state[1], state[2]
    while size > 0:
        user, m, rows = head_user[heap[0]], 0, np.int64(0)
        while size > 0 and head_user[heap[0]] == user:  # the segments holding ``user``, in segment order
            g = heap[0]
            ends = segment(e_l, g)
            m_g[m], heads[m], m_hi[m] = g, ends[cursor[g] - 1] if cursor[g] > 0 else 0, ends[cursor[g]]
            rows += m_hi[m] - heads[m]
            m += 1
            size = _pop_segment(heap, size, head_user)
        if k + rows > runs.shape[1]:  # a run holds a row or more: room for the user's runs, or back for more
            for i in range(m):
                size = _push_segment(heap, size, head_user, m_g[i])
            break
        ordered = True  # each segment's events of the user after the one before's (ties keep segment order)
        for i in range(1, m):
            ts_a, tb_a = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[i - 1], m_hi[i - 1] - 1)
            ts_c, tb_c = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[i], heads[i])
            if _key_before(ts_c, tb_c, ts_a, tb_a):
                ordered = False
                break
        if ordered:
            for i in range(m):
                runs[0, k], runs[1, k], runs[2, k], runs[3, k] = m_g[i], heads[i], m_hi[i], dst
                dst += m_hi[i] - heads[i]
                k += 1
        else:  # row by row, a run of one segment taken at once up to the next one's head
            left = 0
            for i in range(m):
                m_heap[left] = i
                j = left
                left += 1
                while j > 0 and _head_before(heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g, m_heap[j],
                                             m_heap[(j - 1) // 2]):
                    m_heap[j], m_heap[(j - 1) // 2] = m_heap[(j - 1) // 2], m_heap[j]
                    j = (j - 1) // 2
            while left > 0:
                best = m_heap[0]
                end = m_hi[best]
                if left > 1:
                    second = m_heap[1]
                    if left > 2 and _head_before(heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g, m_heap[2], second):
                        second = m_heap[2]
                    ts_s, tb_s = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[second], heads[second])
                    end = heads[best] + 1
                    while end < m_hi[best]:
                        ts_e, tb_e = _key_at(ts_l, ts_b, tb_l, tb_b, has_tb, m_g[best], end)
                        if _window_before(ts_s, tb_s, second, ts_e, tb_e, best):  # the next one's head first
                            break
                        end += 1
                runs[0, k], runs[1, k], runs[2, k], runs[3, k] = m_g[best], heads[best], end, dst
                dst += end - heads[best]
                k += 1
                heads[best] = end
                if end == m_hi[best]:
                    left -= 1
                    m_heap[0] = m_heap[left]
                _sift_ranges(m_heap, left, heads, ts_l, ts_b, tb_l, tb_b, has_tb, m_g)
        for i in range(m):  # each segment on to its next user
            g = m_g[i]
            cursor[g] += 1
            users = segment(u_l, g)
            if cursor[g] < users.shape[0]:
                head_user[g] = users[cursor[g]]
                size = _push_segment(heap, size, head_user, g)
        out_users[written], out_ends[written] = user, dst
        written += 1
    state[0], state[1], state[2] = dst, written, size
    return k


def merge_runs(user_ids: list[np.ndarray], ends: list[np.ndarray], ts: tuple[tuple[np.ndarray, ...], np.ndarray],
               tiebreak: tuple[tuple[np.ndarray, ...], np.ndarray] | None
               ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """The merge of a partition's segments (each sorted by user, time and tie-break; oldest
    first) as runs (segment, lo, hi, output row) in output order, with the merged user ids
    and ends. Equal keys keep segment order, then row order: the order one commit of
    everything would have. A user's events of one segment that all come after those of
    the segment before (a daily segment's day of them) are one run, taken without a
    comparison per event; only users whose segments' events interleave (late arrivals) are
    merged event by event. ``ts`` and ``tiebreak``: (segment table, bases) of the stored
    columns (``segment_table``)."""
    segments = len(user_ids)
    user_ids, ends = ([np.ascontiguousarray(a, np.int64) for a in arrays] for arrays in (user_ids, ends))
    users, ends_table = segment_table(user_ids), segment_table(ends)  # (tables of arrays held till the end)
    rows = sum(int(e[-1]) for e in ends if len(e))
    head_user = np.array([u[0] if len(u) else 0 for u in user_ids], np.int64)
    heap, size = np.zeros(segments, np.int64), 0
    for g in range(segments):  # in segment order, so a heap of (next user, segment) from the start
        if len(user_ids[g]):
            heap[size] = g
            size += 1
    heap[:size] = sorted(heap[:size], key=lambda g: (head_user[g], g))
    state, cursor = np.array([0, 0, size], np.int64), np.zeros(segments, np.int64)
    total_users = sum(len(u) for u in user_ids)
    out_users, out_ends = np.empty(total_users, np.int64), np.empty(total_users, np.int64)
    scratch = [np.empty(segments, np.int64) for _ in range(4)]
    tb_table, tb_bases = ts if tiebreak is None else tiebreak
    runs, k = np.empty((4, total_users + rows // 8 + 16), np.int64), 0
    while True:
        k = _merge_runs(runs, k, state, heap, cursor, head_user, users, ends_table, *ts, tb_table, tb_bases,
                        tiebreak is not None, out_users, out_ends, *scratch)
        if state[2] == 0:
            break
        runs = _doubled(runs)
    return tuple(runs[:, :k]), out_users[:state[1]], out_ends[:state[1]]


@kernel
def _runs_hcum(g_seg, g_lo, g_hi, g_dst, hcum_l, out):  # pragma: no cover - compiled
    total = np.int64(0)  # the running sum so far, mod 2**32
    for k in range(g_seg.shape[0]):
        src = segment(hcum_l, g_seg[k])
        lo, hi, d = g_lo[k], g_hi[k], g_dst[k]
        before = np.int64(src[lo - 1]) if lo > 0 else np.int64(0)
        for i in range(lo, hi):
            out[d + i - lo] = np.uint32((total + np.int64(src[i]) - before) & 0xFFFFFFFF)
        if hi > lo:
            total = (total + np.int64(src[hi - 1]) - before) & 0xFFFFFFFF


def runs_hcum(runs: tuple[np.ndarray, ...], hcum: tuple[np.ndarray, ...], rows: int) -> np.ndarray:
    """The running hash sum (``_hcum``) of the events that runs in output order, end to
    end, copy from segments with their own running sums (``hcum``, a segment table): a
    run's hashes are its stretch of its segment's sum, less the sum before it."""
    out = np.empty(rows, np.uint32)
    if rows:
        _runs_hcum(*runs, hcum, out)
    return out


# ---------------------------------------------------------------- a partition's segments at once
#
# A version's partition may hold many segments (daily commits before compaction). These
# kernels take each column of all of them at once, as a segment table (see above),
# so a batch costs a few calls whatever the number of segments.


@inline_kernel
def _key_before(ts_a, tb_a, ts_b, tb_b):  # pragma: no cover - compiled
    return ts_a < ts_b or (ts_a == ts_b and tb_a < tb_b)


@inline_kernel
def _window_before(ts_a, tb_a, a, ts_b, tb_b, b):  # pragma: no cover - compiled
    """Whether window a's key comes before window b's in the merge's order: on equal keys
    the later segment's event (the larger window index) is the newer. Given the keys, not
    the arrays that hold them: an inlined helper given an array the kernel allocated
    changes its reference count, atomically, at every call (36 ns a call, 6 given scalars)."""
    return _key_before(ts_a, tb_a, ts_b, tb_b) or (ts_a == ts_b and tb_a == tb_b and a < b)


@kernel
def _locate_view(rows, index, request_ts, version, version_hi, arrival_limit, max_len, hint, v_first, entries,
                 ts_l, ts_b, ver_l, ver_b, vmax_l, vmin_l, hcum_l, late_l, lidx_l, arr_l, arr_b, tb_l, tb_b, has_tb,
                 count, checksum, merge, p_w0, p_w1,
                 w_ptr, w_seg, w_lo, w_hi, w_holes, w_late, w_n, w_off, w_top):  # pragma: no cover - compiled
    nw = 0
    for r in range(rows.shape[0]):
        # prefetched in two stages, as in _locate: a pointer's summary rows (a line per
        # (user, segment)), then the rows its hint names in each segment whose summary
        # does not answer (the newest ones of a user spread over segments). Prefetched for
        # users of one segment only, this kernel took 1.12x as long on tiered and on 30
        # daily segments, N=256 (whole reads 1.04x and 1.09x)
        if r + 2 * AHEAD < rows.shape[0]:
            u = index[r + 2 * AHEAD]
            if u >= 0:
                for e in range(v_first[u], v_first[u + 1]):
                    prefetch(entries, e * ENTRY_WIDTH)
        if r + AHEAD < rows.shape[0]:
            q = rows[r + AHEAD]
            u = index[r + AHEAD]
            before = 0  # events of the segments before, where their summaries tell
            for e in range(v_first[u], v_first[u + 1]) if u >= 0 else range(0):
                g, e_lo, e_hi = entries[e, E_SEG], entries[e, E_LO], entries[e, E_HI]
                if entries[e, E_TMIN] >= request_ts[q] or max(version[q], version_hi[q]) < ver_b[g]:
                    continue
                if entries[e, E_TMAX] < request_ts[q] and entries[e, E_VMAX] <= version[q]:
                    before += e_hi - e_lo
                    continue
                h = e_lo + max(hint[q] - before, 0)
                prefetch(segment(ts_l, g), h)
                prefetch(segment(vmax_l, g), h - 1)
                prefetch(segment(vmin_l, g), h - 1)
                prefetch(segment(hcum_l, g), h - 1)
                if entries[e, E_VMAX] > version[q]:  # late rows it may not see: where they begin
                    prefetch(segment(lidx_l, g), h // LATE_INDEX_STEP)
        p = rows[r]
        count[p] = 0
        checksum[p] = 0
        merge[p] = False
        p_w0[p] = nw
        p_w1[p] = nw
        u = index[r]  # the pointer's user in the view (-1: none)
        if u < 0:
            continue
        first = nw
        total = 0
        digest = np.uint32(0)
        last = -1  # the entry of the newest window so far
        for e in range(v_first[u], v_first[u + 1]):
            # fields read as entries[e, F], not through a row view entries[e] (1.2x slower here)
            g, e_lo, e_hi = entries[e, E_SEG], entries[e, E_LO], entries[e, E_HI]
            if entries[e, E_TMIN] >= request_ts[p] or max(version[p], version_hi[p]) < ver_b[g]:
                continue  # wholly at or after the request, or newer than the pointer's version
            summarised = entries[e, E_TMAX] < request_ts[p] and entries[e, E_VMAX] <= version[p]
            if summarised:  # wholly before the request and visible: the summary answers
                c, s, hi, holes, late_at = e_hi - e_lo, _range_hash(entries[e, E_HASH]), e_hi, False, 0
                lo = hi - min(c, max_len)
            else:
                c, s, lo, hi, holes, late_at = _locate_range(
                    e_lo, e_hi, segment(ts_l, g), ts_b[g], segment(ver_l, g), segment(vmax_l, g),
                    segment(vmin_l, g), ver_b[g], segment(hcum_l, g), _hash_before(entries[e, E_HASH]),
                    segment_rows(late_l, g), entries[e, E_LATE], segment(lidx_l, g), segment(arr_l, g), arr_b[g],
                    request_ts[p], version[p], version_hi[p], arrival_limit[p], max_len, hint[p] - total, NO_LOWER)
            total += c
            digest += s
            if hi <= lo:
                continue
            # the window's newest time (its row hi - 1 is visible): the merge kernel starts
            # from it without reading a row of each window, most of which it never takes
            top = entries[e, E_TMAX] if summarised else ts_b[g] + np.int64(segment(ts_l, g)[hi - 1])
            # windows of successive segments whose keys do not overlap are the history in
            # pieces: copy each as a slice. Otherwise (late events) the merge kernel orders
            # them. Entry summaries settle most pairs; equal times need the rows' keys.
            if last >= 0 and not merge[p] and entries[e, E_TMIN] <= entries[last, E_TMAX]:
                f = w_seg[nw - 1]
                ts_first = ts_b[g] + np.int64(segment(ts_l, g)[lo])
                ts_last = w_top[nw - 1]
                tb_first = tb_b[g] + np.int64(segment(tb_l, g)[lo]) if has_tb else 0
                tb_last = tb_b[f] + np.int64(segment(tb_l, f)[w_hi[nw - 1] - 1]) if has_tb else 0
                if _key_before(ts_first, tb_first, ts_last, tb_last):
                    merge[p] = True
            last = e
            w_ptr[nw] = p
            w_seg[nw] = g
            w_lo[nw] = lo
            w_hi[nw] = hi
            w_holes[nw] = holes
            w_late[nw] = late_at
            w_top[nw] = top
            w_n[nw] = min(c, max_len)
            nw += 1
        count[p] = total
        checksum[p] = digest
        p_w1[p] = nw
        remaining = min(total, max_len)
        for j in range(nw - 1, first - 1, -1):  # a window with holes cannot start midway
            take = min(w_n[j], remaining)
            remaining -= take
            if w_holes[j] and 0 < take < w_n[j]:
                merge[p] = True
        if merge[p]:
            continue
        remaining = min(total, max_len)
        for j in range(nw - 1, first - 1, -1):  # newest first: each window ends where the next begins
            take = min(w_n[j], remaining)
            remaining -= take
            w_off[j] = remaining
            if not w_holes[j]:
                w_lo[j] = w_hi[j] - take
            w_n[j] = take
        # the oldest windows gave nothing (the newest max_len were found before them): drop them
        drop = 0
        while first + drop < nw and w_n[first + drop] == 0:
            drop += 1
        if drop:
            for j in range(first, nw - drop):
                w_seg[j] = w_seg[j + drop]
                w_lo[j] = w_lo[j + drop]
                w_hi[j] = w_hi[j + drop]
                w_holes[j] = w_holes[j + drop]
                w_late[j] = w_late[j + drop]
                w_n[j] = w_n[j + drop]
                w_off[j] = w_off[j + drop]
                w_top[j] = w_top[j + drop]
            nw -= drop
            p_w1[p] = nw
    return nw


@kernel
def _doubled(runs):  # pragma: no cover - compiled
    """``runs`` in an array twice as wide. A call, not inlined: it is rare."""
    grown = np.empty((4, 2 * runs.shape[1]), np.int64)
    grown[:, :runs.shape[1]] = runs
    return grown


@inline_kernel
def _put_run(runs, k, g, lo, hi, d):  # pragma: no cover - compiled
    """Writes run k (segment, lo, hi, output position) into ``runs`` (one row per field);
    False, writing nothing, when it is full. The kernels that cut runs never reassign
    their runs array inside their loop (an array variable that may be reassigned made
    the whole loop 3-5x slower): when it is full they return where they stopped, and
    their caller goes on from there in one twice as wide."""
    if k == runs.shape[1]:
        return False
    runs[0, k], runs[1, k], runs[2, k], runs[3, k] = g, lo, hi, d
    return True


@kernel
def _by_segment(g_seg, g_lo, g_hi, g_dst, segments):  # pragma: no cover - compiled
    start = np.zeros(segments + 1, np.int64)
    for i in range(g_seg.shape[0]):
        start[g_seg[i] + 1] += 1
    for g in range(segments):
        start[g + 1] += start[g]
    grouped = np.empty((4, g_seg.shape[0]), np.int64)
    for i in range(g_seg.shape[0]):
        j = start[g_seg[i]]
        start[g_seg[i]] += 1
        grouped[0, j], grouped[1, j], grouped[2, j], grouped[3, j] = g_seg[i], g_lo[i], g_hi[i], g_dst[i]
    return grouped


def by_segment(runs: tuple[np.ndarray, ...], segments: int) -> tuple[np.ndarray, ...]:
    """Runs (segment, lo, hi, output position) grouped by segment, in order within each (a
    counting sort): the copy then reads one segment's runs together, while its lines are
    in cache (see ``_gather.copy_plan`` for where that pays)."""
    if segments == 1 or len(runs[0]) < 2:
        return runs
    return tuple(_by_segment(*runs, np.int64(segments)))


@inline_kernel
def _stays(ts, ts_base, tb, tb_base, has_tb, i, key_ts, key_tb, ties_stay):  # pragma: no cover - compiled
    """Whether row i comes after the key (key_ts, key_tb) in the merge's order (newest
    first): a later key, or the same key in a later segment (``ties_stay``)."""
    t = ts_base + np.int64(ts[i])
    b = tb_base + np.int64(tb[i]) if has_tb else np.int64(0)
    return key_ts < t or (key_ts == t and (key_tb < b or (key_tb == b and ties_stay)))


@inline_kernel
def _run_start(ts, ts_base, tb, tb_base, has_tb, lo, i, key_ts, key_tb, ties_stay):  # pragma: no cover - compiled
    """The first row r in [lo, i] such that rows r..i all come after the key (row i does):
    steps of 1, 2, 4, ... down from i, then a binary search in the last step."""
    step = 1
    while i - step >= lo and _stays(ts, ts_base, tb, tb_base, has_tb, i - step, key_ts, key_tb, ties_stay):
        i -= step
        step *= 2
    a = max(lo, i - step + 1)  # rows below a do not stay (or are below lo); row i does
    while a < i:
        mid = (a + i) >> 1
        if _stays(ts, ts_base, tb, tb_base, has_tb, mid, key_ts, key_tb, ties_stay):
            i = mid
        else:
            a = mid + 1
    return i


@kernel
def _merge_view(rows, offsets, p_w0, p_w1, w_seg, w_lo, w_hi, w_holes, w_late, w_top, late_l, ts_l, ts_b, tb_l,
                tb_b, has_tb, ver_l, ver_b, arr_l, arr_b, version, version_hi,
                arrival_limit):  # pragma: no cover - compiled
    """Each pointer's newest events over windows that overlap in time, newest first by
    (time, tie-break, segment order), as runs of consecutive rows of one segment: the
    window holding the newest event gives a run down to the next window's newest (the
    windows kept in key order, so the two are at hand), and a run's end is searched
    for, not stepped to (its invisible rows are late rows, found in ``late_l`` from
    ``w_late``), except for pointers bounded by arrival. Returns the runs (one row per
    field: segment, lo, hi, output position)."""
    runs = np.empty((4, 4 * rows.shape[0] + 16), np.int64)  # grown as needed
    widest = 0
    for r in range(rows.shape[0]):
        widest = max(widest, p_w1[rows[r]] - p_w0[rows[r]])
    cursor = np.empty(widest, np.int64)  # each window's newest unused event: only the window
    key_ts = np.empty(widest, np.int64)  # a run came from moves, so only its key is read again
    key_tb = np.zeros(widest, np.int64)
    # the windows with events left, oldest key first: the newest two are at its end. A scan
    # of every window per run cost 1.6x more on daily segments with late events (30 windows)
    order = np.empty(widest, np.int64)
    k, r = np.int64(0), np.int64(0)  # not literals: a literal argument compiles the callee twice
    while True:
        k, r = _merge_pointers(borrowed(runs), k, r, cursor, key_ts, key_tb, order, rows, offsets, p_w0, p_w1, w_seg,
                               w_lo, w_hi, w_holes, w_late, w_top, late_l, ts_l, ts_b, tb_l, tb_b, has_tb, ver_l, ver_b,
                               arr_l, arr_b, version, version_hi, arrival_limit)
        if r == rows.shape[0]:
            return runs[:, :k]
        runs = _doubled(runs)


@kernel
def _merge_pointers(runs, k, first, cursor, key_ts, key_tb, order, rows, offsets, p_w0, p_w1, w_seg, w_lo, w_hi,
                    w_holes, w_late, w_top, late_l, ts_l, ts_b, tb_l, tb_b, has_tb, ver_l, ver_b, arr_l, arr_b, version,
                    version_hi, arrival_limit):  # pragma: no cover - compiled
    """``_merge_view`` for pointers ``first``... from ``runs[:, k]`` on; returns (runs
    written, pointers done): fewer than all when ``runs`` is full (see ``_put_run``)."""
    for r in range(first, rows.shape[0]):
        if r + AHEAD < rows.shape[0]:  # the newest rows of each window of the pointer AHEAD on: a miss each
            q = rows[r + AHEAD]
            for w in range(p_w0[q], p_w1[q]):
                prefetch(segment(ts_l, w_seg[w]), w_hi[w] - 1)
        p = rows[r]
        start = k  # the runs of this pointer, written again if they do not fit
        j0 = p_w0[p]
        m = p_w1[p] - j0
        for j in range(m):  # a window's newest row is visible: its time is known (w_top)
            cursor[j] = w_hi[j0 + j] - 1
            key_ts[j] = w_top[j0 + j]
            if has_tb:
                key_tb[j] = tb_b[w_seg[j0 + j]] + np.int64(segment(tb_l, w_seg[j0 + j])[cursor[j]])
            t = j  # windows come oldest segment first, so mostly in key order already: few moves
            while t > 0 and _window_before(key_ts[j], key_tb[j], j, key_ts[order[t - 1]], key_tb[order[t - 1]],
                                           order[t - 1]):
                order[t] = order[t - 1]
                t -= 1
            order[t] = j
        left = m
        pos = offsets[p + 1] - 1
        while pos >= offsets[p] and left > 0:  # left == 0 cannot happen: the windows hold every event counted
            best = order[left - 1]
            second = order[left - 2] if left > 1 else -1
            w = j0 + best
            g = w_seg[w]
            i = cursor[best]
            if w_holes[w] and version_hi[p] != version[p]:  # bounded by arrival too: row by row
                ts, tb, ver, arr = segment(ts_l, g), segment(tb_l, g), segment(ver_l, g), segment(arr_l, g)
                top = i  # the run is rows (i, top]
                while pos >= offsets[p] and i >= w_lo[w]:
                    if not _visible(i, ver, ver_b[g], arr, arr_b[g], version[p], version_hi[p], arrival_limit[p]):
                        if top > i:
                            if not _put_run(runs, k, g, i + 1, top + 1, pos + 1):
                                return start, r
                            k += 1
                        i -= 1
                        top = i
                        continue
                    if second >= 0 and not _stays(ts, ts_b[g], tb, tb_b[g], has_tb, i, key_ts[second],
                                                  key_tb[second], best > second):
                        break
                    pos -= 1
                    i -= 1
                if top > i:
                    if not _put_run(runs, k, g, i + 1, top + 1, pos + 1):
                        return start, r
                    k += 1
            else:
                # the rows from i down to the second window's newest key: found by galloping, not
                # row by row (a run is 15-60 rows); invisible rows among them are late rows only
                lo = w_lo[w]
                if second >= 0:
                    lo = _run_start(segment(ts_l, g), ts_b[g], segment(tb_l, g), tb_b[g], has_tb, lo, i,
                                    key_ts[second], key_tb[second], best > second)
                if not w_holes[w]:
                    take = min(i + 1 - lo, pos + 1 - offsets[p])
                    if not _put_run(runs, k, g, i + 1 - take, i + 1, pos + 1 - take):
                        return start, r
                    k += 1
                    pos -= take
                    i -= take
                else:
                    late = segment_rows(late_l, g)
                    kk = _first_at_least(late[:, LATE_ROW], 0, w_late[w], late.shape[0], i + 1) - 1
                    while pos >= offsets[p] and i >= lo:
                        while kk >= w_late[w] and late[kk, LATE_ROW] >= lo and late[kk, LATE_VERSION] <= version[p]:
                            kk -= 1
                        below = late[kk, LATE_ROW] if kk >= w_late[w] and late[kk, LATE_ROW] >= lo else lo - 1
                        take = min(i - below, pos + 1 - offsets[p])
                        if take > 0:
                            if not _put_run(runs, k, g, i + 1 - take, i + 1, pos + 1 - take):
                                return start, r
                            k += 1
                            pos -= take
                            i -= take
                        if i == below and below >= lo:  # an invisible late row: stepped over
                            i -= 1
                            kk -= 1
            # the window's newest visible row below the run, and its key. Written here, not in an
            # inlined helper: one that stepped down and wrote the keys made this kernel 4-8x slower
            if w_holes[w]:
                ver, arr = segment(ver_l, g), segment(arr_l, g)
                while i >= w_lo[w] and not _visible(i, ver, ver_b[g], arr, arr_b[g], version[p], version_hi[p],
                                                    arrival_limit[p]):
                    i -= 1
            cursor[best] = i
            if i >= w_lo[w]:
                key_ts[best] = ts_b[g] + np.int64(segment(ts_l, g)[i])
                if has_tb:
                    key_tb[best] = tb_b[g] + np.int64(segment(tb_l, g)[i])
                # its key went down: moved past the windows now newer (a late event's few). This
                # loop and the one above are written out: as an inlined helper, 1.5x slower
                t = left - 1
                while t > 0 and _window_before(key_ts[best], key_tb[best], best, key_ts[order[t - 1]],
                                               key_tb[order[t - 1]], order[t - 1]):
                    order[t] = order[t - 1]
                    t -= 1
                order[t] = best
            else:
                left -= 1
    return k, rows.shape[0]


@kernel
def _window_runs(w_ptr, w_seg, w_lo, w_hi, w_holes, w_late, w_n, w_off, merge, offsets, ver_l, ver_b, late_l, arr_l,
                 arr_b, version, version_hi, arrival_limit):  # pragma: no cover - compiled
    runs = np.empty((4, 4 * w_ptr.shape[0] + 16), np.int64)  # grown when holes cut windows into more
    k, w = np.int64(0), np.int64(0)
    while True:
        k, w = _cut_windows(borrowed(runs), k, w, w_ptr, w_seg, w_lo, w_hi, w_holes, w_late, w_n, w_off, merge, offsets,
                            ver_l, ver_b, late_l, arr_l, arr_b, version, version_hi, arrival_limit)
        if w == w_ptr.shape[0]:
            return runs[:, :k]
        runs = _doubled(runs)


@kernel
def _cut_windows(runs, k, first, w_ptr, w_seg, w_lo, w_hi, w_holes, w_late, w_n, w_off, merge, offsets, ver_l, ver_b,
                 late_l, arr_l, arr_b, version, version_hi, arrival_limit):  # pragma: no cover - compiled
    """Cuts windows ``first``... into runs from ``runs[:, k]`` on; returns (runs written,
    windows done): fewer than all when ``runs`` is full (see ``_put_run``)."""
    for w in range(first, w_ptr.shape[0]):
        p = w_ptr[w]
        if w_n[w] == 0 or merge[p]:
            continue
        g, lo, hi, d = w_seg[w], w_lo[w], w_hi[w], offsets[p] + w_off[w]
        start = k  # the runs of this window, written again if it does not fit
        if not w_holes[w]:
            if not _put_run(runs, k, g, lo, lo + w_n[w], d):
                return start, w
            k += 1
            continue
        if version_hi[p] == version[p]:  # only late rows can be invisible: runs between them
            late = segment_rows(late_l, g)
            j = w_late[w]
            while j < late.shape[0] and late[j, LATE_ROW] < hi:
                i = late[j, LATE_ROW]
                if late[j, LATE_VERSION] > version[p]:
                    if i > lo:
                        if not _put_run(runs, k, g, lo, i, d):
                            return start, w
                        k += 1
                        d += i - lo
                    lo = i + 1
                j += 1
        else:  # bounded by arrival too: row by row
            ver, vb, arr, ab = segment(ver_l, g), ver_b[g], segment(arr_l, g), arr_b[g]
            for i in range(lo, hi):
                if not _visible(i, ver, vb, arr, ab, version[p], version_hi[p], arrival_limit[p]):
                    if i > lo:
                        if not _put_run(runs, k, g, lo, i, d):
                            return start, w
                        k += 1
                        d += i - lo
                    lo = i + 1
        if hi > lo:
            if not _put_run(runs, k, g, lo, hi, d):
                return start, w
            k += 1
    return k, w_ptr.shape[0]


# A run's copy: a loop over its items, vectorized by LLVM, ends in a scalar loop over the
# items left past its last whole step (up to 4 vectors of them: LLVM unrolls by 4), and
# exits after a number of steps that changes from run to run, mispredicted: runs all 43
# events long copied 1.3x faster than runs of lengths varying about that mean (s44). So a
# run is copied in fixed-size vector moves as memcpy copies short blocks: 64-byte moves,
# the last one ending at the run's end (overlapping the one before: the same items written
# twice), and a run shorter than 64 bytes by two moves of the largest size below it that
# cover it, one from each end. Nothing is read or written outside the run. Against the
# loop (s63, AMD EPYC, AVX2; the benchmark's compacted realistic store's runs replayed,
# alternated in one process): 1.15x faster at N=256, 1.4x on runs of 1-40 items. Where the CPU stores under a mask
# (AVX-512), a run of up to two vectors is instead two masked moves, without a branch on
# its length (a late state's copy 1.26x faster than the loop, a compacted one's 1.05-1.13x,
# s44).
COPY_VECTOR_BYTES = 64  # one AVX-512 register, two AVX2 ones


def _masked_moves() -> bool:
    """Whether the CPU numba compiles for moves vectors under a mask natively (AVX-512
    BW and VL): elsewhere LLVM emulates a masked move lane by lane, slower than a loop."""
    if config.CPU_NAME not in (None, "host") or getattr(config, "CPU_FEATURES", None):  # compiled for another CPU
        return False
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:
        return False
    return bool(features.get("avx512bw") and features.get("avx512vl"))


MASKED_COPY = _masked_moves()


def _vector_lanes(out: types.Array, src: types.Array, nbytes: int = COPY_VECTOR_BYTES) -> int:
    """Items of a vector of ``nbytes`` of the wider array."""
    return max(1, nbytes // (max(_item_bits(out), _item_bits(src)) // 8))


def _intrinsic_name(name: str, vector: ir.VectorType, pointer: ir.Type) -> str:
    """An overloaded LLVM intrinsic's name for a vector and a pointer (opaque or typed)."""
    mangled = f"v{vector.count}i{vector.element.width}"
    return f"{name}.{mangled}.p0" + ("" if str(pointer) == "ptr" else mangled)


def _literal_bytes(nbytes: types.Type) -> int:
    if not isinstance(nbytes, types.IntegerLiteral):
        raise TypingError("a vector move's size in bytes is a constant")
    return nbytes.literal_value


def _check_base(out: types.Array, base: types.Type) -> None:
    if isinstance(base, types.Integer) and base.bitwidth != _item_bits(out):  # copy_runs gives it the output's dtype
        raise TypingError(f"a vector move adds a base of the output's width ({_item_bits(out)} bits), not {base}")


def _move_vector(context, builder, arg_types, args, lanes: int, count=None) -> None:
    """Emits one vector move of ``lanes`` items from ``src`` at ``lo`` to ``out`` at ``d``
    (args: out, d, src, lo, base, add_base), decoded as ``_copy_runs`` decodes (a base added
    to integers where add_base, wrapped to the output's width; anything else bit for bit):
    under a mask of the first ``count`` lanes where a count is given, else whole."""
    out_value, d_value, src_value, lo_value, base_value, add_value = args
    out_type, _, src_type, _, base_type, _ = arg_types
    i32, i64 = ir.IntType(32), ir.IntType(64)
    stored_bits, out_bits = _item_bits(src_type), _item_bits(out_type)
    stored = ir.VectorType(ir.IntType(stored_bits), lanes)
    decoded = ir.VectorType(ir.IntType(out_bits), lanes)
    source = builder.bitcast(_item_address(context, builder, src_type, src_value, lo_value), stored.as_pointer())
    target = builder.bitcast(_item_address(context, builder, out_type, out_value, d_value), decoded.as_pointer())
    mask = None
    if count is not None:
        count = builder.select(builder.icmp_signed("<", count, i64(0)), i64(0), count)
        whole = builder.icmp_signed(">=", count, i64(lanes))
        bits = builder.sub(builder.shl(i64(1), builder.select(whole, i64(0), count)), i64(1))
        bits = builder.select(whole, i64(-1), bits)
        mask = builder.bitcast(builder.trunc(bits, ir.IntType(lanes)), ir.VectorType(ir.IntType(1), lanes))
        load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(stored, [source.type, i32, mask.type, stored]),
            _intrinsic_name("llvm.masked.load", stored, source.type))
        value = builder.call(load, [source, i32(1), mask, ir.Constant(stored, None)])
    else:
        value = builder.load(source, align=1)
    if out_bits > stored_bits:
        value = builder.zext(value, decoded)
    elif out_bits < stored_bits:
        value = builder.trunc(value, decoded)
    if isinstance(base_type, types.Integer):  # a float column's base is never added
        first = builder.insert_element(ir.Constant(decoded, None), base_value, i32(0))
        splat = builder.shuffle_vector(first, ir.Constant(decoded, None),
                                       ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
        value = builder.select(add_value, builder.add(value, splat), value)
    if mask is None:
        builder.store(value, target, align=1)
        return
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [decoded, target.type, i32, mask.type]),
        _intrinsic_name("llvm.masked.store", decoded, target.type))
    builder.call(store, [value, target, i32(1), mask])


@intrinsic
def _copy_vector(typingctx, out, d, src, lo, count, base, add_base):
    """Copies min(count, lanes) items (none where count <= 0) of ``src`` from ``lo`` to
    ``out`` at ``d`` as one masked vector move, lanes filling ``COPY_VECTOR_BYTES`` of the
    wider array. Masked-off lanes touch no memory."""
    _check_base(out, base)
    lanes = _vector_lanes(out, src)

    def codegen(context, builder, signature, args):
        both = signature.args[:4] + signature.args[5:], args[:4] + args[5:]  # without the count
        _move_vector(context, builder, *both, lanes, count=args[4])
        return context.get_dummy_value()
    return types.void(out, d, src, lo, count, base, add_base), codegen


@intrinsic(prefer_literal=True)
def _copy_block(typingctx, out, d, src, lo, base, add_base, nbytes):
    """Copies the ``_lanes(out, src, nbytes)`` items of ``src`` from ``lo`` to ``out`` at
    ``d`` as one vector move (whole: the caller knows they are there)."""
    _check_base(out, base)
    lanes = _vector_lanes(out, src, _literal_bytes(nbytes))

    def codegen(context, builder, signature, args):
        _move_vector(context, builder, signature.args[:6], args[:6], lanes)
        return context.get_dummy_value()
    return types.void(out, d, src, lo, base, add_base, nbytes), codegen


@intrinsic(prefer_literal=True)
def _lanes(typingctx, out, src, nbytes):
    """How many items a vector move of ``nbytes`` of the wider array holds (a constant)."""
    lanes = _vector_lanes(out, src, _literal_bytes(nbytes))
    return (types.int64(out, src, nbytes),
            lambda context, builder, signature, args: context.get_constant(types.int64, lanes))


@inline_kernel
def _copy_pair(out, d, src, lo, n, base, add_base, nbytes):  # pragma: no cover - compiled
    """Copies n items, ``_lanes(out, src, nbytes)`` <= n <= twice that, by two vector moves
    of nbytes, one from each end."""
    lanes = _lanes(out, src, nbytes)
    _copy_block(out, d, src, lo, base, add_base, nbytes)
    _copy_block(out, d + n - lanes, src, lo + n - lanes, base, add_base, nbytes)


@inline_kernel
def _copy_run(out, d, src, lo, n, base, add_base, masked):  # pragma: no cover - compiled
    """Copies n items of ``src`` from ``lo`` to ``out`` at ``d`` (see the note above)."""
    lanes = _lanes(out, src, COPY_VECTOR_BYTES)
    if masked and n <= 2 * lanes:
        _copy_vector(out, d, src, lo, n, base, add_base)
        _copy_vector(out, d + lanes, src, lo + lanes, n - lanes, base, add_base)
    elif n >= lanes:
        i = 0
        while i + lanes < n:
            _copy_block(out, d + i, src, lo + i, base, add_base, COPY_VECTOR_BYTES)
            i += lanes
        _copy_block(out, d + n - lanes, src, lo + n - lanes, base, add_base, COPY_VECTOR_BYTES)
    elif n >= _lanes(out, src, 32):
        _copy_pair(out, d, src, lo, n, base, add_base, 32)
    elif n >= _lanes(out, src, 16):
        _copy_pair(out, d, src, lo, n, base, add_base, 16)
    elif n >= _lanes(out, src, 8):
        _copy_pair(out, d, src, lo, n, base, add_base, 8)
    else:  # under 8 bytes of 1- to 4-byte items
        window = src[lo:lo + n]
        target = out[d:d + n]
        if add_base:
            for i in range(n):
                target[i] = base + window[i]
        else:
            for i in range(n):
                target[i] = window[i]


@kernel
def _copy_runs(g_seg, g_lo, g_hi, g_dst, src_l, base_l, add_base, masked, out):  # pragma: no cover - compiled
    segments = min(src_l[0].shape[0], base_l.shape[0])
    g = g_seg[0]
    if not 0 <= g < segments:
        return 0
    src = segment(src_l, g)
    base = base_l[g]
    for k in range(g_seg.shape[0]):
        if g_seg[k] != g:  # runs of one segment often come together (``by_segment``)
            g = g_seg[k]
            if not 0 <= g < segments:
                return k  # a run names a segment the table lacks: the caller raises
            src = segment(src_l, g)
            base = base_l[g]
        # the run AHEAD is prefetched: from this segment's array at hand, or from its own,
        # fetched from the table only then (fetched for every run, it cost 4-7%); runs
        # left in output order jump between segments (a joined view's partitions), and
        # without it they went unprefetched: 0.8x grouping's speed on short histories (s51B)
        if k + AHEAD < g_seg.shape[0]:
            ahead = g_seg[k + AHEAD]
            if ahead == g:
                prefetch(src, g_lo[k + AHEAD])
            elif 0 <= ahead < segments:
                prefetch(segment(src_l, ahead), g_lo[k + AHEAD])
        # cut at the column's and the output's ends (without a difference that could wrap):
        # a run never reads or writes past them
        lo, hi, d = g_lo[k], min(g_hi[k], src.shape[0]), g_dst[k]
        n = min(hi - lo, out.shape[0] - d) if 0 <= lo < hi and 0 <= d else 0
        _copy_run(out, d, src, lo, n, base, add_base, masked)
    return -1


def copy_runs(runs: tuple[np.ndarray, ...], src: tuple[np.ndarray, ...], bases: np.ndarray, out: np.ndarray,
              masked: bool = MASKED_COPY) -> None:
    """Copies each run (segment, lo, hi, output position) of the segments' stored
    column ``src`` (with its frame-of-reference ``bases``) into ``out``, decoded to
    ``out``'s dtype. Floats are never encoded and are copied bit for bit: adding a zero
    base would turn -0.0 into 0.0 and quieten signalling NaNs. ``masked``: short runs by
    masked vector moves (the default where the CPU has them; the tests take both paths)."""
    stored = src[2].dtype
    if not out.flags.c_contiguous:  # the masked moves address items by position, not by strides
        raise ValueError("copy_runs writes into a C-contiguous output only")
    if "f" in (stored.kind, out.dtype.kind) and stored != out.dtype:
        raise TypeError(f"copy_runs copies floats bit for bit, into their own dtype: not {stored} into {out.dtype}")
    if not len(runs[0]):
        return
    bad = _copy_runs(*runs, src, bases.astype(out.dtype, copy=False), out.dtype.kind != "f", bool(masked), out)
    if bad >= 0:
        raise ValueError(f"run {bad} names segment {int(runs[0][bad])} of a column of {len(src[0])} segments "
                         f"and {len(bases)} bases")


@kernel
def _pad_rows(values, offsets, left, fill, out):  # pragma: no cover - compiled; tests/test_jagged.py's loop
    width = out.shape[1]
    for r in range(out.shape[0]):
        hi = offsets[r + 1]
        keep = min(hi - offsets[r], width)
        at = width - keep if left else 0
        out[r, :at] = fill
        out[r, at:at + keep] = values[hi - keep:hi]
        out[r, at + keep:] = fill


def pad_rows(values: np.ndarray, offsets: np.ndarray, width: int, left: bool, pad_value: object) -> np.ndarray:
    """Each row's newest ``width`` values (rows by ``offsets``), oldest first, in a dense
    (rows, width) array padded with ``pad_value`` on the left or right. Bits are copied as
    they are (a float's NaN payload, -0.0), which lets one compilation per item size serve
    every dtype; numpy's scatter took 8x the time of the read that made the batch (s34C)."""
    if values.dtype.itemsize not in (1, 2, 4, 8):  # no store column is: a batch built by hand
        raise TypeError(f"padded takes columns of 1, 2, 4 or 8-byte items, not {values.dtype}")
    out = np.empty((len(offsets) - 1, width), values.dtype)
    if out.size:
        bits = np.dtype(f"u{values.dtype.itemsize}")
        fill = np.array(pad_value, values.dtype).reshape(1).view(bits)[0]
        _pad_rows(frozen(values).view(bits), frozen(offsets, np.int64), bool(left), fill, out.view(bits))
    return out


@intrinsic
def _popcount(typingctx, word):
    """The number of bits set in a uint64 (one instruction where the CPU has it)."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])
    return types.uint64(types.uint64), codegen


@kernel
def _rank_index(rows, index):  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        r = np.uint64(rows[i])
        index[r >> np.uint64(6), 1] |= np.uint64(1) << (r & np.uint64(63))
    total = np.uint64(0)
    for w in range(index.shape[0]):
        index[w, 0] = total
        total += _popcount(index[w, 1])


def rank_index(rows: np.ndarray, n: int) -> np.ndarray:
    """The rank structure of ``rows``, distinct and sorted in [0, n): per 64 of the n
    places, one cache line's half holding the count of ``rows`` before them and a bit per
    place in ``rows`` (a quarter byte per place). ``remap_ranges`` then answers
    ``searchsorted(rows, x)`` with one memory read instead of a binary search over
    ``rows`` (two per pointer in a filtered read: 40% of its time at 20k users)."""
    rows = np.ascontiguousarray(rows)
    if len(rows) and (rows[0] < 0 or rows[-1] >= n or np.any(rows[1:] <= rows[:-1])):
        raise ValueError(f"rows must be distinct, sorted and in [0, {n})")
    index = np.zeros(((n >> 6) + 1, 2), np.uint64)
    _rank_index(rows, index)
    return index


@inline_kernel
def _rank(index, x):  # pragma: no cover - compiled
    word = np.uint64(x) >> np.uint64(6)
    below = (np.uint64(1) << (np.uint64(x) & np.uint64(63))) - np.uint64(1)
    return np.int64(index[word, 0] + _popcount(index[word, 1] & below))


@kernel
def _remap_ranges(index, lo, hi, out_lo, out_hi):  # pragma: no cover - compiled
    for k in range(lo.shape[0]):
        if k + AHEAD < lo.shape[0]:
            prefetch(index, (lo[k + AHEAD] >> 6) * 2)
            prefetch(index, (hi[k + AHEAD] >> 6) * 2)
        out_lo[k] = _rank(index, lo[k])
        out_hi[k] = _rank(index, hi[k])


def remap_ranges(index: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.searchsorted(rows, lo)`` and ``np.searchsorted(rows, hi)`` from ``rows``'
    ``rank_index`` (of n places), for ranges in [0, n]."""
    out_lo, out_hi = np.empty(len(lo), np.int64), np.empty(len(hi), np.int64)
    lo, hi = np.ascontiguousarray(lo, np.int64), np.ascontiguousarray(hi, np.int64)
    if len(lo) and (min(lo.min(), hi.min()) < 0 or max(lo.max(), hi.max()) >= 64 * len(index)):
        raise ValueError(f"ranges must lie in [0, {64 * len(index) - 1}]")
    _remap_ranges(index, lo, hi, out_lo, out_hi)
    return out_lo, out_hi


@kernel
def _rows_since(w_ptr, w_seg, w_lo, w_hi, ts_l, ts_b, lower, out):  # pragma: no cover - compiled
    for k in range(w_ptr.shape[0]):
        p, g = w_ptr[k], w_seg[k]
        out[p] += w_hi[k] - _first_at_least(segment(ts_l, g), ts_b[g], w_lo[k], w_hi[k], lower[p])


def rows_since(w_ptr: np.ndarray, w_seg: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray,
               ts: tuple[np.ndarray, ...], bases: np.ndarray, lower: np.ndarray, out: np.ndarray) -> None:
    """Adds to ``out[p]``, for each window (pointer p, segment, rows [lo, hi) sorted by
    time), its rows whose time is at least ``lower[p]``: a bound on the events a window
    of time can take from a pointer's windows, whatever their visibility."""
    if len(w_ptr):
        _rows_since(w_ptr, w_seg, w_lo, w_hi, ts, bases, np.ascontiguousarray(lower, np.int64), out)


# ---------------------------------------------------------------- merge with a tail


@kernel
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


# ---------------------------------------------------------------- selection (windows)


@kernel
def _select(c_ptr, c_seg, c_lo, c_hi, c_holes, lower, has_window, max_len,
            ts_l, ts_b, ver_l, ver_b, arr_l, arr_b, version, version_hi, arrival_limit,
            lengths, r_ptr, r_seg, r_lo, r_hi, r_at):  # pragma: no cover - tests/naive.py: select_reference
    """Each pointer's newest ``max_len`` events that are at or after ``lower[p]`` (with
    ``has_window``), from its candidate ranges (grouped by pointer, newest first, each
    ascending rows of one segment; ``c_holes``: check visibility). Writes ``lengths`` and
    the runs of consecutive chosen rows, each with its place in its pointer's output
    (oldest first). Returns (runs, rows scanned one by one)."""
    k = 0
    scanned = 0
    c = 0
    n = c_ptr.shape[0]
    while c < n:
        p = c_ptr[c]
        first_run = k
        taken = 0
        done = False
        while c < n and c_ptr[c] == p:
            if done or taken >= max_len:
                c += 1
                continue
            g, lo, hi = c_seg[c], c_lo[c], c_hi[c]
            if not c_holes[c]:  # a slice: cut by the window, then by length
                a = lo
                if has_window:
                    a = _first_at_least(segment(ts_l, g), ts_b[g], lo, hi, lower[p])
                    done = a > lo
                take = min(hi - a, max_len - taken)
                if take > 0:
                    r_ptr[k], r_seg[k], r_lo[k], r_hi[k], r_at[k] = p, g, hi - take, hi, taken
                    k += 1
                    taken += take
                c += 1
                continue
            run_hi = -1
            run_rank = 0
            i = hi - 1
            ts, tb, ver, vb = segment(ts_l, g), ts_b[g], segment(ver_l, g), ver_b[g]
            arr, ab = segment(arr_l, g), arr_b[g]
            low = lower[p]
            while i >= lo and taken < max_len:
                scanned += 1
                if has_window and tb + np.int64(ts[i]) < low:
                    done = True
                    break
                if _visible(i, ver, vb, arr, ab, version[p], version_hi[p], arrival_limit[p]):
                    if run_hi < 0:
                        run_hi = i + 1
                        run_rank = taken
                    taken += 1
                elif run_hi >= 0:
                    r_ptr[k], r_seg[k], r_lo[k], r_hi[k], r_at[k] = p, g, i + 1, run_hi, run_rank
                    k += 1
                    run_hi = -1
                i -= 1
            if run_hi >= 0:
                r_ptr[k], r_seg[k], r_lo[k], r_hi[k], r_at[k] = p, g, i + 1, run_hi, run_rank
                k += 1
            c += 1
        lengths[p] = taken
        for j in range(first_run, k):  # from ranks (newest first) to places (oldest first)
            r_at[j] = taken - r_at[j] - (r_hi[j] - r_lo[j])
    return k, scanned
