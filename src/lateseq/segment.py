"""Segments: the immutable data files of a store, and their memory-mapped read form.

A segment holds one partition's events sorted by (user, time, tie-break). It is kept
in two forms:

- durable (what the store keeps, backs up and ships): a Parquet file of the columns
  packed for size (per-user timestamp deltas, frame-of-reference integers, every
  column byte-stream-split and zstd-compressed) and a small index file mapping each
  user to its row range (the user id is not stored per event). Both are CRC-checked.
- decoded (a per-host read cache, rebuilt from the durable form whenever it is
  missing): an uncompressed Arrow IPC file with one record batch, so every column maps
  straight into numpy and a history is a contiguous slice. Integers are
  frame-of-reference encoded (``value = base + stored``, ``stored`` in the narrowest
  unsigned type that fits), and four system columns ride along: ``_version`` (the
  version in which the event became visible), ``_vmax`` (its running maximum within
  the user, so "is everything before this row visible?" is one lookup), ``_vmin`` (the
  smallest version from the event to the user's end, so "can anything after this row be
  visible?" is one lookup too) and ``_hcum`` (running sum of event hashes, so a range
  checksum is one subtraction).

Compression cannot sit on the read path (BRIEF section 3: decompressing chunks per
batch was ~200x slower), and the decoded form is 2-3x the durable one; so the store
pays for the small form and each reading host for one decoded copy, shared through the
page cache by all its processes.
"""

from __future__ import annotations

import fcntl
import os
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError
from .kernels import _mix64, event_hashes
from .schema import Schema

TIME = "_ts"  # the time column's name in segments, whatever the schema calls it
SYSTEM_COLUMNS = ("_version", "_vmax", "_vmin", "_hcum")
SEGMENT_FILES = (".parquet", ".index.arrow")  # the durable files; the decoded one is "<name>.arrow"
_UNSIGNED = (np.uint8, np.uint16, np.uint32)
_HASH_CHUNK = 1 << 20  # rows hashed at once when decoding (bounds the hasher's scratch memory)


def decoded_file(cache: Path, name: str) -> Path:
    """Where segment ``name``'s decoded copy lives in a read cache."""
    return cache / f"{name}.arrow"


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


def write_segment(directory: Path, partition: int, events: Events, cache: Path) -> SegmentInfo:
    """Writes sorted, non-empty events as a new segment: the durable files, durable
    before it returns, and the decoded file in ``cache``, so the writer reads it at once."""
    user_ids, starts = np.unique(events.user, return_index=True)
    ends = np.append(starts[1:], len(events)).astype(np.int64)
    bases: dict[str, int] = {}
    stored: dict[str, np.ndarray] = {}
    for name, values in [(TIME, events.ts), *events.payload.items(), ("_version", events.version)]:
        stored[name], bases[name] = _encode(values)

    name = f"p{partition:05d}-{uuid.uuid4().hex}"
    packed = {**stored, TIME: _user_deltas(stored[TIME], starts)}
    index = pa.table({"user_id": user_ids.astype(np.int64), "end": ends})
    crc32 = [_write_file(directory / f"{name}.parquet", _parquet_bytes(packed)),
             _write_file(directory / f"{name}.index.arrow", _ipc_bytes(index))]
    size = sum((directory / f"{name}{suffix}").stat().st_size for suffix in SEGMENT_FILES)
    cache.mkdir(parents=True, exist_ok=True)
    _write_decoded(decoded_file(cache, name), stored, starts, events.hashes)
    return SegmentInfo(
        name=name, partition=partition, rows=len(events), users=len(user_ids),
        min_version=int(events.version.min()), max_version=int(events.version.max()),
        bytes=size, bases=bases, crc32=crc32,
    )


