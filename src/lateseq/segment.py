"""Segments: the immutable, memory-mapped data files of a store.

A segment holds one partition's events sorted by (user, time, tie-break), as an
uncompressed Arrow IPC file with a single record batch so every column maps straight
into numpy. Integer columns are frame-of-reference encoded (``value = base + stored``,
``stored`` in the narrowest unsigned type that fits), which keeps random access and
roughly halves the bytes of timestamps and ids. The user column is not stored per
event: a small index file maps each user to its row range. Three system columns ride
along: ``_version`` (the version in which the event became visible), ``_vmax`` (its
running maximum within the user, so "is everything before this row visible?" is one
lookup) and ``_hcum`` (running sum of event hashes, so a range checksum is one
subtraction).
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from .kernels import _mix64, event_hashes
from .schema import Schema

TIME = "_ts"  # the time column's name in segments, whatever the schema calls it
SYSTEM_COLUMNS = ("_version", "_vmax", "_hcum")
SEGMENT_FILES = (".arrow", ".index.arrow")
_UNSIGNED = (np.uint8, np.uint16, np.uint32)


def partition_of(users: np.ndarray, partitions: int) -> np.ndarray:
    """The user-hash partition of each user (stable across processes and machines)."""
    if partitions == 1:
        return np.zeros(len(users), np.int64)
    with np.errstate(over="ignore"):
        return (_mix64(users.astype(np.int64).view(np.uint64)) % np.uint64(partitions)).astype(np.int64)


@dataclass
class Events:
    """Decoded, sorted event columns of one partition, on their way into a segment."""

    user: np.ndarray
    ts: np.ndarray
    payload: Mapping[str, np.ndarray]
    version: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, order: np.ndarray) -> Events:
        return Events(
            self.user[order], self.ts[order], {k: v[order] for k, v in self.payload.items()},
            self.version[order], self.hashes[order],
        )

    @classmethod
    def from_table(cls, table: pa.Table, schema: Schema, version: int) -> Events:
        """Conformed commit input, in input order, every event stamped with ``version``."""
        user = table.column(schema.user_col).to_numpy()
        ts = table.column(schema.time_col).to_numpy()
        payload = {name: column_numpy(table.column(name)) for name in schema.columns}
        hashes = event_hashes(user, ts, list(payload.values()))
        return cls(user, ts, payload, np.full(len(user), version, np.uint32), hashes)

    def first_deliveries(self, event_id: str, known: tuple[np.ndarray, np.ndarray]) -> Events:
        """Drops redeliveries: rows whose (user, event id) is ``known`` or came earlier."""
        return self.take(np.flatnonzero(first_deliveries(self.user, self.payload[event_id], *known)))

    def sorted(self, tiebreak: str | None) -> Events:
        """Stable sort by (user, time, tie-break): equal keys keep their current order."""
        keys = [self.ts, self.user]
        if tiebreak is not None:
            keys.insert(0, self.payload[tiebreak])
        return self.take(np.lexsort(keys))


def row_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Every row index of the ranges [lo[i], hi[i]), concatenated in order."""
    sizes = hi - lo
    return np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())


