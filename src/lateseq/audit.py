"""Checking: ``audit`` rebuilds logged examples and explains every one that does not
match; ``verify`` (``lateseq verify``, an fsck) checks every file of a store."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._derived import damaged_copies
from ._errors import LateseqError, StoreError, VersionNotFound, exact_bool, exact_integer
from ._format import (
    REBUILT,
    SCHEMA_FILE,
    TIME,
    SegmentInfo,
    decode_segment,
    decoded_file,
    discard,
    map_decoded,
    read_index,
)
from ._kernels import Visibility, event_hashes
from ._materialize import materialize, require_store
from ._pointers import Pointers, decoded_pointer_columns, pointers_from_log, require_table
from ._projection import Projection
from ._records import is_two_tier, protocol_part, stripped_pointers, tail_intact
from ._segments import file_identity
from ._store import Store
from ._versions import COMMIT_INDEX, STORE_ID, VersionLog, load_checked, lost_versions

__all__ = ["AuditReport", "Problem", "audit", "verify"]


@dataclass
class AuditReport:
    """Mismatch causes: "deleted" (the user's events were deleted), "corrupt data",
    "tail stripped too early", "late event", "request time changed" (the record counted
    its user's history at another request time), "version newer than this handle", "version
    no longer kept" (none of those, and a version the record names was cleaned up, so its
    own files cannot tell a rewrite of the store's events since then from a changed
    record), or "unknown" when none of those explains it."""

    examples: int
    checked: int
    mismatches: dict[int, str] = field(default_factory=dict)  # log row -> cause

    @property
    def matched(self) -> int:
        return self.checked - len(self.mismatches)

    @property
    def causes(self) -> Counter:
        return Counter(self.mismatches.values())


def audit(store: Store, log: pa.Table, sample: int | None = None, seed: int = 0) -> AuditReport:
    """Rebuilds ``sample`` random records (all by default) and explains mismatches."""
    require_store(store, "audit reads")
    require_table(log)
    sample = None if sample is None else exact_integer("sample", sample, 1)
    rows = np.arange(log.num_rows)
    if sample is not None and sample < log.num_rows:
        rows = np.sort(np.random.default_rng(seed).choice(log.num_rows, sample, replace=False))
    subset = decoded_pointer_columns(protocol_part(log)).take(pa.array(rows, pa.int64()))
    two_tier = is_two_tier(subset)
    pointers = pointers_from_log(subset, store.schema)
    # a record of a version this handle cannot read (tampered, or from a newer replica) is a
    # mismatch of its own: the others are still rebuilt
    newer = pointers.version > store.version
    if two_tier:
        newer |= subset.column("tail_version").to_numpy().astype(np.int64) > store.version
    bad = newer.copy()
    readable = np.flatnonzero(~newer)
    if len(readable):
        bad[readable] = materialize(store, subset.take(pa.array(readable)), Projection(1, (store.schema.time_col,)),
                                    on_mismatch="flag").mismatched
    report = AuditReport(log.num_rows, len(rows))
    if bad.any():
        explain = _Explainer(store, two_tier)
        deleted = store.deleted_after(pointers.user_id, pointers.version)  # served before a deletion of its user
        for i in np.flatnonzero(bad):
            report.mismatches[int(rows[i])] = ("version newer than this handle" if newer[i] else "deleted" if deleted[i]
                                               else explain(subset.slice(int(i), 1)))
    return report


class _Explainer:
    """Names the cause of one mismatched record; store-wide facts are read once."""

    def __init__(self, store: Store, two_tier: bool):
        self.store = store
        self.two_tier = two_tier
        self.watermarks = {v.version: v.watermark for v in store.versions()}
        self._times: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, record: pa.Table) -> str:
        pointer = pointers_from_log(record, self.store.schema)
        tail_version = int(record.column("tail_version")[0].as_py()) if self.two_tier else 0
        if self._rehash_differs(pointer.user_id[:1]):
            return "corrupt data"
        if self.two_tier and tail_version == 0 and not tail_intact(self.store, record)[0]:
            return "corrupt data"
        # the causes that can be checked first: a retired version is not one by itself (its
        # pointers still rebuild, events keeping their version), and named before them it
        # took every mismatch of a cleaned-up store's log, a late event's or a changed
        # record's alike (s47B)
        mark = self.watermarks.get(tail_version)
        if tail_version and mark is not None and mark < pointer.request_ts[0]:
            return "tail stripped too early"
        if _late_events_explain(self.store, pointer):
            return "late event"
        if not tail_version and self._counted_at_another_time(pointer):
            return "request time changed"
        kept = self.watermarks.keys() | {0}
        retired = int(pointer.version[0]) not in kept or tail_version not in kept
        if retired and not self._more_now(record, pointer, tail_version):
            return "version no longer kept"
        return "unknown"

    def _more_now(self, record: pa.Table, pointer: Pointers, tail_version: int) -> bool:
        """Whether the store shows more of the record's events now than it counted (its
        pointer's version; a stripped record's whole history): a rewrite of stored events (a
        purge) drops or changes events, and never adds one to an old version, so the record
        changed."""
        if tail_version:  # the store alone holds what a stripped record counted (s47D: two-tier ones too)
            pointer = stripped_pointers(self.store, record)
        located = self.store.locate(pointer.user_id, pointer.request_ts, pointer.visibility, max_len=1)
        return bool(located.count[0] > pointer.length[0])

    def _counted_at_another_time(self, pointer: Pointers) -> bool:
        """Whether the record's count and checksum are those of its user's history at its
        version for a request at another time, and at its own time under no other version:
        its request_ts was changed (a unit shifted, a row joined to another's time), not
        the store (s50A: such records were "unknown"). An empty history is no evidence:
        every user has one before their first event (s50B: a changed user or version of a
        first request was blamed on its time), nor is one the record's time shows at
        another version (an edited uih_version, s50B)."""
        user, count, version = pointer.user_id[:1], int(pointer.length[0]), int(pointer.version[0])
        times, versions = self._events(int(user[0]))
        times = np.sort(times[versions <= version])
        if not 0 < count <= len(times) or (count < len(times) and times[count - 1] == times[count]):
            return False  # no request time sees that many events
        others = np.unique(np.r_[0, versions])  # where the user's history changes: one of each span of versions
        at = np.concatenate([[times[count - 1] + 1], np.repeat(pointer.request_ts[:1], len(others))])
        located = self.store.locate(np.repeat(user, len(at)), at, Visibility.of_versions(np.r_[version, others]),
                                    max_len=1)
        matches = (located.count == count) & (located.checksum == pointer.checksum[0])
        return bool(matches[0] and not matches[1:].any())

    def _events(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's event times and versions (kept for the user's other records: a heavy
        user's were read again for each, 2.4x slower, s50B)."""
        if user not in self._times:
            found = []
            for segment in self.store.segments():
                lo, hi = segment.user_ranges(np.array([user], np.int64))
                rows = np.arange(lo[0], hi[0])
                found.append((segment.decoded(TIME, rows), segment.decoded("_version", rows)))
            self._times[user] = (np.concatenate([t for t, _ in found] or [np.empty(0, np.int64)]),
                                 np.concatenate([v for _, v in found] or [np.empty(0, np.int64)]))
        return self._times[user]

    def _rehash_differs(self, user: np.ndarray) -> bool:
        """Whether any of the user's events no longer hashes as it did when written
        (damage to a decoded segment; damaged durable files fail their CRC on decoding)."""
        schema = self.store.schema
        for segment in self.store.segments():
            lo, hi = segment.user_ranges(user)
            if hi[0] == lo[0]:
                continue
            rows = np.arange(lo[0], hi[0])
            payload = [segment.decoded(n, rows).astype(np.uint8 if t == "bool" else t)
                       for n, t in schema.columns.items()]
            fresh = event_hashes(np.full(len(rows), user[0]), segment.decoded(TIME, rows), payload)
            if not np.array_equal(fresh, segment.hashes(int(lo[0]), int(hi[0]))):
                return True
        return False


def _late_events_explain(store: Store, pointer: Pointers) -> bool:
    """Whether the pointer's version shows events that arrived at or after the request, and
    without them the history is what the record counted (online never saw them). Events
    that arrived late but that the record counted (a pointer logged after they arrived) are
    no cause: the record was changed (s47C)."""
    if store.schema.arrival_col is None:
        return False
    seen = Visibility(np.zeros(1, np.int64), pointer.version, pointer.request_ts)  # <= its version, arrived before
    online = store.locate(pointer.user_id, pointer.request_ts, seen, max_len=1)
    shown = store.locate(pointer.user_id, pointer.request_ts, Visibility.of_versions(pointer.version), max_len=1)
    return bool(online.count[0] < shown.count[0] and online.count[0] == pointer.length[0]
                and online.checksum[0] == pointer.checksum[0])


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a store."""

    path: str
    message: str


def verify(store: Store, deep: bool = False) -> list[Problem]:
    """Checks every file of ``store`` that a kept version needs: the schema, every
    manifest, tag and commit id's file (and that every id has one, up to the version the
    index says), each segment's durable files (CRC-32 and index), and the decoded,
    merged and filtered copies in this handle's read cache (digest of every column).
    ``deep`` also decodes every segment again from its durable files into a scratch
    cache and checks that the result is what its writer wrote (every event re-hashed).
    Returns the problems found.
    """
    import tempfile

    require_store(store, "verify checks")
    deep = exact_bool("deep", deep)
    problems: list[Problem] = []

    def check(path: Path, action: Callable[[], object]) -> bool:
        try:
            action()
        except LateseqError as exc:
            problems.append(Problem(str(path), str(exc)))
            return False
        return True

    log = store._log
    check(store.path / SCHEMA_FILE, lambda: load_checked(store.path / SCHEMA_FILE, kept_since_v01=True))
    check(store.path / STORE_ID, log.check_id_file)  # this handle's store, its id file sound
    for path in sorted(log.tags_dir.glob("[!.]*.json")):  # not a temporary a crash left (cleanup removes it)
        check(path, lambda path=path: _tag_kept(log, path))  # a tag's own file, and kept
    kept: dict[str, SegmentInfo] = {}
    markers: set[tuple[str, int]] = set()  # (commit id, version) of every commit id's file
    damaged: set[str] = set()  # the version numbers in the names of those that failed (already named)
    for path in sorted(log.versions_dir.glob("commit-*.json")):
        if path.name != COMMIT_INDEX and not check(path, lambda path=path: markers.add(log.marker(path))):
            damaged.add(path.stem.rsplit("-", 1)[-1])
    try:  # the version up to which every commit id claims its file
        through = log.marked_through()
    except StoreError as exc:
        problems.append(Problem(str(log.versions_dir / COMMIT_INDEX), str(exc)))
        through = -1  # a damaged claim: nothing to hold the versions to

    def read_version(number: int) -> None:
        """A version's file, checked as opening the version checks it, and its commit id's file."""
        manifest = log.published(number)
        if not manifest.get("retired"):
            kept.update({i.name: i for i in store._segments_of(number, manifest).infos})
        cid = manifest.get("commit_id")
        if cid is not None and number <= through and (cid, number) not in markers and f"{number:08d}" not in damaged:
            raise StoreError(f"version {number} holds commit id {cid!r}, which has no file commit-*-{number:08d}"
                             f".json (a rerun would commit it again): delete {log.versions_dir / COMMIT_INDEX}, "
                             "and the next commit with an id writes every id's file again")

    for number in log.numbers():  # each manifest read once (a handle per version cost 20 ms each)
        check(log.manifest_path(number), lambda number=number: read_version(number))
    lost = log.lost()
    if lost:
        problems.append(Problem(str(log.versions_dir), lost_versions(lost)
                                + "; restore from a backup (cleanup refuses until then)"))
    segments = store.path / "segments"
    try:
        scratch_folder = tempfile.TemporaryDirectory(prefix="lateseq-verify-") if deep else contextlib.nullcontext("")
    except OSError as exc:  # no writable temporary directory (a read-only container)
        raise StoreError(f"verify(deep=True) decodes every segment into a scratch folder, and cannot make one "
                         f"({exc}): set TMPDIR to a writable folder") from None
    found_before = len(problems)
    with scratch_folder as scratch:
        for info in kept.values():
            corrupt = info.corrupt_files(segments)
            for bad, what in corrupt:
                problems.append(Problem(str(bad), f"segment {info.name}: {bad.name} {what}"))
            index = segments / f"{info.name}.index.arrow"
            if index in {bad for bad, _ in corrupt} or not check(index, lambda info=info: read_index(segments, info)):
                continue  # (a file that failed its CRC-32 is named once)
            decoded = decoded_file(store.cache_dir, info.name)
            if decoded.exists():
                check(decoded, lambda info=info, decoded=decoded: _check_decoded(decoded, info))
            if deep:
                check(segments / f"{info.name}.parquet",
                      lambda info=info: decode_segment(segments, info, Path(scratch)))
    if len(problems) > found_before:  # a cleanup meanwhile may have retired the versions naming a segment
        # and deleted its files, which no kept version reads now: no problem (as a reader's VersionNotFound)
        try:
            still = {name for _, names in log.kept_partitions() for name in names}
        except StoreError:  # a damaged manifest (named above): which segments stay cannot be told
            still = {_segment_of(p.path) for p in problems[found_before:]}
        problems[found_before:] = [p for p in problems[found_before:] if _segment_of(p.path) in still]
    for sidecar, what in damaged_copies(store.cache_dir):
        problems.append(Problem(str(sidecar), f"merged or filtered copy {sidecar.stem} in the read cache: {what}"
                                + ("" if what.endswith(REBUILT) else f"; {REBUILT}")))
    return problems


def _tag_kept(log: VersionLog, path: Path) -> None:
    """A tag's file checked, and its version kept; nothing where another process untagged
    or moved it since it was listed (and a cleanup may then have retired the version it
    named: s35G, s35I)."""
    version = None
    try:
        version = log.tags_of(path.stem)  # VersionNotFound only when it is gone
        log.manifest(version)
    except VersionNotFound:
        try:
            now = log.tags_of(path.stem)
        except VersionNotFound:
            return  # untagged meanwhile
        if now == version:
            raise
        log.manifest(now)  # moved meanwhile: the version it names now must be kept


def _segment_of(path: str) -> str:
    """The segment a file of the store or of its read cache belongs to (its name's stem)."""
    return Path(path).name.split(".")[0]


def _check_decoded(path: Path, info: SegmentInfo) -> None:
    """A decoded copy that fails is removed: a host reading through merged copies never
    decodes the segment again, and its damaged copy (a power loss empties an unsynced
    one) failed every verify after (s62P)."""
    try:
        checked = file_identity(path)
        columns = map_decoded(path)
    except OSError as exc:  # out of file handles, no right to read it: the file may be sound
        raise StoreError(f"decoded copy of segment {info.name} cannot be read ({exc})") from exc
    except (pa.ArrowException, KeyError, ValueError) as exc:
        raise StoreError(f"decoded copy of segment {info.name} is unreadable ({exc}); "
                         f"{_removed(path, checked)}") from exc
    bad = [name for name in info.decoded if not info.column_sound(name, columns.get(name))]
    del columns  # (its map, before the file goes)
    if bad:
        raise StoreError(f"decoded copy of segment {info.name} fails its digest for columns {bad}; "
                         f"{_removed(path, checked)}")


def _removed(path: Path, checked: tuple[int, ...] | None) -> str:
    """Removes a damaged read-cache copy, unless another process decoded it again since it
    was checked; says what happened to it."""
    now = file_identity(path)
    if now is None:
        return "removed meanwhile, it is decoded again from the durable files when a read needs it"
    if now != checked:
        return "another process has decoded it again since"
    try:
        discard(path)
    except OSError as exc:
        return f"it could not be removed ({exc.strerror}): remove it, or read the segment unmerged"
    return "removed, it is decoded again from the durable files when a read needs it"
