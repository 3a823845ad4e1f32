"""The store: an immutable, versioned, columnar record of every user's events.

Layout of a store directory::

    schema.json               the schema, written once at creation
    id                        the store's random id, written once at creation: a handle tells
                              its store from another made at its path since
    versions/00000007.json    one manifest per published version: its segments (a commit's:
                              those it adds to its parent's) and stats
    segments/p00000-<id>.parquet, .index.arrow   a segment's durable files (packed, CRC-checked)
    tags/<name>.json          a name for a version; a tagged version is pinned
    cache/p00000-<id>.arrow   decoded segments, memory-mapped by readers (a read cache:
                              rebuilt from the durable files when missing; ``cache_dir=C``
                              puts it in C/<store name>-<hash of its path>, e.g. on local
                              disk for a shared store; one C serves many stores)
    cache/derived/            merged and filtered copies derived from segments (``_derived``)

A version is published by creating its manifest with a hard link, which either
succeeds whole or fails if the name exists: readers never see a partial version, a
crash leaves at most unreferenced files, and two writers cannot publish the same
number. A ``Store`` handle is pinned to one version; ``commit``, ``compact`` and
``checkout`` return new handles and never move an existing one.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import json
import math
import numbers
import os
import re
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ._compat import cached_property
from ._derived import (
    MergeRent,
    ReadPass,
    built_merged_copy,
    copies_on_host,
    merged_bases,
    merged_copy,
    merged_name,
    remove_stale_copies,
    sidecar_readable,
)
from ._errors import (
    CommitConflict,
    NotSynced,
    PointerError,
    SchemaError,
    StoreError,
    VersionNotFound,
    exact_integer,
    is_integer,
    warn_at_caller,
)
from ._events import Events, partition_of, row_ranges, rows_by_partition
from ._forks import fork_safe
from ._format import (
    SCHEMA_FILE,
    SEGMENT_FILES,
    STORE_CACHE,
    SYSTEM_COLUMNS,
    TIME,
    LaidOut,
    SegmentInfo,
    cache_unwritable,
    copies_left_out,
    decoded_file,
    discard,
    forget_left_out,
    fsync_dir,
    holds_store,
    is_segment_name,
    make_folders,
    out_of_room,
    synced_if_possible,
    temporary_of,
    usable_path,
    write_failed,
    write_segment,
)
from ._kernels import Visibility
from ._locate import Located, PartitionView, locate
from ._merge import merge_segments, segment_events
from ._parquet import read_checked
from ._schema import Schema, as_user_ids, frame_hint
from ._segments import DECODE_LOCK, REMAPS, UNREADABLE, Segment, SegmentCache, forget_removed, lock_idle
from ._versions import (
    LATEST,
    STORE_ID,
    SegmentList,
    VersionInfo,
    VersionLog,
    content_crc,
    dump_checked,
    load_checked,
    older_than,
    remove_file,
    write_new,
    write_store_id,
)

EventSource = pa.Table | pa.RecordBatch | pa.RecordBatchReader | str | os.PathLike
_DECODE_GRACE_S = 3600.0  # a read cache's temporary younger than this may be a decode under way
_ASIDE = re.compile(r"\.tmp-aside-[0-9a-f]{8}-(.+)")  # a file cleanup moved aside to look at again
_COMMIT_ID = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces
AUTO_MERGE_RENT = 10  # events read segment by segment, per event held, before "auto" merges (see the README)
Setting = bool | Literal["auto"]  # merged_reads and readahead: on, off, or lateseq decides


def check_commit_id(commit_id: str | None) -> None:
    """Refuses a commit id that is not 1-256 printable characters without spaces."""
    if commit_id is not None and not isinstance(commit_id, str):
        raise SchemaError(f"a commit id is a string, not {type(commit_id).__name__} ({commit_id!r})")
    if commit_id is not None and not _COMMIT_ID.fullmatch(commit_id):
        raise SchemaError(f"commit id {commit_id[:80]!r} must be 1-256 printable ASCII characters without spaces")


def check_watermark(watermark: object) -> int | None:
    """A commit's watermark as an exact int64 (numpy integers included), else SchemaError:
    it is published in the manifest, and every later read of the store compares with it."""
    if watermark is None:
        return None
    if not is_integer(watermark):
        raise SchemaError(f"watermark must be an integer arrival time in the store's time unit, not "
                          f"{type(watermark).__name__} {watermark!r}")
    if not np.iinfo(np.int64).min <= int(watermark) <= np.iinfo(np.int64).max:
        raise SchemaError(f"watermark {watermark} does not fit in int64")
    return int(watermark)


def _warns_of_copies_left_out(write: Callable[..., Store]) -> Callable[..., Store]:
    """``write`` (a commit, compaction or deletion), giving the warning of the read-cache
    copies it left out (a full cache) once it returns: one that fails gives none. One
    warning a write, naming the first copy: a compaction of 16k partitions gave 16k (s41A)."""
    @functools.wraps(write)
    def published(*args: Any, **kwargs: Any) -> Store:
        with copies_left_out() as left_out:  # (within another write: that one warns)
            store = write(*args, **kwargs)
        if left_out:
            first, *others = left_out
            more = f" (and {len(others)} other segments' copies: {', '.join(others[:3])}{', ...' * (len(others) > 3)})"
            warnings.warn(left_out[first] + (more if others else ""), RuntimeWarning, stacklevel=2)
        return store
    return published


EMPTY_PATH = "a store's path is empty; name its folder ('.' for the current one)"  # an unset variable's ""


class Store:
    """A handle on one version of a store. Pickles as (path, version, cache_dir,
    merged_reads, readahead) and the store's id, so that an unpickled handle refuses
    another store made at that path since.

    A partition of more than one segment can be read through one merged copy of them in
    the read cache, built on this host by the first read that needs it (a local
    compaction: about half a second per 4M events) and shared by every later reader of the
    version. Training, which reads a version many times, wants it; a few reads of a new
    version do not. ``merged_reads=True`` or ``False`` decides; ``"auto"`` (the default)
    rents before it buys: a partition is read segment by segment until the events read
    from it on this host (by every process: ``MergeRent``) reach ``AUTO_MERGE_RENT`` times
    the events it holds (about what building its copy costs, in the time those reads
    lost), or until its copy exists on this host. Only events of pointers whose events lie
    in several of its segments count: one segment's are read as fast as through a copy
    (most of a tiered store's, which then needs none). A loader's pass (``iter_batches``,
    ``materialize_log``, ``lateseq.torch``, ``lateseq.ray``) says how many pointers it has
    still to read: where they would pay the rest at the rate its reads paid, the copy is
    built at once instead of after (``ReadPass``). Meanwhile its oldest segments are
    read through the copy an earlier version built on this host, if one was: after a
    day's commit, yesterday's copy and today's segment (cleanup keeps that copy while a
    version reads through it).

    ``readahead`` says whether the kernel reads ahead of the pages a read faults in.
    Histories read at random from a store bigger than memory want it off (each fault
    would read up to the disk's ``read_ahead_kb``, 8 MB on some cloud disks, for a few
    KB used); a store that stays in the page cache wants it on (its first pass reads it
    in large requests). ``"auto"`` (the default) turns it off when the version's mapped
    columns would take more than half of this machine's memory (or its cgroup's limit),
    for each handle: the first handles of a store that grew keep their maps, advised anew.
    """

    def __init__(self, path: str | os.PathLike, version: int | str | None = None, *,
                 cache_dir: str | os.PathLike | None = None, merged_reads: Setting = "auto",
                 readahead: Setting = "auto"):
        self._open(path, version, cache_dir, merged_reads, readahead, None, None)

    @classmethod
    def _sharing(cls, path: str | os.PathLike, version: int | str | None, cache_dir: str | os.PathLike | None,
                 merged_reads: Setting, readahead: Setting, segments: SegmentCache | None,
                 store_id: str | None) -> Store:
        """A handle sharing another's open segments, or checked to be the store a pickled one was of
        (kept out of the public constructor's signature)."""
        store = cls.__new__(cls)
        store._open(path, version, cache_dir, merged_reads, readahead, segments, store_id)
        return store

    def _open(self, path: str | os.PathLike, version: int | str | None, cache_dir: str | os.PathLike | None,
              merged_reads: Setting, readahead: Setting, segments: SegmentCache | None,
              store_id: str | None) -> None:
        for name, value in (("merged_reads", merged_reads), ("readahead", readahead)):
            if not (isinstance(value, bool) or (isinstance(value, str) and value == "auto")):
                raise SchemaError(f"{name} must be True, False or 'auto', not {value!r}")
        self.merged_reads = merged_reads
        self.readahead = readahead
        if not os.fspath(path):  # as create: "" opened the current folder (s48A)
            raise StoreError(EMPTY_PATH)
        if cache_dir is not None and not str(os.fspath(cache_dir)).strip():  # an unset variable's "" (and " ", s61C):
            raise SchemaError(f"cache_dir is {'blank' if os.fspath(cache_dir) else 'empty'}; name the read cache's "
                              "folder, or leave it None (inside the store)")  # not a folder in the current one
        for where in (path, cache_dir):  # as create does: it opened, then every read failed (s36A)
            if where is not None:
                usable_path(where)
        self.path = Path(path).absolute()  # a relative path would follow later changes of directory
        self._cache_root = None if cache_dir is None else Path(cache_dir).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a store directory")
        linked = [sub for sub in ("versions", "segments", "tags", *((STORE_CACHE,) if cache_dir is None else ()))
                  if (self.path / sub).is_symlink()]
        if linked:  # cleanup would delete, through the link, whatever it finds there that no version uses
            raise StoreError(f"{self.path / linked[0]} is a symbolic link; lateseq never follows links inside a "
                             "store (move the store itself, or give the read cache a folder with cache_dir=, the "
                             "CLI's --cache-dir)")
        schema_file = self.path / SCHEMA_FILE
        if not schema_file.is_file():
            raise StoreError(f"{self.path} is not a lateseq store (no schema.json); create one first")
        # another handle of an open one keeps its read cache, checked (and its root's links resolved) then
        self.cache_dir = segments.cache if segments is not None else self._read_cache(cache_dir)
        schema = load_checked(schema_file, kept_since_v01=True)
        self.schema = Schema.from_json(json.dumps(schema))
        self._schema_crc = content_crc(schema)  # of the file as written: a newer lateseq reads it the same
        self._log = VersionLog(self.path)
        if store_id is not None and self._log.store_id != store_id:  # a handle of that store: is it still there?
            self._log.store_id = store_id
            self._log.check_same_store()
        manifest, self._segment_list = self._read_version(version)  # sets self.version
        self.segment_infos = list(self._segment_list.infos)
        self._by_partition: dict[int, list[SegmentInfo]] = {}
        for info in self.segment_infos:
            self._by_partition.setdefault(info.partition, []).append(info)
        self._views: dict[int, PartitionView | None] = {}
        self._join: tuple[dict[int, PartitionView], PartitionView | None, set[int], int] = ({}, None, set(), 0)
        # per partition: the read cache's generation its view was last checked at (its files
        # unchanged on disk since, while the generation stays), and whether the joined view
        # holds that view as it is (or it has no segments: nothing to read)
        self._checked = np.full(self.schema.partitions, -1, np.int64)
        self._in_join = np.zeros(self.schema.partitions, bool)
        self._join_remaps = REMAPS[0]  # the joined view holds no segment decoded again as of this count
        self._views_lock = fork_safe(threading.RLock())  # threads reading one handle see views and the join whole
        self._reading = threading.local()  # the views a read in this thread used (``_note_read``)
        self._view_merged: dict[int, bool] = {}  # whether a partition's view is of its merged copy
        self._merged_names: dict[int, str] = {}
        self._merged: set[int] = set()  # partitions read through their merged copy
        self._rents: dict[int, MergeRent] = {}  # "auto": what reading segment by segment has cost
        self._host_copies: tuple[int | None, dict[int, set[str]]] = (None, {})  # ``copies_on_host``, at a generation
        self.num_events: int = manifest["events"]
        self._segments = segments or SegmentCache(self.path / "segments", self.cache_dir)
        self._held: dict[str, Segment] = {}  # the segments this handle opened: what it reads once cleaned up
        if not self._reads_ahead() and not self._segments.random_access:
            self._segments.read_at_random()  # the lineage's first handles saw a smaller store
        # every event that arrived before the watermark is in this version (two-tier stores)
        self.watermark: int | None = manifest.get("watermark")

    def _segments_of(self, version: int, manifest: dict) -> SegmentList:
        """The segments of kept ``version`` from its ``manifest``, once the manifest is
        known to be written with this store's schema."""
        recorded = manifest.get("schema_crc32")  # None: the empty version, or written before it was kept
        if recorded is not None and recorded != self._schema_crc:
            raise StoreError(f"{self.path / 'schema.json'} is not the schema version {version} was written with (a "
                             "file copied from another store?); restore it from a backup")
        if not version:
            return SegmentList((), 0, 0, False)
        listed = self._log.segments(version, manifest)
        names = [info.name for info in listed.infos]
        foreign = next((i for i in listed.infos if i.partition >= self.schema.partitions), None)
        if foreign is not None or len(set(names)) < len(names):  # (a crafted list, s62T: verify passed both)
            what = (f"segment {foreign.name} of partition {foreign.partition}, where the store has "
                    f"{self.schema.partitions}" if foreign is not None else
                    f"segment {collections.Counter(names).most_common(1)[0][0]} twice")
            raise StoreError(f"version {version} lists {what} (a manifest crafted or copied from another store?); "
                             "restore it from a backup")
        return listed

    def _read_version(self, version: int | str | None) -> tuple[dict, SegmentList]:
        """Sets ``self.version`` and returns its manifest and segments. "The latest" is read
        again if cleanup retired it between reading its number and its segments (a newer
        version was published meanwhile)."""
        while True:
            self.version = self._log.resolve(version, checked=False)  # the manifest, read next, is the check
            try:
                manifest = self._log.manifest(self.version) if self.version else {"events": 0}
                return manifest, self._segments_of(self.version, manifest)
            except VersionNotFound:
                if version not in (None, LATEST):
                    raise

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | os.PathLike, schema: Schema) -> Store:
        """A new, empty store (version 0) at ``path``: a new or empty folder."""
        if not os.fspath(path):  # an unset variable's "": not the current folder
            raise StoreError(EMPTY_PATH)
        usable_path(path)
        if not isinstance(schema, Schema):
            hint = (f"lateseq.Schema({schema!r:.60})" if isinstance(schema, dict)
                    else "lateseq.Schema({'item_id': 'int64'})")
            raise SchemaError(f"create takes a lateseq.Schema, e.g. {hint}, not a {type(schema).__name__}")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not a store directory")
        if (path / SCHEMA_FILE).exists():
            raise StoreError(f"{path} already holds a store")
        # what a folder may hold: the empty folders of a create killed before its schema
        held = sorted(p.name for p in path.iterdir() if not (p.name in ("versions", "segments", "tags")
                                                              and p.is_dir() and not any(p.iterdir()))
                      ) if path.is_dir() else []
        if held:  # its cleanup would leave them be, but a store in it would sit inside this one
            raise StoreError(f"{path} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                             "create a store in a new or empty folder")
        inside = _store_holding(path.resolve().parent)
        if inside is not None:
            raise StoreError(f"{path} is inside the store {inside}; create a store elsewhere")
        absolute = path.absolute()
        made = [p for p in (*reversed(absolute.parents), absolute) if not p.exists()]  # outermost first
        made += [absolute / sub for sub in ("versions", "segments", "tags") if not (absolute / sub).exists()]
        ours = False  # whether the schema.json there is this call's
        try:
            try:
                for sub in ("versions", "segments", "tags"):
                    (path / sub).mkdir(parents=True, exist_ok=True)
                for sub in ("versions", "segments", "tags"):
                    fsync_dir(path / sub)
            except OSError as exc:
                raise StoreError(f"cannot create a store at {path}: {exc.strerror}") from exc
            try:  # never replaces a schema: two processes creating one store at once, one of them is refused
                write_new(path / SCHEMA_FILE, dump_checked(json.loads(schema.to_json())))
            except FileExistsError as exc:
                raise StoreError(f"{path} already holds a store (another process created it meanwhile)") from exc
            ours = True
            write_store_id(path)
            try:
                fsync_dir(path)
                for folder in dict.fromkeys(p.parent for p in made if p == absolute or p in absolute.parents):
                    synced_if_possible(folder)  # each folder made for it is named in its parent
            except OSError as exc:
                raise StoreError(f"cannot create a store at {path}: {exc.strerror} syncing its folder") from exc
        except BaseException:  # no half-made store stays for the next create to take for another's folder
            if ours:
                (path / SCHEMA_FILE).unlink(missing_ok=True)
                (path / STORE_ID).unlink(missing_ok=True)
            if not (path / SCHEMA_FILE).exists():  # else another process's store: its folders stay
                for folder in reversed(made):
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # empty, as made (another writer's files keep it)
            raise
        return cls(path)

    @property
    def random_access(self) -> bool:
        """Whether this store's maps are read without the kernel's readahead (see
        ``readahead``): a loader then asks for the pages it will need itself."""
        return self._segments.random_access

    def _reads_ahead(self) -> bool:
        if self.readahead != "auto":
            return self.readahead
        row = 8 + 4 * len(SYSTEM_COLUMNS) + sum(np.dtype(t).itemsize for t in self.schema.columns.values())
        return self.num_events * row <= physical_memory() // 2  # an upper bound: decoding packs narrower

    def __reduce__(self):
        root = None if self._cache_root is None else str(self._cache_root)
        return (_unpickle, (str(self.path), self.version, root, self.merged_reads, self.readahead, self._log.store_id))

    def _read_cache(self, cache_dir: str | os.PathLike | None) -> Path:
        """This store's folder of the read cache ``cache_dir`` (None: ``STORE/cache``),
        made and checked where another user may share it (``_make_private``)."""
        if cache_dir is None:
            folder = self.path / STORE_CACHE
            if (found := _stat_or_none(folder)) is not None and found.st_mode & stat.S_IWOTH:
                warnings.warn(f"lateseq: {folder} {_writable_by_all(found)}: a merged or filtered copy there decides "
                              "what a read returns, so any user of this host may decide what yours return; make it "
                              "writable by the store's writers only (chmod o-w), and give other readers a read cache "
                              "of their own (cache_dir=, the CLI's --cache-dir)", RuntimeWarning, stacklevel=4)
            return folder
        folder = _own_cache(self._cache_root, self.path)
        if folder.resolve().is_relative_to(self.path.resolve()) and not folder.resolve().is_relative_to(
                self.path.resolve() / STORE_CACHE):
            raise SchemaError(f"cache_dir {cache_dir} is inside the store {self.path} (only its own cache/ may be)")
        if os.path.isfile(cache_dir):
            raise StoreError(f"cache_dir {cache_dir} is a file, not a folder for the read cache")
        holder = _store_holding(folder.resolve())
        if holder is not None and holder != self.path.resolve():  # its cleanup would delete this cache's files
            raise SchemaError(f"cache_dir {cache_dir} is inside another store, {holder}; give the read cache a "
                              "folder of its own")
        return folder if folder == self._cache_root else _make_private(folder, self._cache_root)

    def _handle(self, version: int | str | None = None) -> Store:
        """Another handle on this store, sharing this one's open segments."""
        return Store._sharing(self.path, version, self._cache_root, self.merged_reads, self.readahead,
                              self._segments, self._log.store_id)

    def __repr__(self) -> str:
        settings = "".join(f", {name}={value}" for name, value in (
            ("merged_reads", self.merged_reads), ("readahead", self.readahead)) if value != "auto")
        return f"Store({str(self.path)!r}, version={self.version}{settings})"

    def _kept(self, version: int | None = None) -> bool:
        """Whether ``version`` (this handle's when None) is still kept, not retired by cleanup."""
        try:
            self._log.manifest(self.version if version is None else version)
        except VersionNotFound:
            return False
        return True

    def latest(self) -> Store:
        """A handle on the newest published version."""
        return self._handle()

    def checkout(self, version: int | str) -> Store:
        """Another handle on the same store at ``version`` (a number or a tag)."""
        return self._handle(version)

    @property
    def latest_version(self) -> int:
        self._log.check_same_store()  # the store's state now: not another's made at its path
        return self._log.latest

    # ------------------------------------------------------------ versions and tags

    def versions(self, last: int | None = None, tagged: bool = False) -> list[VersionInfo]:
        """The kept versions, oldest first: the newest ``last`` only (when given), the
        tagged ones only with ``tagged``. Each is read from its manifest: on a store of
        thousands of versions, ``last`` reads only those."""
        self._log.check_same_store()
        return self._log.infos(None if last is None else exact_integer("last", last, 0), tagged)

    def tags(self) -> dict[str, int]:
        self._log.check_same_store()
        return self._log.tags()

    def tag(self, name: str, version: int | None = None) -> None:
        """Names a version (this handle's by default); a tagged version is never cleaned up."""
        number = self._log.resolve(self.version if version is None else version)
        if number == 0:
            raise VersionNotFound("version 0 is the empty store, which cannot be tagged"
                                  + ("; commit first" if self._log.latest == 0 else ""))
        self._log.tag(name, number)

    def untag(self, name: str) -> None:
        """Removes tag ``name``; its version stays until a ``cleanup`` retires it."""
        self._log.untag(name)

    # ------------------------------------------------------------ writing

    @_warns_of_copies_left_out
    def commit(self, events: EventSource, *, watermark: int | None = None,
               commit_id: str | None = None) -> Store:
        """Publishes ``events`` as the next version; returns a handle on it.

        Validates everything before writing anything: bad input raises SchemaError and
        leaves the store as it was. ``watermark`` records that every event which arrived
        before it is now in the store (see ``lateseq.twotier``). ``commit_id`` makes the
        commit idempotent: when a version was already published with that id (and the
        same events), nothing is written and a handle on that version is returned (on the
        latest, if cleanup retired it); the same id with other events is an error.
        Compactions published while it writes do not stop it: it lands on top of them.
        Another writer's commit or deletion published first is a CommitConflict, with
        nothing published: retry (with the same ``commit_id``).
        """
        table = _read_events(events, self.schema.id_columns)
        check_commit_id(commit_id)
        watermark = check_watermark(watermark)
        if watermark is not None:  # every fold after it would not advance it (s47C)
            self.schema.refuse_far_future(np.array([watermark]), "commit's watermark")
        if table.num_rows or watermark is None:
            table = self.schema.conform(table)
        else:  # an empty commit that only moves the watermark: it may name no column, not another one
            self.schema.conform(table, empty=True)
        # from reading the base to publishing, hold the store's lock: cleanup then deletes
        # none of the files the new version names (its parent's included)
        with self._log.writing():
            base = self._handle()  # commit on top of the latest version, whatever this handle is
            version = base.version + 1
            only_watermark = watermark is not None and table.num_rows == 0  # coverage advanced, no new events
            incoming = None if only_watermark else Events.from_table(table, self.schema, version)
            # what a commit id vouches for: the events as stored (sorted by user and time, ties
            # in their given order), so a rerun that reads the same files in another order
            # is the same commit unless rows that tie land in another order (their order in
            # a history would differ); the given order too, as recorded before this was so
            content = f"watermark {watermark}" if incoming is None else incoming.digest(
                incoming.order(self.schema.tiebreak) if commit_id is not None else None)
            # a rerun first: it is a no-op even after a later commit moved the watermark on
            if commit_id is not None and (done := self._log.find_commit(commit_id)) is not None:
                if done[1] not in (content, None if incoming is None else incoming.digest()):
                    raise SchemaError(f"commit id {commit_id!r} was used by version {done[0]} for other events (or "
                                      "for these with rows that tie in time in another order, which a history "
                                      "would hold in that order: read the input in the first run's order, or "
                                      "give the schema a tiebreak column)")
                try:
                    return self._handle(done[0])
                except VersionNotFound:  # retired by cleanup since
                    return base
            if watermark is not None and base.watermark is not None and watermark < base.watermark:
                raise SchemaError(f"watermark {watermark} is older than the store's {base.watermark}")
            delivered = None
            if incoming is not None and self.schema.event_id_col:
                known = base.event_ids(np.unique(incoming.user))
                delivered = incoming.first_deliveries(self.schema.event_id_col, known)
            if watermark is None:
                watermark = base.watermark
            while True:
                try:
                    return self._publish_commit(base, incoming, delivered, watermark, commit_id, content)
                except CommitConflict:
                    # compactions published meanwhile hold the same events: the commit goes on top,
                    # its events stamped anew (a daily commit raced by a tiered compaction lost about
                    # one race in 20, left to every caller's retry loop)
                    if (compacted := self._compacted_since(base)) is None:
                        raise
                    base = compacted

    def _compacted_since(self, base: Store) -> Store | None:
        """The latest version if every one since ``base`` is a compaction; None otherwise, or
        where one cannot be read (the caller's conflict stands; reading reports the file)."""
        try:
            latest = self._handle()
            return latest if self._log.only_compactions(base.version, latest.version) else None
        except (StoreError, VersionNotFound):
            return None

    def _publish_commit(self, base: Store, incoming: Events | None, delivered: np.ndarray | None,
                        watermark: int | None, commit_id: str | None, content: str) -> Store:
        """Writes ``incoming`` (but the redeliveries ``delivered`` leaves out) as segments
        and publishes them as the version after ``base``."""
        version = base.version + 1
        with self._unpublished() as new:
            if incoming is not None:
                incoming.version.fill(version)
                partitions = self.schema.partitions
                for p, rows in (rows_by_partition(partition_of(incoming.user, partitions)) if partitions > 1
                                else [(0, np.arange(len(incoming)))]):
                    if delivered is not None:
                        rows = rows[delivered[rows]]  # none left: every event was a redelivery
                    if len(rows):  # sorted, then taken once (a take and a sorted take doubled a commit's memory)
                        order = incoming.order(self.schema.tiebreak, None if len(rows) == len(incoming) else rows)
                        self._write(p, incoming.take(order), new)
            if commit_id is not None:
                self._log.mark_commit(commit_id, version)
        return base._publish(version, "commit", base.segment_infos + new, new, watermark, commit_id, content)

    @_warns_of_copies_left_out
    def compact(self, policy: Literal["full", "tiered"] = "full", *, fanout: int = 4) -> Store:
        """Merges segments into sorted ones, as a new version.

        ``"full"`` merges each partition's segments into one. ``"tiered"`` bounds the
        write cost of frequent commits: it merges runs of at least ``fanout`` adjacent
        segments in which, going back in time, each segment is no bigger than the newer
        ones of the run together, and repeats, so recent small segments merge and old
        large ones wait; each event is rewritten about log2(rows / commit) times in all,
        not once per compaction, and a partition keeps at most ``fanout * log2(rows)``
        segments (the cheapest adjacent ones merge past that). Only adjacent segments
        merge, so events that tie keep their commit order. Events keep the
        version they became visible in, so every pointer into any kept version rebuilds
        the same sequence. Commits published while it merges stay: it lands on top of
        them. Returns this handle if nothing needs merging.
        """
        if policy not in ("full", "tiered"):
            raise SchemaError(f"compaction policy must be 'full' or 'tiered', not {policy!r}")
        fanout = exact_integer("fanout", fanout, 2)
        with self._log.writing():
            base = self._handle()
            plans = {p: [(0, len(infos))] if policy == "full" else _tiered_runs([i.rows for i in infos], fanout)
                     for p, infos in base._by_partition.items()}
            if not any(end - start > 1 for runs in plans.values() for start, end in runs):
                return base
            infos = []
            with self._unpublished() as new:
                for p, segments in sorted(base._by_partition.items()):
                    runs = {start: end for start, end in plans[p] if end - start > 1}
                    i = 0
                    while i < len(segments):
                        end = runs.get(i, i + 1)
                        if end - i == 1:
                            infos.append(segments[i])
                        else:
                            merged = merge_segments([base._segments.get(s) for s in segments[i:end]], self.schema)
                            infos.append(self._write(p, merged, new))
                        i = end
            return base._publish_rewritten("compact", infos, new)

    def _publish_rewritten(self, operation: str, infos: list[SegmentInfo], new: list[SegmentInfo],
                           deleted: list[int] | None = None,
                           rewrite: Callable[[list[SegmentInfo], list[SegmentInfo]], list[SegmentInfo]] | None = None,
                           ) -> Store:
        """Publishes ``infos``, what ``operation`` made of this handle's segments, as the next
        version; where commits were published meanwhile, on top of them, their segments after
        (as ``rewrite`` makes them, writing into its second argument): they come after every
        one rewritten, so the work stands (so do versions since that rewrote only segments
        added after them). Retried from the start, a compaction or a deletion that takes
        minutes lost every race against commits every few seconds (strangers': 6 of 6, 8 of
        8). One that rewrote a segment this one did (a compaction, a deletion) is a
        CommitConflict."""
        base, added = self, []
        while True:
            try:
                return base._publish(base.version + 1, operation, infos + added, new, base.watermark,
                                     deleted=deleted, keep_on_conflict=True)
            except CommitConflict:
                latest = self._handle()
                names = [i.name for i in latest.segment_infos]
                if latest.version <= base.version or names[:len(self.segment_infos)] != [
                        i.name for i in self.segment_infos]:  # not only commits since: this work is stale
                    self._remove_unpublished(new)
                    raise
                try:
                    with self._unpublished() as more:
                        added = latest.segment_infos[len(self.segment_infos):]
                        added = added if rewrite is None else rewrite(added, more)
                except BaseException:
                    self._remove_unpublished(new)
                    raise
                base, new = latest, new + more

    @_warns_of_copies_left_out
    def delete(self, users: np.ndarray | list[int]) -> Store:
        """Publishes a version without any event of ``users`` (a privacy request).

        Older versions still hold the events until ``cleanup`` retires them (tagged
        versions stay until untagged); the manifest records the users, so the audit
        reports their pointers as ``deleted``. Commits published while it rewrites stay,
        without the users' events; a compaction or deletion published meanwhile is a
        CommitConflict (retry: ``lateseq delete`` does, as ``ingest`` does). Users without
        a stored event are recorded too (a new version of the same segments): a two-tier
        log may hold their events inline, served from the mutable tier, which
        ``strip_tails(drop_deleted=True)`` then erases.
        """
        users = np.unique(as_user_ids(users, "users to delete"))
        rewritten: dict[str, SegmentInfo | None] = {}  # segments that held them: without them, or none

        def without_users(infos: list[SegmentInfo], new: list[SegmentInfo]) -> list[SegmentInfo]:
            """``infos``, each that holds any of ``users`` rewritten without them (once) in its
            place: segment order breaks time ties."""
            for info in infos:
                if info.name in rewritten:
                    continue
                lo, hi = self._segments.get(info).user_ranges(users)
                if (hi > lo).any():
                    events = segment_events(self._segments.get(info), self.schema)
                    keep = np.flatnonzero(~np.isin(events.user, users))
                    rewritten[info.name] = self._write(info.partition, events.take(keep), new) if len(keep) else None
            return [kept for i in infos if (kept := rewritten.get(i.name, i)) is not None]

        with self._log.writing():
            base = self._handle()
            with self._unpublished() as new:
                infos = without_users(base.segment_infos, new)
            if not len(users):
                return base
            # commits published meanwhile may hold their events too: theirs are rewritten as well
            return base._publish_rewritten("delete", infos, new, users.tolist(), without_users)

    def deleted_users(self) -> np.ndarray:
        """Users whose events a kept or retired version's deletion (up to this handle's) removed."""
        return np.array(sorted(self._log.deletions(self.version)), np.int64)

    def deleted_after(self, users: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """Whether a deletion published after version ``versions[i]`` removed user
        ``users[i]``'s events: a history read at that version counted events the store has
        since lost (up to this handle's version: a deletion after it is not in what it reads).
        A user deleted and back since holds only new events in later versions."""
        ids, at = self._deleted
        users = np.asarray(users, np.int64)
        if not len(ids):
            return np.zeros(len(users), bool)
        pos = np.minimum(np.searchsorted(ids, users), len(ids) - 1)
        return (ids[pos] == users) & (np.asarray(versions, np.int64) < at[pos])

    @cached_property
    def _deleted(self) -> tuple[np.ndarray, np.ndarray]:
        """(users deleted up to this handle's version, sorted; the version of each one's
        last deletion): read once per handle from every version's record (a loader asks
        for each batch)."""
        last = self._log.deletions(self.version)
        ids = np.array(sorted(last), np.int64)
        return ids, np.array([last[user] for user in ids.tolist()], np.int64)

    @contextlib.contextmanager
    def _unpublished(self) -> Iterator[list[SegmentInfo]]:
        """A list for the segments written for a version not published yet, removed if the
        block fails (a full disk at a later partition, or at a segment's read-cache copy,
        left the others in segments/ until cleanup's grace had passed); ``_publish``
        removes them where the publish itself fails."""
        new: list[SegmentInfo] = []
        try:
            yield new
            if new:  # the files survive a power loss before a manifest names them
                try:
                    fsync_dir(self.path / "segments")
                except OSError as exc:  # named (a bare "Input/output error", s45D)
                    raise write_failed(self.path / "segments", exc) from exc
        except BaseException:
            self._remove_unpublished(new)
            raise

    def _stamp_unpublished(self, new: list[SegmentInfo], version: int) -> None:
        """Marks the durable files written for ``version`` as written now, and checks that
        none is gone. A cleanup on another host (which this host's lock does not hold
        back) spares files younger than its grace: a write longer than that (a big
        compaction) may have lost its first files meanwhile, and its version, published,
        would name files that are not there. Stamped, they are spared for that long again.
        Each is looked for once more after every stamp: one that cleanup moved aside while
        it was stamped is gone from its name now (``_remove_unreferenced``)."""
        paths = [path for info in new for path in info.files(self.path / "segments")]
        for path in paths:
            try:
                os.utime(path)
            except FileNotFoundError:
                raise _lost_unpublished(path, version) from None
            except OSError as exc:
                raise write_failed(path, exc) from exc
        for path in paths:
            if not os.path.lexists(path):
                raise _lost_unpublished(path, version)

    def _remove_unpublished(self, new: list[SegmentInfo]) -> None:
        for info in new:
            self._remove_segment(info)

    def _write(self, partition: int, events: Events | LaidOut, new: list[SegmentInfo]) -> SegmentInfo:
        """Writes a segment for a version not published yet, into ``new`` (``_unpublished``)."""
        new.append(write_segment(self.path / "segments", partition, events, self.cache_dir))
        return new[-1]

    def _publish(self, version: int, operation: str, infos: list[SegmentInfo], new: list[SegmentInfo],
                 watermark: int | None, commit_id: str | None = None, content: str | None = None,
                 deleted: list[int] | None = None, keep_on_conflict: bool = False) -> Store:
        """Publishes ``infos`` as ``version``, on this handle's; a commit's (``infos`` this
        handle's segments and then ``new``) lists only ``new``. The ``new`` files are removed
        where nothing was published, except, with ``keep_on_conflict``, for a CommitConflict."""
        fields, segments = self._log.segment_fields(self.version, self._segment_list, infos,
                                                    new if operation == "commit" else None)
        manifest = {
            "watermark": watermark,
            "version": version,
            "parent": self.version,
            "created_at": time.time(),
            "operation": operation,
            "events": sum(i.rows for i in infos),
            **fields,
            "commit_id": commit_id,
            "content": content,
            "deleted": deleted,
            "schema_crc32": self._schema_crc,  # a schema.json replaced later is refused when a version is opened
        }
        try:
            self._stamp_unpublished(new, version)
            self._log.publish(version, manifest)
        except NotSynced:  # published: its files are the version's
            raise
        except StoreError as exc:  # another writer's version, a full disk: nothing published, the new files
            if not (keep_on_conflict and isinstance(exc, CommitConflict)):  # are nobody's (after any other
                self._remove_unpublished(new)  # error the version may be published: they stay, and cleanup
            raise  # removes them if it was not)
        self._log.remember(version, segments)
        try:
            return self._handle(version)
        except VersionNotFound:  # a cleanup retired it already (later versions were published meanwhile)
            latest = self._handle()
            warnings.warn(f"lateseq: version {version} ({operation}) was published, and retired by a cleanup before "
                          f"this handle opened it; returning the latest, {latest.version}, which was made on it "
                          "and every version published since", UserWarning, stacklevel=4)
            return latest

    def cleanup(self, before: int | str, grace_s: float = 3600.0) -> list[int]:
        """Retires versions older than ``before`` (a number, a tag or ``"latest"``, as the
        CLI takes it; tagged versions stay, the latest always does) and deletes every file
        no kept version references: segments, their decoded copies in this handle's read
        cache (and in the store's own, ``STORE/cache``, where the handle reads another), and
        crashed writers' leftovers. Returns the versions retired.

        Writers on this host hold the store's lock while their files are unpublished, so
        cleanup never deletes those; ``grace_s`` also spares files younger than that, for
        writers on other hosts of a shared file system. Pointers into retired versions
        still rebuild, because events keep their version; their checksums prove it.
        A handle on a retired version keeps the segments it has mapped; one it has not
        opened yet is gone, and reading it raises VersionNotFound: tag what must stay.
        On a disk too full for its records, it first deletes the read cache's copies that
        no version it keeps reads (their room is freed once no process maps them).
        """
        _check_grace(grace_s)
        if isinstance(before, str):
            before = self._log.resolve(before, checked=False)
        before = exact_integer("before", before, kind="a version number, a tag or 'latest'")
        latest = self._log.latest
        if not 0 <= before <= latest:  # a typo's 1000 for 100 retired every untagged version
            raise VersionNotFound(f"cleanup(before={before}): {self.path} has versions 0 to the latest, {latest}; "
                                  "nothing was retired")
        self._log.refuse_lost("cleanup")
        self._refuse_missing_segments(before)
        try:
            retired = self._log.retire_before(before)
        except StoreError as exc:  # a full disk: no room for a tombstone, so nothing would ever be freed
            if not out_of_room(exc):
                raise
            with self._log.deleting():  # the read cache's copies the kept versions will not read make room
                self._remove_cached(self._log.kept_partitions(before), grace_s)
            forget_removed()  # once this process maps them no more (it read them to commit or compact)
            retired = self._log.retire_before(before)
        with self._log.deleting():
            with self._log.tagging():  # crashed publishes, retirements and tags: none is under way
                for folder in (self._log.versions_dir, self._log.tags_dir):
                    for path in folder.glob(".tmp-*"):
                        if older_than(path, grace_s):
                            remove_file(path)
            kept = self._remove_unreferenced(grace_s)
            self._remove_cached(kept, grace_s)
            own = self.path / STORE_CACHE  # the store's own read cache, where this handle reads another: a
            if own.is_dir() and own.resolve() != self.cache_dir.resolve():  # deletion's events stayed in it (s61G)
                self._remove_cached(kept, grace_s, cache=own)
        forget_removed()  # this process's maps of what it removed: their room returns now
        return retired

    def cleanup_cache(self, grace_s: float = 3600.0) -> None:
        """Deletes the copies this handle's read cache holds for no version the store keeps
        (decoded, merged and filtered), older than ``grace_s``; retires nothing and touches
        nothing of the store. For a reading host's own cache (``cache_dir=``), which the
        writer's ``cleanup`` never sees: run there now and then, it grew with every version
        read (s52C: 23 MB after 60 days where the writer's cache held 9)."""
        _check_grace(grace_s)
        self._remove_cached(self._log.kept_partitions(), grace_s, store_cleaned=False)
        forget_removed()

    def _refuse_missing_segments(self, before: int) -> None:
        """StoreError where a version that ``cleanup(before)`` keeps names a segment whose
        files are gone (a partial copy of the store): retiring the versions before it took
        the last ones that read what it lost, and no version read its partition again (s36A)."""
        folder = self.path / "segments"

        def missing() -> set[str]:
            """Files of kept segments that are not there: each has both (rsync copies the index
            first); one that a stopped cleanup moved aside is there (this one puts it back)."""
            named = {name for _, names in self._log.kept_partitions(before) for name in names}
            aside = {found.group(1) for path in folder.iterdir() if (found := _ASIDE.fullmatch(path.name))}
            files = {f"{name}{suffix}" for name in named for suffix in SEGMENT_FILES}
            return {file for file in files - aside if not (folder / file).exists()}

        gone = missing()
        if gone:
            gone &= missing()  # named still: not the segment of a version another cleanup retired meanwhile
        if gone:
            raise StoreError(f"{len(gone)} segment files that versions kept by this cleanup read are missing "
                             f"(segments/{min(gone)} ...): the store is damaged, a partial copy perhaps; nothing was "
                             "retired, as retiring older versions may leave none that reads what they lost (`lateseq "
                             "verify` names every problem; restore the files from a whole copy)")

    def _remove_unreferenced(self, grace_s: float) -> set[tuple[int, tuple[str, ...]]]:
        """Deletes the durable files no kept version names and older than ``grace_s``;
        returns the kept versions' partitions it read last (``VersionLog.kept_partitions``).

        Each is first moved aside, and looked at again once all are: a writer on another
        host (which this host's lock does not hold back) may have stamped it, or published
        a version naming it, between the first look and the move; it gets the file back.
        One that stamps after the move finds the file gone and publishes nothing
        (``_stamp_unpublished``). A cleanup stopped midway leaves files aside: the next
        one puts back those a kept version names and deletes the others."""
        folder = self.path / "segments"
        aside: list[tuple[Path, Path]] = []  # (aside, where it was)
        referenced = {name for _, names in self._log.kept_partitions() for name in names}
        for path in folder.iterdir():
            if path.is_dir():  # a folder: not ours
                continue
            if stopped := _ASIDE.fullmatch(path.name):  # a stopped cleanup's
                aside.append((path, folder / stopped.group(1)))
            elif path.name.split(".")[0] not in referenced and older_than(path, grace_s):  # "": a crashed write's
                moved = folder / f".tmp-aside-{os.urandom(4).hex()}-{path.name}"
                try:
                    os.rename(path, moved)
                except OSError:  # gone (another cleanup's), or no file of lateseq's (a name too long): left alone
                    continue
                aside.append((moved, path))
        kept = self._log.kept_partitions()
        referenced = {name for _, names in kept for name in names}
        for moved, original in aside:
            if original.name.split(".")[0] in referenced or not older_than(moved, grace_s):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(moved, original)
            else:
                moved.unlink(missing_ok=True)
        return kept

    def _warn_of_older_folder(self) -> None:
        """A shared read cache's folder of this store as lateseq kept it before each user had
        one (no ``-u<uid>``): nothing cleans it any more, and a deletion's events stay in it
        (s62U: 28 of a deleted user's events after delete, cleanup and cleanup_cache)."""
        if self._cache_root is None or self.cache_dir == self._cache_root:
            return
        older = self.cache_dir.with_name(self.cache_dir.name.rsplit("-u", 1)[0])
        if older != self.cache_dir and older.is_dir():
            warn_at_caller(f"lateseq: {older} is this store's read-cache folder as an older lateseq kept it; no "
                           "cleanup reaches it now, and it may hold events of users since deleted: remove it (its "
                           f"copies are rebuilt in {self.cache_dir.name} as reads need them)")

    def _remove_cached(self, kept: set[tuple[int, tuple[str, ...]]], grace_s: float,
                       store_cleaned: bool = True, cache: Path | None = None) -> None:
        """Deletes what the read cache ``cache`` (this handle's by default) holds for no
        version of ``kept`` (see ``VersionLog.kept_partitions``): decoded copies, merged and
        filtered copies, and builders' leftovers. A cache that cannot be written (a
        read-only mount) is left as it is, with a warning: the store's own cleanup
        (``store_cleaned``) is done, and failed there (s41A)."""
        if cache is None:
            self._warn_of_older_folder()
        cache = self.cache_dir if cache is None else cache
        try:
            self._remove_stale_cached(cache, kept, grace_s)
        except OSError as exc:
            if not cache_unwritable(exc):
                raise
            done = ("The store's own files are cleaned up; the" if store_cleaned  # (s52D: said of cache-only)
                    else "Nothing was removed; the")
            warn_at_caller(f"lateseq: {'cleanup' if store_cleaned else 'cleanup_cache'} left the read cache "
                           f"{cache} as it was: it cannot be written ({exc.strerror or exc} at "
                           f"{exc.filename or cache}). {done} copies there of versions the store no longer "
                           "keeps go when a cleanup runs where the cache can be written (or remove them yourself: "
                           "they are copies only)")

    def _remove_stale_cached(self, cache: Path, kept: set[tuple[int, tuple[str, ...]]], grace_s: float) -> None:
        referenced = {name for _, names in kept for name in names}
        for path in cache.glob("*") if cache.is_dir() else []:
            if path.name.startswith(DECODE_LOCK):  # a decode lock: only its segment's going frees it
                stale = path.name[len(DECODE_LOCK):] not in referenced and self._decoding_none(path)
            elif (is_segment_name(segment := temporary_of(path.name) or "") and segment not in referenced
                  and not any((self.path / "segments" / f"{segment}{suffix}").exists() for suffix in SEGMENT_FILES)):
                # a killed decode of a segment gone from the store: events a deletion's cleanup must not
                # leave for an hour (s61G); one under way (its lock held) is left to finish. (A segment whose
                # files are there may be a writer's, unpublished, writing its copy: s62Q's cleanup_cache
                # removed that under it, and the commit failed)
                stale = self._decoding_none(cache / f"{DECODE_LOCK}{segment}")
            elif path.name.startswith(".tmp-"):  # a decode under way, or a crashed one's leftovers
                stale = older_than(path, max(grace_s, _DECODE_GRACE_S))
            else:  # decoded copies of segments no kept version uses
                stale = is_segment_name(path.name.split(".")[0]) and path.name.split(".")[0] not in referenced
            if stale and older_than(path, grace_s):
                remove_file(path)
        merged: set[str] = set()
        built = copies_on_host(cache)
        for partition, names in kept:
            if len(names) < 2:
                continue
            merged.add(own := merged_name(partition, names))
            if len(names) > 2 and own not in built.get(partition, ()):  # and the copy it reads its oldest through
                bases = (name for _, name in merged_bases(partition, list(names), built)
                         if sidecar_readable(cache, name))  # the longest that reads
                merged.update(itertools.islice(bases, 1))
        remove_stale_copies(cache, referenced, merged, grace_s, max(grace_s, _DECODE_GRACE_S))

    @staticmethod
    def _decoding_none(lock: Path) -> bool:
        """Whether no process decodes the segment whose decode lock is ``lock`` (a lock
        removed while held let a second decoder in)."""
        if not lock.exists():
            return True
        with lock_idle(lock) as idle:
            return idle

    # ------------------------------------------------------------ reading

    def _remove_segment(self, info: SegmentInfo) -> None:
        for path in [*info.files(self.path / "segments"), decoded_file(self.cache_dir, info.name)]:
            discard(path)
        forget_left_out(info.name)

    def event_ids(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user, event id) of every stored event of ``users`` (unique), for dedup."""
        column = self.schema.event_id_col
        found_user, found_ids = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        # only the partitions of ``users``: every segment of the store opened for one event cost
        # a commit into 256 partitions 1.4-1.8 s (a stranger's)
        for partition, rows in rows_by_partition(partition_of(users, self.schema.partitions)):
            mine = users[rows]
            for segment in self.segments(partition):
                lo, hi = segment.user_ranges(mine)
                found_user.append(np.repeat(mine, hi - lo))
                found_ids.append(segment.decoded(column, row_ranges(lo, hi)).astype(np.int64))
        return np.concatenate(found_user), np.concatenate(found_ids)

    def prefault(self, columns: list[str]) -> None:
        """Touches every page of the columns a projection reads (building merged copies
        first, unless ``merged_reads=False``), so a long-running loader starts warm instead
        of faulting pages in, or merging, during its first batches."""
        if isinstance(columns, str):
            raise SchemaError(f"prefault takes a list of column names, not the string {columns!r}")
        unknown = [c for c in columns if c != self.schema.time_col and c not in self.schema.columns]
        if unknown:  # a segment "had no column" (s43A)
            raise SchemaError(f"prefault: unknown columns {unknown}; the store has "
                              f"{[self.schema.time_col, *self.schema.columns]}")
        if self.merged_reads == "auto":  # a loader that warms up reads long enough to pay for them
            self._merged.update(p for p, infos in self._by_partition.items() if len(infos) > 1
                                and (p not in self._merged_names or p in self._rents))  # not one given up on
            self._checked[:] = -1  # their views change
        names = [TIME if c == self.schema.time_col else c for c in columns]
        for segment in (s for p in sorted(self._by_partition) for s in self._view(p).segments):
            for name in dict.fromkeys([*names, TIME, *SYSTEM_COLUMNS]):
                np.add.reduce(segment.stored(name).view(np.uint8)[::4096], dtype=np.uint64)

    def segments(self, partition: int | None = None) -> list[Segment]:
        """Open segments of this version (of one partition), oldest first."""
        return self._open_all(self.segment_infos if partition is None else self._by_partition.get(partition, []))

    def _open_all(self, infos: list[SegmentInfo]) -> list[Segment]:
        try:
            return [self._opened(i) for i in infos]
        except StoreError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):  # damaged, not gone: restore it
                raise
            self._log.check_same_store()
            try:  # a missing file of a version cleaned up since this handle opened it is no damage
                self._log.manifest(self.version)
            except VersionNotFound as gone:
                missing = getattr(exc.__cause__, "filename", None) or exc.args[0]
                raise VersionNotFound(f"{gone}, while this handle still read it ({missing} is gone with it): open "
                                      "the store again (lateseq.open), whose latest version rebuilds every pointer of "
                                      "a retired one; tag a version to keep reading it as it is") from exc
            raise

    def _opened(self, info: SegmentInfo) -> Segment:
        """``info``'s segment as this handle opened it: one whose decoded copy was removed
        since (its version cleaned up) is still read through this map, which the process's
        segment cache lets go of (a merged copy built after the cleanup reopened the segments
        from disk, and found them gone); one replaced on disk is opened anew."""
        segment = self._held.get(info.name)
        if segment is None or segment.changed():
            segment = self._held[info.name] = self._segments.get(info)
        return segment

    def locate(self, users: np.ndarray, request_ts: np.ndarray, visibility: Visibility,
               max_len: int, lengths: np.ndarray | None = None, lower: np.ndarray | None = None) -> Located:
        """Finds each pointer's visible events: time before the request, and ``visibility``
        (``lengths``, the pointers' recorded ones, only speed the search up; ``lower``, the
        earliest time the readers keep, bounds the windows)."""
        try:
            located = locate(self.schema, self._view, self.version, users, request_ts, visibility, max_len, lengths,
                             self._joined, lower)
        except PointerError:
            self._refuse_unpublished(visibility)
            raise
        self._note_read(w.view for w in located.partitions)
        return located

    def _refuse_unpublished(self, visibility: Visibility) -> None:
        """PointerError for pointers that need a version after the latest: no handle of this
        store reads them (it said to open a later version, which none is, s61A)."""
        needed, latest = int(visibility.version_hi.max()), self._log.latest
        if needed > latest:
            raise PointerError(f"pointers need version {needed}, but {self.path}'s latest is {latest}: they were "
                               f"logged against another store, or its versions/{needed:08d}.json was lost (restore it "
                               "from a backup)")

    def _read_cache_generation(self) -> int:
        """The read cache's generation as a read begins; the views it reads are noted from
        here on (``_note_read``), in this thread, and looked up at this generation (what
        changes during the read, ``_overwritten_since`` finds)."""
        self._reading.views = []
        self._reading.remaps = REMAPS[0]
        self._reading.generation = generation = self._segments.watch.generation()
        return generation

    def _note_read(self, views: Iterable[PartitionView]) -> None:
        known = getattr(self._reading, "views", None)
        if known is not None:
            known.extend(views)

    def _overwritten_since(self, generation: int) -> bool:
        """Whether a decoded copy the read begun at ``generation`` read (plain, merged or
        filtered) was written in place since (a stat of each only when anything changed),
        or decoded again since its view was made: a column that failed its digest had the
        copy replaced, and the columns copied before came from the map written into (a
        look at each view only when some segment of this process was)."""
        views = getattr(self._reading, "views", None) or []
        remaps = getattr(self._reading, "remaps", None)
        self._reading.views = self._reading.generation = self._reading.remaps = None
        if remaps != REMAPS[0] and any(view.remapped() for view in views):
            return True
        return self._segments.watch.generation() != generation and any(
            segment.overwritten() for view in views for segment in view.segments)

    @property
    def _pass(self) -> ReadPass | None:
        """The pass the reads in this thread belong to (``_in_pass``), if any."""
        return getattr(self._reading, "pass_", None)

    @contextlib.contextmanager
    def _in_pass(self, reading: ReadPass, left: int) -> Iterator[None]:
        """The reads in this thread meanwhile belong to the pass ``reading``, which has
        ``left`` pointers to read, theirs included (``ReadPass``)."""
        before = self._pass
        reading.left, self._reading.pass_ = max(0, int(left)), reading
        try:
            yield
        finally:
            self._reading.pass_ = before

    def _record_reads(self, located: Located, max_len: int | np.ndarray) -> None:
        """Counts, for ``merged_reads="auto"``, the events a checked read of ``located``
        returns (its newest ``max_len`` per pointer, or each one's) from partitions read
        segment by segment, towards their rents and the pass's (``ReadPass``)."""
        if self.merged_reads != "auto" or not self._rents:
            return
        reading = self._pass
        returned = np.minimum(located.count, max_len)
        # only pointers whose events lie in several ranges pay: one range (most of a tiered
        # store's pointers) is read as a merged copy would read it
        paying = [w for w in located.partitions if not w.single]
        if located.partition is None:  # a view per partition: at most one Windows of it pays
            totals = {w.view.segments[0].info.partition: int(returned[w.rows].sum()) for w in paying}
        else:  # one view of several partitions
            rows = np.concatenate([w.rows for w in paying]) if paying else np.zeros(0, np.int64)
            events = np.bincount(located.partition[rows], returned[rows], self.schema.partitions)
            totals = {int(p): int(events[p]) for p in np.flatnonzero(events) if int(p) not in self._merged}
        if reading is not None:
            reading.record(len(returned), totals)
        for partition, events in totals.items():
            rent = self._rents.get(partition)
            if rent is not None:
                rent.pay(events)
                if self._merge_due(partition, rent):
                    self._checked[partition] = -1  # looked at again by the next read

    def _joined(self, touched: np.ndarray) -> PartitionView | dict[int, PartitionView | None]:
        """One view of the segments of partitions ``touched`` and of the others this handle
        read so far, or each one's own view (partition -> view): read them one by one this
        time. While no file of the read cache changed, the view is given without a look at
        each partition. A new partition, or a partition's new view, joins once the batches
        read partition by partition since the view was built have cost about what building
        it costs (a partition each, against one per member): many small batches of new
        partitions do not rebuild it each time."""
        with self._views_lock:
            generation = self._generation()
            members, view, waiting, cost = self._join
            if view is not None and self._in_join[touched].all() and (self._checked[touched] == generation).all() \
                    and (self._join_remaps == REMAPS[0] or not view.remapped()):
                self._join_remaps = REMAPS[0]
                return view
            views = {int(p): self._view(int(p), generation) for p in touched}
            current = {p: v for p, v in views.items() if v is not None}
            if current and all(members.get(p) is v for p, v in current.items()):
                self._in_join[list(current)] = True
                return view
            waiting, cost = waiting | current.keys(), cost + len(current)
            if not current or cost < len(members):
                self._join = (members, view, waiting, cost)
                return views
            members = {p: v for p in sorted(members.keys() | waiting) if (v := self._view(p, generation)) is not None}
            view = PartitionView([s for v in members.values() for s in v.segments], self.schema)
            self._join = (members, view, set(), 0)
            self._in_join[list(members)] = True
            return view

    def _generation(self) -> int:
        """The read cache's generation: the one the read under way in this thread began at,
        else a fresh look."""
        generation = getattr(self._reading, "generation", None)
        return self._segments.watch.generation() if generation is None else generation

    def _reads_merged(self, partition: int, infos: list[SegmentInfo]) -> bool:
        """Whether ``partition`` (of segments ``infos``, more than one) is read through its
        merged copy; once so, for the rest of this handle's life."""
        if self.merged_reads is False:
            return False
        if partition not in self._merged_names:
            self._merged_names[partition] = name = merged_name(partition, [info.name for info in infos])
            if self.merged_reads == "auto":
                price = AUTO_MERGE_RENT * sum(info.rows for info in infos)
                self._rents[partition] = MergeRent(self.cache_dir, name, price)
        rent = self._rents.get(partition)  # none once a copy could not be built here
        if self.merged_reads is True or (rent is not None and self._merge_due(partition, rent)):
            self._merged.add(partition)
        return partition in self._merged

    def _merge_due(self, partition: int, rent: MergeRent) -> bool:
        """Whether ``partition``'s merged copy is paid for, or foreseen paid by the pass the
        read under way in this thread belongs to (``ReadPass``)."""
        reading = self._pass
        return rent.settled or (reading is not None and reading.foresees(partition, rent))

    def _view(self, partition: int, generation: int | None = None) -> PartitionView | None:
        """The partition's segments laid out for the read kernels (or their merged copy):
        built once per handle, and again when a decoded copy was replaced or written in
        place (a stat per file tells, when the read cache's ``generation`` moved since the
        last look)."""
        with self._views_lock:
            if generation is None:
                generation = self._generation()
            infos = self._by_partition.get(partition, [])
            merged = len(infos) > 1 and self._reads_merged(partition, infos)
            known = self._views.get(partition)
            if known is not None and self._view_merged[partition] == merged and not known.remapped() and (
                    self._checked[partition] == generation or not any(s.changed() for s in known.segments)):
                self._checked[partition] = generation
                return known  # nothing changed on disk: no trip through the segment cache
            segments = None
            if merged:  # its inputs are opened only to build it
                try:
                    segments = [self._segments.derived(self._merged_names[partition], lambda: merged_copy(
                        infos, lambda: self.segments(partition), self.schema, self.cache_dir,
                        self._segments.random_access))]
                except (OSError, StoreError) as exc:
                    if self.merged_reads is True:
                        raise
                    # "auto" on a full or unwritable cache: read segment by segment (a damaged
                    # store segment raises there too), and stop paying towards a copy
                    warn_at_caller(f"lateseq: no merged copy of partition {partition} in {self.cache_dir} ({exc}); "
                                   "reading its segments one by one")
                    self._merged.discard(partition)
                    self._rents.pop(partition)  # not tried again by this handle
            if segments is None and self.merged_reads == "auto" and len(infos) > 2:
                segments = self._on_merged_base(partition, infos, generation)
            if segments is None:
                segments = self.segments(partition)
            if known is None or known.remapped() or len(known.segments) != len(segments) or any(
                    a is not b for a, b in zip(known.segments, segments, strict=True)):
                known = self._views[partition] = PartitionView(segments, self.schema) if segments else None
                self._in_join[partition] = known is None  # the joined view holds the old one
            self._view_merged[partition] = len(infos) > 1 and partition in self._merged
            self._checked[partition] = generation
            return known

    def _on_merged_base(self, partition: int, infos: list[SegmentInfo], generation: int) -> list[Segment] | None:
        """For "auto": the partition's segments, its oldest read through the merged copy of
        them that a read of an earlier version built on this host (yesterday's, a commit ago),
        so that a new version reads about as fast as the one before it from its first batch,
        not segment by segment until its own copy is paid for; None without such a copy. A
        damaged one is passed over (for a shorter one, or segment by segment), not built
        again here: it is another version's."""
        if self._host_copies[0] != generation:  # listed once per generation of the read cache, not per view
            self._host_copies = (generation, copies_on_host(self.cache_dir))
        for k, name in merged_bases(partition, [info.name for info in infos], self._host_copies[1]):
            try:
                base = self._segments.derived(name, lambda k=k: built_merged_copy(
                    infos[:k], self.cache_dir, self._segments.random_access))
            except (*UNREADABLE, StoreError):
                continue
            return [base, *self._open_all(infos[k:])]
        return None


def _check_grace(grace_s: object) -> None:
    if not isinstance(grace_s, numbers.Real) or isinstance(grace_s, bool) or not 0 <= grace_s < float("inf"):
        raise SchemaError(f"grace_s must be a non-negative number of seconds, got {grace_s!r}")


def _tiered_runs(rows: list[int], fanout: int) -> list[tuple[int, int]]:
    """The ranges of adjacent segments (given their row counts, oldest first) that size-
    tiered compaction merges, repeated until none is left:

    - by size: going back in time from a segment, a run takes each older segment no bigger
      than the run so far; a run of ``fanout`` or more, whose newest segment is no bigger
      than the others together, merges. An event is rewritten only when what joins its
      group is at least as big: about log2(rows / commit) times in all; a big segment,
      old or new, waits until as many rows have come after it.
    - by count: past ``fanout * log2(rows)`` segments (commits that shrink day by day form
      no run by size), the ``fanout`` adjacent ones with the fewest rows merge.

    Tiers of fixed sizes ([fanout**k, fanout**(k+1))) merged only runs of one tier, and
    daily commits of sizes on both sides of a tier's edge never formed one (a segment a day)."""
    groups = [(i, i + 1, r) for i, r in enumerate(rows)]  # (first, end, rows)
    most = fanout * max(1, math.ceil(math.log2(sum(rows) + 1)))
    while True:
        runs = (_run_by_size(groups, newest) for newest in range(len(groups) - 1, -1, -1))
        run = next(((a, b) for a, b, total in runs  # and the newest is no bigger than the rest of the run
                    if b - a >= fanout and 2 * groups[b - 1][2] <= total), None)
        if run is None and len(groups) > most:
            first = min(range(len(groups) - fanout + 1), key=lambda k: sum(g[2] for g in groups[k:k + fanout]))
            run = (first, first + fanout)
        if run is None:
            return [(first, end) for first, end, _ in groups]
        a, b = run
        groups[a:b] = [(groups[a][0], groups[b - 1][1], sum(g[2] for g in groups[a:b]))]


def _run_by_size(groups: list[tuple[int, int, int]], newest: int) -> tuple[int, int, int]:
    """The run (first, end, rows) that starts at group ``newest`` and takes each older
    group no bigger than the run so far."""
    first, total = newest, groups[newest][2]
    while first > 0 and groups[first - 1][2] <= total:
        first -= 1
        total += groups[first][2]
    return first, newest + 1, total


def _read_events(source: EventSource, ids: list[str]) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    if isinstance(source, pa.RecordBatchReader):
        return source.read_all()
    if isinstance(source, str | os.PathLike):
        usable_path(source)
        try:
            return read_checked(source, "events file", ids)
        except FileNotFoundError as exc:
            raise SchemaError(f"no events file at {source}") from exc
    raise SchemaError(f"cannot commit a {type(source).__name__}; pass a pyarrow Table, RecordBatch, "
                      f"RecordBatchReader or Parquet path{frame_hint(source)}")


class Reopening:
    """A handle as a reader of pointers sends it to another process (a DataLoader worker, a
    Ray actor): reopened there at its version, or at the latest once cleanup retired that
    one (``read_on``)."""

    def __init__(self, store: Store, verify: bool, quiet: bool = False):
        self.arguments, self.verify, self.quiet = store.__reduce__()[1], verify, quiet

    def open(self) -> Store:
        try:
            return _unpickle(*self.arguments)
        except VersionNotFound:
            path, version, *options = self.arguments
            latest = _unpickle(path, None, *options)
            if latest._kept(version):  # not retired: another reason
                raise
            return read_on(latest, version, self.verify, self.quiet)


def read_on(latest: Store, version: int, verify: bool, quiet: bool = False) -> Store:
    """``latest`` for a reader of pointers whose ``version`` cleanup retired: a run of many
    epochs outlives a daily cleanup, and a pointer into a retired version rebuilds from
    any newer one (its events keep their version; its checksum proves it, so not without
    ``verify``: a deletion since would empty histories unnoticed). ``quiet``: a reader
    that moves to the latest on purpose is not warned."""
    if not verify:
        raise VersionNotFound(f"version {version} of {latest.path} was cleaned up while it was read; with "
                              "verify=False reading does not go on at a newer version, whose histories no checksum "
                              "would compare with the pointers' (a deletion since would empty them unnoticed): tag "
                              "the versions a run reads, or verify")
    if not quiet:
        warnings.warn(f"version {version} of {latest.path} was cleaned up while it was read; version "
                      f"{latest.version}, the latest, is read from now on (pointers into a retired version rebuild "
                      "from any newer one, their checksums prove it; tag a version to keep it)", stacklevel=3)
    return latest


def _unpickle(path: str, version: int | None, cache_dir: str | None, merged_reads: Setting = "auto",
              readahead: Setting = "auto", store_id: str | None = None) -> Store:
    """A handle pickled (to a worker process, a Ray actor): the same store, or an error."""
    return Store._sharing(path, version, cache_dir, merged_reads, readahead, None, store_id)


def _store_holding(path: Path) -> Path | None:
    """The store whose directory is ``path`` or holds it, if any (as far as this user may look)."""
    return next((p for p in (path, *path.parents) if holds_store(p)
                 and os.path.isdir(p / "versions")), None)


def _own_cache(root: Path, store: Path) -> Path:
    """A store's folder in a read cache ``root`` that other stores and users may share
    (one LATESEQ_CACHE_DIR for all), this user's alone: cleanup deletes what its store no
    longer uses there, so no store may see another's files, and a merged or filtered copy
    is checked only against the digests its builder wrote, so no user may read copies
    another could write (a stranger's forged copy passed every check)."""
    where = store.resolve()
    if root.resolve() == where / STORE_CACHE:  # the store's own read cache, named explicitly
        return root
    # a file name holds 255 bytes; the hash tells apart. As bytes: a link's target that is no UTF-8 (the link
    # is) raised a bare UnicodeEncodeError (s36G); its name keeps its UTF-8 part, which pyarrow can open
    name = os.fsencode(where.name)[:190].decode(errors="ignore")
    return root / f"{name}-{hashlib.sha256(os.fsencode(where)).hexdigest()[:12]}-u{os.geteuid()}"


def _make_private(folder: Path, root: Path) -> Path:
    """``folder``, a store's folder in the shared read cache ``root``, made for this user
    alone if missing, where links in ``root``'s path are resolved once (a link re-pointed
    later is not followed). Refused: one another user could write into, and one under a
    folder of another user's (root's aside), who may rename what is in it and put their
    own in its place. One under a folder its group or every user may write, not sticky,
    lets them do so: warned (a container's volume of one user, a team's folder)."""
    make_folders(root, 0o700)  # (where it cannot be made, a read that needs it says so)
    root = root.resolve()  # (where a folder in the way may not be looked into, as it was given)
    for above in (root, *root.parents):
        found = _stat_or_none(above)
        if found is None:  # (missing, or not this user's to look into: the one above it tells)
            continue
        where = f"{above}, above this store's folder in the read cache {root},"
        if found.st_uid not in (0, os.geteuid()):
            raise StoreError(f"{where} belongs to user {found.st_uid}, who may put a folder of theirs in place of this "
                             "user's; give cache_dir= (the CLI's --cache-dir) a folder only this user and root own "
                             "all the way up (a shared one as /tmp is: root's, mode 1777)")
        if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not found.st_mode & stat.S_ISVTX:
            who = "every user" if found.st_mode & stat.S_IWOTH else "its group"
            warnings.warn(f"lateseq: {where} may be written by {who} "
                          f"(mode {stat.S_IMODE(found.st_mode):o}), who may put a folder of theirs in place of this "
                          "user's (one user's container need not mind); make it sticky (chmod +t), as /tmp is",
                          RuntimeWarning, stacklevel=5)  # (lateseq.open's caller)
    folder = root / folder.name
    with contextlib.suppress(OSError):
        os.mkdir(folder, 0o700)
    try:
        found = folder.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return folder
    except OSError as exc:
        raise StoreError(f"cannot look at {folder}, this store's folder in the read cache {root}: {exc.strerror}") \
            from None
    if why := _not_private(found):
        raise StoreError(f"{folder}, this store's folder in the read cache {root}, {why}: lateseq reads copies only "
                         "from a folder no other user can write (remove it, or give cache_dir=, the CLI's "
                         "--cache-dir, another folder)")
    return folder


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _writable_by_all(found: os.stat_result) -> str:
    return (f"may be written by every user (mode {stat.S_IMODE(found.st_mode):o}"
            f"{', sticky' if found.st_mode & stat.S_ISVTX else ''})")


def _not_private(found: os.stat_result) -> str | None:
    """Why a folder so found may hold what another user wrote, if it may."""
    if stat.S_ISLNK(found.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(found.st_mode):
        return "is not a folder"
    if found.st_uid != os.geteuid():
        return f"belongs to user {found.st_uid}, not this one ({os.geteuid()})"
    if found.st_mode & 0o022:
        return f"may be written by its group or others (mode {stat.S_IMODE(found.st_mode):o}; chmod go-w it)"
    return None


@functools.cache
def physical_memory() -> int:
    """This machine's memory, or the container's where a cgroup limits it to less."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v2, v1
        try:
            memory = min(memory, int(Path(limit).read_text()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return memory


def _lost_unpublished(path: Path, version: int) -> StoreError:
    return StoreError(f"{path}, written for version {version}, was removed before it was published (by a cleanup on "
                      "another host whose grace_s is shorter than this write took, or whose clock runs ahead of this "
                      "one's by more); nothing was published")
