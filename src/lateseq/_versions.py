"""Versioning: the manifests, tags and publishing of a store directory, and cleanup.

One manifest per published version lives in ``versions/``; a version is published by
hard-linking its manifest into place, which either succeeds whole or fails because
another writer took the number. A commit's manifest lists only the segments it adds to
its parent's (manifests listing every segment made a store of 600 commits hold 308 MB
of them, a commit 98 ms); one lists them all where its chain would add more than its
full list holds (so the full lists double: the manifests grow with the segments), at
least every ``DELTA_DEPTH``-th, and for every compaction and deletion. Each manifest
carries a CRC-32 chained over the segment lists it adds to, so a chain that mixes in
another store's manifest or an older copy is refused; manifests are of format 2 (see
``MANIFEST_CRC``). Cleanup never frees a number: it
replaces a retired version's manifest by a small tombstone (keeping the segment list a
kept version's manifest adds to), so a slow writer that meant to publish that number
fails with ``CommitConflict`` instead of publishing a version nobody reads.
Tags in ``tags/`` name versions and pin them. Every JSON file (schema, manifests,
tombstones, tags) carries a CRC-32 of its content, checked on every read.

Writers hold a shared lock on ``.lock`` from their first segment write until their
manifest is published (or their files removed); cleanup deletes files only under the
exclusive lock, so it never deletes a segment a writer is about to publish. A writer
first passes ``.gate.lock`` (a shared lock, let go at once), which cleanup closes
(holds exclusively) once it has waited ``GATE_AFTER_S`` for the store's lock, until it
has deleted: writers arriving meanwhile wait for it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import CommitConflict, NotSynced, SchemaError, StoreError, VersionNotFound, is_integer
from ._forks import fork_safe
from ._format import (
    SCHEMA_FILE,
    SegmentInfo,
    close_lock_file,
    fsync_dir,
    hard_link,
    lock_failure,
    open_lock_file,
    read_regular,
    write_failed,
    write_synced,
)

_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION_NUMBER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: "²" is a digit to str.isdigit
LATEST = "latest"  # the newest version, wherever a version is asked for
MANIFEST_NAME = re.compile(r"(\d{8})\.json")
COMMIT_INDEX = "commit-index.json"  # in versions/: the version up to which every commit id has its files
DELTA_DEPTH = 1024  # a manifest lists all its segments at least every DELTA_DEPTH versions
# Manifests and tombstones of format 2 (those a chain may pass through) keep their CRC under
# this key, which lateseq before it does not know: it refuses them as damaged, where it read
# a commit's manifest as a version of no segments, and its cleanup deleted theirs (s21e)
MANIFEST_CRC = "crc32_format2"
MANIFEST_FORMAT = 2
_CHAIN_FIELDS = ("segments", "base", "depth", "added", "segments_crc32")  # what a needed tombstone keeps


@dataclass(frozen=True)
class VersionInfo:
    """A kept version as ``Store.versions`` lists it: when it was made (``created_at``,
    seconds since 1970), by which ``operation`` (commit, compact, delete), how many
    events and segments (and their bytes) it reads, its tags, and its watermark."""

    version: int
    created_at: float
    operation: str
    events: int
    segments: int
    bytes: int
    tags: tuple[str, ...] = ()
    watermark: int | None = None  # two-tier stores: every arrival before it is in this version


@dataclass(frozen=True)
class SegmentList:
    """A version's segments, oldest first, with how many manifests they were read from
    (``depth``: 0 for a manifest that lists them all) and their chained CRC-32."""

    infos: tuple[SegmentInfo, ...]
    depth: int
    crc: int
    chainable: bool  # read from format-2 manifests only: a commit may list what it adds to them
    added: int = 0  # of ``infos``, those the chain's manifests added to its full list


# The versions resolved last in this process, by (store path, version): a commit resolves
# its parent's chain, and the next commit's handle needs that very list.
_resolved: collections.OrderedDict[tuple[str, int], SegmentList] = collections.OrderedDict()
_resolved_lock = fork_safe(threading.Lock())
_RESOLVED_KEPT = 4
LOCK_NOTICE_S = 10.0  # a wait for the store's lock this long is reported (it has no end of its own)


def _remember(root: Path, version: int, segments: SegmentList) -> None:
    with _resolved_lock:
        _resolved[(str(root), version)] = segments
        _resolved.move_to_end((str(root), version))
        while len(_resolved) > _RESOLVED_KEPT:
            _resolved.popitem(last=False)


def _recalled(root: Path, version: int) -> SegmentList | None:
    """A version's segments resolved before; the caller checks their chained CRC (a store
    made at the same path since has other segments, and another CRC)."""
    with _resolved_lock:
        return _resolved.get((str(root), version))


def segments_crc(entries: list[dict], start: int = 0) -> int:
    """CRC-32 of segment entries in canonical form, continuing ``start`` (the CRC of the
    list they are appended to)."""
    return zlib.crc32(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode(), start)


def check_tag_name(name: Any) -> str:
    """Tag names become file names: only plain, non-numeric names of at most 128 characters."""
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name) or name.isdigit():
        raise SchemaError(f"tag name {str(name)[:80]!r} is not allowed: use 1-128 ASCII letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit, and not only digits")
    return name


def dump_checked(content: dict, key: str = "crc32") -> bytes:
    """JSON with a CRC-32 of its canonical form under ``key``, so any flipped byte is noticed."""
    body = {k: v for k, v in content.items() if k not in ("crc32", MANIFEST_CRC)}
    # one line: with an indent, json encodes in Python, 6x slower (a compaction writes a
    # manifest listing every segment of its version)
    return (json.dumps({**body, key: content_crc(body)}) + "\n").encode()


def load_checked(path: Path, kept_since_v01: bool = False, limit: int | None = None,
                 remedy: str = "restore it from a backup") -> dict:
    """A file written by ``dump_checked``, or StoreError naming it and ``remedy``.
    ``kept_since_v01``: a kind of file lateseq 0.1 wrote without a checksum (manifests,
    tags, the schema), which the error then names as a possible cause. ``limit``: see
    ``read_regular``."""
    data = read_regular(path, limit, remedy)
    try:
        content = json.loads(data)
    except (ValueError, RecursionError):  # truncated or garbled (a number of 5,000 digits, 10,000 brackets)
        content = None
    key = MANIFEST_CRC if isinstance(content, dict) and MANIFEST_CRC in content else "crc32"
    if isinstance(content, dict) and key not in content:
        if is_integer(content.get("format")) and content["format"] > MANIFEST_FORMAT:  # its CRC under a key of its own
            raise StoreError(f"{path} was written by a newer lateseq (manifest format {content['format']}; this one "
                             f"reads formats up to {MANIFEST_FORMAT}): upgrade lateseq to read this store")
        if kept_since_v01 and ("version" in content or "columns" in content):
            raise StoreError(f"{path} is damaged or was written by lateseq 0.1 (it has no checksum); restore it "
                             "from a backup, or rebuild a 0.1 store from its events")
        raise StoreError(f"{path} is damaged (it has no checksum); {remedy}")
    valid = isinstance(content, dict) and content.pop(key, None) == content_crc(content)
    if not valid:
        raise StoreError(f"{path} is damaged (it fails its checksum); {remedy}")
    return content


def content_crc(content: dict) -> int:
    """CRC-32 of a JSON file's content in canonical form (whatever its indentation)."""
    return zlib.crc32(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


def write_new(path: Path, data: bytes) -> None:
    """Writes ``path`` whole, fsynced under a temporary name and hard-linked into place,
    which fails with FileExistsError if anyone made ``path`` first, where a rename would
    silently replace theirs. Any other failure is a StoreError naming ``path``, and
    leaves nothing behind. The caller fsyncs the folder (after the link, an error there
    no longer means that nothing was placed)."""
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        hard_link(tmp, path)
    except (FileExistsError, StoreError):
        raise
    except OSError as exc:
        raise write_failed(path, exc) from exc
    finally:  # after the link, a failure here raised as if nothing was placed (s45C): a leftover
        with contextlib.suppress(OSError):  # temporary is removed by cleanup
            tmp.unlink(missing_ok=True)


def sync_placed(folder: Path, what: str) -> None:
    """Syncs ``folder`` to disk once ``what`` is in place in it: a failure is NotSynced,
    which says that it is (a raw OSError after a version was published read as a commit
    that failed, and a retry stored its events twice, s45C)."""
    try:
        fsync_dir(folder)
    except OSError as exc:
        raise NotSynced(f"{what} is in place (readers see it), but syncing {folder} to disk failed "
                        f"({exc.strerror or exc}): it may not survive a power loss. It is done: do not do it again "
                        "(a commit's events would be stored twice; a commit_id makes a retry safe); check the "
                        "disk") from exc


def write_durably(path: Path, data: bytes) -> None:
    """Writes ``data`` under a temporary name, fsyncs it, renames it over ``path`` and
    fsyncs the directory: after a power loss ``path`` holds the old or the new bytes."""
    write_synced(path, data)
    fsync_dir(path.parent)


GATE = ".gate.lock"  # closed by a cleanup, so that writers arriving while it waits wait for it
GATE_AFTER_S = 5.0  # how long cleanup waits for a moment without writers before it closes the gate
STORE_ID = "id"  # the store's random id, in its own file: a lateseq that predates it reads the store as before
_ID_BYTES = 64  # the most an id file holds (32 hex digits, and a line end or spaces an editor added)


def write_store_id(root: Path) -> None:
    """Gives a store just created (its schema.json written: the store is this process's)
    an id, in hex; durably, over any leftover of a create that failed there. Its last 8
    digits are the CRC-32 of the others, so that a flipped bit is told as damage, not as
    another store (s42A: 30 of 64 flips passed as ids); digits 12 and 16 are 0, so that
    no single flip makes it look like the uuid4 ids that stores had before."""
    random = uuid.uuid4().hex[:24]
    body = f"{random[:12]}0{random[13:16]}0{random[17:]}"
    write_durably(root / STORE_ID, (body + _id_check(body)).encode())


def _id_check(body: str) -> str:
    return f"{zlib.crc32(body.encode('ascii')):08x}"


def _sound_id(written: str) -> bool:
    """Whether ``written`` is an id ``write_store_id`` wrote, or a uuid4 (an older store's:
    they carried no check)."""
    if not re.fullmatch(r"[0-9a-f]{32}", written):
        return False
    return _id_check(written[:24]) == written[24:] or (written[12] == "4" and written[16] in "89ab")


def _written_id(root: Path) -> tuple[str | None, str]:
    """(the id of the store at ``root``, "") or (None, why there is none: "missing" (a store
    made before stores had one, or by a create that stopped before writing it), "damaged",
    "gone" (no store there), or "unreadable: " and the OS's error (out of file handles,
    no right to read it: the file may be sound, and is not called damaged))."""
    try:  # never through a link, nor waiting on a FIFO, nor reading a file of gigabytes whole (s62T)
        fd = os.open(root / STORE_ID, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, "missing" if (root / SCHEMA_FILE).exists() else "gone"
    except OSError as exc:
        return (None, "damaged") if exc.errno == errno.ELOOP else (None, f"unreadable: {exc.strerror or exc}")
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > _ID_BYTES:  # a folder, a FIFO, a device, grown
            return None, "damaged"
        written = os.read(fd, _ID_BYTES + 1).decode("ascii").strip()
    except UnicodeDecodeError:
        return None, "damaged"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return (written, "") if _sound_id(written) else (None, "damaged")


class VersionLog:
    """The versioned side of a store directory (never its data files' contents)."""

    def __init__(self, root: Path):
        self.root = root
        self.store_id = _written_id(root)[0]  # as its handle opened it (None: it cannot tell)
        self.versions_dir = root / "versions"
        self.tags_dir = root / "tags"

    def manifest_path(self, version: int) -> Path:
        return self.versions_dir / f"{version:08d}.json"

    def _version_file(self, version: int) -> dict:
        """A version's manifest or tombstone, checked (unchecked for its number)."""
        return load_checked(self.manifest_path(version), kept_since_v01=True)

    def numbers(self) -> list[int]:
        """Every version number ever published (kept or retired), ascending."""
        try:
            names = os.listdir(self.versions_dir)
        except OSError as exc:
            raise StoreError(f"cannot list {self.versions_dir}: {exc.strerror}") from exc
        return sorted(int(m.group(1)) for n in names if (m := MANIFEST_NAME.fullmatch(n)))

    def lost(self) -> list[int]:
        """The numbers before the latest that have no file: lost ones (deleted by hand, a
        partial copy), as no version file is ever removed (a retired one is a tombstone)."""
        numbers = self.numbers()
        return sorted(set(range(1, numbers[-1])) - set(numbers)) if numbers else []

    def refuse_lost(self, doing: str) -> None:
        """StoreError naming the lost version files (``lost``) before ``doing`` (cleanup):
        it would delete the segments that only a lost version names, its last copy (s61A)."""
        lost = self.lost()
        if lost:
            raise StoreError(f"{self.versions_dir}: {lost_versions(lost)}; {doing} refused, as it would delete the "
                             "segments that only lost versions name: restore the lost files from a backup (`lateseq "
                             "verify` names every problem)")

    @property
    def latest(self) -> int:
        """The newest version (never retired: cleanup keeps the latest)."""
        numbers = self.numbers()
        return numbers[-1] if numbers else 0

    def resolve(self, version: int | str | None, checked: bool = True) -> int:
        """A kept version's number from a number, a numeric string, a tag, or None (the
        latest); ``checked=False`` leaves a number's check to the caller that reads its manifest."""
        if version is None or version == LATEST:
            return self.latest
        if isinstance(version, str) and not _VERSION_NUMBER.fullmatch(version):
            try:
                check_tag_name(version)
            except SchemaError:
                raise SchemaError(f"version {version[:80]!r} is neither a version number (ASCII digits) nor a tag "
                                  "name (1-128 ASCII letters, digits, '.', '_' or '-')") from None
            return self.tags_of(version)
        if not (isinstance(version, str) or is_integer(version)):  # numpy's integers too, not bools
            raise SchemaError(f"a version is a number or a tag name, not {type(version).__name__}")
        number = int(version)
        if number != 0 and checked:
            self.manifest(number)  # raises VersionNotFound when it is not kept
        return number

    def manifest(self, version: int) -> dict:
        """A kept version's manifest, checked; VersionNotFound for a retired or unknown one."""
        manifest = self.published(version)
        if manifest.get("retired"):
            raise VersionNotFound(f"version {version} of {self.root} was cleaned up; latest is {self.latest}")
        return manifest

    def published(self, version: int) -> dict:
        """A published version's file, checked: its manifest, or its tombstone once retired
        (``"retired"`` is then true); VersionNotFound for a number never published."""
        if version < 0:
            raise VersionNotFound(f"there is no version {version}")
        path = self.manifest_path(version)
        if not path.exists() and not path.is_symlink():
            raise VersionNotFound(f"version {version} is not kept in {self.root}; latest is {self.latest}")
        manifest = self._version_file(version)
        if manifest.get("version") != version:
            raise StoreError(f"{path} describes version {manifest.get('version')}, not {version}")
        return manifest

    def infos(self, last: int | None = None, tagged: bool = False) -> list[VersionInfo]:
        """See ``Store.versions``: read newest first, up to ``last`` kept versions."""
        tags: dict[int, list[str]] = {}
        for name, v in self.tags().items():
            tags.setdefault(v, []).append(name)
        out: list[VersionInfo] = []
        for number in reversed(sorted(tags) if tagged else self.numbers()):
            if last is not None and len(out) >= last:
                break
            m = self._version_file(number)
            if m.get("retired"):
                continue
            out.append(VersionInfo(
                m["version"], m["created_at"], m["operation"], m["events"], *_segment_totals(m),
                tuple(sorted(tags.get(m["version"], []))),
                m.get("watermark"),
            ))
        return out[::-1]

    def segments(self, version: int, manifest: dict) -> SegmentList:
        """The segments of published ``version`` (``manifest``, its file as read): its own
        list, or the segments it adds to the manifests before it, each checked to be the
        one it was written on (read again, or recalled from this process's last reads)."""
        added: list[tuple[int, dict]] = []  # the manifests that list what they add, newest first
        number, m = version, manifest
        while "segments" not in m:
            base, depth = m.get("base"), m.get("depth")
            if not (is_integer(base) and 0 < base < number and is_integer(depth) and depth > 0
                    and isinstance(m.get("added"), list) and is_integer(m.get("segments_crc32"))):
                raise StoreError(f"{self.manifest_path(number)} is damaged (it lists neither its segments nor the "
                                 "version they add to); restore it from a backup")
            added.append((number, m))
            if (resolved := _recalled(self.root, base)) is not None and \
                    segments_crc(m["added"], resolved.crc) == m["segments_crc32"]:
                break
            number, m = base, self._chain_file(base, version)
        else:
            crc = m.get("segments_crc32")
            resolved = SegmentList(tuple(SegmentInfo.from_manifest(e, self.manifest_path(number))
                                         for e in m["segments"]), 0,
                                   segments_crc(m["segments"]) if crc is None else crc,  # None: before chains
                                   m.get("format") == MANIFEST_FORMAT)
        for number, m in reversed(added):
            where = self.manifest_path(number)
            infos = tuple(SegmentInfo.from_manifest(e, where) for e in m["added"])
            crc = segments_crc(m["added"], resolved.crc)
            if crc != m["segments_crc32"] or m["depth"] != resolved.depth + 1:
                raise StoreError(f"{where} does not add to the segments of version {m['base']} as found (one of "
                                 "them replaced by another store's manifest or an older copy?); restore it from a "
                                 "backup")
            resolved = SegmentList(resolved.infos + infos, resolved.depth + 1, crc, True, resolved.added + len(infos))
        _remember(self.root, version, resolved)
        return resolved

    def _chain_file(self, base: int, version: int) -> dict:
        """The file of ``base``, which ``version``'s segments add to: its manifest, or the
        tombstone cleanup left in its place (which keeps what a kept version needs)."""
        try:
            m = self.published(base)
        except VersionNotFound:
            m = {}
        if "segments" in m or "base" in m:
            return m
        if self.published(version).get("retired"):  # cleaned up while read: the chain was no longer kept
            raise VersionNotFound(f"version {version} of {self.root} was cleaned up; latest is {self.latest}")
        raise StoreError(f"{self.manifest_path(base)} is missing or has lost the segments that version {version}'s "
                         "manifest adds to; restore it from a backup")

    def segment_fields(self, base_version: int, base: SegmentList, infos: list[SegmentInfo],
                       appended: list[SegmentInfo] | None) -> tuple[dict, SegmentList]:
        """The manifest fields that give a new version's segments ``infos``, and their
        list: only ``appended`` (the segments added to ``base``'s, a commit's) while the
        chain is in format 2, shorter than ``DELTA_DEPTH`` and adds no more entries than
        its full list holds, or every one. Full lists then come as the segments double
        (or every ``DELTA_DEPTH`` versions): a store's manifests grow with its segments,
        where a full list every 64 versions grew with their square."""
        added = base.added + len(appended or ())
        if (appended is not None and base_version and base.chainable and base.depth + 1 < DELTA_DEPTH
                and added <= len(base.infos) - base.added):
            entries = [i.to_dict() for i in appended]
            crc = segments_crc(entries, base.crc)
            fields = {"base": base_version, "depth": base.depth + 1, "added": entries, "segments_crc32": crc,
                      "segment_count": len(infos), "segment_bytes": sum(i.bytes for i in infos)}
            return fields, SegmentList(base.infos + tuple(appended), base.depth + 1, crc, True, added)
        entries = [i.to_dict() for i in infos]
        crc = segments_crc(entries)
        return {"segments": entries, "segments_crc32": crc}, SegmentList(tuple(infos), 0, crc, True)

    def remember(self, version: int, segments: SegmentList) -> None:
        """Keeps a version's segments just published for the handle opened on it next."""
        _remember(self.root, version, segments)

    # A commit id is found through small files named after it and a version, one written
    # before each attempt to publish it as that version (never replaced by another:
    # writers on several hosts, without a common lock, may try one id at once), where a
    # search read every version file ever published (an idempotent commit cost 10x a plain
    # one at 4,500 versions, growing for the life of the store). ``COMMIT_INDEX`` holds the
    # version up to which every id has its files; versions after it are searched, and the
    # next commit with an id gives theirs (an older lateseq's, on another host, included).

    def commit_markers(self, commit_id: str) -> list[Path]:
        """The files of every attempt to publish ``commit_id``, by the version tried."""
        return sorted(self.versions_dir.glob(f"commit-{_id_hash(commit_id)}-*.json"))

    def mark_commit(self, commit_id: str, version: int) -> None:
        """Records, durably and before ``version`` is published, that ``commit_id`` is to
        be published as ``version``; first gives the ids of the versions published since
        the index's version their files and moves the index on."""
        through = self.marked_through()
        since = [number for number in self.numbers() if number > through]
        for number in since:
            if (cid := self._version_file(number).get("commit_id")) is not None:
                self._mark(cid, number)
        if since:  # a writer that read an older index may move it back later: that only searches more
            write_durably(self.versions_dir / COMMIT_INDEX, dump_checked({"marked_through": since[-1]}))
        self._mark(commit_id, version)

    def _mark(self, commit_id: str, version: int) -> None:
        write_durably(self.versions_dir / f"commit-{_id_hash(commit_id)}-{version:08d}.json",
                      dump_checked({"commit_id": commit_id, "version": version}))

    def marked_through(self) -> int:
        """The version up to which every commit id has its files (0: none known)."""
        index = self.versions_dir / COMMIT_INDEX
        if not (index.exists() or index.is_symlink()):
            return 0
        try:
            through = load_checked(index).get("marked_through")
        except StoreError as exc:
            raise StoreError(f"{exc}; or delete it: commits with an id then search every version, and the next "
                             "one writes it again") from None
        if not is_integer(through) or through < 0:
            raise StoreError(f"{index} is damaged (no version in it); delete it: commits with an id then search "
                             "every version, and the next one writes it again")
        return int(through)

    def find_commit(self, commit_id: str) -> tuple[int, str] | None:
        """(version, content digest) of the commit that used ``commit_id``, kept or retired.
        A damaged file that could hold it raises StoreError: a rerun refuses rather than
        commit twice."""
        through = self.marked_through()  # read first: another writer may move it on meanwhile
        for marker in reversed(self.commit_markers(commit_id)):  # the newest attempt first: mostly the one
            version = self._marked_version(marker, commit_id)
            if version is None:
                continue
            try:
                published = self.published(version)
            except VersionNotFound:  # a crash between the marker and the publish
                continue
            if published.get("commit_id") == commit_id:
                return version, published.get("content", "")
        for number in reversed(self.numbers()):  # those after the index's version: not all marked
            if number <= through:
                break
            m = self._version_file(number)
            if m.get("commit_id") == commit_id:
                return number, m.get("content", "")
        return None

    def same_events(self, version: int, users: np.ndarray, recent: int = 8) -> int | None:
        """The newest of the ``recent`` versions before ``version`` that committed the same
        events as it, in the same order (their content digests match), or None: an input
        committed twice (a scheduled ingest rerun without a commit id). Few, as a version
        that lists all its segments is megabytes of JSON at 16k partitions; a version file
        that cannot be read is passed over (not this check's to report). ``users``: those
        of the events, whose deletion in between leaves each event stored once."""
        try:
            content = self._version_file(version).get("content")
            numbers = [n for n in self.numbers() if n < version][-recent:]
        except StoreError:
            return None
        for number in reversed(numbers):
            with contextlib.suppress(StoreError):
                m = self._version_file(number)
                if content and m.get("operation") == "commit" and m.get("content") == content:
                    return number
                if m.get("deleted") and np.isin(np.asarray(m["deleted"], np.int64), users).any():
                    return None  # some of them deleted since: held once (s62L)
        return None

    def _marked_version(self, marker: Path, commit_id: str) -> int | None:
        """The version ``commit_id``'s file ``marker`` names; None where it is another id's
        that shares the name's hash prefix."""
        cid, version = self.marker(marker)
        return version if cid == commit_id else None

    def marker(self, path: Path) -> tuple[str, int]:
        """(commit id, version) of a commit id's file, checked against its name."""
        m = load_checked(path)
        cid, version = m.get("commit_id"), m.get("version")
        if (not isinstance(cid, str) or not is_integer(version)
                or path.name != f"commit-{_id_hash(cid)}-{version:08d}.json"):
            raise StoreError(f"{path} is not the file of the commit id and version it holds (damaged, or "
                             "copied over another's); restore it from a backup")
        return cid, int(version)

    def deletions(self, up_to: int) -> dict[int, int]:
        """Every user a deletion up to version ``up_to`` removed -> the version of its last
        such deletion, from kept manifests and tombstones alike."""
        last: dict[int, int] = {}
        for number in self.numbers():
            if number <= up_to:
                for user in self._version_file(number).get("deleted") or []:
                    last[user] = number  # numbers ascend: the last deletion stays
        return last

    # ------------------------------------------------------------ tags

    def tags(self) -> dict[str, int]:
        out = {}
        for path in sorted(self.tags_dir.glob("*.json")):
            name = path.name[:-5]
            if _TAG_NAME.fullmatch(name):
                try:
                    out[name] = _tagged(path, name)
                except StoreError:
                    if path.exists() or path.is_symlink():
                        raise
                    # untagged since the listing: not a tag any more
        return out

    def tags_of(self, name: str) -> int:
        path = self.tags_dir / f"{check_tag_name(name)}.json"
        for attempt in range(4):
            try:
                return _tagged(path, name)
            except StoreError:
                # gone: untagged (maybe between a listing and the read). Still there: damaged
                # (raised once read a few times), or untagged and tagged again meanwhile
                if not os.path.lexists(path):
                    break
                if attempt == 3:
                    raise
        tags = sorted(self.tags())
        if name in tags:  # untagged while it was read, tagged again since (s62Q: "no tag 'prod'; tags: ['prod']")
            raise VersionNotFound(f"tag {name!r} of {self.root} was removed while it was read, and made again "
                                  "since: open it again")
        raise VersionNotFound(f"no tag {name!r} in {self.root}; tags: {tags}")

    def tag(self, name: str, version: int) -> None:
        if isinstance(name, str) and name.casefold() == LATEST:
            raise SchemaError(f"tag name {name!r} is not allowed: '{LATEST}' names the newest version wherever a "
                              "version is asked for")
        path = self.tags_dir / f"{check_tag_name(name)}.json"
        twin = next((other.stem for other in self.tags_dir.glob("*.json") if other.stem != name
                     and other.stem.casefold() == name.casefold() and _TAG_NAME.fullmatch(other.stem)), None)
        if twin is not None:  # tenant names refused such pairs; tags took them (s61C)
            raise SchemaError(f"tag {name!r} differs from the tag {twin!r} only in case; where names ignore case "
                              f"(macOS, Windows) both are one file, and tagging one would move the other: untag "
                              f"{twin!r} first, or pick another name")
        with self.tagging():  # retirement holds it too: a version kept here stays kept
            self.manifest(version)  # VersionNotFound when it was retired before the lock
            write_synced(path, dump_checked({"version": version, "tag": name}))
            sync_placed(self.tags_dir, f"tag {name!r} of version {version}")

    def untag(self, name: str) -> None:
        path = self.tags_dir / f"{check_tag_name(name)}.json"
        if not os.path.lexists(path):  # refused before the lock: a refusal leaves the store as it was
            raise VersionNotFound(f"no tag {name!r} in {self.root}")
        with self.tagging():
            if not self._removed_tag(name):
                raise VersionNotFound(f"no tag {name!r} in {self.root}")
            sync_placed(self.tags_dir, f"the removal of tag {name!r}")

    def untag_before(self, before: int) -> list[str]:
        """Removes the tags of versions older than ``before``, each checked and removed under
        the tags lock (a listing first, then an untag each, removed a tag another process
        had moved to a kept version meanwhile, or failed on one it had removed); their names."""
        with self.tagging():
            removed = [name for name, version in sorted(self.tags().items())
                       if version < before and self._removed_tag(name)]
            if removed:
                sync_placed(self.tags_dir, f"the removal of tags {removed}")
        return removed

    def _removed_tag(self, name: str) -> bool:
        """Removes tag ``name``'s file (under the tags lock); False where it is gone already."""
        try:
            (self.tags_dir / f"{name}.json").unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot untag {name!r} in {self.root}: {exc.strerror}") from exc
        return True

    # ------------------------------------------------------------ publishing and cleanup

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held by a writer from its first data file until its version is published. It
        starts only past the gate, which a cleanup waiting for writers midway closes."""
        with self._lock(fcntl.LOCK_SH, self.root / GATE):
            pass
        with self._lock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def deleting(self) -> Iterator[None]:
        """Held by cleanup while it deletes files: no writer is midway meanwhile. Writers
        whose shared locks overlap, one starting before the last ends (a few committers and
        a compaction), never left the lock free: cleanup waited for minutes (s34D). After
        ``GATE_AFTER_S`` of that, cleanup closes the gate: those midway finish, new ones
        wait for it. Not at once: a commit would then wait out any long compaction under way
        whenever a cleanup came (s34G)."""
        with self._lock(fcntl.LOCK_EX, patience_s=GATE_AFTER_S) as held:
            if held:
                yield
                return
        with self._lock(fcntl.LOCK_EX, self.root / GATE), self._lock(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def tagging(self) -> Iterator[None]:
        """Held by a tagger from checking its version is kept until its tag is written, and
        by retirement: a tag never names a version retired meanwhile."""
        with self._lock(fcntl.LOCK_EX, self.tags_dir / ".lock"):
            yield

    def check_same_store(self) -> None:
        """StoreError unless ``root`` still holds the store of ``store_id``, as far as can be
        told (a store gone is for the caller's own error to tell)."""
        if self.store_id is None:
            return
        written, why = _written_id(self.root)
        if written == self.store_id or why == "gone":
            return
        if why.startswith("unreadable"):
            raise StoreError(f"{self.root / STORE_ID}, the store's id, is {why} (it read {self.store_id} when this "
                             "handle opened the store); nothing was changed: try again once it can be read")
        if why:
            raise StoreError(f"{self.root / STORE_ID}, the store's id, is {why} (it read {self.store_id} when this "
                             f"handle opened the store): if the store is the one it was, {self._write_back()} that id; "
                             "else it was replaced by another store: open it again (lateseq.open)")
        raise StoreError(f"the store at {self.root} is not the one this handle opened: that store was removed and "
                         "another created at its path since; open it again (lateseq.open)")

    def check_id_file(self) -> None:
        """``check_same_store``, and a damaged id file named even where this handle read
        none (fsck: ``verify``)."""
        why = _written_id(self.root)[1]
        if why == "damaged" and self.store_id is None:
            raise StoreError(f"{self.root / STORE_ID}, the store's id, is damaged: {self._write_back()} the id (32 hex "
                             "digits) a backup of this store holds, or remove it (the store then has no id)")
        if why.startswith("unreadable") and self.store_id is None:  # (said by a handle that read it, s50B)
            raise StoreError(f"{self.root / STORE_ID}, the store's id, is {why}: make it readable by this process")
        self.check_same_store()

    def _write_back(self) -> str:
        """How to put an id back: into the file, or in place of a folder where the file was
        (no id can be written into a folder, s50B)."""
        return ("remove the folder and write as a file" if (self.root / STORE_ID).is_dir()
                else "write back into the file")

    @contextlib.contextmanager
    def _lock(self, mode: int, path: Path | None = None, patience_s: float | None = None) -> Iterator[bool]:
        """Holds ``path``'s lock (the store's by default) in ``mode``; with ``patience_s``,
        only if it comes within that many seconds (yields False, holding nothing, if not)."""
        path = path or self.root / ".lock"
        self.check_same_store()  # refused before a lock file is made in another store
        try:
            lock = open_lock_file(path)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not (self.root / SCHEMA_FILE).exists():
                raise StoreError(f"the store at {self.root} is gone: moved or removed since it was opened "
                                 "(open it where it is now)") from exc
            why = lock_failure(exc, "writers need a store they can write to",
                               "lateseq follows no symbolic link and opens no FIFO inside a store")
            raise StoreError(f"cannot lock {self.root}: {exc.strerror} at {path} ({why})") from exc
        try:
            try:
                if patience_s is None:
                    _wait_for(lock, mode, path)
                held = patience_s is None or _tried_for(lock, mode, patience_s)
            except OSError as exc:
                raise StoreError(
                    f"cannot lock {self.root}: {exc.strerror} at {path}: writers exclude each other with file locks "
                    "(flock), which this file system does not offer (an NFS mount without its lock service, some "
                    "FUSE mounts); keep the store on one that does") from exc
            if held:
                self.check_same_store()  # replaced while this waited for the lock
            yield held
        finally:
            close_lock_file(lock)

    def only_compactions(self, since: int, through: int) -> bool:
        """Whether every version after ``since`` up to ``through`` is a compaction's (kept,
        or retired since): the same events as ``since``, in other segments."""
        return through > since and all(
            self.published(number).get("operation") == "compact" for number in range(since + 1, through + 1))

    def publish(self, version: int, manifest: dict) -> None:
        """Makes ``manifest`` version ``version``, or raises CommitConflict if the number
        was ever taken (published, or published and retired since). A StoreError means
        nothing was placed, but NotSynced (the folder's fsync failed: it is published); an
        interrupt may come after the manifest was, so the version may be published."""
        try:
            write_new(self.manifest_path(version), dump_checked({**manifest, "format": MANIFEST_FORMAT}, MANIFEST_CRC))
        except FileExistsError as exc:
            raise CommitConflict(
                f"version {version} of {self.root} was published by another writer; retry"
            ) from exc
        sync_placed(self.versions_dir, f"version {version} of {self.root}")

    def retire_before(self, before: int) -> list[int]:
        """Retires versions older than ``before`` (never the latest, never a tagged one):
        each manifest becomes a tombstone that keeps its number and commit id taken, and
        the segment list where a kept version's manifest adds to it."""
        retired = []
        with self.tagging():
            stays = self._staying(before)
            # every file read (and checked) before any is retired: a damaged one stops
            # cleanup before it changed anything
            files = {number: self._version_file(number) for number in self.numbers()}
            kept = [n for n, m in files.items() if not m.get("retired") and stays(n)]
            needed = set()  # the retired versions whose segment lists a kept version's adds to
            for number in kept:
                m = files[number]
                while "segments" not in m and is_integer(m.get("base")) and m["base"] in files:
                    needed.add(m["base"])
                    m = files[m["base"]]
            # newest first: after a crash midway, a version not yet retired adds only to
            # older ones, all still as they were
            for number in sorted(files, reverse=True):
                m = files[number]
                if stays(number) or (m.get("retired") and (
                        number in needed or not any(k in m for k in _CHAIN_FIELDS))):
                    continue
                tombstone = {"version": number, "format": MANIFEST_FORMAT, "retired": True,
                             "retired_at": m.get("retired_at", time.time()),
                             "commit_id": m.get("commit_id"), "content": m.get("content"),
                             "deleted": m.get("deleted"), "operation": m.get("operation")}
                if number in needed:
                    tombstone.update((k, m[k]) for k in _CHAIN_FIELDS if k in m)
                write_durably(self.manifest_path(number), dump_checked(tombstone, MANIFEST_CRC))
                if not m.get("retired"):
                    retired.append(number)
        return sorted(retired)

    def _staying(self, before: int) -> Callable[[int], bool]:
        """Whether a version stays through ``retire_before(before)``: from ``before`` on
        (the latest always), and every tagged one."""
        before, tagged = min(before, self.latest), set(self.tags().values())
        return lambda number: number >= before or number in tagged

    def kept_partitions(self, before: int | None = None) -> set[tuple[int, tuple[str, ...]]]:
        """Every kept version's partitions: (partition, the names of its segments, oldest
        first), each manifest read once (another cleanup may retire versions meanwhile,
        which only ever frees names). With ``before``: those of the versions that
        ``retire_before(before)`` would keep."""
        kept = set()
        stays = self._staying(before) if before is not None else lambda number: True
        for number in self.numbers():
            m = self._version_file(number)
            if m.get("retired") or not stays(number):
                continue
            try:
                segments = self.segments(number, m).infos
            except VersionNotFound:  # retired by another cleanup while its chain was read
                continue
            by_partition: dict[int, list[str]] = {}
            for segment in segments:
                by_partition.setdefault(segment.partition, []).append(segment.name)
            kept.update((partition, tuple(names)) for partition, names in by_partition.items())
        return kept


def lost_versions(lost: list[int]) -> str:
    """What the ``lost`` version files of a store's versions/ are, said once for them all."""
    names = ", ".join(f"{number:08d}.json" for number in lost[:3])
    names += f" and {len(lost) - 3} more" if len(lost) > 3 else ""
    one = len(lost) == 1
    return (f"{names} {'is' if one else 'are'} missing, though later versions exist; no version file "
            f"is ever removed (a retired version keeps a tombstone), so {'it was' if one else 'they were'} lost")


def _segment_totals(manifest: dict) -> tuple[int, int]:
    """(segments, bytes) of a kept version, from its manifest alone."""
    if "segments" in manifest:
        return len(manifest["segments"]), sum(s["bytes"] for s in manifest["segments"])
    return manifest["segment_count"], manifest["segment_bytes"]


def _tagged(path: Path, name: str) -> int:
    """The version a tag file names, checked to be this tag's file (a tag's file copied
    over another's would silently open, and pin, the other's version)."""
    content = load_checked(path, kept_since_v01=True)
    if content.get("tag", name) != name:  # tags written before names were kept in them: trusted
        raise StoreError(f"{path} is the file of tag {content.get('tag')!r}, not of {name!r}; restore it from a "
                         "backup or tag the version again")
    version = content.get("version")
    if not is_integer(version) or version < 1:  # (a crafted "1", [1] or null was a bare TypeError, s62T)
        raise StoreError(f"{path} names no version (it holds {version!r}); restore it from a backup or tag the "
                         "version again")
    return int(version)


def _id_hash(commit_id: str) -> str:
    return hashlib.sha256(commit_id.encode()).hexdigest()[:32]


def remove_file(path: Path) -> None:
    """Removes ``path`` (a file or link) if it is there; a folder in its place is no file of
    lateseq's and is left alone: cleanup stopped at one, and freed nothing after it, ever."""
    if path.is_dir() and not path.is_symlink():
        return
    path.unlink(missing_ok=True)


def older_than(path: Path, grace_s: float) -> bool:
    """Whether ``path`` was last changed more than ``grace_s`` ago (False if it is gone).
    One dated in the future (by a host whose clock runs ahead) is dated now, to age from
    now: left so, a leftover stayed young until that time came, years for a clock set
    wrong (a stranger's)."""
    try:
        changed, now = path.lstat().st_mtime, time.time()
        if changed > now:
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)
        return changed < now - grace_s
    except FileNotFoundError:
        return False


def _tried_for(lock: int, mode: int, seconds: float) -> bool:
    """Whether ``flock(lock, mode)`` was had within ``seconds`` (tried every 50 ms)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.05)


def _wait_for(lock: int, mode: int, path: Path) -> None:
    """``flock(lock, mode)``, with a warning once another process has held the lock for
    ``LOCK_NOTICE_S``: a wait for a writer or cleanup midway ends with it, but a process
    that holds a lock it inherited (forked by a writer, without exec, outside lateseq)
    holds it until it exits, and the wait said nothing."""
    try:
        fcntl.flock(lock, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    notice = threading.Timer(LOCK_NOTICE_S, warnings.warn_explicit, [  # no registry: every wait is told
        f"lateseq: waiting since {time.strftime('%H:%M:%S')} for {path}, which another process or thread has held "
        f"for {LOCK_NOTICE_S:.0f} s (a writer or cleanup midway; if none runs, a process still alive that a writer "
        "forked, which holds the lock until it exits: `fuser -v` names it)", UserWarning, __file__,
        _wait_for.__code__.co_firstlineno])
    notice.daemon = True
    notice.start()
    try:
        fcntl.flock(lock, mode)
    finally:
        notice.cancel()
