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

Every byte a reader uses is checked: the durable files against the CRC-32s in the
manifest before they are decoded, the user index likewise when it is opened, and each
column of the decoded copy against its xxh3 digest (also in the manifest) the first
time a process reads that column. A decoded copy that fails is decoded again from the
durable files; a durable file that fails is named in the error.

Compression cannot sit on the read path (in the measurements this project started from,
decompressing chunks per batch was ~200x slower), and the decoded form is 2-3x the
durable one; so the store pays for the small form and each reading host for one decoded
copy, shared through the page cache by all its processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import mmap
import os
import re
import stat
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ._errors import SchemaError, StoreError
from ._events import Events
from ._kernels import event_hashes, user_starts, version_bounds

TIME = "_ts"  # the time column's name in segments, whatever the schema calls it
SYSTEM_COLUMNS = ("_version", "_vmax", "_vmin", "_hcum")
SEGMENT_FILES = (".parquet", ".index.arrow")  # the durable files; the decoded one is "<name>.arrow"
_UNSIGNED = (np.uint8, np.uint16, np.uint32)
_HASH_CHUNK = 1 << 20  # rows hashed at once when decoding (bounds the hasher's scratch memory)
_SEGMENT_NAME = re.compile(r"p(\d{5})-[0-9a-f]{32}")


DERIVED_DIR = "derived"  # the read cache's folder of derived copies


def decoded_file(cache: Path, name: str) -> Path:
    """Where segment ``name``'s decoded copy lives in a read cache."""
    return cache / f"{name}.arrow"


NAME_MAX = 255  # bytes in one name of a path: Linux's file systems', macOS's
PATH_MAX = 4096  # bytes in a whole path, as the system takes it: Linux's
ROOM = 256  # bytes a path leaves for the names lateseq writes inside or beside it (a store's files, a .tmp- twin)
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")  # a scheme and "//": s3://, gs://, file:///, hdfs://host
# the same, once pathlib folded "//" (a Path the caller made, or "./s3://x"): the schemes of
# object stores and file services only, as "backup:/store" may name a local folder
_FOLDED_URL = re.compile(r"(s3[an]?|gs|gcs|az|abfss?|adl|wasbs?|oss|r2|hdfs|webhdfs|viewfs|file|https?|s?ftp|hf|"
                         r"memory|dbfs|lakefs|cos|obs|swift):(/|$)", re.IGNORECASE)  # Path("s3://") is "s3:"


def usable_path(path: str | os.PathLike) -> None:
    """SchemaError for a path no file can have, named before any file is touched: bytes
    that are no UTF-8 (valid on Linux; pyarrow opens only UTF-8 names, and failed with a
    bare UnicodeEncodeError, s35G), a NUL byte, a name longer than ``NAME_MAX`` bytes or a
    path that leaves fewer than ``ROOM`` bytes of ``PATH_MAX`` for the names lateseq adds
    (Python's "embedded null byte" and the OS's "[Errno 36]", s48A, s48C, s48F); bytes,
    which pathlib does not take (its bare TypeError, s48F); a URL, which pathlib takes for a
    relative path: ``create("s3://bucket/store")`` made the folders ``s3:/bucket/store`` in
    the current one."""
    if isinstance(os.fspath(path), bytes):
        raise SchemaError(f"{path!r}: give paths as str or pathlib.Path, not bytes")
    text = os.fsdecode(path)
    if _URL.match(text) or _FOLDED_URL.match(str(Path(text))):
        raise SchemaError(f"{text!r} is a URL: lateseq reads and writes files on a file system, local or mounted "
                          "(a store's needs hard links: ext4, xfs, NFS, ...); give the path there")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise SchemaError(f"{text!r}: pyarrow reads and writes only UTF-8 file names") from None
    if "\0" in text:
        raise SchemaError(f"{text!r}: a path cannot hold a NUL byte")
    long = next((name for name in Path(text).parts if len(name.encode()) > NAME_MAX), None)
    if long is not None:
        raise SchemaError(f"{text[:80]!r}...: its name {long[:40]!r}... is {len(long.encode())} bytes long, over the "
                          f"{NAME_MAX} a file system takes")
    size = len(os.fsencode(str(Path(text).absolute())))  # as the system is given it: ".." not folded
    if size > PATH_MAX - ROOM:
        raise SchemaError(f"{text[:80]!r}...: the path is {size} bytes long, over the {PATH_MAX - ROOM} that leave "
                          f"room for the names lateseq writes in or beside it (the system takes {PATH_MAX - 1})")


STORE_CACHE = "cache"  # a store's own read cache, STORE/cache (a shared one's folders are named after stores)
SCHEMA_FILE = "schema.json"  # a store's schema: the file that makes a folder a store


def holds_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store's folder (it has a schema file)."""
    return os.path.isfile(os.path.join(path, SCHEMA_FILE))