def decode_segment(directory: Path, info: SegmentInfo, cache: Path) -> None:
    """Rebuilds a segment's decoded file in ``cache`` from its durable files, which must
    pass their CRC-32 first: a damaged file is reported, never decoded."""
    if bad := info.corrupt_files(directory):
        raise StoreError(f"segment {info.name} is damaged or missing ({', '.join(p.name for p in bad)} "
                         "fails its CRC-32); restore the file from a backup or replica")
    index = _read_ipc(directory / f"{info.name}.index.arrow")
    ends = index["end"]
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    table = pq.read_table(directory / f"{info.name}.parquet")
    stored = {name: column.to_numpy() for name, column in zip(table.column_names, table.columns, strict=True)}
    deltas = stored[TIME]
    stored[TIME] = _user_sums(deltas, starts).astype(deltas.dtype)
    user = np.repeat(index["user_id"], ends - starts)
    hashes = np.empty(len(user), np.uint32)
    content = [name for name in stored if name != "_version"]  # time, then payload in schema order
    for lo in range(0, len(user), _HASH_CHUNK):
        rows = slice(lo, lo + _HASH_CHUNK)
        ts, *payload = (_decode(stored[name][rows], info.bases[name]) for name in content)
        hashes[rows] = event_hashes(user[rows], ts, payload)
    _write_decoded(decoded_file(cache, info.name), stored, starts, hashes)


def _decode(stored: np.ndarray, base: int) -> np.ndarray:
    """Values of a frame-of-reference encoded column (others are stored as they are)."""
    return stored.astype(np.int64) + base if stored.dtype.kind == "u" else stored


def _user_deltas(ts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each time minus the user's previous one (the first keeps its own): small
    numbers that compress well, where the times themselves do not."""
    deltas = np.diff(ts, prepend=ts.dtype.type(0))
    deltas[starts] = ts[starts]
    return deltas


def _user_sums(deltas: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Undoes ``_user_deltas``: a running sum that restarts at each user."""
    sums = np.cumsum(deltas, dtype=np.int64)
    before = sums[starts] - deltas[starts]
    sums -= np.repeat(before, np.diff(np.append(starts, len(deltas))))
    return sums


def _write_decoded(path: Path, stored: dict[str, np.ndarray], starts: np.ndarray,
                   hashes: np.ndarray) -> None:
    version = stored["_version"]
    # running max (and, backwards, min) of the version within each user: offsetting each
    # user's versions by its rank makes one accumulate restart at every user
    offset = np.repeat(np.arange(len(starts), dtype=np.int64) << 32, np.diff(np.append(starts, len(version))))
    keyed = offset + version.astype(np.int64)
    vmax = np.maximum.accumulate(keyed) - offset
    vmin = np.minimum.accumulate(keyed[::-1])[::-1] - offset
    table = pa.table({**stored, "_vmax": vmax.astype(version.dtype), "_vmin": vmin.astype(version.dtype),
                      "_hcum": np.cumsum(hashes, dtype=np.uint32)})
    tmp = _temporary(path)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    os.replace(tmp, path)  # derived data: no fsync, a crash at worst loses the copy


def _parquet_bytes(columns: dict[str, np.ndarray]) -> pa.Buffer:
    """Byte-stream split puts the same byte of every value side by side (the high bytes
    of small numbers are all zero), which zstd then squeezes: 7.5 B per event on the benchmark's
    data, against 20 decoded."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False,
                   column_encoding={name: "BYTE_STREAM_SPLIT" for name in table.column_names},
                   row_group_size=max(table.num_rows, 1), write_statistics=False)
    return sink.getvalue()


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
    return sink.getvalue()


def _temporary(path: Path) -> Path:
    """A name no other process writes to, renamed into place when complete: readers
    never see half a file, and two processes decoding the same segment cannot mix."""
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


def _write_file(path: Path, data: pa.Buffer) -> int:
    """Writes a durable file: fsynced under a temporary name, then renamed.

    Returns the data's CRC-32, kept in the manifest so corruption can be found later.
    """
    tmp = _temporary(path)
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
            return _read_ipc(decoded_file(cache, info.name))  # decoded while we waited
        except (OSError, pa.ArrowInvalid):
            decode_segment(directory, info, cache)
            return _read_ipc(decoded_file(cache, info.name))


class Segment:
    """An open, memory-mapped segment; columns are zero-copy numpy views."""

    def __init__(self, directory: Path, info: SegmentInfo, cache: Path):
        self.info = info
        try:
            self._data = _read_ipc(decoded_file(cache, info.name))
        except (OSError, pa.ArrowInvalid):  # not decoded here yet, or a truncated copy
            self._data = _decode_once(directory, info, cache)
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
        return _decode(self._data[name] if rows is None else self._data[name][rows], self.base(name))

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
