"""Merged reads: a version of many segments read through a merged copy in the read cache.

The copy is derived data on a reader's disk, so it gets the attacks a read cache gets:
flipped bytes in each of its files, a file replaced or edited under an open handle,
builders racing, cleanup after the versions it came from are retired. In every case the
output must equal the segment-by-segment read (itself checked against the oracle in
test_materialize, where merged handles run every scenario too).
"""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pyarrow as pa
import pytest

import lateseq
from lateseq._merge import MERGED_DIR

PROJECTION = lateseq.Projection(12, ("ts", "item", "rating"))
LOG: dict = {}  # store path -> its example log


def events(rng: np.random.Generator, n: int, ts_low: int) -> pa.Table:
    return pa.table({"user_id": rng.integers(1, 40, n), "ts": rng.integers(ts_low, ts_low + 1000, n),
                     "item": rng.integers(0, 10**6, n), "rating": pa.array(rng.integers(0, 5, n), pa.int8())})


@pytest.fixture
def store(make_store) -> lateseq.Store:
    """Daily commits with late events over two partitions, and pointers into each version."""
    s = make_store({"item": "int64", "rating": "int8"}, partitions=2)
    rng = np.random.default_rng(3)
    logs = []
    for day in range(6):
        s = s.commit(events(rng, 150, day * 500))  # overlapping time ranges: some events are late
        requests = pa.table({"user_id": np.arange(1, 41, dtype=np.int64),
                             "request_ts": rng.integers(0, day * 500 + 1000, 40)})
        logs.append(lateseq.log_examples(s, requests))
    LOG[s.path] = pa.concat_tables(logs)
    return s


def read(store: lateseq.Store, merged: bool, **options) -> lateseq.JaggedBatch:
    """Every example of the fixture's log, from a new handle on the latest version."""
    return lateseq.materialize(lateseq.open(store.path, merged_reads=merged, **options), LOG[store.path],
                               PROJECTION)


def same(a: lateseq.JaggedBatch, b: lateseq.JaggedBatch) -> bool:
    return not a.rows_differ(b).any()


def merged_files(store: lateseq.Store) -> list:
    return sorted(p for p in (store.cache_dir / MERGED_DIR).iterdir() if not p.name.startswith(".tmp-"))


def test_merged_reads_equal_segment_reads_and_build_one_copy_per_partition(store):
    expected = read(store, merged=False)
    assert same(read(store, merged=True), expected)
    sidecars = [p for p in merged_files(store) if p.suffix == ".json"]
    assert len(sidecars) == 2  # one per partition
    before = {p: p.stat().st_mtime_ns for p in merged_files(store)}
    assert same(read(store, merged=True), expected)  # a new handle maps the copies, builds nothing
    assert {p: p.stat().st_mtime_ns for p in merged_files(store)} == before


@pytest.mark.parametrize("suffix", [".arrow", ".index.arrow", ".json"])
def test_every_damaged_merged_file_is_built_again(store, suffix):
    expected = read(store, merged=False)
    read(store, merged=True)
    rng = np.random.default_rng(1)
    for path in [p for p in merged_files(store) if p.name.endswith(suffix) and
                 (suffix != ".arrow" or not p.name.endswith(".index.arrow"))]:
        pristine = path.read_bytes()
        for at in rng.integers(0, len(pristine), 12):
            damaged = bytearray(pristine)
            damaged[int(at)] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(damaged))
            assert same(read(store, merged=True), expected), f"flip at {at} of {path.name}"
        path.unlink()
        assert same(read(store, merged=True), expected), f"{path.name} missing"
        assert path.exists()


def test_a_merged_copy_changed_under_an_open_handle_is_checked_again(store):
    """lateseq only replaces files, but another program may write into the cache in place:
    the changed file (new mtime) is opened and checked again before the next batch."""
    expected = read(store, merged=False)
    handle = lateseq.open(store.path, merged_reads=True)
    assert same(lateseq.materialize(handle, LOG[store.path], PROJECTION), expected)
    for path in [p for p in merged_files(store) if p.name.endswith(".arrow") and not p.name.endswith(".index.arrow")]:
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            data[len(data) // 2] ^= 0xFF
            f.seek(0)
            f.write(data)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert same(lateseq.materialize(handle, LOG[store.path], PROJECTION), expected)


def test_racing_builders_agree(store):
    expected = read(store, merged=False)
    results: list = [None] * 4

    def work(k: int) -> None:
        results[k] = read(store, merged=True)  # each thread its own handle and open files

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and same(r, expected) for r in results)
    assert len([p for p in merged_files(store) if p.suffix == ".json"]) == 2


def test_a_merged_read_checks_the_segments_it_merges(store, tmp_path):
    info = store.segment_infos[0]
    data = bytearray((store.path / "segments" / f"{info.name}.parquet").read_bytes())
    data[60] ^= 0x10
    (store.path / "segments" / f"{info.name}.parquet").write_bytes(bytes(data))
    with pytest.raises(lateseq.StoreError, match=info.name):
        read(store, merged=True, cache_dir=tmp_path / "empty-cache")  # nothing decoded: the durable files are read
    assert not list((tmp_path / "empty-cache" / MERGED_DIR).glob("*.json"))


def test_cleanup_removes_copies_of_retired_versions_only(store):
    read(store, merged=True)
    old = set(merged_files(store))
    compacted = store.compact()
    newer = compacted.commit(events(np.random.default_rng(9), 100, 0))
    read(newer, merged=True)
    new = set(merged_files(store)) - old
    assert new
    newer.cleanup(before=newer.version, grace_s=0)
    assert set(merged_files(store)) == new  # the retired version's copies went, the latest's stayed
    assert same(read(newer, merged=True), read(newer, merged=False))


def test_the_setting_travels_with_the_handle_and_is_checked(store):
    handle = lateseq.open(store.path, merged_reads=True)
    assert pickle.loads(pickle.dumps(handle)).merged_reads
    assert handle.checkout(2).merged_reads and handle.latest().merged_reads
    assert "merged_reads=True" in repr(handle)
    with pytest.raises(lateseq.SchemaError, match="merged_reads"):
        lateseq.open(store.path, merged_reads="yes")