def make_cache_folder(folder: Path, cache: Path) -> OSError | StoreError | None:
    """``make_folders`` for the read cache ``cache`` or a folder in it; a store's own cache
    only while the store's folder is there: a handle of a store moved away made the store's
    old path again, then a commit its lock files there (s36A)."""
    if cache.name != STORE_CACHE:  # a shared cache's folders, removed under a live handle: this user's alone, as
        return make_folders(folder, 0o700)  # made at open (made again 755, s36G)
    if not cache.parent.is_dir():
        return StoreError(f"the store {cache.parent} is gone: moved or removed since this handle opened it (open it "
                          "where it is now)")
    return make_folders(folder, 0o775)  # never writable by all, whatever the umask


def make_folders(path: Path, mode: int) -> OSError | None:
    """Makes ``path`` and the folders missing above it, each with ``mode`` (at most: the
    umask takes away more); ``mkdir(parents=True)`` gives those above the umask's mode,
    777 under umask 0. Where one cannot be made, stops there and returns why (a use of a
    file in it would only say the file is missing; a read-only disk is the reason)."""
    missing = [path, *path.parents]
    missing = missing[:next((i for i, p in enumerate(missing) if p.is_dir()), len(missing))]
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            return exc
    return None


def discard(path: Path) -> None:
    """Removes ``path`` if it is there (a failed write's temporary or part): on a read-only
    disk removing a file that is not there fails with EROFS, not "no such file", and that
    error hid the write's own."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.lexists(path):
            raise


def is_segment_name(name: str) -> bool:
    return _SEGMENT_NAME.fullmatch(name) is not None


def column_digest(values: np.ndarray) -> str:
    """xxh3 of a column's bytes, its dtype and its length (a flipped type flag is damage too)."""
    digest = xxhash.xxh3_64(f"{values.dtype.str}:{len(values)}:".encode())
    digest.update(np.ascontiguousarray(values).view(np.uint8))
    return digest.hexdigest()


def _is_int64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


@dataclass(frozen=True)
class SegmentInfo:
    """A segment's entry in a version manifest.

    ``crc32`` checks the durable files (in ``SEGMENT_FILES`` order); ``decoded`` holds
    the digest of every column of the decoded copy, which decoding must reproduce.
    """

    name: str
    partition: int
    rows: int
    users: int
    min_version: int
    max_version: int
    bytes: int
    bases: dict[str, int] = field(default_factory=dict)
    crc32: list[int] = field(default_factory=list)
    decoded: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, entry: Any, manifest: Path) -> SegmentInfo:
        """An entry read from ``manifest``, checked field by field: its name becomes a
        path, so nothing but a well-formed segment name may pass."""
        try:
            info = cls(**entry)
            match = _SEGMENT_NAME.fullmatch(info.name)
            valid = (match is not None and int(match.group(1)) == info.partition
                     and all(isinstance(getattr(info, f), int) and getattr(info, f) >= 0
                             for f in ("rows", "users", "min_version", "max_version", "bytes"))
                     and len(info.crc32) == len(SEGMENT_FILES) and info.decoded
                     # (a crafted base of 2**63, "x" or a list was a bare OverflowError or TypeError, s62T)
                     and isinstance(info.bases, dict) and all(isinstance(k, str) and _is_int64(v)
                                                              for k, v in info.bases.items())
                     and all(isinstance(c, int) and 0 <= c < 2**32 for c in info.crc32)
                     and isinstance(info.decoded, dict)
                     and all(isinstance(k, str) and isinstance(v, str) for k, v in info.decoded.items()))
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise StoreError(f"the manifest {manifest} lists a malformed segment entry {str(entry)[:200]!r}; "
                             "restore the manifest from a backup")
        return info

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def files(self, directory: Path) -> list[Path]:
        return [directory / f"{self.name}{suffix}" for suffix in SEGMENT_FILES]

    def column_sound(self, name: str, column: np.ndarray | None) -> bool:
        """Whether ``column`` (from a decoded copy; None if absent) is what the writer wrote."""
        return column is not None and len(column) == self.rows and column_digest(column) == self.decoded[name]

    def corrupt_files(self, directory: Path) -> list[tuple[Path, str]]:
        """Durable files that are missing, unreadable, not regular files, or fail their
        CRC-32, each with what is wrong with it."""
        bad = []
        for path, crc in zip(self.files(directory), self.crc32, strict=True):
            try:
                if zlib.crc32(read_regular(path, self.bytes)) != crc:
                    bad.append((path, "fails its CRC-32"))
            except StoreError as exc:
                bad.append((path, _unreadable(exc.__cause__)))
        return bad


def _unreadable(cause: BaseException | None) -> str:
    """What is wrong with a durable file ``read_regular`` refused for ``cause`` (None: not
    a regular file)."""
    if isinstance(cause, FileNotFoundError):
        return "is missing"
    if isinstance(cause, OSError):
        if cause.errno == errno.ELOOP:
            return "is a symbolic link (lateseq never follows links inside a store)"
        return f"cannot be read ({cause.strerror})"
    return "is not a regular file"