def first_deliveries(user: np.ndarray, ids: np.ndarray, known_user: np.ndarray,
                     known_ids: np.ndarray) -> np.ndarray:
    """Mask of rows that are the first delivery of their (user, event id), counting
    the ``known`` pairs (already stored) as delivered before every row."""
    all_user = np.concatenate([known_user, user])
    all_ids = np.concatenate([known_ids, ids])
    order = np.lexsort((np.arange(len(all_user)), all_ids, all_user))
    u, e = all_user[order], all_ids[order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (u[1:] == u[:-1]) & (e[1:] == e[:-1])
    seen = np.zeros(len(all_user), bool)
    seen[order] = repeat
    return ~seen[len(known_user):]


@dataclass(frozen=True)
class SegmentInfo:
    """A segment's entry in a version manifest."""

    name: str
    partition: int
    rows: int
    users: int
    min_version: int
    max_version: int
    bytes: int
    bases: dict[str, int] = field(default_factory=dict)
    crc32: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def files(self, directory: Path) -> list[Path]:
        return [directory / f"{self.name}{suffix}" for suffix in SEGMENT_FILES]

    def corrupt_files(self, directory: Path) -> list[Path]:
        """Files that are missing or whose CRC-32 differs from the one written."""
        bad = []
        for path, crc in zip(self.files(directory), self.crc32, strict=True):
            if not path.is_file() or file_crc32(path) != crc:
                bad.append(path)
        return bad


def column_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow column as numpy, bools as uint8 (how segments and hashes see them)."""
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(np.uint8) if pa.types.is_boolean(column.type) else values


def _encode(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Frame-of-reference: (stored, base) with stored in the narrowest unsigned type."""
    if values.dtype.kind not in "iu" or len(values) == 0:
        return values, 0
    low, high = int(values.min()), int(values.max())
    for dtype in _UNSIGNED:
        if high - low <= np.iinfo(dtype).max:
            return (values.astype(np.int64) - low).astype(dtype), low
    return values, 0


def write_segment(directory: Path, partition: int, events: Events) -> SegmentInfo:
    """Writes sorted, non-empty events as a new segment, durable before it is returned."""
    user_ids, starts = np.unique(events.user, return_index=True)
    ends = np.append(starts[1:], len(events)).astype(np.int64)
    # running max of the version within each user: offset each user's versions by its rank
    rank = np.repeat(np.arange(len(user_ids), dtype=np.int64), np.diff(np.append(starts, len(events))))
    vmax = np.maximum.accumulate(rank * (1 << 32) + events.version.astype(np.int64)) - rank * (1 << 32)
    hcum = np.cumsum(events.hashes, dtype=np.uint32)

    bases: dict[str, int] = {}
    arrays, names = [], []
    for name, values in [(TIME, events.ts), *events.payload.items()]:
        stored, bases[name] = _encode(values)
        arrays.append(pa.array(stored))
        names.append(name)
    version, bases["_version"] = _encode(events.version.astype(np.int64))
    arrays += [pa.array(version), pa.array((vmax - bases["_version"]).astype(version.dtype)),
               pa.array(hcum)]
    names += list(SYSTEM_COLUMNS)

    name = f"p{partition:05d}-{uuid.uuid4().hex}"
    data = pa.table(arrays, names=names)
    index = pa.table({"user_id": user_ids.astype(np.int64), "end": ends})
    crc32 = [_write_ipc(directory / f"{name}{suffix}", table)
             for suffix, table in ((".arrow", data), (".index.arrow", index))]
    size = sum((directory / f"{name}{suffix}").stat().st_size for suffix in SEGMENT_FILES)
    return SegmentInfo(
        name=name, partition=partition, rows=len(events), users=len(user_ids),
        min_version=int(events.version.min()), max_version=int(events.version.max()),
        bytes=size, bases=bases, crc32=crc32,
    )


def _write_ipc(path: Path, table: pa.Table) -> int:
    """Write to a temporary name, fsync, then rename: a reader never sees half a file.

    Returns the file's CRC-32, kept in the manifest so corruption can be found later.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    data = sink.getvalue()
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return zlib.crc32(data)


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class Segment:
    """An open, memory-mapped segment; columns are zero-copy numpy views."""

    def __init__(self, directory: Path, info: SegmentInfo):
        self.info = info
        self._data = _read_ipc(directory / f"{info.name}.arrow")
        index = _read_ipc(directory / f"{info.name}.index.arrow")
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
        stored = self._data[name] if rows is None else self._data[name][rows]
        return stored.astype(np.int64) + self.base(name) if stored.dtype.kind == "u" else stored

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

    def events(self, schema: Schema) -> Events:
        """Every event, decoded."""
        return merge_segments([self], schema)

    def payload(self, name: str, schema: Schema) -> np.ndarray:
        """A payload column decoded to its schema type (bools as uint8)."""
        return self.decoded(name).astype(np.uint8 if schema.columns[name] == "bool" else schema.columns[name])


class _Gathered(Mapping):
    """Payload columns of several segments in a merged order, each gathered only when
    read: a compaction writing them one by one holds one decoded column at a time."""

    def __init__(self, segments: list[Segment], schema: Schema, order: np.ndarray):
        self._segments, self._schema, self._order = segments, schema, order

    def __getitem__(self, name: str) -> np.ndarray:
        return np.concatenate([s.payload(name, self._schema) for s in self._segments])[self._order]

    def __iter__(self):
        return iter(self._schema.columns)

    def __len__(self) -> int:
        return len(self._schema.columns)


def merge_segments(segments: list[Segment], schema: Schema) -> Events:
    """The events of one partition's segments, oldest segment first, stably sorted by
    (user, time, tie-break): equal keys keep segment order, then row order, which is
    commit order, so the merge is the order a single commit of everything would have."""
    user = np.concatenate([np.repeat(s.user_ids, np.diff(np.append(s.starts, s.info.rows))) for s in segments])
    ts = np.concatenate([s.decoded(TIME) for s in segments])
    keys = [ts, user]
    if schema.tiebreak is not None:
        keys.insert(0, np.concatenate([s.payload(schema.tiebreak, schema) for s in segments]))
    order = np.lexsort(keys)
    del keys
    version = np.concatenate([s.decoded("_version").astype(np.uint32) for s in segments])[order]
    hashes = np.concatenate([s.hashes() for s in segments])[order]
    return Events(user[order], ts[order], _Gathered(segments, schema, order), version, hashes)


def _read_ipc(path: Path) -> dict[str, np.ndarray]:
    source = pa.memory_map(str(path), "r")
    batch = pa.ipc.open_file(source).get_batch(0)
    return {name: batch.column(name).to_numpy(zero_copy_only=True) for name in batch.schema.names}
