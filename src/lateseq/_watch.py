"""Whether a read cache's files may have changed, told by one system call per batch.

A reader checks that each decoded file it uses is still the one it verified (a stat per
file: replaced, or written in place). A batch over many partitions uses hundreds of
files, and those stats cost more than the read (a store of 1024 partitions read 1.5x
slower for them alone). On Linux, inotify watches on the cache's folders (renames,
removals, writes by name) and on every decoded file a reader has mapped (writes through
any name of it: a hard link elsewhere too) report each change: while they report
nothing, nothing needs a stat.

Where no watch can be trusted (not Linux, a network or unknown filesystem whose writers
may be other hosts, no inotify instance or watch left), every look says "maybe changed",
which is a stat per file per batch, as before. A write through a shared map of a file is
not reported by inotify: every file is looked at again at least every ``SWEEP_S``
seconds, which finds such a write when it moved the file's change time (the first write
to a clean page does; later ones to a page already dirty do not, and no stat sees them).
"""

from __future__ import annotations

import array
import collections
import ctypes
import fcntl
import os
import struct
import sys
import termios
import threading
import time
from pathlib import Path

from ._forks import fork_safe
from ._format import LIBC

SWEEP_S = 1.0  # the longest a change inotify cannot report goes unnoticed

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_UNMOUNT, _IN_IGNORED = 0x400, 0x800, 0x2000, 0x8000
_FILE_EVENTS = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF
_FOLDER_EVENTS = _FILE_EVENTS | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
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
_TEMPORARY = b".tmp-"  # temporaries and lock files in a watched folder: never mapped by a reader


class _Inotify:
    """One inotify instance per process (an instance is a scarce per-user resource), its
    watches shared by every read cache watched and counted by their users."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.events = 0  # changes heard so far, on anything watched (never goes back)
        self.gone: set[int] = set()  # watches that ended (their folder or file went)
        self._users: dict[int, int] = {}  # watch descriptor -> how many hold it
        self.fd = LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)  # -1: none left for this user
        self._pending = array.array("i", [0])  # bytes waiting to be read, as FIONREAD tells

    def add(self, path: Path, folder: bool) -> int | None:
        """A watch on ``path`` (a folder: its entries too), or None: missing, or where
        inotify cannot be trusted."""
        if not (path.is_dir() if folder else path.is_file()) or _filesystem(path) not in _LOCAL_FILESYSTEMS:
            return None
        wd = LIBC.inotify_add_watch(self.fd, os.fsencode(path), _FOLDER_EVENTS if folder else _FILE_EVENTS)
        if wd < 0:
            return None
        self.gone.discard(wd)
        self._users[wd] = self._users.get(wd, 0) + 1
        return wd

    def release(self, wd: int) -> None:
        self._users[wd] -= 1
        if not self._users[wd]:
            del self._users[wd]
            self.gone.discard(wd)
            LIBC.inotify_rm_watch(self.fd, wd)

    def poll(self) -> None:
        """Counts the changes heard since the last poll (a read that finds none raises,
        which cost a batch more than the ioctl that asks first)."""
        while True:
            fcntl.ioctl(self.fd, termios.FIONREAD, self._pending)
            if not self._pending[0]:
                return
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size:at + _EVENT.size + length]
                at += _EVENT.size + length
                if mask & _GONE and wd in self._users:  # not the end of one let go (rm_watch ends it too)
                    self.gone.add(wd)
                if not name.startswith(_TEMPORARY):  # a queue overflow (no name) counts too
                    self.events += 1


_instance: _Inotify | None = None
_lock = fork_safe(threading.Lock())  # free in a forked child: a thread of the parent may have held it


def _after_fork() -> None:
    """A forked child starts without the parent's instance (its copy of the descriptor
    closed: the parent's stays open)."""
    global _instance
    if _instance is not None and _instance.fd >= 0:
        os.close(_instance.fd)
    _instance = None


os.register_at_fork(after_in_child=_after_fork)


def _inotify() -> _Inotify | None:
    """This process's instance (a forked child makes its own: reading the inherited one
    would take the events its parent waits for; the pid check covers a fork that skipped
    ``register_at_fork``, as ``os.fork`` from C does)."""
    global _instance
    if sys.platform != "linux":
        return None
    if _instance is None or _instance.pid != os.getpid():
        _instance = _Inotify()
    return _instance if _instance.fd >= 0 else None