def _encode(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Frame-of-reference: (stored, base) with stored in the narrowest unsigned type."""
    if values.dtype.kind not in "iu" or len(values) == 0:
        return values, 0
    low = int(values.min())
    dtype = encoded_type(low, int(values.max()))
    return (values, 0) if dtype is None else ((values.astype(np.int64) - low).astype(dtype), low)


def encoded_type(low: int, high: int) -> type | None:
    """The narrowest unsigned type that holds integers from ``low`` to ``high`` above
    ``low`` (None: none does, and they are stored as they are)."""
    return next((dtype for dtype in _UNSIGNED if high - low <= np.iinfo(dtype).max), None)


def starts_of(ends: np.ndarray) -> np.ndarray:
    """Each user's first row, from the users' end rows (none for no users)."""
    return np.append(0, ends[:-1]).astype(np.int64)[:len(ends)]


@dataclass
class LaidOut:
    """Events sorted by user and time, as a segment stores them: each user's id and end
    row, the columns frame-of-reference encoded (``_encode``) with their bases, and the
    running sum of the events' hashes (a copy's ``_hcum``)."""

    user_ids: np.ndarray
    ends: np.ndarray
    stored: dict[str, np.ndarray]  # the time, the payload in schema order, then "_version"
    bases: dict[str, int]
    hcum: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def starts(self) -> np.ndarray:
        return starts_of(self.ends)

    def versions(self) -> tuple[int, int]:
        """(oldest, newest) version of its events ((0, 0) without any)."""
        if not self.rows:
            return 0, 0
        version, base = self.stored["_version"], self.bases["_version"]
        return base + int(version.min()), base + int(version.max())

    @classmethod
    def of(cls, events: Events | LaidOut) -> LaidOut:
        if isinstance(events, LaidOut):
            return events
        starts = user_starts(events.user)
        ends = np.append(starts[1:], len(events)).astype(np.int64)[:len(starts)]  # (no users: no ends)
        bases: dict[str, int] = {}
        stored: dict[str, np.ndarray] = {}
        # one decoded column at a time: a payload gathered when read (``Taken``) is read here
        for column, values in itertools.chain([(TIME, events.ts)], events.payload.items(),
                                              [("_version", events.version)]):
            stored[column], bases[column] = _encode(values)
        return cls(events.user[starts], ends, stored, bases, np.cumsum(events.hashes, dtype=np.uint32))


def write_segment(directory: Path, partition: int, events: Events | LaidOut, cache: Path) -> SegmentInfo:
    """Writes sorted, non-empty events as a new segment: the durable files, durable
    before it returns, and the decoded file in ``cache``, so the writer reads it at once."""
    return _write_segment(directory, f"p{partition:05d}-{uuid.uuid4().hex}", partition, LaidOut.of(events), cache,
                          packed=True)


def write_unpacked_segment(directory: Path, name: str, partition: int, events: Events | LaidOut) -> SegmentInfo:
    """Writes sorted events (none, too) as segment ``name`` without its Parquet file: the
    index and the decoded file only, both in ``directory``. For derived copies (a read
    cache's merged and filtered segments), which are rebuilt from the store, never decoded."""
    return _write_segment(directory, name, partition, LaidOut.of(events), directory, packed=False)


def held_segment(name: str, partition: int, events: Events | LaidOut) -> tuple[SegmentInfo, np.ndarray, np.ndarray,
                                                                                dict[str, np.ndarray]]:
    """Segment ``name`` of sorted events, made in memory and written nowhere: its info, user
    ids, ends and decoded columns. For a derived copy the read cache cannot take."""
    laid = LaidOut.of(events)
    copy, decoded = _decoded_copy(laid.stored, laid.starts, laid.hcum, name)
    return _segment_info(name, partition, laid, 0, [0, 0], decoded), laid.user_ids, laid.ends, _columns(copy)


def _write_segment(directory: Path, name: str, partition: int, laid: LaidOut, cache: Path,
                   packed: bool) -> SegmentInfo:
    starts, stored = laid.starts, laid.stored
    index = pa.record_batch({"user_id": laid.user_ids.astype(np.int64), "end": laid.ends})
    parquet, index_file = (directory / f"{name}{suffix}" for suffix in SEGMENT_FILES)
    # (sized as written: a stat after the write met a file another host's cleanup had removed)
    written = [_parquet_bytes({**stored, TIME: _user_deltas(stored[TIME], starts)}) if packed else b"",
               _ipc_bytes(index)]
    try:
        crc32 = [write_synced(parquet, written[0]) if packed else 0,  # an unpacked segment has no Parquet file
                 write_synced(index_file, written[1])]
        unmade = make_folders(cache, 0o775)  # never writable by all, whatever the umask
        copy, decoded = _decoded_copy(stored, starts, laid.hcum, name)
        _write_decoded(decoded_file(cache, name), copy, optional=packed, unmade=unmade)
    except BaseException:  # a full disk at any file: none of this segment's stays (no version names it)
        for path in (parquet, index_file, decoded_file(cache, name)):
            discard(path)
        raise
    return _segment_info(name, partition, laid, len(written[0]) + len(written[1]), crc32, decoded)


def _segment_info(name: str, partition: int, laid: LaidOut, size: int, crc32: list[int],
                  decoded: dict[str, str]) -> SegmentInfo:
    versions = laid.versions()
    return SegmentInfo(
        name=name, partition=partition, rows=laid.rows, users=len(laid.user_ids),
        min_version=versions[0], max_version=versions[1],
        bytes=size, bases=laid.bases, crc32=crc32, decoded=decoded,
    )


DURABLE_REMEDY = "restore the file from a backup or replica"
REBUILT = "a read builds the copy again from the store's segments"  # a damaged read-cache copy's: no backup has it


def read_index(directory: Path, info: SegmentInfo, remedy: str = DURABLE_REMEDY) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, end rows) of a segment, from index bytes that passed their CRC-32 and
    describe exactly ``info``'s users and rows (kernels index with them unchecked);
    StoreError saying ``remedy`` otherwise."""
    path = directory / f"{info.name}.index.arrow"
    data = read_regular(path, info.bytes, remedy)
    if zlib.crc32(data) != info.crc32[1]:
        raise StoreError(f"segment {info.name} is damaged: {path} fails its CRC-32; {remedy}")
    try:
        batch = pa.ipc.open_file(pa.BufferReader(data)).get_batch(0)
        user_ids = batch.column("user_id").to_numpy(zero_copy_only=False)
        ends = batch.column("end").to_numpy(zero_copy_only=False)
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise StoreError(f"segment {info.name}: cannot read its index {path} ({exc})") from exc
    sound = (user_ids.dtype == np.int64 and ends.dtype == np.int64 and len(user_ids) == len(ends) == info.users
             and (info.users == 0 or (ends[0] > 0 and ends[-1] == info.rows))
             and bool(np.all(user_ids[1:] > user_ids[:-1])) and bool(np.all(ends[1:] > ends[:-1])))
    if not sound:
        raise StoreError(f"segment {info.name}: its index {path} does not describe {info.users} users "
                         f"and {info.rows} rows; {remedy}")
    return user_ids, ends


@dataclass
class Unwritten:
    """A segment's decoded copy that the read cache could not take (full, read-only,
    refused): its columns, checked against the writer's digests, and why."""

    columns: dict[str, np.ndarray]
    reason: str
    full: bool  # for want of room (a read-only or refused cache is not helped by a cleanup)

    @classmethod
    def because(cls, columns: dict[str, np.ndarray], exc: OSError) -> Unwritten:
        return cls(columns, str(exc), out_of_room(exc))


