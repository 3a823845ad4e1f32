"""The segment file format: the immutable data files of a store, written and decoded.

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

import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import StoreError
from ._events import Events
from ._kernels import event_hashes

TIME = "_ts"  # the time column's name in segments, whatever the schema calls it
SYSTEM_COLUMNS = ("_version", "_vmax", "_vmin", "_hcum")
SEGMENT_FILES = (".parquet", ".index.arrow")  # the durable files; the decoded one is "<name>.arrow"
_UNSIGNED = (np.uint8, np.uint16, np.uint32)
_HASH_CHUNK = 1 << 20  # rows hashed at once when decoding (bounds the hasher's scratch memory)


def decoded_file(cache: Path, name: str) -> Path:
    """Where segment ``name``'s decoded copy lives in a read cache."""
    return cache / f"{name}.arrow"


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
    index = read_ipc(directory / f"{info.name}.index.arrow")
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
        ts, *payload = (decode_values(stored[name][rows], info.bases[name]) for name in content)
        hashes[rows] = event_hashes(user[rows], ts, payload)
    _write_decoded(decoded_file(cache, info.name), stored, starts, hashes)


def decode_values(stored: np.ndarray, base: int) -> np.ndarray:
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


def read_ipc(path: Path) -> dict[str, np.ndarray]:
    source = pa.memory_map(str(path), "r")
    batch = pa.ipc.open_file(source).get_batch(0)
    return {name: batch.column(name).to_numpy(zero_copy_only=True) for name in batch.schema.names}