class CacheWatch:
    """A read cache's folders (the first holding the others) and the files its readers
    mapped, watched: :meth:`generation` changes whenever one of them may have changed
    since the last call."""

    def __init__(self, folders: list[Path]):
        self._folders = folders
        self._held: dict[Path, int] = {}  # the folders' watches, in process ``_pid``
        self._files: dict[int, tuple[Path, int | None]] = {}  # tracked key -> (file, its watch)
        self._released: collections.deque[int] = collections.deque()  # keys untracked, not yet let go
        self._active = False  # every folder that exists and every tracked file watched
        self._pid = -1
        self._generation = 0
        self._tried = -SWEEP_S  # when watching was last tried
        self._seen = -1
        self._swept = -SWEEP_S

    def generation(self) -> int:
        """A number that stays the same only while nothing watched changed (and for at
        most ``SWEEP_S``): what a reader checked at this number is still true."""
        with _lock:
            now = time.monotonic()
            watcher = _inotify()
            self._settle(watcher)
            if watcher is None:
                self._active = False
            elif self._pid != watcher.pid or (not self._active and now - self._tried >= SWEEP_S):
                self._watch(watcher, now)
            if self._active:
                watcher.poll()
                if any(wd in watcher.gone for wd in self._held.values()):  # a folder removed or moved
                    self._active = False
                elif watcher.events != self._seen:
                    self._seen = watcher.events
                    self._generation += 1
                    for folder in self._folders[1:]:  # made since? (in the first, which reports it)
                        if folder not in self._held and (wd := watcher.add(folder, folder=True)) is not None:
                            self._held[folder] = wd
            if not self._active or now - self._swept >= SWEEP_S:
                self._generation += 1  # nothing reports changes, or time to look at every file again
                self._swept = now
            return self._generation

    def track(self, key: int, path: Path) -> None:
        """Watches the file a reader (``key``, never reused) just mapped at ``path``, in
        place of the one it mapped before. What changed between the reader's own look at the file and the
        watch is looked at once more: the generation moves."""
        with _lock:
            watcher = _inotify()
            self._settle(watcher)
            self._forget(key, watcher)
            wd = None
            if watcher is not None and self._active and self._pid == watcher.pid:
                wd = watcher.add(path, folder=False)
                self._active = wd is not None  # a file read here that no watch covers: unwatched
            self._files[key] = (path, wd)
            self._generation += 1

    def untrack(self, key: int) -> None:
        """The reader ``key`` let its file go. Called by a finalizer, which the garbage
        collector may run inside a locked call of this very thread: the watch is let go at
        the next call (taking the lock here would wait forever)."""
        self._released.append(key)

    def _settle(self, watcher: _Inotify | None) -> None:
        while self._released:
            self._forget(self._released.popleft(), watcher)

    def _forget(self, key: int, watcher: _Inotify | None) -> None:
        _, wd = self._files.pop(key, (None, None))
        if wd is not None and watcher is not None and self._pid == watcher.pid:
            watcher.release(wd)

    def _watch(self, watcher: _Inotify, now: float) -> None:
        """Watches the folders that exist (a missing one is made in the first, which is
        watched) and every tracked file, in this process; what changed before is what the
        next bump has readers look at."""
        if self._pid == watcher.pid:  # let this process's watches go first
            for wd in [*self._held.values(), *(wd for _, wd in self._files.values() if wd is not None)]:
                watcher.release(wd)
        folders = {folder: watcher.add(folder, folder=True) for folder in self._folders}
        self._files = {key: (path, watcher.add(path, folder=False)) for key, (path, _) in self._files.items()}
        self._held = {folder: wd for folder, wd in folders.items() if wd is not None}
        self._active = self._folders[0] in self._held and all(wd is not None for _, wd in self._files.values())
        self._tried, self._pid, self._seen = now, watcher.pid, -1


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def _filesystem(path: Path) -> int | None:
    """The filesystem type number of ``path`` (Linux ``statfs``), or None."""
    buffer = _StatFs()
    if LIBC.statfs(os.fsencode(path), ctypes.byref(buffer)) != 0:
        return None
    return buffer.f_type & 0xFFFFFFFF
