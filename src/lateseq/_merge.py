"""Merging a partition's segments into one order: what compaction writes, what a read
of an uncompacted version must reproduce, and the merged copies a read cache keeps so
that such a version reads like a compacted one."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import StoreError
from ._events import Events
from ._format import TIME, SegmentInfo, decoded_file, write_unpacked_segment
from ._schema import Schema
from ._segments import UNREADABLE, Segment
from ._versions import dump_checked, load_checked, older_than

MERGED_DIR = "merged"  # the read cache's folder of merged copies


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


def merged_name(segments: list[Segment]) -> str:
    """The name of the merged copy of ``segments``: a segment name derived from theirs."""
    names = chr(10).join(s.info.name for s in segments)
    return f"p{segments[0].info.partition:05d}-{hashlib.sha256(names.encode()).hexdigest()[:32]}"


def merged_copy(segments: list[Segment], schema: Schema, cache: Path) -> Segment:
    """One segment holding the events of ``segments`` (one partition's, oldest first) in
    merged order, kept in the read cache under ``cache``: a host-local compaction, so a
    version of many segments (daily commits, late events) reads like a compacted one.

    It is named after its inputs and built by the first process that needs it (the others
    wait on a lock, then map its files). Every column is checked against the digests its
    builder recorded before it is used; a damaged or missing copy is built again from the
    store's segments, which are checked in turn.
    """
    names = [s.info.name for s in segments]
    name = merged_name(segments)
    folder = cache / MERGED_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".tmp-build-{name}", "a")  # noqa: SIM115 - held for the block below
    except OSError as exc:
        raise StoreError(f"cannot create the read cache {folder} ({exc.strerror}); "
                         "open the store with cache_dir= a writable folder") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _open_checked(folder, name, names)
        except (*UNREADABLE, StoreError):
            pass  # not built on this host yet, or damaged: build it (again)
        info = write_unpacked_segment(folder, name, segments[0].info.partition, merge_segments(segments, schema))
        sidecar = folder / f"{name}.json"
        tmp = sidecar.with_name(f".tmp-{os.getpid()}-{sidecar.name}")
        tmp.write_bytes(dump_checked({"inputs": names, "segment": info.to_dict()}))
        os.replace(tmp, sidecar)  # derived data: no fsync, a crash at worst loses the copy
        return _open_checked(folder, name, names)


def _open_checked(folder: Path, name: str, inputs: list[str]) -> Segment:
    sidecar = folder / f"{name}.json"
    content = load_checked(sidecar)
    if content.get("inputs") != inputs:
        raise StoreError(f"{sidecar} describes other segments")
    segment = Segment(folder, SegmentInfo.from_manifest(content["segment"], sidecar), folder)
    for column in segment.info.decoded:  # all now: a copy is rebuilt, never decoded from a Parquet file
        segment.stored(column)
    return segment


def remove_stale_copies(cache: Path, referenced: set[str], grace_s: float, temporary_grace_s: float) -> None:
    """Deletes the merged copies in the read cache ``cache`` that a segment no kept version
    references went into (and unreadable ones) once older than ``grace_s``, and builders'
    temporary files (a crashed build's leftovers) once older than ``temporary_grace_s``."""
    folder = cache / MERGED_DIR
    for path in folder.glob(".tmp-*") if folder.is_dir() else []:
        if older_than(path, temporary_grace_s):
            path.unlink(missing_ok=True)  # a build lock going only lets a second builder in
    for sidecar in folder.glob("*.json") if folder.is_dir() else []:
        try:
            stale = not set(load_checked(sidecar)["inputs"]) <= referenced
        except (StoreError, KeyError, TypeError):
            stale = True
        if stale and older_than(sidecar, grace_s):
            name = sidecar.name[:-len(".json")]
            for path in (sidecar, folder / f"{name}.index.arrow", decoded_file(folder, name)):
                path.unlink(missing_ok=True)
