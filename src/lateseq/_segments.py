"""Reading segments: the memory-mapped decoded form, opened through a read cache."""

from __future__ import annotations

import fcntl
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._errors import StoreError
from ._format import SegmentInfo, decode_segment, decode_values, decoded_file, read_ipc
from ._schema import Schema


def _decode_once(directory: Path, info: SegmentInfo, cache: Path) -> dict[str, np.ndarray]:
    """Decodes a segment into ``cache`` and maps it. Processes that need the same segment
    at once (a loader's workers) take turns on a lock file, so one decodes and the others
    map its file."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f".tmp-lock-{info.name}", "a")  # noqa: SIM115 - held for the block below
    except OSError as exc:
        raise StoreError(f"cannot create the read cache {cache} ({exc.strerror}); "
                         "open the store with cache_dir= a writable folder") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return read_ipc(decoded_file(cache, info.name))  # decoded while we waited
        except (OSError, pa.ArrowInvalid):
            decode_segment(directory, info, cache)
            return read_ipc(decoded_file(cache, info.name))


def _identity(path: Path) -> tuple[int, ...] | None:
    """What tells one file at ``path`` from a replacement (None: no file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class SegmentCache:
    """The open segments of one store and read cache, by name; safe under threads.

    Segments are immutable, so one map serves every handle on the store; a decoded file
    replaced on disk (decoded again after damage, or by another process) is noticed on
    the next lookup and mapped again. The least recently used maps are let go (a deleted
    file's space returns when it is unmapped).
    """

    def __init__(self, directory: Path, cache: Path, size: int = 4096):
        self.directory = directory
        self.cache = cache
        self._size = size
        self._open: OrderedDict[str, Segment] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, info: SegmentInfo) -> Segment:
        current = _identity(decoded_file(self.cache, info.name))
        with self._lock:
            segment = self._open.pop(info.name, None)
            if segment is not None and current is not None and segment.identity == current:
                self._open[info.name] = segment
                return segment
        segment = Segment(self.directory, info, self.cache)  # unlocked: decoding may take a while
        with self._lock:
            self._open[info.name] = segment
            while len(self._open) > self._size:
                self._open.popitem(last=False)
        return segment

    def clear(self) -> None:
        with self._lock:
            self._open.clear()


class Segment:
    """An open, memory-mapped segment; columns are zero-copy numpy views."""

    def __init__(self, directory: Path, info: SegmentInfo, cache: Path):
        self.info = info
        decoded = decoded_file(cache, info.name)
        try:
            self._data = read_ipc(decoded)
        except (OSError, pa.ArrowInvalid):  # not decoded here yet, or a truncated copy
            self._data = _decode_once(directory, info, cache)
        self.identity = _identity(decoded)
        index = read_ipc(directory / f"{info.name}.index.arrow")
        self.user_ids: np.ndarray = index["user_id"]
        self.ends: np.ndarray = index["end"]

    @cached_property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)

    def stored(self, name: str) -> np.ndarray:
        return self._data[name]

    def base(self, name: str) -> int:
        return self.info.bases.get(name, 0)

    def encoded(self, name: str | None) -> tuple[np.ndarray | None, int]:
        """(stored, base) of a column, or (None, 0) when no column is named."""
        return (None, 0) if name is None else (self._data[name], self.base(name))

    def decoded(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A column's values (at ``rows`` only, when given: no need to decode the rest)."""
        return decode_values(self._data[name] if rows is None else self._data[name][rows], self.base(name))

    @cached_property
    def _dense_slots(self) -> np.ndarray | None:
        """user id - first id -> index slot, when ids are dense enough to index directly
        (a binary search per user costs cache misses; a direct lookup costs one)."""
        low, high = int(self.user_ids[0]), int(self.user_ids[-1])
        if high - low + 1 > 4 * len(self.user_ids) + 4096:
            return None
        slots = np.full(high - low + 2, len(self.user_ids), np.int64)  # last slot: "absent"
        slots[self.user_ids - low] = np.arange(len(self.user_ids))
        return slots

    def user_ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row range [lo, hi) of each user in this segment; empty where absent."""
        slots = self._dense_slots
        if slots is None:
            pos = np.minimum(np.searchsorted(self.user_ids, users), len(self.user_ids) - 1)
            found = self.user_ids[pos] == users
        else:
            offset = users - self.user_ids[0]
            inside = (offset >= 0) & (offset < len(slots) - 1)
            pos = slots[np.where(inside, offset, len(slots) - 1)]
            found = pos < len(self.user_ids)
            pos = np.minimum(pos, len(self.user_ids) - 1)
        return np.where(found, self.starts[pos], 0), np.where(found, self.ends[pos], 0)

    def hashes(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The stored content hash of each event in rows [lo, hi)."""
        hcum = self._data["_hcum"]
        hi = len(hcum) if hi is None else hi
        before = hcum[lo - 1] if lo > 0 else np.uint32(0)
        return np.diff(hcum[lo:hi], prepend=before).astype(np.uint32)

    def payload(self, name: str, schema: Schema) -> np.ndarray:
        """A payload column decoded to its schema type (bools as uint8)."""
        return self.decoded(name).astype(np.uint8 if schema.columns[name] == "bool" else schema.columns[name])
