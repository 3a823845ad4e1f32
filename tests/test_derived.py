"""Derived copies in the read cache: merged copies (a version of many segments read as
one) and filtered copies (the rows a tenant's filter keeps).

A copy is derived data on a reader's disk, so it gets the attacks a read cache gets:
flipped bytes in each of its files, a file edited under an open handle, builders racing,
cleanup after the versions it came from are retired. In every case the output must equal
an independent read: for merged copies the segment-by-segment read (checked against the
oracle in test_materialize, where merged handles run every scenario too), for filtered
copies the unfiltered full history filtered and cut here in plain Python (and the tenant
oracle in test_tenants).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import pickle
import re
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import files_at_most
from oracle import edit_in_place

import lateseq
import lateseq._derived
import lateseq._format
import lateseq._loader
import lateseq._segments
import lateseq.audit
from lateseq._derived import DERIVED_DIR
from lateseq._events import partition_of
from lateseq._store import AUTO_MERGE_RENT

COLUMNS = ("ts", "item", "rating")
PROJECTIONS = {
    "merged": lateseq.Projection(12, COLUMNS),
    "filtered": lateseq.Projection(12, COLUMNS, where=lateseq.Filter("rating", isin=[1, 3])),
}
KINDS = list(PROJECTIONS)
LOG: dict = {}  # store path -> its example log
COMMITS: dict = {}  # store path -> (version, events) of each commit


def events(rng: np.random.Generator, n: int, ts_low: int) -> pa.Table:
    return pa.table({"user_id": rng.integers(1, 40, n), "ts": rng.integers(ts_low, ts_low + 1000, n),
                     "item": rng.integers(0, 10**6, n), "rating": pa.array(rng.integers(0, 5, n), pa.int8())})


@pytest.fixture
def store(make_store) -> lateseq.Store:
    """Daily commits with late events over two partitions, and pointers into each version."""
    s = make_store({"item": "int64", "rating": "int8"}, partitions=2)
    rng = np.random.default_rng(3)
    logs, commits = [], []
    for day in range(6):
        commits.append(events(rng, 150, day * 500))
        s = s.commit(commits[-1])  # overlapping time ranges: some events are late
        commits[-1] = (s.version, commits[-1])
        requests = pa.table({"user_id": np.arange(1, 41, dtype=np.int64),
                             "request_ts": rng.integers(0, day * 500 + 1000, 40)})
        logs.append(lateseq.log_examples(s, requests))
    LOG[s.path] = pa.concat_tables(logs)
    COMMITS[s.path] = commits
    return s


def read(store: lateseq.Store, kind: str, handle: lateseq.Store | None = None, **options) -> list:
    """Every example of the fixture's log through ``kind``'s copies (a new handle on the
    latest version unless given), as one list of event tuples per example."""
    handle = handle or lateseq.open(store.path, merged_reads=kind == "merged", **options)
    return rows(lateseq.materialize(handle, LOG[store.path], PROJECTIONS[kind]))


def rows(batch: lateseq.JaggedBatch) -> list:
    return [list(zip(*(batch.values[c][a:b].tolist() for c in COLUMNS), strict=True))
            for a, b in zip(batch.offsets[:-1], batch.offsets[1:], strict=True)]


def expected(store: lateseq.Store, kind: str) -> list:
    """The same examples without any copy: the segments read one by one, and for the
    filter, every visible event filtered here, then the newest 12 kept."""
    full = lateseq.Projection(10**6, COLUMNS)
    everything = rows(lateseq.materialize(lateseq.open(store.path, merged_reads=False), LOG[store.path], full))
    if kind == "merged":
        return [history[-12:] for history in everything]
    return [[e for e in history if e[2] in (1, 3)][-12:] for history in everything]


def copy_files(store: lateseq.Store, suffix: str = "") -> list:
    return sorted(p for p in (store.cache_dir / DERIVED_DIR).iterdir()
                  if not p.name.startswith(".tmp-") and p.name.endswith(suffix)
                  and not (suffix == ".arrow" and p.name.endswith(".index.arrow")))


@pytest.mark.parametrize("kind", KINDS)
def test_copies_equal_a_read_without_them_and_are_built_once(store, kind):
    want = expected(store, kind)
    assert want != [history[-12:] for history in expected(store, "merged")] or kind == "merged"
    assert read(store, kind) == want
    # merged: one copy per partition; filtered: one per segment
    assert len(copy_files(store, ".json")) == (2 if kind == "merged" else len(store.segment_infos))
    before = {p: p.stat().st_mtime_ns for p in copy_files(store)}
    assert read(store, kind) == want  # a new handle maps the copies, builds nothing
    assert {p: p.stat().st_mtime_ns for p in copy_files(store)} == before


def test_reads_through_merged_copies_open_no_segment(store):
    """Once built, a merged copy is all a read maps: its segments' decoded copies may be
    evicted from the cache, and neither an open handle nor a new one decodes them again."""
    want = expected(store, "merged")
    handle = lateseq.open(store.path, merged_reads=True)
    assert read(store, "merged", handle) == want
    decoded = sorted(store.cache_dir.glob("*.arrow"))
    assert decoded
    for path in decoded:
        path.unlink()
    assert read(store, "merged", handle) == want
    assert read(store, "merged") == want
    assert not any(path.exists() for path in decoded)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("suffix", [".arrow", ".index.arrow", ".json"])
def test_every_damaged_copy_file_is_built_again(store, kind, suffix):
    want = expected(store, kind)
    read(store, kind)
    rng = np.random.default_rng(1)
    for path in copy_files(store, suffix)[:3]:
        pristine = path.read_bytes()
        for at in rng.integers(0, len(pristine), 8):
            damaged = bytearray(pristine)
            damaged[int(at)] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(damaged))
            assert read(store, kind) == want, f"flip at {at} of {path.name}"
        path.unlink()
        assert read(store, kind) == want, f"{path.name} missing"
        assert path.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_a_damaged_copy(store, kind):
    """verify said every file was sound over a read cache whose merged and filtered copies
    were damaged (a stranger's): a read builds them again, but a check of the cache says so.
    A copy's decoded file damaged or missing was said to be a missing Parquet file, to be
    restored from a backup (a copy has none: s41A)."""
    read(store, kind)
    handle = lateseq.open(store.path)
    assert lateseq.audit.verify(handle) == []
    for suffix, damage in [(".arrow", "flip"), (".arrow", "remove"), (".index.arrow", "flip"), (".json", "flip"),
                           (".json", "folder")]:
        path = copy_files(store, suffix)[0]
        pristine = path.read_bytes()
        damaged = bytearray(pristine)
        damaged[len(pristine) // 2] ^= 0xFF
        if damage == "folder":  # not a regular file
            path.unlink()
            path.mkdir()
        else:
            path.unlink() if damage == "remove" else path.write_bytes(bytes(damaged))
        problems = lateseq.audit.verify(handle)
        copy = path.name.split(".")[0]
        assert [(p.path, copy in p.message) for p in problems] == [(str(path.with_name(f"{copy}.json")), True)], suffix
        # a read-cache file: no backup holds it (a damaged sidecar was to be "restored from a backup": s56A)
        assert "parquet" not in problems[0].message and "backup" not in problems[0].message
        assert problems[0].message.endswith(lateseq._format.REBUILT)
        if suffix == ".arrow":  # (a flip in its IPC metadata makes it unreadable)
            said = ("fails its digests", "is missing or unreadable") if damage == "flip" else ("is missing",)
            assert any(f"the copy {path} {what}" in problems[0].message for what in said), problems[0].message
        if damage == "folder":
            path.rmdir()
        path.write_bytes(pristine)
    assert lateseq.audit.verify(handle) == []


@pytest.mark.parametrize("suffix", [".json", ".index.arrow"])
def test_a_copy_file_grown_past_what_it_can_hold_is_refused_unread(store, suffix):
    """A sidecar or index grown to a GiB (sparse: a stray write far out) was read whole
    before its checksum failed; at 16 GiB the reader was killed for want of memory
    (s56A). Its size is refused first: the copy is built again, and verify says why."""
    want = expected(store, "merged")
    read(store, "merged")
    path = copy_files(store, suffix)[0]
    os.truncate(path, 1 << 30)
    tracemalloc.start()
    try:
        assert read(store, "merged") == want
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 28, f"{peak:,} bytes allocated at the peak: the grown file was read"
    assert path.stat().st_size < 1 << 30  # built again
    os.truncate(path, 1 << 30)
    problems = lateseq.audit.verify(lateseq.open(store.path))
    assert len(problems) == 1 and f"holds {1 << 30:,} bytes, more than" in problems[0].message
    assert problems[0].message.endswith(lateseq._format.REBUILT) and "backup" not in problems[0].message


def test_a_copy_written_into_between_its_build_and_its_first_read_says_so(store, monkeypatch):
    """Another program writing into a copy just built, before its builder's first read
    checked it, gave the builder "the copy ... fails its digests: damaged" (s56A): it is
    the error that names the cause. "auto" then reads segment by segment, exactly."""
    want = expected(store, "merged")
    real = lateseq._derived.dump_checked

    def sidecar_then_written(content):
        for path in copy_files(store, ".arrow"):
            edit_in_place(path, 0.5, 0xFF)
        return real(content)

    monkeypatch.setattr(lateseq._derived, "dump_checked", sidecar_then_written)
    with pytest.raises(lateseq.StoreError, match="changed between its build and its first read.*another program "
                                                 "writes into the read cache"):
        read(store, "merged")
    handle = lateseq.open(store.path, merged_reads="auto")
    with pytest.warns(RuntimeWarning, match="changed between its build and its first read"):
        handle.prefault(["item"])  # auto builds here: the same error, as a warning, and no copy
    monkeypatch.undo()
    assert read(store, "merged", handle) == want


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_a_copy_whose_files_are_another_copys(store, kind):
    """Each file sound, but under another copy's name (an older version's merged copy
    copied over the newer's): reads build it again, and verify said every file sound (s34B)."""
    read(store, kind)
    sidecars = copy_files(store, ".json")
    source, target = sidecars[0].name[:-len(".json")], sidecars[1].name[:-len(".json")]
    for suffix in (".json", ".index.arrow", ".arrow"):
        (sidecars[1].parent / f"{target}{suffix}").write_bytes((sidecars[0].parent / f"{source}{suffix}").read_bytes())
    problems = lateseq.audit.verify(lateseq.open(store.path))
    assert [(p.path, "describes another copy" in p.message) for p in problems] == [(str(sidecars[1]), True)]
    assert read(store, kind) == expected(store, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_changed_under_an_open_handle_is_checked_again(store, kind):
    """lateseq only replaces files, but another program may write into the cache in place:
    a changed copy (new mtime) is opened and checked again before the next batch."""
    want = expected(store, kind)
    handle = lateseq.open(store.path, merged_reads=kind == "merged")
    assert read(store, kind, handle) == want
    for path in copy_files(store, ".arrow"):
        edit_in_place(path, 0.5, 0xFF)
    assert read(store, kind, handle) == want


@pytest.mark.parametrize("kind", KINDS)
def test_racing_builders_agree(store, kind):
    want = expected(store, kind)
    results: list = [None] * 4

    def work(k: int) -> None:
        results[k] = read(store, kind)  # each thread its own handle and open files

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [want] * 4
    assert len(copy_files(store, ".json")) == (2 if kind == "merged" else len(store.segment_infos))


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_is_made_from_checked_segments(store, tmp_path, kind):
    info = store.segment_infos[0]
    data = bytearray((store.path / "segments" / f"{info.name}.parquet").read_bytes())
    data[60] ^= 0x10
    (store.path / "segments" / f"{info.name}.parquet").write_bytes(bytes(data))
    with pytest.raises(lateseq.StoreError, match=info.name):
        read(store, kind, cache_dir=tmp_path / "empty-cache")  # nothing decoded: the durable files are read
    assert not list((tmp_path / "empty-cache" / DERIVED_DIR).glob("*.json"))


# rebuilds the copies (merged, and filtered ones of those) over and over until killed
BUILDER = """
import shutil, sys
from pathlib import Path
import pyarrow.parquet as pq
import lateseq
path, log = Path(sys.argv[1]), pq.read_table(sys.argv[2])
where = lateseq.Filter("rating", isin=[1, 3])
print("ready", flush=True)
while True:
    shutil.rmtree(path / "cache" / "derived", ignore_errors=True)
    handle = lateseq.open(path, merged_reads=True)
    lateseq.materialize(handle, log, lateseq.Projection(12, ("ts",), where=where))
"""


def test_a_builder_killed_at_any_moment_leaves_a_cache_that_reads_right(store, tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(LOG[store.path], log)
    want = {kind: expected(store, kind) for kind in KINDS}
    rng = np.random.default_rng(5)
    for _ in range(6):
        with subprocess.Popen([sys.executable, "-c", BUILDER, str(store.path), str(log)],
                              stdout=subprocess.PIPE, text=True) as builder:
            assert builder.stdout.readline() == "ready\n"
            time.sleep(float(rng.uniform(0.0, 0.3)))
            builder.kill()
        handle = lateseq.open(store.path, merged_reads=True)
        assert read(store, "merged", handle) == want["merged"]
        assert read(store, "filtered", handle) == want["filtered"]


def test_a_filter_over_merged_copies(store):
    handle = lateseq.open(store.path, merged_reads=True)
    assert read(store, "filtered", handle) == expected(store, "filtered")
    assert len(copy_files(store, ".json")) == 4  # a merged copy per partition, and a filtered copy of each


def test_cleanup_removes_copies_of_retired_versions_only(store):
    read(store, "merged")
    read(store, "filtered", lateseq.open(store.path, merged_reads=True))
    old = set(copy_files(store))
    newer = store.compact().commit(events(np.random.default_rng(9), 100, 0))
    read(newer, "merged")
    read(newer, "filtered", lateseq.open(store.path, merged_reads=True))
    new = set(copy_files(store)) - old
    assert new
    old_names = {p.name.split(".")[0] for p in old}
    assert any(p.name.split("-", 2)[-1] in old_names for p in (store.cache_dir / DERIVED_DIR).glob(".tmp-*"))
    newer.cleanup(before=newer.version, grace_s=0)
    assert set(copy_files(store)) == new  # the retired version's copies went, the latest's stayed
    # and with them their build locks and merged-reads tallies (not an hour later)
    assert not [p for p in (store.cache_dir / DERIVED_DIR).glob(".tmp-*") if p.name.split("-", 2)[-1] in old_names]
    assert read(newer, "merged") == expected(newer, "merged")


def test_cleanup_leaves_a_stale_copy_alone_while_it_is_built_or_opened(store):
    """Cleanup removed a retired version's filtered copy between its build and its first
    open by a handle on that version, and the read said to restore it from a backup (a
    stranger's threads and a cleaning process). A copy whose build lock is held stays."""
    read(store, "filtered", lateseq.open(store.path, merged_reads=True))
    old = set(copy_files(store))
    newer = store.compact().commit(events(np.random.default_rng(9), 100, 0))
    names = {p.name.split(".")[0] for p in old}
    folder = store.cache_dir / DERIVED_DIR
    with contextlib.ExitStack() as held:
        for name in names:  # (as a builder holds it, in this process or another)
            held.enter_context(lateseq._segments.cache_lock(folder, f".tmp-build-{name}"))
        newer.cleanup(before=newer.version, grace_s=0)
        assert set(copy_files(store)) == old
    newer.cleanup(before=newer.version, grace_s=0)
    assert not set(copy_files(store)) & old


def test_a_builder_that_waited_on_a_lock_file_cleanup_removed_locks_the_one_there_now(tmp_path):
    """Cleanup removes a stale copy with its build lock file, holding it; a builder that
    waited on that file then held a removed one, which kept no one out: the next cleanup
    took the path's new lock file as free and removed the copy being built (a stranger's
    threads and a cleaning process: 'restore it from a backup')."""
    folder, name = tmp_path, ".tmp-build-x"
    acquired, release = threading.Event(), threading.Event()

    def builder():
        with lateseq._segments.cache_lock(folder, name):
            acquired.set()
            release.wait(10)

    with lateseq._segments.cache_lock(folder, name):  # cleanup holds it...
        thread = threading.Thread(target=builder)
        thread.start()
        time.sleep(0.2)  # (the builder waits on this file)
        (folder / name).unlink()  # ...and removes it with the copy
    assert acquired.wait(10)
    fd = os.open(folder / name, os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(BlockingIOError):  # the builder holds the lock file at the path
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        release.set()
        thread.join()


def test_a_copy_that_cannot_be_mapped_for_want_of_maps_says_so(store, monkeypatch):
    """A process out of map areas (vm.max_map_count) failed to map a filtered copy, tried
    to decode it again, and said its Parquet file (a derived copy has none) was missing, to
    restore from a backup (a stranger's 16 threads on a version retired as they read)."""
    read(store, "filtered", lateseq.open(store.path, merged_reads=True))
    real = lateseq._segments.map_decoded

    def out_of_maps(path, random_access=False):
        if DERIVED_DIR in str(path):
            raise OSError("Memory mapping file failed: Cannot allocate memory")
        return real(path, random_access)

    monkeypatch.setattr(lateseq._segments, "map_decoded", out_of_maps)
    out_of_maps_said = r"cannot map .*Cannot allocate memory.*memory maps.*max_map_count"
    with pytest.raises(lateseq.StoreError, match=out_of_maps_said) as said:
        read(store, "filtered", lateseq.open(store.path, merged_reads=True))
    assert "another program" not in str(said.value)  # the copy built again did not change: no writer to suspect


def test_one_big_read_writes_a_tally_no_bigger_than_its_price(tmp_path):
    """A read of many events paid its rent a byte per event at once: a tally of 6 MB for a
    partition of 300 events (s56A). A tally holds at most the units its price owes."""
    rent = lateseq._derived.MergeRent(tmp_path, "p00000-x", 4800)
    rent.pay(6_000_000)
    assert rent.settled and rent._units() * rent._unit >= rent.price
    assert rent._units() <= -(-rent.price // rent._unit)
    rent.pay(6_000_000)
    assert rent._units() <= -(-rent.price // rent._unit)


def test_threads_paying_one_merge_rent_at_once_keep_its_count(tmp_path, monkeypatch):
    """Two threads paying at once both wrote the tally and both took it off what was
    pending, which went negative: the next payment raised ValueError (bytes(-n)) in a
    read (a stranger's 32 threads on one handle)."""
    rent = lateseq._derived.MergeRent(tmp_path, "p00000-x", 10**9)
    real_write = os.write

    def slow_write(fd, data):  # the GIL let go mid-payment, as a file write does
        time.sleep(0.001)
        return real_write(fd, data)

    monkeypatch.setattr(lateseq._derived.os, "write", slow_write)
    paid = 10**9 // 64  # each payment writes the tally
    threads = [threading.Thread(target=lambda: [rent.pay(paid) for _ in range(8)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rent._units() * rent._unit + rent._pending == 64 * paid and rent.settled


def test_a_copy_gone_before_it_was_looked_at_was_not_written_in_place(store):
    """A copy cleaned up between its map and its first stat has no identity: a file back at
    its path raised TypeError in the read's check for writes in place (a stranger's)."""
    handle = lateseq.open(store.path)
    segment = handle.segments(0)[0]
    segment.identity = None
    assert segment.path.exists() and not segment.overwritten() and segment.changed()


def test_cleanup_removes_the_merged_copies_of_retired_versions_whose_segments_stay(store):
    """Each uncompacted version's merged copy holds every earlier day's events as well:
    their segments stay (the latest version still uses them), but only a kept version can
    read such a copy again, so the others go: kept, they added up to 14x the store. So do
    the filtered copies made of them (a stranger's: they stayed, growing with days²)."""
    rng = np.random.default_rng(11)
    versions = [store]
    for day in range(3):
        versions.append(versions[-1].commit(events(rng, 100, 3000 + day * 500)))
    for version in versions:  # a day's training jobs through each version's merged copy, one filtered
        lateseq.open(version.path, version.version, merged_reads=True).prefault(["item"])
        read(store, "filtered", lateseq.open(version.path, version.version, merged_reads=True))
    partitions = 2
    assert len(copy_files(store, ".json")) == 2 * partitions * len(versions)  # merged, and filtered of those
    latest = versions[-1]
    latest.tag("kept", versions[1].version)
    latest.cleanup(before=latest.version, grace_s=0)
    assert len(copy_files(store, ".json")) == 2 * partitions * 2  # the latest's and the tagged version's
    assert read(latest, "filtered", lateseq.open(latest.path, merged_reads=True)) == expected(latest, "filtered")
    for handle in (lateseq.open(latest.path, "kept", merged_reads=True), lateseq.open(latest.path, merged_reads=True)):
        files = set(copy_files(store))
        handle.prefault(["item"])
        assert set(copy_files(store)) == files  # read through the copies kept: nothing built again
    assert read(latest, "merged") == expected(latest, "merged")


@pytest.mark.parametrize("kind", ["merged", "filtered"])
def test_a_copy_is_not_kept_when_what_it_was_built_from_was_written_in_place_meanwhile(store, monkeypatch, kind):
    """A decoded copy written in place (by another program) after its column was checked,
    while a merged or filtered copy was built from it: the copy got digests of the damaged
    bytes, and every reader in any process read them until it was deleted (a stranger's:
    29 of 29 rows). What it was built from is checked again before the copy is kept, and
    a copy built from bytes written meanwhile is built again; a build written into every
    time is an error, and keeps nothing."""
    want = expected(store, kind)
    real, hit = lateseq._segments.Segment._verify, []

    def checked_then_written(segment, name):
        real(segment, name)
        if name in ("item", "rating") and DERIVED_DIR not in str(segment.path) and segment.path not in hit:
            hit.append(segment.path)
            edit_in_place(segment.path, 0.5, 0x01)

    monkeypatch.setattr(lateseq._segments.Segment, "_verify", checked_then_written)
    assert read(store, kind, lateseq.open(store.path, merged_reads=kind == "merged")) == want  # built again
    assert hit
    monkeypatch.undo()
    for path in copy_files(store, ".json"):  # what was kept: removed, and made again written into every time
        path.unlink()
    build = lateseq._derived.write_unpacked_segment

    def written_during_every_build(*args):
        for path in store.cache_dir.glob("[!.]*.arrow"):  # the decoded copies' columns, all of them
            if not path.name.endswith(".index.arrow"):
                with open(path, "r+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(size // 8)
                    data = bytes(b ^ 0xFF for b in f.read(size * 3 // 4))
                    f.seek(size // 8)
                    f.write(data)
        return build(*args)

    monkeypatch.setattr(lateseq._derived, "write_unpacked_segment", written_during_every_build)
    with pytest.raises(lateseq.StoreError, match="was built from it: not kept|another process writing into the read"):
        read(store, kind, lateseq.open(store.path, merged_reads=kind == "merged"))
    assert not copy_files(store, ".json")  # nothing kept
    monkeypatch.undo()
    assert read(store, kind) == want  # built again from the copies, checked and decoded anew


@pytest.mark.parametrize("kind", ["merged", "filtered"])
def test_a_copy_is_built_whatever_other_segments_of_the_process_decode_meanwhile(store, monkeypatch, kind):
    """A build was judged by a count of every segment this process decoded again: another
    store's damaged copy, decoded again while this one was built, failed every attempt
    ("not kept"), and "auto" gave up the partition's merged copy for good."""
    want = expected(store, kind)
    build = lateseq._derived.write_unpacked_segment

    def another_store_decodes_again(*args):
        lateseq._segments.REMAPS[0] += 1
        return build(*args)

    monkeypatch.setattr(lateseq._derived, "write_unpacked_segment", another_store_decodes_again)
    assert read(store, kind) == want
    assert copy_files(store, ".json")  # built and kept


def test_a_recheck_of_a_sound_copy_keeps_what_it_checked(store):
    """A failed build checks what it read again. Clearing the columns checked (to check them
    at their next use) left another thread's build, from the same segment, with nothing to
    check: it kept a copy of bytes written meanwhile (a stranger's race). A recheck checks
    them now, and decodes the copy again only where one fails."""
    handle = lateseq.open(store.path, merged_reads=False)
    read(store, "filtered", handle)
    segment = handle.segments(0)[0]
    checked, remaps = set(segment._verified), segment.remaps
    segment.recheck()
    assert checked and segment._verified == checked and segment.remaps == remaps
    edit_in_place(segment.path, 0.5, 0x01)
    segment.recheck()
    assert segment.remaps == remaps + 1 and segment.intact()


def test_cleanup_leaves_a_copy_being_built_alone(store, monkeypatch):
    """A cleanup took a builder's temporary sidecar (``.tmp-*.json``, not yet renamed) for
    the sidecar of a retired version's merged copy, and deleted it: the build failed, and
    the reader went on segment by segment, its merge wasted (a flaky concurrency round)."""
    latest = store.commit(events(np.random.default_rng(12), 100, 9000))
    real = lateseq._derived.written_in_place

    @contextlib.contextmanager
    def cleanup_meanwhile(path):
        with real(path) as tmp:
            yield tmp
            assert tmp.exists()
            latest.cleanup(before=latest.version, grace_s=0)  # another process, just before the rename

    monkeypatch.setattr(lateseq._derived, "written_in_place", cleanup_meanwhile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no merged copy of partition ...: reading its segments one by one"
        lateseq.open(latest.path, merged_reads=True).prefault(["item"])
    assert len(copy_files(store, ".json")) == 2  # a copy per partition, built and kept
    assert read(latest, "merged") == expected(latest, "merged")


@pytest.mark.parametrize("merged_reads", [True, False, "auto"])
def test_a_handle_keeps_reading_what_it_mapped_after_its_version_is_cleaned_up(store, merged_reads):
    """``Store.cleanup``'s promise: a handle on a retired version keeps the segments it has
    mapped. A trainer reading one version while another process compacts and cleans up
    (decoded copies of a retired version are old enough for the default grace) raised
    VersionNotFound on its next batch: the deleted files looked changed, and were looked
    for again. Under "auto", reads that paid for a merged copy after the cleanup built it
    from the segments reopened from disk, gone (a stranger's), not from those it mapped."""
    handle = lateseq.open(store.path, merged_reads=merged_reads)
    want = read(store, "merged", handle)
    newer = store.compact()
    newer.cleanup(before=newer.version, grace_s=0)
    with pytest.raises(lateseq.VersionNotFound):
        lateseq.open(store.path, version=store.version)
    for _ in range(2 if merged_reads != "auto" else AUTO_MERGE_RENT + 2):  # "auto": until its copies are built
        assert read(store, "merged", handle) == want == expected(newer, "merged")
    assert handle._merged == (set(handle._by_partition) if merged_reads is not False else set())


def removed_files_mapped(store: lateseq.Store) -> list[str]:
    """The files of ``store`` and its read cache that this process maps though they were removed."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-2] for line in maps if line.rstrip().endswith("(deleted)")
                       and (str(store.path) in line or str(store.cache_dir) in line)})


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("kind", KINDS)
def test_a_process_moving_to_new_versions_lets_go_of_the_copies_cleanup_removed(make_store, monkeypatch, kind):
    """A streaming trainer (or an ingest service) moves from version to version on one
    handle while another process compacts and cleans up: the removed copies stayed mapped
    by its segment cache, up to 4,096 of them with their room, for the process's life (a
    stranger's cleanup on a full disk freed nothing while such a process lived). A handle
    still on a retired version keeps what it mapped (the test above)."""
    monkeypatch.setattr(lateseq._segments, "SWEEP_S", 0.0)  # the caches look at every opening
    rng = np.random.default_rng(4)
    writer = make_store({"item": "int64", "rating": "int8"}, partitions=2)
    path = writer.path
    for day in range(4):
        writer = writer.commit(events(rng, 150, day * 500))
    requests = pa.table({"user_id": np.arange(1, 41, dtype=np.int64), "request_ts": np.full(40, 10**6)})
    LOG[path] = lateseq.log_examples(writer, requests)
    reader = lateseq.open(path, merged_reads=kind == "merged")
    read(writer, kind, reader)
    writer = writer.compact().commit(events(rng, 100, 4000))  # another process: a segment cache of its own
    writer.cleanup(before=writer.version, grace_s=0)
    LOG[path] = lateseq.log_examples(writer, requests)
    reader = reader.latest()
    assert read(writer, kind, reader) == expected(writer, kind)  # opens the new version's segments
    assert removed_files_mapped(writer) == []
    del reader
    gc.collect()
    writer = writer.compact()
    writer.cleanup(before=writer.version, grace_s=0)
    assert removed_files_mapped(writer) == []  # the cleaning process let go of what it removed, at once


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_handles_of_one_process_share_each_filtered_copy(store):
    """Each handle (a thread's own, or a new version's) mapped and checked every filtered
    copy it read once more: 16 threads reading through 4 filters while versions came and
    went grew to 46,000 maps in two minutes (a stranger's). A process maps each copy once."""
    handle = lateseq.open(store.path, merged_reads=False)
    handles = [handle, *(handle.latest() for _ in range(3)), handle.checkout(store.version)]
    want = expected(store, "filtered")
    for each in handles:
        assert read(store, "filtered", each) == want

    def maps_per_copy() -> list[int]:
        with open("/proc/self/maps") as maps:
            mapped = [line.split()[-1] for line in maps if str(store.cache_dir / DERIVED_DIR) in line]
        return [mapped.count(str(path)) for path in copy_files(store, ".arrow")]

    assert maps_per_copy() == [1] * len(store.segment_infos)


def partition_copies(store: lateseq.Store) -> set[int]:
    """The partitions whose merged copy is in the read cache (copies are named p{partition}-...)."""
    built = (store.cache_dir / DERIVED_DIR).is_dir()
    return {int(p.name[1:6]) for p in copy_files(store, ".json")} if built else set()


def test_cleanup_removes_a_copy_whose_builder_died_before_its_sidecar(store):
    """A build killed after its copy was renamed in but before its sidecar: cleanup finds
    copies by their sidecars, so the orphan is found by name (once old enough not to be a
    live build's)."""
    read(store, "merged")
    orphans = []
    for sidecar in copy_files(store, ".json"):
        sidecar.unlink()
        orphans += [p for p in sidecar.parent.glob(sidecar.name[:-len(".json")] + ".*")]
    assert orphans
    for path in orphans:
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    store.cleanup(before=store.version, grace_s=0)
    assert not [p for p in orphans if p.exists()]
    assert read(store, "merged") == expected(store, "merged")  # built again


def test_auto_reads_segment_by_segment_until_the_reads_paid_for_the_copy(store):
    """"auto" rents before it buys: a partition is read segment by segment until the events
    read from it reach AUTO_MERGE_RENT times the events it holds, then through its merged
    copy (built by the next read), with the same output all along; False never merges."""
    want = expected(store, "merged")
    builds_at = passes_to_build(store, want)
    auto, never = lateseq.open(store.path), lateseq.open(store.path, merged_reads=False)
    for n in range(1, max(builds_at.values()) + 1):
        assert read(store, "merged", auto) == want
        assert partition_copies(store) == {p for p in (0, 1) if builds_at[p] <= n}, f"after pass {n}"
    for _ in range(3):
        assert read(store, "merged", never) == want
    assert read(store, "merged", auto) == want


def passes_to_build(store: lateseq.Store, want: list) -> dict[int, int]:
    """Per partition, the read of the fixture's log (1, 2, ...) at whose start the reads
    before it have paid for its merged copy, so "auto" builds it then. Only examples
    whose events lie in more than one segment (commit) pay: those of a commit its
    version sees where its user has an event before the request."""
    held = {p: sum(i.rows for i in store.segment_infos if i.partition == p) for p in (0, 1)}
    firsts = []  # per commit: its version, and each of its users' first event time
    for version, events in COMMITS[store.path]:
        first = events.group_by("user_id").aggregate([("ts", "min")])
        firsts.append((version, dict(zip(first["user_id"].to_pylist(), first["ts_min"].to_pylist(), strict=True))))
    log = LOG[store.path]
    read_per_pass = {0: 0, 1: 0}
    for history, user, request_ts, version in zip(want, *(log.column(c).to_pylist() for c in (
            "user_id", "request_ts", "uih_version")), strict=True):
        if sum(version >= v and first.get(user, request_ts) < request_ts for v, first in firsts) > 1:
            read_per_pass[int(partition_of(np.array([user]), 2)[0])] += len(history)
    return {p: -(-AUTO_MERGE_RENT * held[p] // read_per_pass[p]) + 1 for p in (0, 1)}


def test_auto_builds_no_copy_for_pointers_each_in_one_segment(make_store):
    """Pointers whose events lie in one segment (here a compacted past, with a new day
    after every request) read as through a merged copy: however often read, they pay
    nothing towards one (a tiered store's are most such)."""
    s = make_store({"item": "int64", "rating": "int8"}, partitions=2)
    rng = np.random.default_rng(5)
    for day in range(3):
        s = s.commit(events(rng, 150, day * 500))
    s = s.compact()
    requests = pa.table({"user_id": np.arange(1, 41, dtype=np.int64), "request_ts": rng.integers(1, 2000, 40)})
    s = s.commit(events(rng, 150, 5000))
    log = lateseq.log_examples(s, requests)
    want = rows(lateseq.materialize(lateseq.open(s.path, merged_reads=False), log, PROJECTIONS["merged"]))
    auto = lateseq.open(s.path)
    passes = -(-AUTO_MERGE_RENT * s.num_events // sum(map(len, want))) + 2  # paid for twice over, were they counted
    for _ in range(passes):
        assert rows(lateseq.materialize(auto, log, PROJECTIONS["merged"])) == want
    assert len(s.segment_infos) == 4 and partition_copies(s) == set()


def test_auto_counts_what_every_reader_on_the_host_paid(store):
    """A loader's workers (here two handles taking turns) pay the same rent: the copy is
    built once their reads together paid for it (a handle learns of the other's reads
    when it next records its own, so up to one read late), not when each one's did."""
    want = expected(store, "merged")
    builds_at = passes_to_build(store, want)
    assert min(builds_at.values()) > 3
    workers = [lateseq.open(store.path), pickle.loads(pickle.dumps(lateseq.open(store.path)))]
    for n in range(1, max(builds_at.values()) + 2):
        assert read(store, "merged", workers[n % 2]) == want
        built = partition_copies(store)
        for p, at in builds_at.items():
            assert (p in built) if n > at else (p not in built) if n < at else True, f"after read {n}"


@pytest.mark.parametrize("enough", [True, False])
@pytest.mark.parametrize("loader", ["iter_batches", "materialize_log", "ray"])
def test_a_loaders_pass_builds_the_copy_once_the_rest_of_it_would_pay_for_it(store, monkeypatch, tmp_path, loader,
                                                                             enough):
    """A loader's pass (over the fixture's log ``k`` times, a read each) says how much it
    has still to read: where the rest would pay for a partition's copy at the rate its
    reads paid, "auto" builds the copy for the next read once that rate is trusted, not
    once the reads have paid (``builds_at``); where the whole pass would not pay for it,
    none."""
    want = expected(store, "merged")
    builds_at = passes_to_build(store, want)
    assert min(builds_at.values()) > 4
    log = LOG[store.path]
    k = max(builds_at.values()) - 1 if enough else min(builds_at.values()) - 2  # reads of the log in the pass
    monkeypatch.setattr(lateseq._loader, "READ_POINTERS", len(log))  # a read per copy of the log
    built = []  # the copies on disk after each read
    if loader == "iter_batches":
        got = []
        for _, batch in lateseq.iter_batches(lateseq.open(store.path), pa.concat_tables([log] * k),
                                             PROJECTIONS["merged"], batch_size=len(log), columns=[]):
            got += rows(batch)
            built.append(partition_copies(store))
    elif loader == "ray":  # an actor, told its share of the pass
        from lateseq.ray import ROW, Materializer
        actor = Materializer(lateseq.open(store.path), PROJECTIONS["merged"], [], batch_size=len(log),
                             pass_rows=k * len(log))
        examples = pa.concat_tables([log] * k)
        got = []
        for out in actor(examples.append_column(ROW, pa.array(np.arange(examples.num_rows)))):
            got += [list(zip(*(row[c] for c in COLUMNS), strict=True)) for row in out.to_pylist()]
            built.append(partition_copies(store))
    else:
        lateseq.materialize_log(lateseq.open(store.path), pa.concat_tables([log] * k), PROJECTIONS["merged"],
                                tmp_path / "out.parquet", batch_size=len(log),
                                progress=lambda _: built.append(partition_copies(store)))
        got = [list(zip(*(row[c] for c in COLUMNS), strict=True))
               for row in pq.read_table(tmp_path / "out.parquet").to_pylist()]
    assert got == want * k
    # the pass trusts the rate of its reads once they paid 1/ReadPass.TRUSTED of the price
    trusted_after = {p: -(-(at - 1) // lateseq._derived.ReadPass.TRUSTED) for p, at in builds_at.items()}
    assert built == [{p for p in (0, 1) if enough and r > trusted_after[p]} for r in range(1, k + 1)]
    assert not enough or max(trusted_after.values()) + 1 < min(builds_at.values())  # before the rent was paid


def test_a_pass_given_up_after_its_first_read_builds_nothing_for_the_reads_after_it(store, monkeypatch):
    """What a pass foresaw is its own: given up after a read that foresaw the copies, the
    handle's later reads outside it, and a new pass's first read, read segment by segment
    (as the rent alone decides)."""
    want = expected(store, "merged")
    builds_at = passes_to_build(store, want)
    assert min(builds_at.values()) > 4
    log = LOG[store.path]
    monkeypatch.setattr(lateseq._loader, "READ_POINTERS", len(log))
    auto = lateseq.open(store.path)
    batches = lateseq.iter_batches(auto, pa.concat_tables([log] * max(builds_at.values())), PROJECTIONS["merged"],
                                   batch_size=len(log), columns=[])
    assert rows(next(batches)[1]) == want  # the read that foresaw both copies
    batches.close()
    assert read(store, "merged", auto) == want
    _, again = next(lateseq.iter_batches(auto, log, PROJECTIONS["merged"], batch_size=len(log), columns=[]))
    assert rows(again) == want and partition_copies(store) == set()  # three reads paid for neither copy


@pytest.mark.parametrize("damage", ["huge", "a folder", "a link", "flipped"])
def test_a_damaged_tally_moves_when_auto_merges_never_what_it_reads(store, damage, tmp_path):
    """Only a tally's size counts: flipped bytes change nothing, a huge one merges at once,
    one that cannot be read or written (a folder; a link, never followed: a read must not
    write elsewhere) leaves each reader counting its own reads."""
    want = expected(store, "merged")
    assert min(passes_to_build(store, want).values()) > 4
    assert read(store, "merged", lateseq.open(store.path)) == want  # leaves a tally per partition
    tallies = sorted((store.cache_dir / DERIVED_DIR).glob(".tmp-rent-*"))
    assert len(tallies) == 2
    for tally in tallies:
        if damage == "huge":
            os.truncate(tally, 1 << 40)  # sparse: paid many times over
        elif damage == "a folder":
            tally.unlink()
            tally.mkdir()
        elif damage == "a link":
            elsewhere = tmp_path / f"someone's {tally.name}"
            elsewhere.write_bytes(bytes(1 << 20))  # big enough to count as paid, if it were counted
            tally.unlink()
            tally.symlink_to(elsewhere)
        else:
            edit_in_place(tally, 0.5, 0xFF)
    handle = lateseq.open(store.path)
    for _ in range(3):
        assert read(store, "merged", handle) == want
    if damage not in ("a folder", "a link"):
        assert partition_copies(store) == ({0, 1} if damage == "huge" else set())
    if damage == "a link":
        assert all(p.read_bytes() == bytes(1 << 20) for p in tmp_path.glob("someone's *"))
        assert partition_copies(store) == set()


def test_auto_reads_segment_by_segment_where_no_copy_can_be_built(store):
    """A full or unwritable read cache (here: a file where the copies' folder goes) costs
    "auto" its merged copies, with a warning, never a read; True says so with an error."""
    want = expected(store, "merged")
    (store.cache_dir / DERIVED_DIR).write_bytes(b"")
    handle = lateseq.open(store.path)
    with pytest.warns(RuntimeWarning, match="no merged copy of partition") as warned:
        handle.prefault(list(COLUMNS))  # wants the copies at once
    assert len(warned) == 2  # once per partition
    for _ in range(max(passes_to_build(store, want).values()) + 1):  # paid many times over: not tried again
        assert read(store, "merged", handle) == want
    handle.prefault(list(COLUMNS))  # warming up again: the copies it gave up on stay given up (it raised KeyError)
    assert read(store, "merged", handle) == want
    with pytest.raises(lateseq.StoreError, match="read cache"):
        read(store, "merged", lateseq.open(store.path, merged_reads=True))


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_read_cache_names_the_file_and_keeps_no_temporaries(store, kind):
    """A merged copy that cannot be written fails with an error naming the file and leaves
    no partly written temporary behind (each try left one, filling the disk further);
    "auto" falls back to the segments, as before. A filtered copy, which no read goes
    without, is held in memory by the process reading it (it failed, s40F), told once."""
    want = expected(store, kind)
    lateseq.open(store.path, merged_reads=False).prefault(list(COLUMNS))  # the decoded copies fit
    for attempt in range(3):
        with files_at_most(512):
            if kind == "merged":
                with pytest.warns(RuntimeWarning, match="no merged copy"):
                    auto = lateseq.open(store.path)
                    auto.prefault(list(COLUMNS))  # wants its copies now
                assert read(store, kind, auto) == want
                with pytest.raises(lateseq.StoreError, match=rf"cannot write {store.cache_dir / DERIVED_DIR}/\S+ "):
                    read(store, kind)
            else:
                with warnings.catch_warnings(record=True) as told:
                    warnings.simplefilter("always")
                    assert read(store, kind) == want
                assert [re.search(rf"cannot write {store.cache_dir / DERIVED_DIR}/\S+ .*holds it in memory",
                                  str(w.message)) is not None for w in told] == [True] * (attempt == 0)
                assert not list((store.cache_dir / DERIVED_DIR).glob("*.json"))  # none built
        assert not [p.name for p in (store.cache_dir / DERIVED_DIR).iterdir() if p.name.startswith(".tmp-")
                    and not p.name.startswith((".tmp-build-", ".tmp-rent-"))]  # the locks and tallies stay
    assert read(store, kind) == want  # room again: built, exact


def test_a_filtered_copy_whose_disk_fills_at_its_last_file_is_read_from_memory(store, monkeypatch):
    """The disk filling as a filtered copy's sidecar (its last file) was written failed the
    read (s41A read it in ``_derive``): the copy is held in memory like one that found no
    room at all, its files removed (they hold room the disk lacks), told once."""
    want = expected(store, "filtered")
    real = lateseq._derived.written_in_place

    def sidecar_fails(path):
        if path.suffix == ".json":
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise lateseq._format.write_failed(path, full) from full
        return real(path)

    monkeypatch.setattr(lateseq._derived, "written_in_place", sidecar_fails)
    with pytest.warns(RuntimeWarning, match=r"cannot write \S+\.json \(No space left on device\).*holds it in memory"):
        assert read(store, "filtered") == want
    assert not [p for p in (store.cache_dir / DERIVED_DIR).iterdir() if not p.name.startswith(".tmp-")]
    monkeypatch.undo()
    assert read(store, "filtered") == want  # room again: built
    assert copy_files(store, ".json")


def test_auto_reads_through_a_copy_another_reader_built(store):
    want = expected(store, "merged")
    assert read(store, "merged", lateseq.open(store.path, merged_reads=True)) == want
    decoded = sorted(store.cache_dir.glob("*.arrow"))
    for path in decoded:  # a segment-by-segment read would decode them again
        path.unlink()
    assert read(store, "merged", lateseq.open(store.path)) == want
    assert not any(path.exists() for path in decoded)
    assert read(store, "merged", lateseq.open(store.path, merged_reads=False)) == want
    assert all(path.exists() for path in decoded)


def next_day(store: lateseq.Store, seed: int) -> lateseq.Store:
    """``store`` with a day's commit more (times overlapping the last days': late events
    beside the older segments), and pointers into it added to the fixture's log."""
    rng = np.random.default_rng(seed)
    today = store.commit(events(rng, 150, 2600))
    requests = pa.table({"user_id": np.arange(1, 41, dtype=np.int64), "request_ts": rng.integers(0, 3600, 40)})
    LOG[store.path] = pa.concat_tables([LOG[store.path], lateseq.log_examples(today, requests)])
    return today


def base_copies(handle: lateseq.Store) -> list[list[bool]]:
    """Per partition, which segments of the handle's view are copies in its read cache."""
    return [[segment.path.parent.name == DERIVED_DIR for segment in handle._view(p).segments] for p in (0, 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_auto_reads_a_new_version_through_the_copy_the_version_before_built(store, kind):
    """A day's commit after a training run: the new version's "auto" handle reads the older
    segments through the merged copy that run built, today's segment beside it, from its
    first read and without building anything (read segment by segment until its own copy
    was paid for, a first epoch of 30 daily segments ran 0.48-0.69x as fast as a compacted
    store's, s57); the output is a read without copies."""
    lateseq.open(store.path, merged_reads=True).prefault(list(COLUMNS[1:]))
    today = next_day(store, 7)
    want = expected(today, kind)
    built = copy_files(store, ".json")
    handle = lateseq.open(today.path)
    assert read(today, kind, handle) == want
    assert base_copies(handle) == [[True, False]] * 2
    if kind == "merged":
        assert copy_files(store, ".json") == built
    # two days on, the copy of four days' segments still serves, with two beside it
    later = next_day(today, 8)
    handle = lateseq.open(later.path)
    assert read(later, kind, handle) == expected(later, kind)
    assert base_copies(handle) == [[True, False, False]] * 2
    # never segment by segment where the handle was told so, nor through a copy of other segments
    assert not any(map(any, base_copies(lateseq.open(later.path, merged_reads=False))))
    assert not any(map(any, base_copies(lateseq.open(later.compact().path))))


def test_a_damaged_copy_of_the_version_before_is_passed_over_not_built_again(store):
    """The copy a new version would read its oldest segments through is another version's:
    damaged, the new version reads segment by segment (and pays towards its own copy); it
    is not built again for it."""
    lateseq.open(store.path, merged_reads=True).prefault(list(COLUMNS[1:]))
    today = next_day(store, 9)
    want = expected(today, "merged")
    for path in copy_files(store, ".arrow"):
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2] ^= 0x10
        path.write_bytes(bytes(damaged))
    damaged = {path: path.read_bytes() for path in copy_files(store)}
    handle = lateseq.open(today.path)
    assert read(today, "merged", handle) == want
    assert base_copies(handle) == [[False] * 7] * 2
    assert {path: path.read_bytes() for path in copy_files(store)} == damaged


def copy_names(handle: lateseq.Store) -> dict[int, str]:
    """Per partition, the name of the merged copy of the handle's version's segments."""
    return {p: lateseq._derived.merged_name(p, [i.name for i in handle.segment_infos if i.partition == p])
            for p in (0, 1)}


@pytest.mark.parametrize("damaged", [".arrow", ".json"])
def test_a_damaged_copy_of_the_version_before_gives_way_to_an_older_one(store, damaged):
    """Copies of two earlier versions on the host, the newer damaged: the read goes through
    the older (it went segment by segment, s57A), and cleanup keeps the longest copy whose
    sidecar reads (the older one where the newer's sidecar is damaged)."""
    older, newer = (lateseq.open(store.path, store.version - k, merged_reads=True) for k in (3, 1))
    for handle in (older, newer):
        handle.prefault([])
    today = next_day(store, 11)
    for name in copy_names(newer).values():
        path = store.cache_dir / DERIVED_DIR / f"{name}{damaged}"
        path.write_bytes(path.read_bytes()[:-40] + bytes(40))
    handle = lateseq.open(today.path)
    assert read(today, "merged", handle) == expected(today, "merged")
    assert base_copies(handle) == [[True] + [False] * 4] * 2  # three segments in the copy, four beside it
    today.cleanup(before=today.version, grace_s=0)
    kept = copy_names(older) if damaged == ".json" else copy_names(newer)
    assert {p.name.split(".")[0] for p in copy_files(store, ".json")} == set(kept.values())
    assert read(today, "merged") == expected(today, "merged")


def test_the_names_of_a_partitions_runs_of_segments_are_its_merged_copies_names():
    rng = np.random.default_rng(4)
    segments = [f"p{7:05d}-{rng.bytes(16).hex()}" for _ in range(40)]
    names = lateseq._derived._merged_prefix_names(7, segments)
    assert names[1:] == [lateseq._derived.merged_name(7, segments[:k]) for k in range(1, 41)]


def test_cleanup_keeps_the_copy_a_kept_version_reads_through_until_it_has_its_own(store):
    """A retired version's merged copy goes at cleanup, unless a kept version without a
    copy of its own reads its oldest segments through it (yesterday's, after today's
    commit): it goes once that version has its own."""
    lateseq.open(store.path, merged_reads=True).prefault(list(COLUMNS[1:]))
    yesterday = set(copy_files(store))
    today = next_day(store, 10)
    today.cleanup(before=today.version, grace_s=0)
    assert set(copy_files(store)) == yesterday
    handle = lateseq.open(today.path)
    assert read(today, "merged", handle) == expected(today, "merged")
    assert base_copies(handle) == [[True, False]] * 2
    lateseq.open(today.path, merged_reads=True).prefault(list(COLUMNS[1:]))
    today.cleanup(before=today.version, grace_s=0)
    assert not yesterday & set(copy_files(store))
    assert read(today, "merged") == expected(today, "merged")


def test_prefault_builds_the_copies_an_auto_handle_reads(store):
    handle = lateseq.open(store.path)
    handle.prefault(list(COLUMNS))
    assert partition_copies(store) == {0, 1}
    assert read(store, "merged", handle) == expected(store, "merged")
    lateseq.open(store.path, merged_reads=False).prefault(list(COLUMNS))


@pytest.mark.parametrize("kind", KINDS)
def test_built_copies_are_read_from_a_cache_this_process_cannot_write(store, monkeypatch, kind):
    """A read-only store (its cache in it) or cache_dir refused filtered and merged reads
    whose copies were all built: a build lock was taken before each was opened (s34B)."""
    want = expected(store, kind)
    assert read(store, kind) == want

    def read_only(folder, name):
        raise lateseq.StoreError(f"cannot create the read cache {folder} (Read-only file system at {name})")

    monkeypatch.setattr(lateseq._derived, "cache_lock", read_only)
    assert read(store, kind) == want
