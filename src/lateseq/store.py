"""The store: an immutable, versioned, columnar record of every user's events.

Layout of a store directory::

    schema.json               the schema, written once at creation
    versions/00000007.json    one manifest per published version: its segments and stats
    segments/p00000-<id>.parquet, .index.arrow   a segment's durable files (packed, CRC-checked)
    tags/<name>.json          a name for a version; a tagged version is pinned
    cache/p00000-<id>.arrow   decoded segments, memory-mapped by readers (a read cache:
                              rebuilt from the durable files when missing; ``cache_dir``
                              puts it elsewhere, e.g. on local disk for a shared store)

A version is published by creating its manifest with a hard link, which either
succeeds whole or fails if the name exists: readers never see a partial version, a
crash leaves at most unreferenced files, and two writers cannot publish the same
number. A ``Store`` handle is pinned to one version; ``commit``, ``compact`` and
``checkout`` return new handles and never move an existing one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CommitConflict, PointerError, SchemaError, StoreError, VersionNotFound
from .kernels import Visibility, locate
from .schema import Schema
from .segment import (
    SYSTEM_COLUMNS,
    TIME,
    Events,
    Segment,
    SegmentInfo,
    decoded_file,
    merge_segments,
    partition_of,
    row_ranges,
    write_segment,
)

EventSource = pa.Table | pa.RecordBatchReader | str | os.PathLike
_SEGMENT_CACHE: dict[tuple[str, str], Segment] = {}  # insertion order = recency
_SEGMENT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    operation: str
    events: int
    segments: int
    bytes: int
    tags: tuple[str, ...] = ()
    watermark: int | None = None  # two-tier stores: every arrival before it is in this version


@dataclass
class Located:
    """Where each pointer's visible events are, as found by ``Store.locate``.

    ``windows`` has one entry per segment that holds visible events for some pointer:
    (segment, pointer indices, lo, hi, holes). ``spread`` marks pointers whose events
    span several segments (uncompacted versions) and so must be merged by time.
    """

    count: np.ndarray
    checksum: np.ndarray
    windows: list[tuple[Segment, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    spread: np.ndarray


class Store:
    """A handle on one version of a store. Pickles as (path, version, cache_dir)."""

    def __init__(self, path: str | os.PathLike, version: int | str | None = None, *,
                 cache_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self.cache_dir = self.path / "cache" if cache_dir is None else Path(cache_dir)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a store directory")
        schema_file = self.path / "schema.json"
        if not schema_file.is_file():
            raise StoreError(f"{self.path} is not a lateseq store (no schema.json); create one first")
        self.schema = Schema.from_json(schema_file.read_text())
        self.version = self._resolve(version)
        manifest = self._manifest(self.version) if self.version else {"segments": [], "events": 0}
        self.segment_infos = [SegmentInfo(**s) for s in manifest["segments"]]
        self._by_partition: dict[int, list[SegmentInfo]] = {}
        for info in self.segment_infos:
            self._by_partition.setdefault(info.partition, []).append(info)
        self.num_events: int = manifest["events"]
        # every event that arrived before the watermark is in this version (two-tier stores)
        self.watermark: int | None = manifest.get("watermark")

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | os.PathLike, schema: Schema) -> Store:
        """A new, empty store (version 0) at ``path``, which must not hold one already."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store directory")
        if (path / "schema.json").exists():
            raise StoreError(f"{path} already holds a store")
        for sub in ("versions", "segments", "tags"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        tmp = path / f".tmp-schema-{uuid.uuid4().hex}"
        tmp.write_text(schema.to_json())
        os.replace(tmp, path / "schema.json")
        return cls(path)

    def __reduce__(self):
        return (_unpickle, (str(self.path), self.version, str(self.cache_dir)))

    def _handle(self, version: int | str | None = None) -> Store:
        """Another handle on this store, reading through the same cache."""
        return Store(self.path, version, cache_dir=self.cache_dir)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, version={self.version})"

    def latest(self) -> Store:
        """A handle on the newest published version."""
        return self._handle()

    def checkout(self, version: int | str) -> Store:
        """Another handle on the same store at ``version`` (a number or a tag)."""
        return self._handle(version)

    @property
    def latest_version(self) -> int:
        names = [n for n in os.listdir(self.path / "versions") if n.endswith(".json")]
        return max((int(n[:-5]) for n in names), default=0)

    def _resolve(self, version: int | str | None) -> int:
        if version is None:
            return self.latest_version
        if isinstance(version, str) and not version.isdigit():
            tag = self.path / "tags" / f"{version}.json"
            if not tag.is_file():
                raise VersionNotFound(f"no tag {version!r} in {self.path}; tags: {sorted(self.tags())}")
            return json.loads(tag.read_text())["version"]
        number = int(version)
        if number != 0 and not (self.path / "versions" / f"{number:08d}.json").is_file():
            raise VersionNotFound(
                f"version {number} is not kept in {self.path}; latest is {self.latest_version}"
            )
        return number

    def _manifest(self, version: int) -> dict:
        path = self.path / "versions" / f"{version:08d}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise VersionNotFound(f"version {version} is not kept in {self.path}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"the manifest {path} is corrupt ({exc}); restore it from a backup "
                             "or remove it to fall back to the previous version") from exc

    # ------------------------------------------------------------ versions and tags

    def versions(self) -> list[VersionInfo]:
        tags: dict[int, list[str]] = {}
        for name, v in self.tags().items():
            tags.setdefault(v, []).append(name)
        out = []
        for n in sorted(os.listdir(self.path / "versions")):
            if not n.endswith(".json"):
                continue
            m = json.loads((self.path / "versions" / n).read_text())
            out.append(VersionInfo(
                m["version"], m["created_at"], m["operation"], m["events"], len(m["segments"]),
                sum(s["bytes"] for s in m["segments"]), tuple(sorted(tags.get(m["version"], []))),
                m.get("watermark"),
            ))
        return out

    def tags(self) -> dict[str, int]:
        return {p.stem: json.loads(p.read_text())["version"] for p in (self.path / "tags").glob("*.json")}

    def tag(self, name: str, version: int | None = None) -> None:
        """Names a version (this handle's by default); a tagged version is never cleaned up."""
        if not name or name.isdigit() or "/" in name or name.startswith("."):
            raise SchemaError(f"tag name {name!r} must be non-numeric and a plain file name")
        number = self._resolve(self.version if version is None else version)
        if number == 0:
            raise VersionNotFound("the empty store has no version to tag; commit first")
        tmp = self.path / "tags" / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"version": number}))
        os.replace(tmp, self.path / "tags" / f"{name}.json")

    def untag(self, name: str) -> None:
        try:
            (self.path / "tags" / f"{name}.json").unlink()
        except FileNotFoundError as exc:
            raise VersionNotFound(f"no tag {name!r} in {self.path}") from exc

    # ------------------------------------------------------------ writing

    def commit(self, events: EventSource, *, watermark: int | None = None) -> Store:
        """Publishes ``events`` as the next version; returns a handle on it.

        Validates everything before writing anything: bad input raises SchemaError and
        leaves the store as it was. ``watermark`` records that every event which arrived
        before it is now in the store (see ``online.py``).
        """
        table = _read_events(events)
        base = self._handle()  # commit on top of the latest version, whatever this handle is
        if watermark is not None and base.watermark is not None and watermark < base.watermark:
            raise SchemaError(f"watermark {watermark} is older than the store's {base.watermark}")
        version = base.version + 1
        if watermark is not None and table.num_rows == 0:  # coverage advanced, no new events
            return base._publish(version, "commit", base.segment_infos, [], watermark)
        table = self.schema.conform(table)
        incoming = Events.from_table(table, self.schema, version)
        if self.schema.event_id_col:
            known = base.event_ids(np.unique(incoming.user))
            incoming = incoming.first_deliveries(self.schema.event_id_col, known)
            if len(incoming) == 0:  # only redeliveries: a version with nothing new
                return base._publish(version, "commit", base.segment_infos, [],
                                     base.watermark if watermark is None else watermark)
        parts = partition_of(incoming.user, self.schema.partitions)
        new = []
        for p in np.unique(parts):
            chunk = incoming.take(np.flatnonzero(parts == p)).sorted(self.schema.tiebreak)
            new.append(write_segment(self.path / "segments", int(p), chunk, self.cache_dir))
        return base._publish(version, "commit", base.segment_infos + new, new,
                             base.watermark if watermark is None else watermark)

    def compact(self) -> Store:
        """Merges each partition's segments into one sorted segment, as a new version.

        Events keep the version they became visible in, so every pointer into any kept
        version rebuilds the same sequence. Returns this handle if nothing needs merging.
        """
        base = self._handle()
        if all(len(infos) == 1 for infos in base._by_partition.values()):
            return base
        kept, new = [], []
        for p, infos in sorted(base._by_partition.items()):
            if len(infos) == 1:
                kept += infos
                continue
            merged = merge_segments([base._open(i) for i in infos], self.schema)
            new.append(write_segment(self.path / "segments", p, merged, self.cache_dir))
        return base._publish(base.version + 1, "compact", kept + new, new, base.watermark)

    def _publish(self, version: int, operation: str, infos: list[SegmentInfo],
                 new: list[SegmentInfo], watermark: int | None) -> Store:
        manifest = {
            "watermark": watermark,
            "version": version,
            "parent": self.version,
            "created_at": time.time(),
            "operation": operation,
            "events": sum(i.rows for i in infos),
            "segments": [i.to_dict() for i in infos],
        }
        versions = self.path / "versions"
        tmp = versions / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, versions / f"{version:08d}.json")
        except FileExistsError as exc:
            for info in new:
                self._remove_segment(info)
            raise CommitConflict(
                f"version {version} of {self.path} was published by another writer; retry"
            ) from exc
        finally:
            tmp.unlink()
        _fsync_dir(versions)
        return self._handle(version)

    def cleanup(self, before: int, grace_s: float = 3600.0) -> list[int]:
        """Forgets versions older than ``before`` (tagged ones stay) and deletes segment
        files no kept version references, including leftovers of crashed writers.
        Returns the versions removed.

        Only files older than ``grace_s`` are deleted, so a concurrent writer's segments,
        written but not yet published, survive. Pointers into removed versions still
        rebuild, because events keep their version; their checksums prove it. Readers
        holding an old handle keep their memory-mapped files until they close them.
        """
        pinned = set(self.tags().values())
        before = min(before, self.latest_version)  # the latest version always stays
        removed = [v.version for v in self.versions() if v.version < before and v.version not in pinned]
        for v in removed:
            (self.path / "versions" / f"{v:08d}.json").unlink()
        referenced = {s["name"] for v in self.versions() for s in self._manifest(v.version)["segments"]}
        old = time.time() - grace_s
        for path in (self.path / "segments").iterdir():
            name = path.name.split(".")[0]  # "" for a crashed writer's temporary file
            if name not in referenced and path.stat().st_mtime < old:
                path.unlink(missing_ok=True)
                if name:
                    decoded_file(self.cache_dir, name).unlink(missing_ok=True)
        for path in self.cache_dir.glob(".tmp-*"):  # a crashed reader's half-decoded file
            if path.stat().st_mtime < old:
                path.unlink(missing_ok=True)
        return removed

    # ------------------------------------------------------------ reading

    def _open(self, info: SegmentInfo) -> Segment:
        """Segments are immutable, so one open map per file serves every handle; the
        least recently used are let go (a deleted file's space returns when unmapped)."""
        key = (str(self.cache_dir), info.name)
        segment = _SEGMENT_CACHE.pop(key, None) or Segment(self.path / "segments", info, self.cache_dir)
        _SEGMENT_CACHE[key] = segment
        if len(_SEGMENT_CACHE) > _SEGMENT_CACHE_SIZE:
            del _SEGMENT_CACHE[next(iter(_SEGMENT_CACHE))]
        return segment

    def _remove_segment(self, info: SegmentInfo) -> None:
        for path in [*info.files(self.path / "segments"), decoded_file(self.cache_dir, info.name)]:
            path.unlink(missing_ok=True)

    def event_ids(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user, event id) of every stored event of ``users`` (unique), for dedup."""
        column = self.schema.event_id_col
        found_user, found_ids = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        parts = partition_of(users, self.schema.partitions)
        for segment in self.segments():
            mine = users[parts == segment.info.partition]
            lo, hi = segment.user_ranges(mine)
            found_user.append(np.repeat(mine, hi - lo))
            found_ids.append(segment.decoded(column, row_ranges(lo, hi)).astype(np.int64))
        return np.concatenate(found_user), np.concatenate(found_ids)

    def prefault(self, columns: list[str]) -> None:
        """Touches every page of the columns a projection reads, so a long-running
        loader starts warm instead of faulting pages in during its first batches."""
        names = [TIME if c == self.schema.time_col else c for c in columns]
        for segment in self.segments():
            for name in dict.fromkeys([*names, TIME, *SYSTEM_COLUMNS]):
                np.add.reduce(segment.stored(name).view(np.uint8)[::4096], dtype=np.uint64)

    def segments(self, partition: int | None = None) -> list[Segment]:
        """Open segments of this version (of one partition), oldest first."""
        if partition is None:
            return [self._open(i) for i in self.segment_infos]
        return [self._open(i) for i in self._by_partition.get(partition, [])]

    def locate(self, users: np.ndarray, request_ts: np.ndarray, visibility: Visibility,
               max_len: int) -> Located:
        """Finds each pointer's visible events: time before the request, and ``visibility``."""
        if len(users) and (visibility.version_hi.max() > self.version or visibility.version.min() < 0):
            raise PointerError(
                f"pointers need versions up to {int(visibility.version_hi.max())} but this handle "
                f"is at version {self.version}; open the store at a version >= every pointer's"
            )
        arrival = self.schema.arrival_col
        if arrival is None and np.any(visibility.version_hi != visibility.version):
            raise PointerError("pointers bounded by arrival (version_hi, arrival_limit) need a store "
                               "whose schema names an arrival_col; this one has none")
        n = len(users)
        count = np.zeros(n, np.int64)
        checksum = np.zeros(n, np.uint32)
        hits = np.zeros(n, np.int64)
        windows = []
        parts = partition_of(users, self.schema.partitions)
        for p in np.unique(parts) if self.schema.partitions > 1 else [0]:
            rows = np.flatnonzero(parts == p) if self.schema.partitions > 1 else np.arange(n)
            for segment in self.segments(int(p)):
                lo, hi = segment.user_ranges(users[rows])
                keep = hi > lo
                if not keep.any():
                    continue
                present = rows[keep]
                c, s, wlo, whi, holes = locate(
                    lo[keep], hi[keep], segment.stored(TIME), segment.base(TIME),
                    segment.stored("_version"), segment.stored("_vmax"), segment.stored("_vmin"),
                    segment.base("_version"),
                    segment.stored("_hcum"), *segment.encoded(arrival), request_ts[present],
                    visibility.take(present), max_len,
                )
                count[present] += c
                checksum[present] += s
                nonempty = whi > wlo
                hits[present[nonempty]] += 1
                if nonempty.any():
                    windows.append((segment, present[nonempty], wlo[nonempty], whi[nonempty], holes[nonempty]))
        return Located(count, checksum, windows, hits > 1)


def _read_events(source: EventSource) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatchReader):
        return source.read_all()
    if isinstance(source, str | os.PathLike):
        try:
            return pq.read_table(source)
        except FileNotFoundError as exc:
            raise SchemaError(f"no events file at {source}") from exc
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"cannot read {source} as Parquet: {exc}") from exc
    raise SchemaError(f"cannot commit a {type(source).__name__}; pass a pyarrow Table, "
                      "RecordBatchReader or Parquet path")


def _unpickle(path: str, version: int, cache_dir: str) -> Store:
    return Store(path, version, cache_dir=cache_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
