"""Output arrays a loader reuses from one read to the next.

A read's outputs are megabytes of fresh memory, and fresh memory is paid twice: the
allocator hands back pages the kernel must fault in and zero (glibc gives large blocks
back to the system when they are freed), and they come cold into the CPU's caches. A
loader spent 10-25% of its time there, as much as the allocator had not kept of freed
memory (ExampleDataset at N=256: 2.0M examples/s fresh, 2.65M reused; 2.5M and 2.8M in a
reviewer's longer passes). Loaders lend a ``Recycler`` to the reads they make
(``recycling``); the reads take their output arrays from it through ``empty``, which gives
out an array again only once nothing else holds it: a batch the caller kept, a tensor made
from one, or an Arrow array over one keeps its array from being written over.

A pass's arrays outlive it as spares (``SPARE_BYTES`` in all), which the next pass in the
process takes first, each once nothing else holds it: glibc gave them back to the system
when the pass ended, and a new pass faulted every page in again (2,400 faults, about
10 ms a pass: a pass over 20,000 examples read 2.1x slower at N=256 than one whose
arrays were kept).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Hashable, Iterator
from contextvars import ContextVar
from typing import Protocol

import numpy as np

from ._forks import fork_safe


class Lender(Protocol):
    """What a read takes its output arrays from (a ``Recycler``, or a loader worker's
    shared buffer that its batch then crosses to the trainer in)."""

    def empty(self, key: Hashable, size: int, dtype: np.dtype | type) -> np.ndarray: ...


_LENT: ContextVar[Lender | None] = ContextVar("lateseq_recycler", default=None)


def _references(held: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(held[i])


# what ``_references`` counts for an array only the recycler holds (its list, and the call's
# own): measured, not assumed, as interpreters count borrowed references differently
_UNSHARED = _references([np.empty(1)], 0)


SPARE_BYTES = 64 << 20  # kept between passes: what a pass keeps, its depth (4) of reads of READ_BYTES
_spares: list[np.ndarray] = []  # arrays of ended passes, the latest first (one still in use: taken once let go)
_spares_lock = fork_safe(threading.Lock())


def _keep_spares(held: dict[Hashable, list[np.ndarray]]) -> None:
    """A recycler's arrays (its pass ended), kept as spares, the latest first, as many as
    ``SPARE_BYTES`` holds: those the caller still holds too (its last batch, in the loop's
    variable) are taken once it lets go. Called as the recycler is collected, which may
    happen while this thread takes a spare: where the lock is taken, nothing is kept
    (never a deadlock)."""
    ended = [array for arrays in held.values() for array in reversed(arrays)]
    if not ended or not _spares_lock.acquire(blocking=False):
        return
    # no new object the collector counts is made while the lock is held: a collection could
    # close a loader whose prefetch thread waits for the lock (s53A)
    try:
        _spares[:0] = ended
        total = i = 0
        while i < len(_spares):
            if total + _spares[i].nbytes <= SPARE_BYTES:
                total += _spares[i].nbytes
                i += 1
            else:
                del _spares[i]
    finally:
        _spares_lock.release()


def _take_spare(need: int) -> np.ndarray | None:
    """The latest free spare of ``need`` bytes to twice that (``Recycler.empty``'s rule),
    taken (nothing the collector counts is made while the lock is held: see ``_keep_spares``)."""
    with _spares_lock:
        for i in range(len(_spares)):
            if need <= _spares[i].nbytes <= 2 * need and _references(_spares, i) == _UNSHARED:
                return _spares.pop(i)
    return None


def _forget_spares() -> None:
    """In a forked child: no spares (the parent's, copied on write; its lock is free there,
    ``fork_safe``)."""
    _spares.clear()


os.register_at_fork(after_in_child=_forget_spares)


class Recycler:
    """Keeps, for each kind of output (``key``), the last ``depth`` arrays it gave out, to
    give each out again once it is free. ``depth`` covers the reads alive at once: the one
    the caller uses, the one before whose last batch it still holds, one rebuilt ahead.
    A loader makes one per pass over its log; what it keeps waits, when the pass ends, for
    the next pass as spares."""

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._held: dict[Hashable, list[np.ndarray]] = {}
        self._lock = fork_safe(threading.Lock())
        weakref.finalize(self, _keep_spares, self._held)

    def empty(self, key: Hashable, size: int, dtype: np.dtype | type) -> np.ndarray:
        """An uninitialized array of ``size`` items of ``dtype``: a free one of ``key``'s
        that is big enough and at most twice the size (a small batch kept must not keep a
        big read's array), the one given out last first (its lines are likeliest to be in
        the caches); else a new one, a quarter bigger or as big as the biggest kept where
        that is under twice the size: reads differ in size, and each then fits the next.
        A new one is a spare of an ended pass where one fits."""
        dtype = np.dtype(dtype)
        need = size * dtype.itemsize
        if need == 0:
            return np.empty(0, dtype)
        with self._lock:
            held = self._held.setdefault(key, [])
            for i in reversed(range(len(held))):
                if need <= held[i].nbytes <= 2 * need and _references(held, i) == _UNSHARED:
                    held.append(held.pop(i))
                    return held[-1][:need].view(dtype)
            room = [a.nbytes for a in held if a.nbytes <= 2 * need]
            spare = _take_spare(need)
            held.append(np.empty(max([need + need // 4, *room]), np.uint8) if spare is None else spare)
            if len(held) > self.depth:
                free = [i for i in range(len(held) - 1) if _references(held, i) == _UNSHARED]
                del held[free[0] if free else 0]  # one in use lives on with its users, no longer reused
            return held[-1][:need].view(dtype)


def empty(key: Hashable, size: int, dtype: np.dtype | type) -> np.ndarray:
    """An output array from the recycler lent to this read, or a new one outside a loader."""
    recycler = _LENT.get()
    if recycler is None:
        return np.empty(size, dtype)
    return recycler.empty(key, size, dtype)


@contextlib.contextmanager
def recycling(recycler: Lender) -> Iterator[None]:
    """Lends ``recycler`` to the reads made in this block (in this thread)."""
    token = _LENT.set(recycler)
    try:
        yield
    finally:
        _LENT.reset(token)
