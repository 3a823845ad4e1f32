"""Derived segments: copies a read cache keeps beside the decoded ones, made from the
store's segments on the reading host, never stored durably, built again whenever
missing or damaged.

- A *merged copy* holds a partition's segments merged into one, as compaction would
  write it: a version of daily commits or late events then reads like a compacted one
  (``Store(merged_reads=...)``).
- A *filtered copy* holds the rows of one segment that pass a tenant's filter, each with
  its row in the segment (``_row``): a filtered tenant then copies slices of it, as an
  unfiltered tenant copies slices of the segment, instead of testing every row of every
  history it reads.

A copy is named after what it is made of and built by the first process that needs it
(the others wait on a lock, then map its files). Every column is checked against the
digests its builder recorded, all at once when a process opens it; a copy that fails is
built again from the segments, which are checked in turn. A sidecar file names the
store segments a copy came from, so cleanup deletes it with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import stat
import threading
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import StoreError
from ._events import Events
from ._forks import fork_safe
from ._format import (
    DERIVED_DIR,
    REBUILT,
    LaidOut,
    SegmentInfo,
    cache_unwritable,
    decoded_file,
    discard,
    make_cache_folder,
    temporary_of,
    write_unpacked_segment,
    written_in_place,
)
from ._kernels import rank_index, remap_ranges
from ._locate import PartitionView
from ._merge import merge_segments, segment_events
from ._projection import Filter
from ._schema import Schema
from ._segments import UNREADABLE, DamagedCopy, Segment, SegmentCache, cache_lock, held_copy, lock_idle
from ._versions import dump_checked, load_checked, older_than, remove_file

ROW = "_row"  # a filtered copy's column: each row's row in the segment it came from


def merged_name(partition: int, segments: list[str] | tuple[str, ...]) -> str:
    """The name of the merged copy of a partition's ``segments`` (their names, oldest
    first): known without opening them, so a read through an open copy opens nothing else."""
    return _name(partition, _merged_key(segments))


def derived_built(name: str, cache: Path) -> bool:
    """Whether a process on this host built the copy ``name`` (it is checked when opened)."""
    return _sidecar(cache / DERIVED_DIR, name).is_file()


class MergeRent:
    """What the reads of one partition segment by segment have cost on this host, in events
    read, against the ``price`` of building its merged copy ``name``: shared by every
    process reading through this read cache (a loader's workers, each epoch's new ones),
    as the size of a file each appends a byte to per ``unit`` events, every ``price / 64``
    events or so. A reader that cannot write there (or finds a link or a folder there: never
    followed) counts its own reads only. The file is
    a temporary of the cache (cleanup removes it once idle), and only its size counts: a
    damaged one changes when the copy is built, never what a read returns."""

    def __init__(self, cache: Path, name: str, price: int):
        self._cache, self._name, self.price = cache, name, price
        self._path: Path | None = cache / DERIVED_DIR / f".tmp-rent-{name}"
        self._unit = max(1, price // 4096)  # a tally stays under about 4 KB
        self._every = max(self._unit, price // 64)
        self._pending = 0  # events read here, not yet in the file
        self._paid = self._units() * self._unit
        self.settled = self._paid >= price or derived_built(name, cache)
        # threads reading one handle pay at once (a tally paid twice went negative)
        self._lock = fork_safe(threading.Lock())

    def pay(self, events: int) -> None:
        with self._lock:
            self._pay(events)

    def owed(self) -> int:
        """What is still to pay (read unlocked: a stale answer changes only when a copy is built)."""
        return max(0, self.price - self._paid - self._pending)

    def _pay(self, events: int) -> None:
        self._pending += events
        if self._pending >= self._every or self._paid + self._pending >= self.price:
            # no more units than the price still owes: one read of many events paid a byte per event at
            # once (a tally of 6 MB for a partition of 300 events: s56A)
            whole = int(min(self._pending // self._unit, max(0, -(-(self.price - self._paid) // self._unit))))
            if self._path is not None and whole:
                try:
                    stopped = make_cache_folder(self._path.parent, self._cache)
                    if stopped is not None:
                        raise stopped
                    tally = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                                    | os.O_NONBLOCK, 0o644)  # a FIFO: no reader, refused, not waited on
                    try:
                        os.write(tally, bytes(whole))
                    finally:
                        os.close(tally)
                    self._pending -= whole * self._unit
                    self._paid = self._units() * self._unit
                except OSError:  # the tally's file cannot be written, or its store is gone (a StoreError)
                    self._path = None
            self.settled = self._paid + self._pending >= self.price or derived_built(self._name, self._cache)

    def _units(self) -> int:
        try:
            found = os.lstat(self._path) if self._path is not None else None
        except OSError:
            return 0
        return found.st_size if found is not None and stat.S_ISREG(found.st_mode) else 0


class ReadPass:
    """A loader's pass over pointers (an epoch, of one worker or all): how many it has still
    to read, the read under way included (``left``, counting every reader of the pass), and
    what this reader's reads of it paid towards each partition's merged copy. "auto" buys a
    copy once the rent paid and what the rest of the pass would pay at that rate reach its
    price (``foresees``), not once it has been paid: a training epoch read segment by
    segment for a tenth of itself first (a first epoch of 30 daily segments: 0.67x
    compacted's, 0.80x so). Only a pass's own reads decide, and only while it reads: one
    abandoned builds nothing for the reads after it."""

    TRUSTED = 32  # its reads paid at least 1/TRUSTED of the price: a rate from fewer is not trusted

    def __init__(self) -> None:
        self.left = 0
        self._read = 0
        self._paid: dict[int, int] = {}

    def record(self, pointers: int, paid: dict[int, int]) -> None:
        """A read of ``pointers`` paid ``paid`` (events by partition)."""
        self._read += pointers
        self.left = max(0, self.left - pointers)
        for partition, events in paid.items():
            self._paid[partition] = self._paid.get(partition, 0) + events

    def foresees(self, partition: int, rent: MergeRent) -> bool:
        paid = self._paid.get(partition, 0)
        return paid * self.TRUSTED >= rent.price and paid * self.left // max(1, self._read) >= rent.owed()


def merged_copy(infos: list[SegmentInfo], segments: Callable[[], list[Segment]], schema: Schema,
                cache: Path, random_access: bool) -> Segment:
    """The events of the segments ``infos`` (one partition's, oldest first) as one
    segment, in the order a full compaction writes them; ``segments`` opens them, only
    when the copy must be built. ``random_access``: see ``Segment``."""
    names = [info.name for info in infos]
    return _derive(cache, infos[0].partition, names, _merged_key(names), lambda opened: merge_segments(opened, schema),
                   random_access, segments, hold=False)


def copies_on_host(cache: Path) -> dict[int, set[str]]:
    """The names of the copies built in the read cache ``cache`` (those of their sidecars),
    by partition: one listing of its folder, in which ``merged_bases`` looks names up."""
    found: dict[int, set[str]] = {}
    try:
        with os.scandir(cache / DERIVED_DIR) as entries:
            for entry in entries:
                named = _COPY_NAME.fullmatch(entry.name[:-len(".json")]) if entry.name.endswith(".json") else None
                if named:
                    found.setdefault(int(named.group(1)), set()).add(named.group(0))
    except OSError:  # no copy built yet, or a cache that cannot be read: none to read through
        pass
    return found


def merged_bases(partition: int, segments: list[str], built: dict[int, set[str]]) -> list[tuple[int, str]]:
    """The runs of the oldest ``segments`` (a partition's names, oldest first; two at least,
    fewer than all) whose merged copy is among ``built`` (``copies_on_host``), longest
    first, as (its length, its name): earlier versions' copies, to which later commits
    added segments."""
    mine = built.get(partition)
    if not mine or len(segments) < 3:
        return []
    names = _merged_prefix_names(partition, segments)
    return [(k, names[k]) for k in range(len(segments) - 1, 1, -1) if names[k] in mine]


def _merged_prefix_names(partition: int, segments: list[str]) -> list[str]:
    """``merged_name`` of each run of the oldest ``segments`` (at index k: of the first k),
    hashed in one pass, each run's key being the one before's and one more name (hashed
    whole each, n segments cost n² bytes: a cleanup keeping 1,500 versions of one
    partition took 91 s, not 1, s57A)."""
    digest = hashlib.sha256(b'{"merged": [')
    names = [""]
    for k, segment in enumerate(segments):
        digest.update((", " if k else "").encode() + json.dumps(segment).encode())
        run = digest.copy()
        run.update(b"]}")
        names.append(f"p{partition:05d}-{run.hexdigest()[:32]}")
    return names


def sidecar_readable(cache: Path, name: str) -> bool:
    """Whether the sidecar of copy ``name`` in the read cache ``cache`` reads (its columns
    are checked only when a process opens it)."""
    try:
        _load_sidecar(_sidecar(cache / DERIVED_DIR, name))
    except StoreError:
        return False
    return True


def built_merged_copy(infos: list[SegmentInfo], cache: Path, random_access: bool) -> Segment:
    """The merged copy of the segments ``infos`` built on this host, opened and checked;
    never built here (StoreError, or an ``UNREADABLE`` error, where missing or damaged)."""
    names = [info.name for info in infos]
    return _open_checked(cache / DERIVED_DIR, merged_name(infos[0].partition, names), _merged_key(names),
                         random_access)


def _merged_key(segments: list[str] | tuple[str, ...]) -> dict:
    return {"merged": list(segments)}


def filtered_copy(segment: Segment, where: Filter, schema: Schema, cache: Path) -> Segment:
    """The rows of ``segment`` that pass ``where``, in their order, with every payload
    column, the time, the version and ``ROW``."""

    def events(_: list[Segment]) -> Events:
        keep = np.flatnonzero(where.keeps(segment.decoded(where.column)))
        kept = segment_events(segment, schema).take(keep)
        return dataclasses.replace(kept, payload={**kept.payload, ROW: keep})

    return _derive(cache, segment.info.partition, list(segment.sources), _filtered_key(segment.info.name, where),
                   events, segment.random_access, lambda: [segment], hold=True)


def _filtered_key(segment: str, where: Filter) -> dict:
    return {"filtered": segment, "where": dataclasses.asdict(where)}


@dataclass
class FilteredView:
    """One partition's filtered copies (one per segment of ``PartitionView`` it came from,
    in the same order), laid out for the kernels, and the ``rank_index`` of each copy's
    rows in its segment."""

    view: PartitionView
    ranks: list[np.ndarray]

    def remap(self, seg: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The row ranges of the copies holding the kept rows of segment ranges [lo, hi)."""
        if len(self.ranks) == 1:
            return remap_ranges(self.ranks[0], lo, hi)
        out_lo, out_hi = np.empty_like(lo), np.empty_like(hi)
        for g in np.unique(seg):
            at = seg == g
            out_lo[at], out_hi[at] = remap_ranges(self.ranks[g], lo[at], hi[at])
        return out_lo, out_hi


def filtered_view(view: PartitionView, where: Filter, cache: Path, segments: SegmentCache) -> FilteredView:
    """The filtered copies of ``view``'s segments, made once per view and filter (and
    opened and checked again when a file changed on disk meanwhile), each opened once per
    process (``segments``: every handle shares its map, and its ``rank_index``; opened by
    each view, they were mapped and checked once per handle, a thread's handle each, and
    maps grew by thousands a minute, a stranger's). A write into one during a read
    (through another name of it too) is heard."""
    key = ("filtered", where)
    if key not in view.derived or view.derived[key].view.remapped() or any(
            c.changed() for c in view.derived[key].view.segments):
        copies = [segments.derived(_name(s.info.partition, _filtered_key(s.info.name, where)),
                                   lambda s=s: filtered_copy(s, where, view.schema, cache)) for s in view.segments]
        ranks = [_ranks(c, s.info.rows) for c, s in zip(copies, view.segments, strict=True)]
        view.derived[key] = FilteredView(PartitionView(copies, view.schema), ranks)
    return view.derived[key]


_RANK_INDEXES: weakref.WeakKeyDictionary[Segment, np.ndarray] = weakref.WeakKeyDictionary()


def _ranks(copy: Segment, rows: int) -> np.ndarray:
    """The ``rank_index`` of a filtered copy's rows in its segment of ``rows`` rows, made
    once per opened copy."""
    ranks = _RANK_INDEXES.get(copy)
    if ranks is None:
        ranks = _RANK_INDEXES[copy] = rank_index(copy.decoded(ROW), rows)
    return ranks


_COPY_NAME = re.compile(r"p(\d{5,})-[0-9a-f]{32}")  # what ``_name`` makes


def _name(partition: int, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return f"p{partition:05d}-{digest}"


_BUILDS = 3  # builds of a copy whose sources were written into meanwhile, before it is an error


def _derive(cache: Path, partition: int, sources: list[str], key: dict,
            events: Callable[[list[Segment]], Events | LaidOut],
            random_access: bool, read: Callable[[], list[Segment]], hold: bool) -> Segment:
    """The copy named after ``key``, made by ``events`` from the open segments ``read``
    gives when not built yet; ``sources`` are the store segments its events come from
    (cleanup removes it with the last). What it read is checked again once it is made: one
    written in place meanwhile (by another program) may have given damaged bytes, which
    the copy's own digests would then vouch for, in every process, until it was deleted.
    Such a copy is built again from them checked anew (decoded again where damaged). One the
    cache cannot take is held in memory where ``hold`` (a filtered copy: no read goes
    without it), and an error otherwise (a merged copy: ``merged_reads="auto"`` then reads
    its segments instead; ``True`` raises it)."""
    name = _name(partition, key)
    sources = sorted(set(sources))
    folder = cache / DERIVED_DIR
    try:  # built: opened without the build lock, which a read-only cache has no room for (s34B). Every
        return _open_checked(folder, name, key, random_access)  # column is checked against the sidecar it read
    except (*UNREADABLE, StoreError):
        pass
    with ExitStack() as locked:
        try:
            locked.enter_context(cache_lock(folder, f".tmp-build-{name}", cache))
        except StoreError as exc:  # a read-only cache: built in memory, by each process that reads it
            if not hold or not cache_unwritable(exc):
                raise
            return _held(folder, name, partition, sources, events(read()), exc, random_access)
        try:
            return _open_checked(folder, name, key, random_access)
        except (*UNREADABLE, StoreError):
            pass  # not built on this host yet, or damaged: build it (again)
        for attempt in range(_BUILDS):
            opened = read()
            remaps = [segment.remaps for segment in opened]
            made = events(opened)  # (payloads are read as written)
            try:
                info, unwritten = write_unpacked_segment(folder, name, partition, made), None
            except StoreError as exc:
                if not hold or not cache_unwritable(exc):
                    raise
                info, unwritten = None, exc
            # one decoded again meanwhile (a column failed its digest, here or in another thread) had given the
            # columns read before from the map written into, which ``intact`` no longer sees
            if [s.remaps for s in opened] == remaps and all(segment.intact() for segment in opened):
                if unwritten is not None:  # a full cache: held in memory
                    return _held(folder, name, partition, sources, made, unwritten, random_access)
                break
            _discard_copy(folder, name)
            derived = any(segment.path.parent == folder for segment in opened)  # rebuilt by its reader, not here
            if derived or attempt == _BUILDS - 1:
                raise StoreError(f"a decoded copy in {cache} was written in place while {name} was built from it: "
                                 "not kept (another program writes into the read cache; lateseq only replaces files)")
            for segment in opened:
                segment.recheck()
        try:
            with written_in_place(_sidecar(folder, name)) as tmp:  # derived data: no fsync
                tmp.write_bytes(dump_checked({"key": key, "sources": sources, "segment": info.to_dict()}))
        except StoreError as exc:  # the disk filled at the last file: the copy is read, not kept
            if not hold or not cache_unwritable(exc):
                raise
            _discard_copy(folder, name)
            return _held(folder, name, partition, sources, made, exc, random_access)
        try:
            return _open_checked(folder, name, key, random_access)
        except DamagedCopy as exc:  # just written, under the build lock: changed by no reader of ours
            raise StoreError(f"the copy {name} in {cache} changed between its build and its first read ({exc}): "
                             "another program writes into the read cache; lateseq only replaces files") from exc


def _discard_copy(folder: Path, name: str) -> None:
    """Removes the files of copy ``name`` written before its sidecar (none names them yet)."""
    for path in (folder / f"{name}.index.arrow", decoded_file(folder, name)):
        discard(path)


def _held(folder: Path, name: str, partition: int, sources: list[str], made: Events | LaidOut, why: StoreError,
          random_access: bool) -> Segment:
    segment = held_copy(folder, name, partition, made, why, random_access)
    segment.sources = tuple(sources)
    return segment


SIDECAR_BYTES = 1 << 26  # a sidecar names a copy's sources and columns (kilobytes): one bigger is damaged


def _load_sidecar(sidecar: Path) -> dict:
    """A copy's sidecar, checked; StoreError if damaged, saying that a read builds the
    copy again (a read-cache file: no backup holds it)."""
    return load_checked(sidecar, limit=SIDECAR_BYTES, remedy=REBUILT)


def _sidecar(folder: Path, name: str) -> Path:
    """The file naming what copy ``name`` is made of: written last, so a copy is built once it exists."""
    return folder / f"{name}.json"


def _open_checked(folder: Path, name: str, key: dict, random_access: bool) -> Segment:
    sidecar = _sidecar(folder, name)
    content = _load_sidecar(sidecar)
    if content.get("key") != json.loads(json.dumps(key)):
        raise StoreError(f"{sidecar} describes another copy")
    segment = Segment(folder, SegmentInfo.from_manifest(content["segment"], sidecar), folder, random_access,
                      derived=True)
    for column in segment.info.decoded:  # all now: a copy is rebuilt, never decoded from a Parquet file
        segment.stored(column)
    segment.sources = tuple(content["sources"])
    return segment


def damaged_copies(cache: Path) -> list[tuple[Path, str]]:
    """(sidecar, what is wrong) of each built copy in the read cache ``cache`` that fails
    the checks a process opening it makes (``verify``; a read builds it again)."""
    folder = cache / DERIVED_DIR
    damaged = []
    for sidecar in sorted(folder.glob("[!.]*.json")) if folder.is_dir() else []:  # not a builder's temporary
        name = sidecar.name[:-len(".json")]
        try:
            key = _load_sidecar(sidecar)["key"]
            named = _COPY_NAME.fullmatch(name)
            if not named or _name(int(named.group(1)), key) != name:  # another copy's files
                raise StoreError(f"{sidecar} describes another copy")  # (a read finds it so: see _open_checked)
            _open_checked(folder, name, key, random_access=False)
        except (*UNREADABLE, StoreError, TypeError) as exc:
            damaged.append((sidecar, str(exc)))
    return damaged


def _idle(folder: Path, name: str) -> contextlib.AbstractContextManager[bool]:
    """Whether no process builds copy ``name`` or opens it now, its build lock held while
    so: cleanup removed a stale copy (a retired version's, read by a handle on it) between
    its build and its first open, and the reader was told to restore it from a backup."""
    return lock_idle(folder / f".tmp-build-{name}")


def remove_stale_copies(cache: Path, referenced: set[str], merged: set[str], grace_s: float,
                        temporary_grace_s: float) -> None:
    """Deletes the copies in the read cache ``cache`` made from a segment no kept version
    references, merged copies not named in ``merged`` (a version's partition of several
    segments: each daily version's copy holds every earlier day's events too, so copies of
    retired versions would add up to many times the store), filtered copies of either,
    and unreadable ones, once older than ``grace_s``, and builders' temporary
    files (a crashed build's leftovers) once older than ``temporary_grace_s``, or with
    their copy (its build lock and merged-reads tally: any build of it now would read
    segments no version keeps)."""
    folder = cache / DERIVED_DIR
    for path in folder.glob(".tmp-*") if folder.is_dir() else []:
        if older_than(path, temporary_grace_s):
            remove_file(path)  # a build lock going only lets a second builder in
        elif (made := temporary_of(path.name)) is not None and older_than(path, grace_s):
            with _idle(folder, made) as idle:  # no build of it under way: a killed one's, holding events
                if idle:  # that a deletion's cleanup must not leave for an hour (s61G)
                    remove_file(path)
    readable = referenced | merged  # what a kept version reads: a filtered copy of anything else is stale
    for sidecar in folder.glob("[!.]*.json") if folder.is_dir() else []:  # not a builder's temporary (.tmp-*)
        try:
            content = _load_sidecar(sidecar)
            key = content["key"]
            stale = (not set(content["sources"]) <= referenced
                     or ("merged" in key and sidecar.name[:-len(".json")] not in merged)
                     or ("filtered" in key and key["filtered"] not in readable))
        except (StoreError, KeyError, TypeError):
            stale = True
        name = sidecar.name[:-len(".json")]
        if stale and older_than(sidecar, grace_s):
            with _idle(folder, name) as idle:
                if idle:
                    for path in (sidecar, folder / f"{name}.index.arrow", decoded_file(folder, name),
                                 folder / f".tmp-build-{name}", folder / f".tmp-rent-{name}"):
                        remove_file(path)
    for path in folder.glob("[!.]*.arrow") if folder.is_dir() else []:  # a build killed before its sidecar
        name = path.name.removesuffix(".arrow").removesuffix(".index")
        if not (folder / f"{name}.json").exists() and older_than(path, temporary_grace_s):
            remove_file(path)