def decode_segment(directory: Path, info: SegmentInfo, cache: Path,
                   unlocked: StoreError | None = None) -> Unwritten | None:
    """Rebuilds a segment's decoded file in ``cache`` from its durable files, which must
    pass their CRC-32 first: a damaged file is reported, never decoded. The result must
    match the digests its writer recorded, or nothing is written. Where the cache cannot
    take it (or could not even be locked: ``unlocked`` says why), it is returned instead,
    for the reader to hold in memory: a full disk on a reading host is no reason to stop
    training."""
    path = directory / f"{info.name}.parquet"
    packed = read_regular(path, info.bytes)
    if zlib.crc32(packed) != info.crc32[0]:
        raise StoreError(f"segment {info.name} is damaged or missing ({path.name} fails its CRC-32); "
                         f"{DURABLE_REMEDY}")
    user_ids, ends = read_index(directory, info)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    try:  # its footer's row count, before it is decoded: a few MB can declare billions of rows (s62T)
        source = pq.ParquetFile(pa.BufferReader(packed))
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"segment {info.name} is damaged ({path.name} cannot be read: {exc}); "
                         f"{DURABLE_REMEDY}") from exc
    if source.metadata.num_rows != info.rows:  # (the index was held to the manifest's count when read)
        raise StoreError(f"segment {info.name} is damaged ({path.name} holds {source.metadata.num_rows:,} rows, "
                         f"where its manifest and index say {info.rows:,}); {DURABLE_REMEDY}")
    table = source.read()
    del source, packed
    stored = {name: column.to_numpy() for name, column in zip(table.column_names, table.columns, strict=True)}
    deltas = stored[TIME]
    stored[TIME] = _user_sums(deltas, starts).astype(deltas.dtype)
    user = np.repeat(user_ids, ends - starts)
    hashes = np.empty(len(user), np.uint32)
    content = [name for name in stored if name != "_version"]  # time, then payload in schema order
    for lo in range(0, len(user), _HASH_CHUNK):
        rows = slice(lo, lo + _HASH_CHUNK)
        ts, *payload = (decode_values(stored[name][rows], info.bases[name]) for name in content)
        hashes[rows] = event_hashes(user[rows], ts, payload)
    copy, _ = _decoded_copy(stored, starts, np.cumsum(hashes, dtype=np.uint32), info.name, expect=info.decoded)
    if unlocked is not None:
        return Unwritten.because(_columns(copy), unlocked)
    try:
        _write_decoded(decoded_file(cache, info.name), copy)
    except StoreError as exc:
        if not cache_unwritable(exc):
            raise
        return Unwritten.because(_columns(copy), exc)
    return None


