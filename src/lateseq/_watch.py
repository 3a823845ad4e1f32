"""Whether a read cache's files may have changed, told by one system call per batch.

A reader checks that each decoded file it uses is still the one it verified (a stat per
file: replaced, or written in place). A batch over many partitions uses hundreds of
files, and those stats cost more than the read (a store of 1024 partitions read 1.5x
slower for them alone). On Linux, an inotify watch on the cache's folders reports every
write, rename and removal there: while it reports nothing, nothing needs a stat.

Where no watch can be trusted (not Linux, a network or unknown filesystem whose writers
may be other hosts, no inotify instance left), every look says "maybe changed", which is
a stat per file per batch, as before. Writes through a shared map of a file are not
reported by inotify: every file is looked at again at least every ``SWEEP_S`` seconds.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
import time
from pathlib import Path

SWEEP_S = 1.0  # the longest a change inotify cannot report goes unnoticed

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_UNMOUNT, _IN_Q_OVERFLOW, _IN_IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
_WATCHED = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
            | _IN_DELETE_SELF | _IN_MOVE_SELF)
_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED  # the watch itself ended
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length

# filesystems whose every writer is a process of this host, which inotify then hears
_LOCAL_FILESYSTEMS = frozenset({
    0xEF53,  # ext2/3/4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x794C7630,  # overlayfs (containers)
    0x2FC12FC1,  # zfs
    0xF2F52010,  # f2fs
})
_TEMPORARY = b".tmp-"  # temporaries and lock files of the cache: never read as data
_libc = ctypes.CDLL(None, use_errno=True)


class _Inotify:
    """One inotify instance per process (an instance is a scarce per-user resource), its
    watches shared by every cache watched: each watch descriptor counts its events."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.counts: dict[int, int] = {}  # watch descriptor -> events seen
        self.overflows = 0  # events lost: every watch counts as changed
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)  # -1: none left for this user

    def add(self, directory: Path) -> int | None:
        """A watch on ``directory``, or None: missing, or where inotify cannot be trusted."""
        if not directory.is_dir() or _filesystem(directory) not in _LOCAL_FILESYSTEMS:
            return None
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), _WATCHED)
        if wd < 0:
            return None
        self.counts.setdefault(wd, 0)
        return wd

    def poll(self) -> None:
        """Counts the events that arrived since the last poll."""
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size:at + _EVENT.size + length]
                at += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.overflows += 1
                elif mask & _GONE:  # the folder went or moved: its watch is no more
                    self.counts.pop(wd, None)
                elif wd in self.counts and not name.startswith(_TEMPORARY):
                    self.counts[wd] += 1


_instance: _Inotify | None = None
_lock = threading.Lock()


def _inotify() -> _Inotify | None:
    """This process's instance (a forked child makes its own: reading the inherited one
    would take the events its parent waits for)."""
    global _instance
    if sys.platform != "linux":
        return None
    if _instance is None or _instance.pid != os.getpid():
        _instance = _Inotify()
    return _instance if _instance.fd >= 0 else None


class CacheWatch:
    """The folders of one read cache (the first holding the others), watched:
    :meth:`generation` changes whenever a file in them may have changed since the last call."""

    def __init__(self, directories: list[Path]):
        self._directories = directories
        self._generation = 0
        self._wds: list[int] | None = None  # None: not watched
        self._pid = -1  # the process the watches belong to
        self._tried = -SWEEP_S  # when watching was last tried
        self._seen: tuple[int, ...] = ()
        self._swept = -SWEEP_S

    def generation(self) -> int:
        """A number that stays the same only while no file in the folders changed (and
        for at most ``SWEEP_S``): what a reader checked at this number is still true."""
        with _lock:
            now = time.monotonic()
            watcher = _inotify()
            if watcher is not None and (self._pid != watcher.pid or (self._wds is None and now - self._tried >= SWEEP_S)):
                self._watch(watcher, now)
            if self._wds is not None:
                watcher.poll()
                seen = self._counts(watcher)
                if seen != self._seen:
                    self._seen = seen
                    self._generation += 1
                    if self._wds is not None and len(self._wds) < len(self._directories):
                        self._watch(watcher, now)  # a folder missing before may have been made
            if self._wds is None or now - self._swept >= SWEEP_S:
                self._generation += 1  # nothing reports changes, or time to look at every file again
                self._swept = now
            return self._generation

    def _watch(self, watcher: _Inotify, now: float) -> None:
        """Watches the folders that exist (a missing one is made in the first, which is
        watched); changes before the watch are what the next bump has readers check."""
        wds = [watcher.add(d) for d in self._directories]
        wds = None if wds[0] is None else [wd for wd in wds if wd is not None]
        if wds != self._wds or self._pid != watcher.pid:
            self._wds, self._seen = wds, ()
        self._tried, self._pid = now, watcher.pid

    def _counts(self, watcher: _Inotify) -> tuple[int, ...]:
        if any(wd not in watcher.counts for wd in self._wds):  # a folder removed or moved: no longer watched
            self._wds = None
            return (-1,)
        return (watcher.overflows, *(watcher.counts[wd] for wd in self._wds))


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def _filesystem(directory: Path) -> int | None:
    """The filesystem type number of ``directory`` (Linux ``statfs``), or None."""
    buffer = _StatFs()
    if _libc.statfs(os.fsencode(directory), ctypes.byref(buffer)) != 0:
        return None
    return buffer.f_type & 0xFFFFFFFF
