"""Reading segments: the memory-mapped decoded form, opened through a read cache."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._compat import cached_property
from ._errors import StoreError, warn_at_caller
from ._events import Events
from ._forks import fork_safe
from ._format import (
    DERIVED_DIR,
    DURABLE_REMEDY,
    MADV_NORMAL,
    MADV_RANDOM,
    NOT_REGULAR,
    REBUILT,
    LaidOut,
    SegmentInfo,
    Unwritten,
    cache_unwritable,
    close_lock_file,
    decode_segment,
    decode_values,
    decoded_file,
    held_segment,
    lock_failure,
    madvise,
    make_cache_folder,
    map_decoded,
    open_lock_file,
    read_index,
    starts_of,
)
from ._kernels import NO_COLUMN, find_users, frozen, hash_slots, late_index, late_rows, segment_table
from ._schema import Schema
from ._watch import SWEEP_S, CacheWatch

REMAPS = [0]  # segments of this process decoded again after a failed digest: a read that saw it move checks
_TRACKED = itertools.count()  # keys of the segments a watch follows: never reused, unlike id()

# what reading a missing, truncated or garbled decoded copy raises
UNREADABLE = (OSError, pa.ArrowException, KeyError, ValueError)


class DamagedCopy(StoreError):
    """A derived copy's column failed its digest: it has no durable file to decode again
    from, and is built again (its builder, finding it so, names the writer it suspects)."""


def _removed_if_empty(folder: Path) -> bool:
    try:
        os.rmdir(folder)
    except OSError:
        return False
    return True


@contextmanager
def lock_idle(path: Path) -> Iterator[bool]:
    """Whether no process holds the lock file ``path`` (a decode's, a build's), which this
    one holds while so; True where it cannot be opened (a folder it cannot write in:
    nothing in it can be removed either)."""
    try:
        lock = open_lock_file(path)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            idle = True
        except BlockingIOError:
            idle = False
        yield idle
    finally:
        close_lock_file(lock)


@contextlib.contextmanager
def cache_lock(folder: Path, name: str, cache: Path | None = None) -> Iterator[None]:
    """Holds the lock file ``name`` of a read cache folder (of the read cache ``cache``, the
    folder itself by default; made if missing): processes that need the same file of the
    cache at once (a loader's workers) take turns, so one writes it and the others map it."""
    while True:
        try:
            stopped = make_cache_folder(folder, folder if cache is None else cache)
            if stopped is not None:
                raise stopped
            lock = open_lock_file(folder / name)
        except StoreError:  # its folder is gone: said as it is
            raise
        except OSError as exc:
            if exc.errno == errno.EISDIR and _removed_if_empty(folder / name):
                continue  # lateseq's own name, nothing of anyone's in it: made a lock file again
            if exc.errno in NOT_REGULAR:  # said with what to do here: remove it
                raise StoreError(f"{folder / name} is not a regular file, where the read cache keeps a lock file "
                                 "(lateseq follows no link there, nor waits on a FIFO): remove it") from exc
            why = lock_failure(exc, "give the read cache a writable folder: cache_dir= (the CLI's --cache-dir, or "
                                    "LATESEQ_CACHE_DIR)", "lateseq follows no link there, nor waits on a FIFO")
            raise StoreError(f"cannot {'write in' if folder.is_dir() else 'create'} the read cache {folder} "
                             f"({exc.strerror} at {Path(exc.filename).name if exc.filename else name}); {why}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as exc:
            close_lock_file(lock)
            raise StoreError(f"cannot lock the read cache {folder} ({exc.strerror} at {name}): its file system "
                             "offers no file locks (flock); give the read cache a folder on a local disk: "
                             "cache_dir= (the CLI's --cache-dir, or LATESEQ_CACHE_DIR)") from exc
        try:
            if os.path.samestat(os.fstat(lock), os.stat(folder / name)):
                break
        except FileNotFoundError:
            pass
        # cleanup removed the lock file (with the copy it guards) while this waited on it:
        # holding the removed one would keep no one else out
        close_lock_file(lock)
    try:
        yield
    finally:
        close_lock_file(lock)


def _refuse_out_of_maps(path: Path, exc: BaseException) -> None:
    """Raises where a map failed for want of address space or map areas (the process's
    ``vm.max_map_count``): decoding the copy again would fail the same way, and a derived
    copy, which has no durable file, was said to be missing, to restore from a backup."""
    if isinstance(exc, OSError) and (exc.errno == errno.ENOMEM or "Cannot allocate memory" in str(exc)):
        try:
            with open("/proc/self/maps", "rb") as maps:
                held = f"; this process holds {sum(1 for _ in maps):,} memory maps"
        except OSError:
            held = ""
        raise StoreError(f"cannot map {path} ({exc}){held}: the process is out of memory maps (vm.max_map_count) "
                         "or address space; fewer handles on fewer versions map fewer files") from exc


DECODE_LOCK = ".tmp-lock-"  # and a segment's name: the lock file its decoders take turns by, in the read cache


def _decode_once(directory: Path, info: SegmentInfo, cache: Path, random_access: bool,
                 damaged: tuple[int, ...] | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Decodes a segment into ``cache`` and maps it, one process at a time (``cache_lock``);
    returns its columns, and whether they are a map.
    ``damaged`` is the identity of a copy that failed verification: it is decoded again
    unless another process replaced it meanwhile. Where the cache cannot take the copy,
    this process holds it in memory (``_held_in_memory``): not a map."""
    path = decoded_file(cache, info.name)
    with ExitStack() as held:
        try:
            held.enter_context(cache_lock(cache, f"{DECODE_LOCK}{info.name}"))
        except StoreError as exc:  # a read-only cache: no lock file can be made, nor a copy
            if not cache_unwritable(exc):
                raise
            return _held_in_memory(decode_segment(directory, info, cache, unlocked=exc), info, cache), False
        if damaged is None or file_identity(path) != damaged:
            try:
                return map_decoded(path, random_access), True  # decoded while we waited
            except UNREADABLE:
                pass
        unwritten = decode_segment(directory, info, cache)
        if unwritten is not None:
            return _held_in_memory(unwritten, info, cache), False
        return map_decoded(path, random_access), True


_IN_MEMORY = [0]  # bytes of decoded copies this process holds in memory, for want of room in their read cache
_IN_MEMORY_LOCK = fork_safe(threading.Lock())
# sizes of copies let go, counted under the lock by the next to take it: a copy's finalizer
# runs wherever its last reference goes, a garbage collection inside the lock included, and
# taking the lock there hung the reader for good (s51C); list.append needs no lock
_RELEASED: list[int] = []
_TOLD_IN_MEMORY: set[Path] = set()  # the read caches whose copies this process was told it holds in memory


def _held_in_memory(unwritten: Unwritten, info: SegmentInfo, cache: Path) -> dict[str, np.ndarray]:
    """A decoded copy the read cache could not take, held by this process for as long as
    it reads it: reads go on (a full disk on a reader's host stopped training until room
    was made, s40F), with a warning once per cache. Refused, naming what to do, where the
    copies held, and this one's decoding (about twice its size at the peak), would take
    more than half the memory available (every process reading the store holds its own)."""
    size = sum(column.nbytes for column in unwritten.columns.values())
    room = "make room there (it holds copies only: `lateseq cleanup` removes those no kept version reads), or " if (
        unwritten.full) else ""
    with _IN_MEMORY_LOCK:
        available = _available_memory()
        if in_memory_bytes(locked=True) + 2 * size > available // 2:
            raise StoreError(
                f"segment {info.name}'s decoded copy cannot be written in the read cache {cache} ({unwritten.reason}), "
                f"nor held in memory: it needs {size / 2**20:.0f} MiB, and this process holds "
                f"{_IN_MEMORY[0] / 2**20:.0f} MiB of such copies already, with {available / 2**20:.0f} MiB of memory "
                "available. A read decodes each segment it reads into the read cache (a compaction or a delete "
                f"reads them too): {room}read through a cache that this process can write and that can hold the "
                "store decoded (cache_dir=, --cache-dir, LATESEQ_CACHE_DIR)")
        _IN_MEMORY[0] += size
        told = cache in _TOLD_IN_MEMORY
        _TOLD_IN_MEMORY.add(cache)
    if not told:
        warn_at_caller(f"lateseq: the read cache {cache} cannot take segment {info.name}'s decoded copy "
                       f"({unwritten.reason}); this process holds it in memory ({size / 2**20:.1f} MiB), and any "
                       "other copy the cache cannot take, each in every process that reads it. Reads go on; "
                       f"{room}give the read cache a folder this process can write that can hold the store decoded "
                       "(cache_dir=, --cache-dir, LATESEQ_CACHE_DIR)")
    for column in unwritten.columns.values():  # (a column kept by a reader, a slice of it too, keeps its memory)
        weakref.finalize(column, _release_memory, column.nbytes)
    return unwritten.columns


def held_copy(folder: Path, name: str, partition: int, events: Events | LaidOut, why: StoreError,
              random_access: bool) -> Segment:
    """A copy made from the store's segments (merged, filtered) that the read cache
    ``folder`` could not take (``why``), held in memory as ``_held_in_memory`` says."""
    info, user_ids, ends, columns = held_segment(name, partition, events)
    columns = _held_in_memory(Unwritten.because(columns, why), info, folder.parent)
    return Segment(folder, info, folder, random_access, held=(user_ids, ends, columns), derived=True)


def _release_memory(size: int) -> None:
    _RELEASED.append(size)


def in_memory_bytes(locked: bool = False) -> int:
    """Bytes of decoded copies this process holds in memory now (``locked``: the caller
    holds ``_IN_MEMORY_LOCK``)."""
    with contextlib.nullcontext() if locked else _IN_MEMORY_LOCK:
        while _RELEASED:
            _IN_MEMORY[0] -= _RELEASED.pop()
        return _IN_MEMORY[0]


def _available_memory() -> int:
    """Bytes of memory this process can still be given: the host's MemAvailable (free and
    reclaimable), or less where a cgroup limits it (a container: the host's figure got a
    stranger's process OOM-killed, s41A)."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo", "rb") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith(b"MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return min(available, _cgroup_room())


_PROC_CGROUP = Path("/proc/self/cgroup")
_CGROUP_FILES = {  # controller -> (its mount, limit, usage, reclaimable page cache in memory.stat)
    "": (Path("/sys/fs/cgroup"), "memory.max", "memory.current", b"file"),  # v2
    "memory": (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", b"total_cache"),
}


def _cgroup_room() -> int | float:
    """The least room (limit - usage + page cache) this process's memory cgroups leave, at
    its own and every level above it (a limit above binds too); inf where none limits."""
    room: int | float = float("inf")
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return room
    for line in lines:
        _, controllers, path = line.split(":", 2)
        found = _CGROUP_FILES.get("memory" if "memory" in controllers.split(",") else controllers)
        if found is None:
            continue
        mount, limit, usage, cache = found
        folder = mount / path.lstrip("/")
        while mount in (folder, *folder.parents):  # from its own up to the mount's (a container's root)
            try:
                stat = (folder / "memory.stat").read_bytes().splitlines()
                cached = next((int(line.split()[1]) for line in stat if line.split()[:1] == [cache]), 0)
                room = min(room, int((folder / limit).read_text()) - int((folder / usage).read_text()) + cached)
            except (OSError, ValueError, IndexError):  # not there (another namespace's path), or "max"
                pass
            if folder == mount:
                break
            folder = folder.parent
    return room


class UserIndex:
    """Sorted, unique user ids, each found by one lookup (``_kernels.find_users``): direct
    where they are dense enough, else through a hash table of their positions (hashed
    64-bit ids, as many services use)."""

    def __init__(self, ids: np.ndarray):
        self.ids = frozen(ids, np.int64)
        dense = len(ids) > 0 and int(ids[-1]) - int(ids[0]) + 1 <= 4 * len(ids) + 4096
        self.hashed = not dense
        self.low = int(ids[0]) if dense else 0
        # positions (-1: absent) in 4 bytes while they fit: a table of 2-4 slots a user is as big as the ids
        dtype = np.int32 if len(ids) < 2**31 else np.int64
        if dense:
            slots = np.full(int(ids[-1]) - self.low + 1, -1, dtype)
            slots[ids - self.low] = np.arange(len(ids))
        else:  # at most half full: a probe or two
            slots = np.full(1 << max(1, (2 * len(ids) - 1).bit_length()), -1, dtype)
            hash_slots(self.ids, slots)
        self.slots = frozen(slots)

    def find(self, users: np.ndarray) -> np.ndarray:
        """Each user's position in ``ids``, or -1."""
        out = np.empty(len(users), np.int64)
        find_users(frozen(users, np.int64), self.ids, np.int64(self.low), self.slots, self.hashed, out)
        return out


def file_identity(path: Path | str) -> tuple[int, ...] | None:
    """What tells one file at ``path`` from a replacement or a file written in place
    (None: no file). The change time, not the modification time: a writer can set the
    latter back, while the kernel moves the former on every write, and only it can."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class SegmentCache:
    """The open segments of one store and read cache, by name; safe under threads.

    Segments are immutable, so one map serves every handle on the store; a decoded file
    replaced on disk (decoded again after damage, or by another process) is noticed on
    the next lookup and mapped again. The least recently used maps are let go, and so are
    those of files removed from the read cache (``forget_removed``).
    """

    def __init__(self, directory: Path, cache: Path, size: int = 4096):
        self.directory = directory
        self.cache = cache
        self.random_access = False  # see ``Segment``; turned on by ``read_at_random``
        self._size = size
        self._open: OrderedDict[str, Segment] = OrderedDict()
        self._paths: dict[str, str] = {}  # a segment's decoded file, as a string: stat'ed every lookup
        self._lock = fork_safe(threading.Lock())
        self.watch = CacheWatch([cache, cache / DERIVED_DIR])  # tells when the stats are needed at all
        _CACHES.add(self)

    def get(self, info: SegmentInfo) -> Segment:
        path = self._paths.get(info.name)
        if path is None:
            path = self._paths[info.name] = str(decoded_file(self.cache, info.name))
        current = file_identity(path)
        with self._lock:
            segment = self._open.pop(info.name, None)
            if segment is not None and (current is None or segment.identity == current):  # gone: see changed
                self._open[info.name] = segment
                return segment
        segment = Segment(self.directory, info, self.cache, self.random_access)  # unlocked: decoding may take a while
        self._keep(info.name, segment)
        return segment

    def _keep(self, name: str, segment: Segment) -> None:
        """Keeps a segment just opened, in place of the least recently used beyond ``size``;
        a process opening segments (moving to new versions) lets go of removed files' maps
        at most every ``SWEEP_S``."""
        self.track(segment)
        with self._lock:
            self._open[name] = segment
            while len(self._open) > self._size:
                self._open.popitem(last=False)
        if time.monotonic() - _forgotten_at >= SWEEP_S:
            forget_removed()

    def _forget_removed(self) -> None:
        with self._lock:
            held = list(self._open.items())
        gone = [(name, segment) for name, segment in held if file_identity(segment.path) != segment.identity]
        with self._lock:
            for name, segment in gone:
                if self._open.get(name) is segment:
                    del self._open[name]
            self._paths = {name: path for name, path in self._paths.items() if name in self._open}

    def track(self, segment: Segment) -> None:
        """Has the watch follow the file ``segment`` maps (the one it maps after decoding
        it again too) while the segment lives: the cache's own, and copies made from them
        elsewhere (filtered copies)."""
        key = next(_TRACKED)
        follow = functools.partial(self.watch.track, key)
        follow(segment.path)
        segment.remapped = follow
        weakref.finalize(segment, self.watch.untrack, key)

    def read_at_random(self) -> None:
        """``random_access`` from now on, for the segments open already too."""
        with self._lock:
            self.random_access = True
            for segment in self._open.values():
                segment.read_at_random()

    def derived(self, name: str, build: Callable[[], Segment]) -> Segment:
        """A segment made from others (a merged copy, checked whole when built or opened):
        kept with the open segments, and built or opened by ``build`` when not open yet or
        when its decoded file changed on disk since."""
        with self._lock:  # looked up in place: taken out meanwhile, another thread's lookup built it again
            segment = self._open.get(name)
            if segment is not None:
                self._open.move_to_end(name)
        if segment is not None and not segment.changed():
            return segment
        segment = build()  # unlocked: merging may take a while
        self._keep(name, segment)
        return segment


_CACHES: weakref.WeakSet[SegmentCache] = weakref.WeakSet()  # every segment cache of this process
_forgotten_at = time.monotonic()


def forget_removed() -> None:
    """Has every segment cache of this process let go of its maps of decoded copies removed
    (or replaced) on disk since they were opened. Cleanup removes a retired version's
    copies, but their room returns only once no process maps them: a long-lived process (a
    streaming trainer moving to each new version, an ingest service, an idle handle beside
    them) kept up to ``size`` of them mapped per cache, and every segment name it had read,
    for good. A handle still reading a retired version holds its segments itself
    (``Store.cleanup``)."""
    global _forgotten_at
    _forgotten_at = time.monotonic()
    for cache in list(_CACHES):
        cache._forget_removed()


class Segment:
    """An open, memory-mapped segment; columns are zero-copy numpy views (of a copy held in
    memory where the read cache cannot take one: ``mapped`` False).

    Each column is checked against its digest the first time it is read; a damaged
    decoded copy is decoded again from the durable files, once, and checked again. With
    ``random_access``, the map is read without the kernel's readahead (``MADV_RANDOM``):
    histories read at random from a store bigger than memory would otherwise pull in up
    to ``read_ahead_kb`` (8 MB on some cloud disks) per page fault. The check reads a
    column whole, with readahead for that while.
    """

    def __init__(self, directory: Path, info: SegmentInfo, cache: Path, random_access: bool = False,
                 held: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None, derived: bool = False):
        """``held``: the user ids, ends and columns of a segment held in memory (``held_copy``).
        ``derived``: a copy made from the store's segments (merged, filtered), which has no
        durable files to decode again: one damaged or missing is an error, which a read
        meets by building it again."""
        self.info = info
        self.derived = derived
        self.random_access = random_access
        self._directory = directory
        self._cache = cache
        self.path = decoded_file(cache, info.name)
        self.sources: tuple[str, ...] = (info.name,)  # the store segments it holds (a derived copy: several)
        if held is not None:
            self.user_ids, self.ends, self._data = held
            self.mapped = False
        else:
            self.user_ids, self.ends = read_index(directory, info, REBUILT if derived else DURABLE_REMEDY)
            try:
                self._data, self.mapped = map_decoded(self.path, random_access), True
            except UNREADABLE as exc:  # not decoded here yet, or a truncated copy
                _refuse_out_of_maps(self.path, exc)
                if derived:
                    raise StoreError(f"the copy {self.path} is missing or unreadable ({exc})") from exc
                self._data, self.mapped = _decode_once(directory, info, cache, random_access)
        self.identity = file_identity(self.path)
        self.remaps = 0  # decoded again after a column failed its digest (a read that began before redoes it)
        self._verified: set[str] = set()
        self._lock = fork_safe(threading.Lock())
        self._found: dict[str, tuple[int, np.ndarray]] = {}  # found from the map (at ``remaps``): ``_of_map``
        self.remapped: Callable[[Path], None] | None = None  # told the file mapped after decoding it again

    def read_at_random(self) -> None:
        """Turns ``random_access`` on for an open segment: its columns' span is advised (a
        copy held in memory has no readahead to stop)."""
        self.random_access = True
        if not self.mapped:
            return
        columns = list(self._data.values())
        first = min((c.ctypes.data for c in columns), default=0)
        madvise(first, max((c.ctypes.data + c.nbytes for c in columns), default=0) - first, MADV_RANDOM)

    @cached_property
    def starts(self) -> np.ndarray:
        return starts_of(self.ends)

    def stored(self, name: str) -> np.ndarray:
        """A column as stored (checked before its first use)."""
        if name not in self._verified:
            self._verify(name)
        return self._data[name]

    def _verify(self, name: str) -> None:
        with self._lock:
            if name in self._verified:
                return
            if not self._sound(name):
                self._decode_again()
                if not self._sound(name):
                    raise StoreError(f"the decoded copy {self.path} of segment {self.info.name} fails its "
                                     f"digest for column {name!r} even after decoding it again; is another "
                                     "process writing into the read cache?")
            self._verified.add(name)

    def recheck(self) -> None:
        """Every column checked so far checked again, and the copy decoded again where one
        fails (``remaps`` then moves: whatever read it before can tell)."""
        with self._lock:
            if not all(self._sound(name) for name in self._verified):
                self._decode_again()

    def _decode_again(self) -> None:
        """The decoded copy is damaged: decoded again, and every column to be checked anew
        (the file this maps, written in place since it was opened, is the damaged one too:
        not a copy another process made). Called with ``_lock`` held."""
        if self.derived:
            raise DamagedCopy(f"the copy {self.path} fails its digests: damaged")
        current = file_identity(self.path)
        mapped = current is not None and self.identity is not None and current[:2] == self.identity[:2]
        self._data, self.mapped = _decode_once(self._directory, self.info, self._cache, self.random_access,
                                               damaged=current if mapped else self.identity)
        self.identity = file_identity(self.path)
        self.remaps += 1
        REMAPS[0] += 1
        if self.remapped is not None:
            self.remapped(self.path)
        self._verified.clear()

    def _sound(self, name: str) -> bool:
        if name not in self.info.decoded:
            raise StoreError(f"segment {self.info.name} has no column {name!r}")
        column = self._data.get(name)
        if not self.random_access or not self.mapped or column is None:
            return self.info.column_sound(name, column)
        madvise(column.ctypes.data, column.nbytes, MADV_NORMAL)  # read whole: with readahead
        try:
            return self.info.column_sound(name, column)
        finally:  # like the rest of the map again, which the kernel then keeps as one area
            madvise(column.ctypes.data, column.nbytes, MADV_RANDOM)

    def changed(self) -> bool:
        """Whether the decoded file on disk was replaced or rewritten since this segment
        checked it. A file gone from the cache (a retired version's, cleaned up) is not: a
        deleted file lives on while mapped, so the map still holds the bytes checked, and a
        handle on a retired version keeps reading what it mapped (``Store.cleanup``)."""
        current = file_identity(self.path)
        return current is not None and current != self.identity

    def overwritten(self) -> bool:
        """Whether the file this segment maps may have been written since it was checked:
        written in place, or replaced. A replacement alone leaves the map holding the bytes
        checked, but a reader that found the copy written in place decodes it again and
        renames the sound copy over it: taken for a plain replacement, the bytes written
        into the map before were returned, unflagged (s54A). One gone before it was first
        looked at (``identity`` None: a retired version's copy, cleaned up as it was
        mapped) was not written: what is at its path now is another file."""
        return self.identity is not None and self.changed()

    def intact(self) -> bool:
        """Whether every column checked so far still passes its digest: a pass over each,
        for what a derived copy was just built from (a write in the same clock tick as the
        map moves no time a stat can see)."""
        with self._lock:
            return all(self.info.column_sound(name, self._data[name]) for name in self._verified)

    def base(self, name: str) -> int:
        return self.info.bases.get(name, 0)

    def encoded(self, name: str | None) -> tuple[np.ndarray | None, int]:
        """(stored, base) of a column, or (None, 0) when no column is named."""
        return (None, 0) if name is None else (self.stored(name), self.base(name))

    def decoded(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A column's values (at ``rows`` only, when given: no need to decode the rest)."""
        column = self.stored(name)
        return decode_values(column if rows is None else column[rows], self.base(name))

    @property
    def late(self) -> np.ndarray:
        """Rows that arrived after a later row of their user (see ``late_rows``)."""
        return self._of_map("late", lambda: late_rows(self.stored("_version"), self.stored("_vmax"),
                                                      self.stored("_vmin"), self.base("_version"),
                                                      self.stored("_hcum")))

    @property
    def late_index(self) -> np.ndarray:
        """Where ``late`` rows begin, per block of rows (see ``late_index``)."""
        # the rows read, whatever the info says
        return self._of_map("late_index", lambda: late_index(self.late, len(self.stored("_version"))))

    def _of_map(self, name: str, find: Callable[[], np.ndarray]) -> np.ndarray:
        """``find()``, kept for the map it was found in. Kept as a cached property, a value
        found from a damaged map while another thread decoded the copy again was stored
        after that thread dropped the old one, and served with the new map for good."""
        remaps = self.remaps
        known = self._found.get(name)
        if known is not None and known[0] == remaps:
            return known[1]
        value = find()
        self._found[name] = (remaps, value)
        return value

    @cached_property
    def index(self) -> UserIndex:
        return UserIndex(self.user_ids)

    def user_ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row range [lo, hi) of each user in this segment; empty where absent."""
        pos = self.index.find(users)
        found = pos >= 0
        pos = np.maximum(pos, 0)
        return np.where(found, self.starts[pos], 0), np.where(found, self.ends[pos], 0)

    def hashes(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The stored content hash of each event in rows [lo, hi)."""
        hcum = self.stored("_hcum")
        hi = len(hcum) if hi is None else hi
        before = hcum[lo - 1] if lo > 0 else np.uint32(0)
        return np.diff(hcum[lo:hi], prepend=before).astype(np.uint32)

    def payload(self, name: str, schema: Schema) -> np.ndarray:
        """A payload column decoded to its schema type (bools as uint8)."""
        return self.decoded(name).astype(np.uint8 if schema.columns[name] == "bool" else schema.columns[name])


def column_table(segments: list[Segment], name: str | None) -> tuple[tuple[np.ndarray, ...], np.ndarray,
                                                                    list[np.ndarray]]:
    """(segment table, bases, arrays) of a stored column across ``segments``
    (``_kernels.segment_table``; no column: empty ones), of one dtype: a segment stored
    narrower than the others is widened in memory (rare). The arrays must outlive the table."""
    arrays = [NO_COLUMN] * len(segments) if name is None else [s.stored(name) for s in segments]
    common = np.result_type(*arrays)
    arrays = [a if a.dtype == common else a.astype(common) for a in arrays]
    bases = np.array([0 if name is None else s.base(name) for s in segments], np.int64)
    return segment_table(arrays), bases, arrays