def cache_unwritable(exc: OSError) -> bool:
    """Whether a write into the read cache failed for want of room or of the right to
    write (a read can go on without its copy), not for another reason."""
    return _errno(exc) in _UNWRITABLE


def out_of_room(exc: OSError) -> bool:
    """Whether a write failed for want of bytes or inodes (a disk full, a quota spent)."""
    return _errno(exc) in _OUT_OF_ROOM


def _errno(exc: OSError) -> int | None:
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc  # (a StoreError names the OSError it came from)
    return getattr(cause, "errno", None)


def _columns(copy: pa.RecordBatch) -> dict[str, np.ndarray]:
    return {name: column.to_numpy(zero_copy_only=False) for name, column in zip(copy.schema.names, copy.columns,
                                                                                 strict=True)}


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


def _decoded_copy(stored: dict[str, np.ndarray], starts: np.ndarray, hcum: np.ndarray, name: str,
                  expect: dict[str, str] | None = None) -> tuple[pa.RecordBatch, dict[str, str]]:
    """Segment ``name``'s decoded copy and its column digests, which must equal ``expect``
    (the writer's) when given."""
    vmax, vmin = version_bounds(stored["_version"], starts)
    # one record batch, even of no rows (a filtered copy may keep none): readers map batch 0
    copy = pa.record_batch({**stored, "_vmax": vmax, "_vmin": vmin, "_hcum": hcum})
    digests = {column: column_digest(values.to_numpy(zero_copy_only=False))
               for column, values in zip(copy.schema.names, copy.columns, strict=True)}
    if expect is not None and digests != expect:
        differ = sorted(column for column in expect.keys() | digests.keys()
                        if expect.get(column) != digests.get(column))
        raise StoreError(f"decoding segment {name} gave other bytes than its writer wrote (columns "
                         f"{differ}); its durable files or manifest entry are damaged: restore them from a backup")
    return copy, digests


def _write_decoded(path: Path, copy: pa.RecordBatch, optional: bool = False, unmade: OSError | None = None) -> None:
    """Writes the decoded copy. ``unmade`` is why its folder could not be made, if it could
    not. An ``optional`` copy (a durable segment's, which a read makes again from the
    durable files) is left out with a warning where the read cache is full or cannot be
    written: a commit or compaction is durable without it, and failed there on a disk it
    never needed."""
    # derived data: no fsync, a crash at worst loses the copy
    try:
        if unmade is not None:  # (the write would only say the folder is missing)
            raise write_failed(path.parent, unmade) from unmade
        with (written_in_place(path) as tmp, pa.OSFile(str(tmp), "wb") as sink,
              pa.ipc.new_file(sink, copy.schema) as w):
            w.write_batch(copy)
    except StoreError as exc:
        if not optional or not cache_unwritable(exc):
            raise
        message = (f"the read cache's copy of segment {path.stem} is left out, its durable files written: {exc} "
                   "A read makes the copy when it first needs it, once the cache can take it")
        pending = _LEFT_OUT.get()
        if pending is None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            pending[path.stem] = message


# the warnings of copies left out during a store's write (segment -> warning), given once it is published
_LEFT_OUT: ContextVar[dict[str, str] | None] = ContextVar("lateseq_left_out", default=None)


def forget_left_out(name: str) -> None:
    """Drops the warning of segment ``name``'s copy: the write removed the segment (it
    wrote it again on a version published meanwhile)."""
    pending = _LEFT_OUT.get()
    if pending is not None:
        pending.pop(name, None)


@contextlib.contextmanager
def copies_left_out() -> Iterator[dict[str, str]]:
    """Collects the warnings of read-cache copies left out while a write runs, for it to
    give once it is published: a write that fails removes its segments, and said of
    them that their durable files were written (s40B). Within another such block, that
    one collects them (this one's stays empty)."""
    if _LEFT_OUT.get() is not None:
        yield {}
        return
    token = _LEFT_OUT.set(found := {})
    try:
        yield found
    finally:
        _LEFT_OUT.reset(token)


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


def _ipc_bytes(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)  # one batch, even of no rows: readers read batch 0
    return sink.getvalue()


_TEMPORARY_OF = re.compile(r"\.tmp-[0-9a-f]{8}-([^.]+)\..*")


def temporary_of(name: str) -> str | None:
    """The name, up to its first dot, of the file a temporary named ``name`` was to become
    (``temporary_path``): a segment's, or a copy's; None for any other name."""
    found = _TEMPORARY_OF.fullmatch(name)
    return None if found is None else found.group(1)


def temporary_path(path: Path) -> Path:
    """A name no other process writes to, renamed into place when complete: readers
    never see half a file, and two processes decoding the same segment cannot mix."""
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{_temporary_tail(path.name)}")


