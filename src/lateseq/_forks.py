"""Locks that a forked child finds free.

A process forked while another of its threads held a lock (a DataLoader forking its
workers while an in-process loader's prefetch thread built a view or checked a column)
gives the child that lock held by a thread the child does not have: the child's first
use of it waited forever. The child gets every lock registered here free again, as
``logging`` does with its handlers' locks; what the lock guarded is as the other thread
left it, each step of it whole (the child redoes a check or a view it finds missing).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TypeVar

L = TypeVar("L", type(threading.Lock()), type(threading.RLock()))

_LOCKS: weakref.WeakSet = weakref.WeakSet()


def fork_safe(lock: L) -> L:
    """``lock``, free again in a forked child."""
    _LOCKS.add(lock)
    return lock


def _free_in_child() -> None:
    for lock in list(_LOCKS):
        lock._at_fork_reinit()


os.register_at_fork(after_in_child=_free_in_child)