_NAME_MAX = 255  # bytes in a file's name, on Linux's file systems
_TEMPORARY_PREFIX = len(".tmp-01234567-")


def _temporary_tail(name: str) -> str:
    """``name``'s end, whole characters, that fits after a temporary's prefix: an output
    named near the limit was refused (its temporary's name too long, s35E)."""
    while len(os.fsencode(name)) > _NAME_MAX - _TEMPORARY_PREFIX:
        name = name[1:]
    return name


_ABANDONED_S = 3600  # a temporary not written to for this long is a killed writer's (a live one appends)


def _remove_abandoned_temporaries(path: Path) -> None:
    """Removes ``temporary_path``s of ``path`` left by a writer killed (kill -9, the OOM
    killer) before it could, untouched for ``_ABANDONED_S``: hidden files that stayed in an
    output folder through every later run."""
    tail = _temporary_tail(path.name)
    pattern = re.compile(r"\.tmp-[0-9a-f]{8}-" + re.escape(tail))
    for candidate in path.parent.glob(f".tmp-*-{glob_escape(tail)}"):
        with contextlib.suppress(OSError):
            found = candidate.lstat()
            if (pattern.fullmatch(candidate.name) and stat.S_ISREG(found.st_mode)
                    and found.st_mtime < time.time() - _ABANDONED_S):
                candidate.unlink()


def replaceable(path: Path) -> None:
    """Refuses a ``path`` that exists as anything but a regular file. A write renames a new
    file over its path, which would replace a folder, a device, a named pipe or a link (not
    what the link points to) with a plain file: ``--out /dev/null --force`` run as root
    deleted the machine's /dev/null (s61C)."""
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    if not stat.S_ISREG(mode):
        kind = ("symbolic link" if stat.S_ISLNK(mode) else "named pipe" if stat.S_ISFIFO(mode)
                else "socket" if stat.S_ISSOCK(mode) else "device")
        raise FileExistsError(f"cannot write {path}: it is a {kind}, not a regular file; lateseq writes a new file "
                              f"under another name and renames it over the path, which would replace the {kind} "
                              "itself: name a regular file"
                              + (f" (the link points to {os.readlink(path)})" if stat.S_ISLNK(mode) else ""))


@contextlib.contextmanager
def replaced_when_written(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary to write ``path``'s new content to, renamed over ``path`` when the block
    ends without error (all or nothing at ``path``), removed otherwise."""
    with all_replaced_when_written([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def all_replaced_when_written(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporaries (made empty, by this process only: never a link planted at the name) to
    write ``paths``' new contents to, renamed over them when the block ends without
    error, else removed. All or nothing: a path that is a folder is refused before the
    block, and a rename that fails puts back what the others replaced (only a crash
    between two renames can leave some replaced). Each path holds its old or its new file
    at every instant, crashes included: the old one is kept under a second name (a hard
    link) while the new ones are renamed over them, never moved aside first; the new ones
    are synced before they are renamed, and their folders after (a power loss neither
    empties nor loses a written file)."""
    paths = [Path(p) for p in paths]
    for path in paths:
        replaceable(path)
        parent = path.absolute().parent
        if not parent.is_dir():  # else the error named a temporary of ours (log_examples)
            if parent.exists():
                raise NotADirectoryError(f"{path}: {parent} is a file, not a directory")
            raise FileNotFoundError(f"{path}: directory {parent} does not exist")
        _remove_abandoned_temporaries(path)
    temporaries: list[Path] = []
    kept: dict[Path, Path] = {}  # path -> a second name of its old file, until all are in place
    placed: list[Path] = []
    try:
        for path in paths:
            temporaries.append(temporary_path(path))
            os.close(os.open(temporaries[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        yield temporaries
        for tmp in temporaries:  # an example log is the one record of what was served: as durable as the store
            fsync_file(tmp)
        if len(paths) > 1:
            for path in paths:
                if os.path.lexists(path):
                    kept[path] = temporary_path(path)
                    hard_link(path, kept[path])
        for tmp, path in zip(temporaries, paths, strict=True):
            os.replace(tmp, path)
            placed.append(path)
    except BaseException as exc:
        for path in placed:
            if path in kept:
                os.replace(kept[path], path)
            else:
                path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            if exc.errno in _WRITE_ERRORS:
                raise write_failed(", ".join(map(str, paths)), exc) from exc
            if exc.errno == errno.EIO:  # a writer's (or an input's) bare "[Errno 5] Input/output error" (s45D)
                raise StoreError(f"{exc.strerror} while writing {', '.join(map(str, paths))}, left as they "
                                 "were; is a disk failing?") from exc
        raise
    finally:
        for tmp in [*temporaries, *kept.values()]:
            with contextlib.suppress(OSError):  # raised, it said outputs all in place had failed (s45D): a
                discard(tmp)  # leftover goes at the next write of its path (``_remove_abandoned_temporaries``)
    for folder in dict.fromkeys(path.absolute().parent for path in paths):  # the renames made, kept whatever
        synced_if_possible(folder)  # befalls this: a sync that failed after them took the new files back (s62R)


def fsync_dir(path: Path) -> None:
    """Makes the names in folder ``path`` (a rename into it, a file made) durable."""
    _fsync(path, os.O_RDONLY)


def synced_if_possible(folder: Path) -> None:
    """``fsync_dir`` where the folder can be opened: one this process may write into but not
    read (mode 0733) takes files all the same, and a write there is no less done."""
    try:
        fsync_dir(folder)
    except OSError:
        pass


def fsync_file(path: Path) -> None:
    """Makes the bytes written to file ``path`` durable."""
    _fsync(path, os.O_RDONLY | os.O_NOFOLLOW)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: pa.Buffer | bytes) -> int:
    """Writes a durable file: fsynced under a temporary name, then renamed.

    Returns the data's CRC-32, kept in the manifest so corruption can be found later.
    """
    with written_in_place(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return zlib.crc32(data)


@contextlib.contextmanager
def written_in_place(path: Path) -> Iterator[Path]:
    """A temporary to write ``path``'s content to, put in place (``put_in_place``) when the
    block ends without error, removed otherwise: a write that fails (a full disk) leaves
    no temporary behind to fill the disk further, and says which file it could not write."""
    tmp = temporary_path(path)
    try:
        yield tmp
        put_in_place(tmp, path)
    except BaseException as exc:  # an interrupt too, up to the rename
        discard(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            raise write_failed(path, exc) from exc
        raise


# what a write fails with when the disk is full or not writable: the errors named as a failed
# write where the block may also read (an error while reading is not the output's fault)
_OUT_OF_ROOM = {errno.ENOSPC, errno.EDQUOT}  # (a file past the file system's largest size: no cleanup helps)
_WRITE_ERRORS = _OUT_OF_ROOM | {errno.EFBIG, errno.EROFS}
_UNWRITABLE = _WRITE_ERRORS | {errno.EACCES, errno.EPERM}  # and a folder whose permissions refuse the write


# what os.link fails with where a file system has no hard links (FUSE mounts of object
# stores such as gcsfuse or s3fs, FAT, some SMB shares); EPERM also where the file is another
# user's and fs.protected_hardlinks is set
_NO_HARD_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def hard_link(source: Path, target: Path) -> None:
    """``os.link``, never following a symbolic link, with an error that names hard links
    where the file system refuses them (else the OSError as it came)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINK:
            raise
        raise StoreError(
            f"cannot hard-link {source} as {target} ({exc.strerror}): lateseq publishes versions and replaces files "
            "by hard links, which this file system refuses (FUSE mounts of object stores such as gcsfuse or s3fs, "
            "FAT and some SMB shares have none; EPERM also comes from a file of another user where "
            "fs.protected_hardlinks is set); keep stores and outputs on a file system with hard links (ext4, xfs, "
            "NFS, ...)") from exc


def write_failed(path: str | os.PathLike, exc: OSError) -> StoreError:
    """The error of a write that failed (a full disk, a read-only folder), naming the file."""
    if exc.errno == errno.ENOENT:  # the file being written, or its folder, removed meanwhile
        return StoreError(f"cannot write {path} ({exc.strerror or exc}): its folder is missing, or it was removed "
                          "while it was written (in a store: by a cleanup on another host whose clock runs ahead of "
                          "this one's by more than its grace_s, or whose grace_s is shorter than this write took)")
    return StoreError(f"cannot write {path} ({exc.strerror or exc}); is its disk full, or not writable?")


def put_in_place(tmp: Path, path: Path) -> None:
    """Renames the finished file ``tmp`` to ``path``. An empty folder there (a read cache
    entry someone made a folder) goes first; anything else in a folder is an error that
    names it, and ``tmp`` is removed."""
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        try:
            os.rmdir(path)
            os.replace(tmp, path)
        except OSError as exc:
            discard(tmp)
            raise StoreError(f"{path} is a folder where lateseq keeps a file; remove it ({exc.strerror})") from exc
    except OSError as exc:  # a full disk, a folder made read-only: the temporary would stay
        discard(tmp)
        raise write_failed(path, exc) from exc


_OPEN_LOCKS: dict[int, int] = {}  # descriptors of this process's lock files, open now -> the thread that opened it
# held while a lock file's descriptor opens or closes, and across a fork: a fork between
# the open and the listing (or the unlisting and the close) gave the child a descriptor it kept
_LOCKS_STEADY = threading.Lock()


def open_lock_file(path: Path) -> int:
    """A lock file's descriptor (made if missing), never through a symbolic link and never
    a FIFO or device, on which opening or locking could wait forever; else OSError.
    Closed with ``close_lock_file``."""
    with _LOCKS_STEADY:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        _OPEN_LOCKS[fd] = threading.get_ident()
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        close_lock_file(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


NOT_REGULAR = (errno.EISDIR, errno.EINVAL, errno.ELOOP, errno.ENXIO)  # opening a folder, a FIFO or device, a link


def lock_failure(exc: OSError, writable: str, regular: str) -> str:
    """Why ``open_lock_file`` failed, for its error, where the error alone does not say: a
    disk out of space or inodes was blamed on a symbolic link, and a read-only file system
    on this user's rights (s49A); other errors ("Not a directory") say it, with ``writable``."""
    if isinstance(exc, PermissionError | FileNotFoundError):
        return f"this user may not write there: {writable}"
    if exc.errno == errno.EROFS:
        return f"its file system is mounted read-only: {writable}"
    if exc.errno in NOT_REGULAR:
        return f"a lock file must be a regular file: {regular}"
    if out_of_room(exc):
        return "its disk is full (of bytes or of inodes)"
    return writable


def close_lock_file(fd: int) -> None:
    with _LOCKS_STEADY:
        _OPEN_LOCKS.pop(fd, None)
        os.close(fd)


def _drop_inherited_locks() -> None:
    """A forked child lets go of the lock files its parent held: a lock belongs to the
    open file, which the child's copy of the descriptor kept locked after the parent was
    done (a DataLoader worker forked during a commit held the store's lock for its whole
    life, and cleanup waited on it). Those of other threads, which the child has not, are
    closed; those of the forking thread become /dev/null's, so that its code, running on
    in the child, closes them as it would have."""
    global _LOCKS_STEADY
    _LOCKS_STEADY = threading.Lock()  # the parent's was held across the fork
    forking = threading.get_ident()
    for fd in [fd for fd, owner in _OPEN_LOCKS.items() if owner != forking]:
        del _OPEN_LOCKS[fd]
        os.close(fd)
    if not _OPEN_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _OPEN_LOCKS:
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


os.register_at_fork(before=lambda: _LOCKS_STEADY.acquire(), after_in_parent=lambda: _LOCKS_STEADY.release(),
                    after_in_child=_drop_inherited_locks)


def read_regular(path: Path, limit: int | None = None, remedy: str = "restore it from a backup or replica") -> bytes:
    """The bytes of a regular file of the store, never through a symbolic link (a link
    planted in a store must not make lateseq read files elsewhere). ``limit``: the most
    bytes such a file holds; a bigger one is damaged, and refused before it is read (a
    read-cache file grown to 16 GiB by a stray write was read whole, and the reader
    killed for want of memory, before its checksum could fail: s56A). ``remedy``: what
    every error here tells the user to do (a read-cache file is built again, not restored)."""
    try:  # O_NONBLOCK: a FIFO planted in the store is refused below, not waited on forever
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise StoreError(f"{path} is missing; {remedy}") from exc
    except OSError as exc:
        why = " (lateseq never follows symbolic links inside a store)" if exc.errno == errno.ELOOP else ""
        raise StoreError(f"cannot read {path}: {exc.strerror}{why}") from exc
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):  # before fdopen, which refuses a folder with a bare fd number
        os.close(fd)
        raise StoreError(f"{path} is not a regular file; {remedy}")
    if limit is not None and found.st_size > limit:
        os.close(fd)
        raise StoreError(f"{path} is damaged: it holds {found.st_size:,} bytes, more than the {limit:,} it can; "
                         f"{remedy}")
    with os.fdopen(fd, "rb") as f:
        return f.read()


PAGE = mmap.PAGESIZE
MADV_NORMAL = getattr(mmap, "MADV_NORMAL", None)  # None: not on this platform
MADV_RANDOM = getattr(mmap, "MADV_RANDOM", None)
MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
LIBC = ctypes.CDLL(None, use_errno=True)  # the C library: madvise, statfs, inotify


def madvise(start: int, size: int, advice: int | None) -> None:
    """``madvise`` on the pages of [start, start + size) of a map: a hint about how they
    will be read, which changes no byte read."""
    if advice is not None and size > 0:
        first = start // PAGE * PAGE
        LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(start + size - first), advice)


def map_decoded(path: Path, random_access: bool = False) -> dict[str, np.ndarray]:
    """The columns of a decoded copy, memory-mapped (zero-copy); unchecked: readers
    verify each column against its digest before use. ``random_access``: the whole map
    without readahead (one advice for the map: advice per column would split it into an
    area per column, and a process may hold only ``vm.max_map_count`` areas). Raises
    OSError or ArrowException when the file is missing or not a readable IPC file."""
    kind = os.lstat(path).st_mode
    if not stat.S_ISREG(kind):  # a link is never followed; a FIFO would block the open forever
        raise OSError(f"{path} is {'a symbolic link' if stat.S_ISLNK(kind) else 'not a regular file'}")
    whole = pa.memory_map(str(path), "r").read_buffer()  # zero-copy: the map itself
    if random_access:
        madvise(whole.address, whole.size, MADV_RANDOM)
    batch = pa.ipc.open_file(whole).get_batch(0)
    return {name: batch.column(name).to_numpy(zero_copy_only=True) for name in batch.schema.names}
