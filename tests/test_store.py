"""The store: versions, tags, handles, pickling, compaction, dedup and commit conflicts."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import threading
import time
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from conftest import files_at_most, snapshot
from oracle import Oracle, Request, assert_batch_equal, oracle_requests, referenced_files

import lateseq
import lateseq._events
import lateseq._format
import lateseq._merge
import lateseq._segments
import lateseq._store
import lateseq._versions
import lateseq.audit
from lateseq._store import _tiered_runs
from lateseq.cli import app


def events(users, ts, items, *, rating: bool = False) -> pa.Table:
    table = pa.table({"user_id": pa.array(users, pa.int64()), "ts": pa.array(ts, pa.int64()),
                      "item": pa.array(items, pa.int64())})
    return table.append_column("rating", pa.array([0] * len(users), pa.int8())) if rating else table


def segment_files(store: lateseq.Store) -> set[str]:
    return {p.name for p in (store.path / "segments").iterdir()}




# ---------------------------------------------------------------------- versions


def test_versions_number_from_one_and_describe_each_version(make_store):
    store = make_store(partitions=2)
    assert store.version == 0 and store.versions() == [] and store.num_events == 0
    v1 = store.commit(events([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]))
    v2 = v1.commit(events([1], [0], [5]))
    v3 = v2.compact()
    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    infos = v3.versions()
    assert [i.version for i in infos] == [1, 2, 3]
    assert [i.operation for i in infos] == ["commit", "commit", "compact"]
    assert [i.events for i in infos] == [4, 5, 5]
    assert [i.tags for i in infos] == [(), (), ()]
    assert infos[0].created_at <= infos[1].created_at <= infos[2].created_at
    for info in infos:
        handle = store.checkout(info.version)
        assert info.segments == len(handle.segment_infos)
        on_disk = sum(p.stat().st_size for s in handle.segment_infos for p in s.files(store.path / "segments"))
        assert info.bytes == on_disk > 0
        assert handle.num_events == info.events
    assert infos[2].segments <= 2 < infos[1].segments  # one segment per partition after compaction


def test_open_resolves_latest_numbers_and_tags(make_store):
    store = make_store()
    v1 = store.commit(events([1], [1], [1]))
    v1.commit(events([1], [2], [2]))
    assert lateseq.open(store.path).version == 2
    assert lateseq.open(store.path, version=1).version == 1
    assert lateseq.open(str(store.path), version="1").version == 1
    assert lateseq.open(store.path, version=0).num_events == 0
    for missing in (3, 99, -1, "nope"):
        with pytest.raises(lateseq.VersionNotFound) as info:
            lateseq.open(store.path, version=missing)
        assert isinstance(info.value, LookupError)
        assert str(missing) in str(info.value)


def test_versions_as_users_hold_them(make_store):
    """numpy's integers (an example log's uih_version), signed strings and 'latest' name
    versions; 'latest' cannot be a tag (it would shadow the newest version unseen)."""
    store = make_store()
    store = store.commit(events([1], [1], [1]))
    log_version = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]}))["uih_version"]
    store = store.commit(events([1], [2], [2]))
    for number in (np.int64(1), np.uint32(1), log_version.to_numpy()[0], "+1"):
        assert lateseq.open(store.path, number).version == store.checkout(number).version == 1
    assert lateseq.open(store.path, "latest").version == 2
    store.tag("first", np.int64(1))
    assert store.tags() == {"first": 1}
    with pytest.raises(lateseq.VersionNotFound, match="there is no version -1"):
        lateseq.open(store.path, "-1")
    for name in ("latest", "LATEST"):
        with pytest.raises(lateseq.SchemaError, match="names the newest version"):
            store.tag(name, 1)
    with pytest.raises(lateseq.VersionNotFound, match="version 0 is the empty store, which cannot be tagged$"):
        store.tag("empty", 0)
    for wrong in (True, 1.0):
        with pytest.raises(lateseq.SchemaError, match="a version is a number or a tag name"):
            lateseq.open(store.path, wrong)
    for wrong in (" 1", "../x", "１"):  # the version is what is wrong, not a tag name given elsewhere
        with pytest.raises(lateseq.SchemaError, match=f"version {wrong!r} is neither a version number"):
            store.tag("fine", wrong)


def test_tags_pin_resolve_list_and_untag(make_store):
    store = make_store()
    v1 = store.commit(events([1], [1], [1]))
    v2 = v1.commit(events([1], [2], [2]))
    v1.tag("first")  # the handle's own version by default
    v2.tag("prod", 1)
    assert v2.tags() == {"first": 1, "prod": 1}
    assert lateseq.open(store.path, version="prod").version == 1
    assert v2.checkout("first").version == 1
    assert [i.tags for i in v2.versions()] == [("first", "prod"), ()]
    v2.tag("prod", 2)  # re-tagging moves the tag
    assert lateseq.open(store.path, version="prod").version == 2
    v2.untag("prod")
    assert v2.tags() == {"first": 1}
    with pytest.raises(lateseq.VersionNotFound) as info:
        lateseq.open(store.path, version="prod")
    assert isinstance(info.value, LookupError) and "prod" in str(info.value)
    with pytest.raises(LookupError):
        v2.untag("prod")
    with pytest.raises(lateseq.VersionNotFound):
        v2.tag("later", 3)
    with pytest.raises(lateseq.VersionNotFound):
        store.tag("empty")  # version 0 has nothing to tag
    for bad in ("", "12", "a/b", ".hidden"):
        with pytest.raises(lateseq.SchemaError):
            v2.tag(bad, 1)
    assert v2.tags() == {"first": 1}


def test_checkout_commit_and_compact_return_new_handles(small_store):
    v2 = small_store
    before = (v2.version, v2.num_events, list(v2.segment_infos))
    v1 = v2.checkout(1)
    v3 = v2.compact()
    v4 = v1.commit(events([9], [9], [9], rating=True))  # an old handle commits on top of the latest
    assert (v1.version, v3.version, v4.version) == (1, 3, 4)
    assert (v2.version, v2.num_events, list(v2.segment_infos)) == before
    assert v4.num_events == v2.num_events + 1
    assert v1.num_events == 5 and v1.checkout(1) is not v1
    examples = lateseq.log_examples(v1, pa.table({"user_id": [1], "request_ts": [99]}))
    assert examples.column("uih_length").to_pylist() == [3]  # still version 1's view


def test_pickle_is_path_version_and_cache(small_store, tmp_path):
    v1 = small_store.checkout(1)
    blob = pickle.dumps(v1)
    small_store.commit(events([1], [1], [1], rating=True))
    again = pickle.loads(blob)
    assert isinstance(again, lateseq.Store)
    assert (again.path, again.version) == (v1.path, 1)  # pinned: never "the latest"
    assert pickle.loads(pickle.dumps(lateseq.open(small_store.path, "2"))).version == 2
    elsewhere = pickle.loads(pickle.dumps(lateseq.open(small_store.path, 1, cache_dir=tmp_path / "local")))
    assert (elsewhere.version, elsewhere.cache_dir.parent) == (1, tmp_path / "local")
    assert pickle.loads(pickle.dumps(elsewhere)).cache_dir == elsewhere.cache_dir
    assert len(pickle.dumps(small_store)) < 400  # a path and a number, never data


def _materialize_in_worker(blob: bytes, examples: pa.Table) -> tuple[int, dict]:
    store = pickle.loads(blob)
    batch = lateseq.materialize(store, examples, lateseq.Projection(3, ("ts", "item")))
    return store.version, {"offsets": batch.offsets, **batch.values}


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pickled_handle_materializes_the_same_in_a_worker(small_store, method):
    v1 = small_store.checkout(1)
    examples = lateseq.log_examples(v1, pa.table({"user_id": [1, 2, 3], "request_ts": [31, 16, 5]}))
    small_store.commit(events([1, 2], [0, 1], [7, 8], rating=True))  # a later version the worker must not read
    here = _materialize_in_worker(pickle.dumps(v1), examples)
    context = multiprocessing.get_context(method)
    with context.Pool(1) as pool:
        there = pool.apply(_materialize_in_worker, (pickle.dumps(v1), examples))
    assert there[0] == here[0] == 1
    assert there[1].keys() == here[1].keys()
    for name in here[1]:
        assert np.array_equal(there[1][name], here[1][name])
    assert here[1]["item"].tolist() == [100, 200, 300, 400, 500]


# ---------------------------------------------------------------------- compaction


def test_compaction_is_a_no_op_when_nothing_to_merge(make_store):
    store = make_store(partitions=4)
    assert store.compact().version == 0
    v1 = store.commit(events(range(40), [0] * 40, range(40)))
    files = segment_files(v1)
    same = v1.compact()
    assert same.version == 1 and len(v1.versions()) == 1 and segment_files(v1) == files
    v3 = v1.commit(events([0, 1], [5, 5], [1, 2])).compact()
    assert v3.version == 3 and v3.compact().version == 3 and len(v3.versions()) == 3


def test_compaction_keeps_every_version_rebuildable(make_store):
    store = make_store({"item": "int64", "seq": "int32"}, tiebreak="seq", partitions=3)
    oracle = Oracle.for_schema(store.schema)
    rng = np.random.default_rng(3)
    logs = []
    for step in range(6):
        n = int(rng.integers(1, 30))
        users, ts = rng.integers(0, 6, n).tolist(), rng.integers(0, 10, n).tolist()
        payload = {"item": rng.integers(0, 1000, n).tolist(), "seq": rng.integers(0, 2, n).tolist()}
        oracle.commit(users, ts, payload)
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item": payload["item"],
                                       "seq": pa.array(payload["seq"], pa.int32())}))
        if step % 2:
            oracle.compact()
            store = store.compact()
        requests = pa.table({"user_id": np.repeat(np.arange(-1, 7), 11), "request_ts": np.tile(np.arange(11), 8)})
        logs.append(lateseq.log_examples(store, requests))
    examples = pa.concat_tables(logs)
    reqs = [Request(u, t, v) for u, t, v in zip(*(examples.column(c).to_pylist()
                                                  for c in ("user_id", "request_ts", "uih_version")), strict=True)]
    for max_len in (1, 4, 100):
        offsets, values = oracle.expected(reqs, max_len, ("ts", "item", "seq"))
        batch = lateseq.materialize(store, examples, lateseq.Projection(max_len, ("ts", "item", "seq")))
        assert_batch_equal(batch, offsets, values, f"max_len={max_len}")


def four_commits(make_store, seed: int) -> tuple[lateseq.Store, Oracle]:
    """A store of two partitions after four commits of late and tied times, and its oracle."""
    store = make_store(partitions=2)
    oracle = Oracle.for_schema(store.schema)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        users, ts, items = (rng.integers(0, 6, 20).tolist(), rng.integers(0, 10, 20).tolist(),
                            rng.integers(0, 1000, 20).tolist())
        oracle.commit(users, ts, {"item": items})
        store = store.commit(events(users, ts, items))
    return store, oracle


@pytest.mark.parametrize("meanwhile", ["commit", "compact", "delete"])
def test_a_compaction_lands_on_the_commits_published_while_it_merged(make_store, monkeypatch, meanwhile):
    """Commits every few seconds beside a compaction that takes minutes: it lost every race
    and threw its merge away each time (a stranger's: 6 of 6 attempts). Commits published
    meanwhile only add segments after every one it merged: it lands on top of them. A
    compaction or deletion meanwhile changed what it merged: CommitConflict, and its files go."""
    store, oracle = four_commits(make_store, seed=5)
    late = ([1, 2, 3], [0, 4, 9], [7, 8, 9])  # late and tied times: the commit's segment comes after the merge
    real, calls = lateseq._store.merge_segments, []

    def merge_while_another_writes(*args):
        merged = real(*args)
        if not calls:
            calls.append(meanwhile)
            other = lateseq.open(store.path)  # another process
            {"commit": lambda: other.commit(events(*late)), "compact": other.compact,
             "delete": lambda: other.delete([1])}[meanwhile]()
        return merged

    monkeypatch.setattr(lateseq._store, "merge_segments", merge_while_another_writes)
    if meanwhile != "commit":
        with pytest.raises(lateseq.CommitConflict):
            store.compact()
        assert segment_files(store) == referenced_files(store)  # the merge's files went
        return
    compacted = store.compact()
    oracle.commit(*late[:2], {"item": late[2]})
    oracle.compact()
    assert compacted.version == store.version + 2 and compacted.versions()[-1].operation == "compact"
    assert len(compacted.segment_infos) == 2 + 2  # a merged segment per partition, then the commit's
    requests = pa.table({"user_id": np.repeat(np.arange(0, 7), 12), "request_ts": np.tile(np.arange(12), 7)})
    log = pa.concat_tables([lateseq.log_examples(compacted.checkout(v), requests)
                            for v in (store.version, store.version + 1, compacted.version)])
    reqs = [Request(u, t, v) for u, t, v in zip(*(log.column(c).to_pylist()
                                                  for c in ("user_id", "request_ts", "uih_version")), strict=True)]
    offsets, values = oracle.expected(reqs, 100, ("ts", "item"))
    assert_batch_equal(lateseq.materialize(compacted, log, lateseq.Projection(100, ("ts", "item"))), offsets, values,
                       "compacted on top of a commit")
    assert segment_files(store) <= referenced_files(store)


@pytest.mark.parametrize("meanwhile", ["commit", "compact"])
def test_a_deletion_lands_on_the_commits_published_while_it_rewrote(make_store, monkeypatch, meanwhile):
    """A privacy deletion on a live store lost every race against frequent commits (a
    stranger's: 8 of 8). It lands on top of commits published meanwhile, and deletes the
    users' events they brought too; a compaction meanwhile is a CommitConflict."""
    store = make_store(partitions=2)
    rng = np.random.default_rng(8)
    model = []  # (user, ts, item, commit, row): the events, in the order ties keep
    for c in range(3):
        users, ts, items = (rng.integers(1, 7, 15).tolist(), rng.integers(0, 10, 15).tolist(),
                            rng.integers(0, 1000, 15).tolist())
        model += [(u, t, i, c, r) for r, (u, t, i) in enumerate(zip(users, ts, items, strict=True))]
        store = store.commit(events(users, ts, items))
    late = ([1, 2, 1], [0, 4, 4], [7, 8, 9])  # user 1 again, committed while the deletion rewrites
    real, calls = lateseq._store.segment_events, []

    def rewrite_while_another_writes(*args):
        if not calls:
            calls.append(meanwhile)
            other = lateseq.open(store.path)  # another process
            other.commit(events(*late)) if meanwhile == "commit" else other.compact()
        return real(*args)

    monkeypatch.setattr(lateseq._store, "segment_events", rewrite_while_another_writes)
    if meanwhile == "compact":
        with pytest.raises(lateseq.CommitConflict):
            store.delete([1])
        assert segment_files(store) == referenced_files(store)  # the rewritten files went
        return
    deleted = store.delete([1])
    model += [(u, t, i, 3, r) for r, (u, t, i) in enumerate(zip(*late, strict=True))]
    assert deleted.version == store.version + 2 and deleted.versions()[-1].operation == "delete"
    ordered = sorted(model, key=lambda e: (e[1], e[3], e[4]))
    assert read_back(store.path, deleted.version, list(range(1, 7))) == {
        u: [(t, i) for user, t, i, _, _ in ordered if user == u and u != 1] for u in range(1, 7)}
    assert deleted.deleted_users().tolist() == [1]
    # a pointer logged at the commit's version counted user 1's events: reported as deleted
    assert deleted.deleted_after(np.array([1, 2]), np.array([store.version + 1] * 2)).tolist() == [True, False]
    assert segment_files(store) <= referenced_files(store)



@pytest.mark.parametrize("meanwhile", ["compact", "tiered twice", "tiered twice, the first retired", "delete",
                                       "commit"])
def test_a_commit_lands_on_the_compactions_published_while_it_wrote(make_store, monkeypatch, meanwhile):
    """A daily commit raced by a background compaction got CommitConflict (a stranger's:
    about one commit in 20), every caller writing its own retry loop. A compaction holds
    the same events: the commit goes on top of it, its events stamped with the version it
    lands as, its commit id naming that version. A commit or a deletion meanwhile changed
    what the store holds: CommitConflict still, and its files go."""
    store, oracle = four_commits(make_store, seed=11)
    late = ([1, 2, 3, 9], [0, 4, 9, 3], [7, 8, 9, 10])  # late and tied times, and a new user
    real_write, raced, published = lateseq._store.write_segment, [], set()

    def write_while_another_publishes(*args, **kwargs):
        if not raced:
            raced.append(meanwhile)
            other = lateseq.open(store.path)  # another process
            if meanwhile.startswith("tiered twice"):
                latest = other.compact("tiered", fanout=2).compact()
                if meanwhile.endswith("retired"):  # a cleanup's retirement (its deletions wait for the commit)
                    other.tag("pointers", store.version)  # the pointers below are logged against it
                    assert store.version + 1 in latest._log.retire_before(latest.version)
            else:
                {"compact": other.compact, "delete": lambda: other.delete([1]),
                 "commit": lambda: other.commit(events([5], [5], [5]))}[meanwhile]()
            published.update(segment_files(store))  # a retired version's too: cleanup did not delete them
        return real_write(*args, **kwargs)

    monkeypatch.setattr(lateseq._store, "write_segment", write_while_another_publishes)
    if meanwhile in ("delete", "commit"):
        with pytest.raises(lateseq.CommitConflict):
            store.commit(events(*late), commit_id="late")
        assert segment_files(store) == referenced_files(store)  # the commit's files went
        return
    landed = store.commit(events(*late), commit_id="late")
    compactions = landed.version - store.version - 1
    assert compactions == (1 if meanwhile == "compact" else 2)
    assert [v.operation for v in landed.versions() if v.version > store.version] == (
        ["compact"] * (compactions - meanwhile.endswith("retired")) + ["commit"])
    for _ in range(compactions):
        oracle.compact()
    assert oracle.commit(*late[:2], {"item": late[2]}) == landed.version
    assert segment_files(store) == referenced_files(landed) | published  # the first attempt's files went
    assert landed.commit(events(*late), commit_id="late").version == landed.version  # a rerun: the same version
    requests = pa.table({"user_id": np.repeat(np.arange(0, 10), 12), "request_ts": np.tile(np.arange(12), 10)})
    log = pa.concat_tables([lateseq.log_examples(landed.checkout(v), requests)
                            for v in [info.version for info in landed.versions()] if v >= store.version])
    reqs = [Request(u, t, v) for u, t, v in zip(*(log.column(c).to_pylist()
                                                  for c in ("user_id", "request_ts", "uih_version")), strict=True)]
    offsets, values = oracle.expected(reqs, 100, ("ts", "item"))
    assert_batch_equal(lateseq.materialize(landed, log, lateseq.Projection(100, ("ts", "item"))), offsets, values,
                       "committed on top of a compaction")

@pytest.mark.parametrize("merged_reads", [False, "auto"])
def test_a_batch_over_many_partitions_reads_as_each_partition_alone(make_store, merged_reads, monkeypatch, tmp_path):
    """A batch touching many partitions is located in one view of them all: it must give
    what the oracle gives, what each partition's pointers give alone, and go on doing so
    as partitions join the view, switch to their merged copies, and get new versions."""
    monkeypatch.setattr(lateseq._store, "AUTO_MERGE_RENT", 1)  # "auto" merges after a read or two
    store = make_store({"item": "int64"}, partitions=32)
    oracle = Oracle.for_schema(store.schema)
    rng = np.random.default_rng(9)
    projection = lateseq.Projection(5, ("ts", "item"))
    logs = []
    for step in range(5):
        n = 600
        users, ts = rng.integers(0, 200, n).tolist(), rng.integers(0, 50, n).tolist()  # late and tied times
        payload = {"item": rng.integers(0, 1000, n).tolist()}
        oracle.commit(users, ts, payload)
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item": payload["item"]}))
        if step == 2:
            oracle.compact()
            store = store.compact()
        logs.append(lateseq.log_examples(store, pa.table({"user_id": rng.integers(-5, 205, 300),
                                                          "request_ts": rng.integers(0, 55, 300)})))
        reader = lateseq.open(store.path, merged_reads=merged_reads)
        for examples in (logs[-1].slice(0, 3), logs[-1].slice(0, 40), pa.concat_tables(logs)):  # views join
            reqs = [Request(u, t, v) for u, t, v in zip(*(examples.column(c).to_pylist()
                                                          for c in ("user_id", "request_ts", "uih_version")),
                                                        strict=True)]
            offsets, values = oracle.expected(reqs, 5, ("ts", "item"))
            for _ in range(3):  # merged_reads="auto" switches partitions to their copies as reads pay
                assert_batch_equal(lateseq.materialize(reader, examples, projection), offsets, values,
                                   f"step {step}, {examples.num_rows} examples")
        parts = lateseq._events.partition_of(examples.column("user_id").to_numpy(), 32)
        assert len(np.unique(parts)) > 16
        one = np.flatnonzero(parts == parts[0])  # the pointers of one partition alone: its own view
        alone = lateseq.materialize(reader, examples.take(pa.array(one)), projection)
        whole = lateseq.materialize(reader, examples, projection)
        for i, row in enumerate(one):
            a, b = whole.offsets[row], whole.offsets[row + 1]
            assert whole.values["item"][a:b].tolist() == alone.values["item"][alone.offsets[i]:alone.offsets[i + 1]].tolist()
    # batches of many partitions only: each partition's reads still pay towards its merged copy (in a
    # cache of its own: the version before's copies, built above, would be read through instead)
    fresh = lateseq.open(store.path, merged_reads=merged_reads, cache_dir=tmp_path / "cache")
    several = {p for p in range(32) if len(fresh._by_partition.get(p, [])) > 1}
    for _ in range(40):  # (a partition whose pointers' events seldom lie in two segments pays slowly)
        lateseq.materialize(fresh, pa.concat_tables(logs), projection)
        if fresh._merged == several:
            break
    assert several and fresh._merged == (several if merged_reads == "auto" else set())


def test_small_batches_of_new_partitions_do_not_rebuild_the_joined_view_each_time(make_store):
    store = make_store({"item": "int64"}, partitions=64)
    users = np.arange(2000)
    store = store.commit(pa.table({"user_id": users, "ts": users % 7, "item": users * 10}))
    parts = lateseq._events.partition_of(users, 64)
    one_per_partition = [int(users[parts == p][0]) for p in range(64)]
    log = lateseq.log_examples(store, pa.table({"user_id": one_per_partition, "request_ts": [9] * 64}))
    reader, built = lateseq.open(store.path), []
    projection = lateseq.Projection(3, ("item",))
    for start in range(0, 64, 2):  # each batch: two partitions never read before
        batch = lateseq.materialize(reader, log.slice(start, 2), projection)
        assert batch.values["item"].tolist() == [u * 10 for u in one_per_partition[start:start + 2]]
        built.append(reader._join[1])  # kept alive: ids stay distinct
    assert len({id(v) for v in built if v is not None}) <= 8  # about log2(64): each rebuild waits until batches cost what it costs
    assert len(reader._join[0]) >= 32  # and takes every partition read meanwhile


# ---------------------------------------------------------------------- event ids


def test_event_id_dedup_keeps_the_first_delivery_within_a_commit(make_store):
    store = make_store({"item": "int64", "eid": "int64"}, event_id_col="eid")
    store = store.commit(pa.table({
        "user_id": [1, 1, 2, 1, 1],
        "ts": [5, 6, 7, 5, 1],
        "item": [10, 11, 12, 13, 14],
        "eid": [100, 101, 100, 100, 101],  # user 2 may reuse user 1's id; user 1 repeats two
    }))
    assert store.num_events == 3
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [99, 99]}))
    batch = lateseq.materialize(store, examples, lateseq.Projection(9, ("ts", "item", "eid")))
    assert batch.offsets.tolist() == [0, 2, 3]
    assert batch.values["item"].tolist() == [10, 11, 12]
    assert batch.values["ts"].tolist() == [5, 6, 7]



def test_event_id_dedup_reads_the_partitions_of_the_commits_users_only(make_store, monkeypatch):
    """Stored ids can only be in the partitions of the commit's users: opening every segment
    of the store for them cost a one-event commit into 256 partitions 1.4-1.8 s (a stranger's)."""
    store = make_store({"item": "int64", "eid": "int64"}, event_id_col="eid", partitions=16)
    for day in range(3):
        users = np.arange(200)
        store = store.commit(pa.table({"user_id": users, "ts": np.full(200, day), "item": users,
                                       "eid": users * 10 + day}))
    opened = []
    real = lateseq._segments.SegmentCache.get
    monkeypatch.setattr(lateseq._segments.SegmentCache, "get", lambda cache, info: opened.append(info) or real(cache, info))
    store = lateseq.open(store.path).commit(pa.table({"user_id": [7, 7], "ts": [9, 9], "item": [1, 2], "eid": [70, 79]}))
    partition = int(lateseq._events.partition_of(np.array([7]), 16)[0])
    assert opened and {info.partition for info in opened} == {partition}
    assert store.num_events == 3 * 200 + 1  # eid 70 was stored on day 0: a redelivery


# ---------------------------------------------------------------------- commit conflicts


def test_commit_conflict_leaves_no_orphans_and_a_readable_store(make_store, monkeypatch):
    store = make_store(partitions=2)
    v1 = store.commit(events([1, 2, 3], [1, 2, 3], [1, 2, 3]))
    rival = lateseq.open(store.path)
    real_write = lateseq._store.write_segment
    raced = []

    def write_then_lose_the_race(*args, **kwargs):
        info = real_write(*args, **kwargs)
        if not raced:  # another writer publishes version 2 while we are still writing
            raced.append(True)
            monkeypatch.setattr(lateseq._store, "write_segment", real_write)
            raced.append(rival.commit(events([7], [7], [7])))
        return info

    monkeypatch.setattr(lateseq._store, "write_segment", write_then_lose_the_race)
    with pytest.raises(lateseq.CommitConflict) as info:
        v1.commit(events([1, 2, 3, 4], [9, 9, 9, 9], [4, 5, 6, 7]))
    assert isinstance(info.value, lateseq.StoreError) and isinstance(info.value, OSError)
    assert re.search(r"version 2 .*another writer", str(info.value))
    assert raced[1].version == 2
    latest = lateseq.open(store.path)
    assert latest.version == 2 and latest.num_events == 4
    assert segment_files(latest) == referenced_files(latest)  # nothing orphaned, nothing missing
    assert not [p for p in (store.path / "versions").iterdir() if not p.name.endswith(".json")]
    examples = lateseq.log_examples(latest, pa.table({"user_id": [7, 4], "request_ts": [8, 99]}))
    assert examples.column("uih_length").to_pylist() == [1, 0]
    retried = v1.commit(events([1, 2, 3, 4], [9, 9, 9, 9], [4, 5, 6, 7]))
    assert retried.version == 3 and retried.num_events == 8
    assert segment_files(retried) == referenced_files(retried)


def test_conflict_on_a_pre_created_manifest_name(make_store, monkeypatch):
    store = make_store()
    v1 = store.commit(events([1], [1], [1]))
    squatter = store.path / "versions" / f"{2:08d}.json"
    real_write = lateseq._store.write_segment

    def write_and_squat(*args, **kwargs):
        info = real_write(*args, **kwargs)
        squatter.write_bytes((store.path / "versions" / f"{1:08d}.json").read_bytes())
        return info

    monkeypatch.setattr(lateseq._store, "write_segment", write_and_squat)
    with pytest.raises(lateseq.CommitConflict):
        v1.commit(events([2], [2], [2]))
    assert squatter.read_bytes() == (store.path / "versions" / f"{1:08d}.json").read_bytes()
    assert segment_files(v1) == {p.name for p in v1.segment_infos[0].files(Path("."))}


def test_a_full_disk_names_the_file_it_could_not_write_and_changes_nothing(small_store, monkeypatch):
    """A tag, a retired version's tombstone or a commit's manifest that cannot be written
    (a full disk) fails with an error naming the file, as a segment file's does (they
    raised a bare OSError), and the store is left as it was."""
    def contents() -> dict[str, bytes]:  # but the empty lock files a tagger or cleanup makes
        return {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")}

    before = contents()
    with files_at_most(8):
        with pytest.raises(lateseq.StoreError, match=rf"cannot write {small_store.path / 'tags' / 'prod.json'} "):
            small_store.tag("prod", 1)
        with pytest.raises(lateseq.StoreError, match=rf"cannot write {small_store.path / 'versions'}/\S+\.json "):
            small_store.cleanup(before=2, grace_s=0)
    assert contents() == before

    def no_room(*args, **kwargs):  # publishing links the manifest into place: no room for its name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", no_room)
        with pytest.raises(lateseq.StoreError, match=rf"cannot write {small_store.path / 'versions' / '00000003.json'} "
                                                     r"\(No space left on device\)"):
            small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [1], "rating": pa.array([1], pa.int8())}))
    assert lateseq.open(small_store.path).version == 2
    assert segment_files(small_store) == referenced_files(lateseq.open(small_store.path))  # nothing orphaned
    log = small_store.path.parent / "examples.parquet"  # an output of lateseq's, too
    with files_at_most(8), pytest.raises(lateseq.StoreError, match=rf"cannot write {log} \(.*File too large"):
        lateseq.log_examples(small_store, pa.table({"user_id": [1], "request_ts": [99]}), log)
    assert not list(log.parent.glob("*examples.parquet"))


def test_a_failure_after_a_version_or_tag_is_in_place_says_it_is_done(small_store, monkeypatch):
    """After the manifest's link, removing its temporary or syncing the folder failed with a
    bare OSError, as if nothing was published: a retry without a commit_id stored the events
    twice, an untag's retry found no tag (s45C). Now the temporary's removal cannot fail a
    publish, and a failed sync is NotSynced, saying that it is done; the version's files stay."""
    events = pa.table({"user_id": [1], "ts": [40], "item": [7], "rating": pa.array([1], pa.int8())})
    real_unlink, real_sync = Path.unlink, lateseq._versions.fsync_dir

    def unlink(path, *args, **kwargs):
        if path.name.startswith(".tmp-") and path.parent.name == "versions":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_unlink(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "unlink", unlink)
        v3 = small_store.commit(events)
    assert v3.version == 3 == lateseq.open(small_store.path).version

    def sync(path):
        if path.name in ("versions", "tags"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_sync(path)

    with monkeypatch.context() as patch:
        patch.setattr(lateseq._versions, "fsync_dir", sync)
        with pytest.raises(lateseq.NotSynced, match=r"version 4 of .* is in place .*Input/output error.*do not do it "
                                                    r"again"):
            v3.commit(events)
        with pytest.raises(lateseq.NotSynced, match=r"tag 'prod' of version 4 is in place"):
            v3.tag("prod", 4)
        with pytest.raises(lateseq.NotSynced, match=r"the removal of tag 'prod' is in place"):
            v3.untag("prod")
    v4 = lateseq.open(small_store.path)
    assert v4.version == 4 and v4.tags() == {}
    assert segment_files(v4) == referenced_files(v4)  # the published version's files stayed
    rebuilt = lateseq.materialize(v4, lateseq.log_examples(v4, pa.table({"user_id": [1], "request_ts": [99]})),
                                  lateseq.Projection(10, ("item",)))
    assert rebuilt.values["item"].tolist() == [100, 150, 200, 300, 7, 7]


def test_cleanup_on_a_full_disk_makes_room_from_the_read_cache_first(make_store, monkeypatch):
    """Cleanup writes a tombstone for each version it retires before it deletes anything,
    so on a full disk it failed at the first one and freed nothing (a stranger's, on a
    full tmpfs): the store could not be brought back with lateseq. Now it deletes the read
    cache's copies that no version it keeps reads, and tries again."""
    store = make_store({"item": "int64"})
    rng = np.random.default_rng(4)
    for day in range(4):
        store = store.commit(pa.table({"user_id": rng.integers(0, 30, 300),
                                       "ts": day * 1000 + rng.integers(0, 999, 300), "item": rng.integers(0, 99, 300)}))
    store = store.compact()
    decoded = {p.name for p in store.cache_dir.glob("*.arrow")}
    assert len(decoded) == 5  # four daily copies, and the compacted one's
    real = lateseq._versions.write_durably

    def no_room(path, data):
        cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise lateseq._format.write_failed(path, cause) from cause

    def mapped_but_removed() -> bool:  # their room returns once no process maps them
        maps = Path("/proc/self/maps")
        return maps.exists() and any(str(store.cache_dir) in line and "(deleted)" in line
                                     for line in maps.read_text().splitlines())

    def full(path, data):  # no room while the cache holds the daily copies (this process read them to compact)
        held = len(list(store.cache_dir.glob("*.arrow"))) > 1 or mapped_but_removed()
        return (no_room if held else real)(path, data)

    monkeypatch.setattr(lateseq._versions, "write_durably", full)
    assert store.cleanup(before=store.version, grace_s=0) == [1, 2, 3, 4]
    assert {p.name for p in store.cache_dir.glob("*.arrow")} == {f"{store.segment_infos[0].name}.arrow"}
    assert segment_files(store) == referenced_files(lateseq.open(store.path))
    assert lateseq.open(store.path).num_events == 1200
    monkeypatch.setattr(lateseq._versions, "write_durably", no_room)
    more = store.commit(pa.table({"user_id": [1], "ts": [5000], "item": [1]}))
    with pytest.raises(lateseq.StoreError, match="No space left on device"):  # nothing more to free: said
        more.cleanup(before=more.version, grace_s=0)


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_hard_links_is_named(tmp_path, small_store, monkeypatch, refusal):
    """Publishing hard-links a manifest into place. A file system without hard links (a
    FUSE mount of an object store: gcsfuse, s3fs) refused it with "Operation not
    permitted" and lateseq asked whether the disk was full: the cause is now named, at
    ``create`` already, and the store is left as it was."""
    def refused(*args, **kwargs):
        raise OSError(refusal, os.strerror(refusal))

    before = {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")}
    with monkeypatch.context() as patch:
        patch.setattr(os, "link", refused)
        with pytest.raises(lateseq.StoreError, match=r"by hard links, which this file system refuses.*gcsfuse"):
            lateseq.create(tmp_path / "bucket", lateseq.Schema({"item": "int64"}))
        assert not (tmp_path / "bucket").exists()  # no half-made store for the next create to refuse
        with pytest.raises(lateseq.StoreError, match=rf"cannot hard-link .* as {small_store.path / 'versions'}"):
            small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [1], "rating": pa.array([1], pa.int8())}))
    assert {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")} == before
    assert lateseq.open(small_store.path).version == small_store.version


def test_a_file_system_without_locks_is_named(small_store, monkeypatch):
    """Writers exclude each other with flock; where the file system has none (NFS without
    its lock service: ENOLCK) a commit raised a bare "[Errno 37] No locks available"."""
    def refused(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    before = {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")}
    monkeypatch.setattr(lateseq._versions.fcntl, "flock", refused)
    for act in (lambda: small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [1],
                                                     "rating": pa.array([1], pa.int8())})),
                lambda: small_store.tag("prod", 1), small_store.compact):
        with pytest.raises(lateseq.StoreError, match=rf"cannot lock {small_store.path}: No locks available .*flock"):
            act()
    assert {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")} == before
    monkeypatch.setattr(lateseq._segments.fcntl, "flock", refused)  # a read cache on such a file system
    with pytest.raises(lateseq.StoreError, match=r"cannot lock the read cache .*No locks available.*cache_dir="):
        lateseq.open(small_store.path, cache_dir=small_store.path.parent / "nfs", merged_reads=False).prefault(["item"])


@pytest.mark.parametrize("operation", ["commit", "compact", "delete"])
def test_a_write_that_fails_before_the_publish_leaves_no_segment_file(make_store, monkeypatch, operation):
    """A write that failed at a later partition's segment (here: an error at its read-cache
    copy other than a full cache, which leaves the copy out) left the segments already
    written in segments/ (until cleanup's grace passed; every retry added more): the store
    was not as it was."""
    store = make_store({"item": "int64"}, partitions=4)
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        store = store.commit(pa.table({"user_id": rng.integers(0, 40, 400), "ts": rng.integers(0, 10**6, 400),
                                       "item": rng.integers(0, 99, 400)}))
    before = snapshot(store.path)
    real, written = lateseq._format._write_decoded, []

    def third_fails(*args, **kwargs):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(lateseq._format, "_write_decoded", third_fails)
    rng = np.random.default_rng(3)
    more = pa.table({"user_id": rng.integers(0, 40, 400), "ts": rng.integers(0, 10**6, 400),
                     "item": rng.integers(0, 99, 400)})
    act = {"commit": lambda: store.commit(more),
           "compact": store.compact, "delete": lambda: store.delete(list(range(0, 40, 2)))}[operation]
    with pytest.raises(OSError, match="No space left on device"):
        act()
    assert len(written) == 2  # two segments written whole before the third failed
    assert snapshot(store.path) == before

    def no_room(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if operation == "commit":  # an idempotent commit's id file, after every segment is written
        monkeypatch.setattr(lateseq._format, "_write_decoded", real)
        monkeypatch.setattr(lateseq._versions.VersionLog, "mark_commit", no_room)
        with pytest.raises(OSError, match="No space left on device"):
            store.commit(more, commit_id="job")
        assert snapshot(store.path) == before


def unwritable_cache(patch: pytest.MonkeyPatch, cache: Path, how: str) -> None:
    """Makes the read cache ``cache`` fail as a disk does: full (the write fails at the
    end), mounted read-only (every change fails with EROFS, a missing file's removal too),
    or refused by its folders' permissions (EACCES; removing a missing file says so)."""
    def inside(path) -> bool:
        return cache in Path(path).parents or Path(path) == cache

    def refused(code: int):
        raise OSError(code, os.strerror(code))

    if how == "full":
        real = lateseq._format.put_in_place
        patch.setattr(lateseq._format, "put_in_place",
                      lambda tmp, path: refused(errno.ENOSPC) if inside(path) else real(tmp, path))
        return
    code = errno.EROFS if how == "read-only" else errno.EACCES
    real_file, real_unlink, real_mkdir, real_open = pa.OSFile, os.unlink, os.mkdir, os.open
    patch.setattr(pa, "OSFile", lambda path, *args: refused(code) if inside(path) else real_file(path, *args))
    patch.setattr(os, "mkdir", lambda path, *args: refused(code) if inside(path) else real_mkdir(path, *args))

    def open_(path, flags, *args, **kwargs):  # lock files: none opened for writing there, none made
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if inside(path) and writes and (how == "read-only" or not os.path.lexists(path)):
            refused(code)
        return real_open(path, flags, *args, **kwargs)

    patch.setattr(os, "open", open_)

    def unlink(path, *args, **kwargs):
        if inside(path) and (how == "read-only" or os.path.lexists(path)):
            refused(code)
        return real_unlink(path, *args, **kwargs)

    patch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize("how", ["full", "read-only", "no permission"])
def test_an_unwritable_read_cache_leaves_commits_and_compactions_durable(make_store, tmp_path, monkeypatch, how):
    """A read cache of its own disk (``cache_dir=``) that was full failed a commit or a
    compaction, naming the cache's file, though the copy is derived: the durable files
    were written. Read-only, it failed with a bare EROFS from removing the temporary that
    was never made, and refused by permissions, naming the file (s40B). Now the copy is
    left out with a warning, and a read makes it once it can (until then a read,
    compactions' included, holds the copies it reads in memory)."""
    make_store({"item": "int64"})
    cache = tmp_path / "cache"
    store = lateseq.Store(tmp_path / "store0", cache_dir=cache)
    rng = np.random.default_rng(2)
    days = [pa.table({"user_id": rng.integers(0, 20, 200), "ts": day * 1000 + rng.integers(0, 999, 200),
                      "item": rng.integers(0, 99, 200)}) for day in range(4)]
    store = store.commit(days[0]).commit(days[1])
    reason = {"full": errno.ENOSPC, "read-only": errno.EROFS, "no permission": errno.EACCES}[how]
    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, how)
        with pytest.warns(RuntimeWarning, match=rf"read cache's copy of segment p\d+-\w+ is left out, its durable "
                                                rf"files written: cannot write {cache}/\S+ \({os.strerror(reason)}"):
            store = store.compact()  # (it reads the copies made before the disk filled)
        with pytest.warns(RuntimeWarning, match="is left out"):
            store = store.commit(days[2])
        with pytest.warns(RuntimeWarning) as told:
            store = store.compact()  # (it reads the copy left out: held in memory)
        assert {re.search("is left out|holds it in memory", str(w.message)).group() for w in told} == {
            "is left out", "holds it in memory"}
    assert not [p for p in cache.rglob("*") if p.is_file() and ".tmp" in p.name and "lock" not in p.name]
    assert lateseq.open(tmp_path / "store0", cache_dir=cache).version == store.version == 5
    fresh = tmp_path / "fresh-cache"  # a new cache whose folder cannot be made: the reason named, not "missing"
    unmade = errno.EROFS if how == "full" else reason  # (a full disk has room for a folder: read-only stands in)
    with monkeypatch.context() as patch:
        unwritable_cache(patch, fresh, "read-only" if how == "full" else how)
        with pytest.warns(RuntimeWarning, match=rf"cannot write {fresh}/\S+ \({os.strerror(unmade)}"):
            lateseq.Store(store.path, cache_dir=fresh).commit(days[3])
    store = lateseq.Store(store.path, cache_dir=cache)  # the cache can be written again: a read makes the copies
    requests = pa.table({"user_id": np.arange(20), "request_ts": np.full(20, 10**6)})
    got = lateseq.materialize(store, lateseq.log_examples(store, requests), lateseq.Projection(1000, ["item"]))
    events = pa.concat_tables(days).to_pandas()
    for user in range(20):
        want = events[events.user_id == user]["item"].tolist()
        assert sorted(got.values["item"][got.offsets[user]:got.offsets[user + 1]].tolist()) == sorted(want)


@pytest.mark.parametrize("how", ["full", "read-only", "no permission"])
def test_reads_through_a_read_cache_that_cannot_take_copies_hold_them_in_memory(make_store, tmp_path, monkeypatch,
                                                                                how):
    """With its read cache full, read-only or refused, a read (a compaction's and a
    deletion's too) failed until room was made (s40F): a trainer whose disk filled
    stopped. The copies the cache cannot take are now held in memory by the process
    reading them, told once per cache, and give the oracle's values; where they would
    take more than half the memory available the read is refused, naming what to do;
    once the cache takes copies again, reads map them."""
    store = make_store({"item": "int64"}, partitions=2)
    oracle = Oracle({"item": "int64"})
    rng = np.random.default_rng(7)
    logs = []
    for day in range(3):  # a late event or two each day: pointers at old versions hold back later rows
        user, ts, item = rng.integers(0, 12, 150), rng.integers(0, (day + 1) * 100, 150), rng.integers(0, 99, 150)
        store = store.commit(pa.table({"user_id": user, "ts": ts, "item": item}))
        oracle.commit(user, ts, {"item": item})
        logs.append(lateseq.log_examples(store, pa.table({"user_id": np.arange(14), "request_ts": np.full(14, 250)})))
    log = pa.concat_tables(logs)
    projection = lateseq.Projection(40, ("ts", "item"))

    def check(reader: lateseq.Store, examples: pa.Table, context: str) -> None:
        offsets, values = oracle.expected(oracle_requests(examples), 40, ("ts", "item"))
        assert_batch_equal(lateseq.materialize(reader, examples, projection), offsets, values, context)

    cache = tmp_path / "reader-cache"
    gc.collect()  # an earlier test's segments held in memory, let go of here, not below (a CI worker's order)
    held_before = lateseq._segments.in_memory_bytes()
    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, how)
        reader = lateseq.Store(store.path, cache_dir=cache)
        with pytest.warns(RuntimeWarning, match=rf"read cache {cache}/\S+ cannot take segment p\d+-\w+'s decoded "
                                                r"copy \(.+\); this process holds it in memory") as told:
            check(reader, log, how)
        assert len(told) == 1 and told[0].filename == __file__  # once per cache, at the caller's line
        # a cleanup makes room, not a read-only or refused cache writable (it advised one there, s49C)
        assert ("lateseq cleanup" in str(told[0].message)) == (how == "full"), told[0].message
        assert lateseq._segments.in_memory_bytes() > held_before
        with pytest.warns(RuntimeWarning, match="is left out"):  # reads its inputs from memory
            compacted = reader.compact()
        oracle.compact()
        with pytest.warns(RuntimeWarning, match="is left out"):
            deleted = compacted.delete([3])  # (it rewrites user 3's segments from what it reads)
        oracle.compact()  # a version of the same events, for every user but 3 (whose examples are left out)
        log = pa.concat_tables([log, lateseq.log_examples(deleted, pa.table({"user_id": np.arange(14),
                                                                            "request_ts": np.full(14, 250)}))])
        log = log.filter(pc.not_equal(log["user_id"], 3))
        check(deleted, log, f"{how}, compacted, a user deleted")
        gone = lateseq.log_examples(deleted, pa.table({"user_id": [3], "request_ts": [250]}))
        assert gone["uih_length"].to_pylist() == [0]
        patch.setattr(lateseq._segments, "_available_memory", lambda: 0)
        with pytest.raises(lateseq.StoreError, match=r"nor held in memory: it needs \d+ MiB.*read through a cache "
                                                     "that this process can write") as refused:
            lateseq.materialize(lateseq.Store(store.path, cache_dir=cache / "another"), log, projection)
        assert ("make room there" in str(refused.value)) == (how == "full"), refused.value
    del reader, compacted, deleted
    gc.collect()
    assert lateseq._segments.in_memory_bytes() == held_before  # let go with the segments holding them
    reader = lateseq.Store(store.path, cache_dir=cache)
    check(reader, log, f"{how}, the cache writable again")
    assert all(segment.mapped for segment in reader.segments(0) + reader.segments(1))


def test_a_copy_let_go_while_another_is_being_held_does_not_hang_the_reader(tmp_path, monkeypatch):
    """A held copy's finalizer ran in a garbage collection inside ``_held_in_memory`` (its
    memory check builds objects) and took the lock that call held: the reader hung for good
    on a read-only cache (s51C). Its size now counts at the next look, by whoever looks."""
    import threading
    import weakref

    from lateseq._format import SegmentInfo, Unwritten

    segments = lateseq._segments
    before = segments.in_memory_bytes()
    let_go = [np.zeros(100)]
    segments._IN_MEMORY[0] += let_go[0].nbytes  # as if held, with its finalizer
    weakref.finalize(let_go[0], segments._release_memory, let_go[0].nbytes)

    def available() -> int:
        let_go.clear()  # the last reference goes here, inside the lock: its finalizer runs now
        return 2**40
    monkeypatch.setattr(segments, "_available_memory", available)
    info = SegmentInfo("p0-held", 0, 10, 1, 1, 1, 80)
    columns = {"x": np.ones(10)}
    done: list[dict] = []
    with pytest.warns(RuntimeWarning, match="holds it in memory"):
        reader = threading.Thread(target=lambda: done.append(segments._held_in_memory(
            Unwritten(columns, "read-only file system", False), info, tmp_path / "never-told")), daemon=True)
        reader.start()
        reader.join(timeout=30)
    assert not reader.is_alive() and done[0] is columns
    assert segments.in_memory_bytes() == before + columns["x"].nbytes  # the one let go, counted off
    done.clear()
    columns.clear()  # the held array's last reference
    gc.collect()
    assert segments.in_memory_bytes() == before


def test_the_memory_copies_may_take_is_what_the_cgroups_leave(tmp_path, monkeypatch):
    """Copies held in memory were bounded by the host's MemAvailable: in a container (a
    cgroup limit far below it) a stranger's reader was OOM-killed before the bound was
    reached (s41A). The room is the least of limit - usage + page cache over the
    process's memory cgroup and those above it, v1 or v2."""
    def tree(files: dict[str, str]) -> None:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)

    v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat")
    tree({f"v1/{where}/{name}": text for where, values in {
        ".": ("9223372036854771712", "5000", "total_cache 0\n"),
        "a": ("900", "700", "cache 50\ntotal_cache 100\n"),  # the parent binds: 300
        "a/b": ("2000", "600", "total_cache 100\n")}.items() for name, text in zip(v1, values, strict=True)})
    tree({"v2/memory.max": "5000\n", "v2/memory.current": "1000\n", "v2/memory.stat": "anon 10\nfile 500\n",
          "v2/x/memory.max": "max\n", "v2/x/memory.current": "900\n", "v2/x/memory.stat": "file 1\n"})
    files = lateseq._segments._CGROUP_FILES
    monkeypatch.setattr(lateseq._segments, "_CGROUP_FILES", {
        "": (tmp_path / "v2", *files[""][1:]), "memory": (tmp_path / "v1", *files["memory"][1:])})
    cgroups = tmp_path / "cgroup"
    monkeypatch.setattr(lateseq._segments, "_PROC_CGROUP", cgroups)
    for text, room in [("4:memory:/a/b\n0::/\n", 300), ("0::/x\n", 4500), ("4:cpu,memory:/a/b\n0::/x\n", 300),
                       ("4:memory:/elsewhere/c\n", 9223372036854771712 - 5000), ("1:cpu:/\n", float("inf"))]:
        cgroups.write_text(text)
        assert lateseq._segments._cgroup_room() == room, text
    cgroups.write_text("4:memory:/a/b\n")
    assert lateseq._segments._available_memory() == 300


def test_cleanup_leaves_a_read_only_cache_as_it_was_and_says_so(make_store, tmp_path, monkeypatch):
    """A cleanup through a read cache on a read-only mount failed with a bare EROFS, every
    time, after cleaning the store (s41A: a cron cleanup fails forever). It cleans the
    store, leaves the cache with a warning, and a cleanup where the cache can be written
    removes the stale copies."""
    store = make_store({"item": "int64"}, partitions=2)
    cache = tmp_path / "cache"
    store = lateseq.Store(store.path, cache_dir=cache)
    for day in range(3):
        store = store.commit(pa.table({"user_id": np.arange(8), "ts": np.full(8, day), "item": np.arange(8)}))
    store = store.compact()
    copies = {p.name for p in cache.rglob("p*.arrow")}
    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, "read-only")
        with pytest.warns(RuntimeWarning, match=rf"cleanup left the read cache {cache}/\S+ as it was: it cannot be "
                                                r"written \(Read-only file system at \S+\)\. The store's own") as told:
            assert store.cleanup(before="latest", grace_s=0) == [1, 2, 3]
    assert told[0].filename == __file__
    assert segment_files(store) == referenced_files(store)  # the store is cleaned up
    assert {p.name for p in cache.rglob("p*.arrow")} == copies  # its cache is not
    with monkeypatch.context() as patch:  # nor by cleanup_cache, which says so of itself alone (s52D)
        unwritable_cache(patch, cache, "read-only")
        with pytest.warns(RuntimeWarning, match=r"cleanup_cache left the read cache .* Nothing was removed; the copies "
                                                "there of versions the store no longer keeps go when"):
            store.cleanup_cache(grace_s=0)
        # and the CLI prints it as its own line: the warning was typer's, in Python's form
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # shown, as outside the tests (which make warnings errors)
            result = CliRunner().invoke(app, ["--cache-dir", str(cache), "cleanup", str(store.path), "--cache-only",
                                              "--grace", "0"])
    assert result.exit_code == 0 and result.stderr.startswith("warning: lateseq: cleanup_cache left"), result.stderr
    assert {p.name for p in cache.rglob("p*.arrow")} == copies
    store.cleanup(before="latest", grace_s=0)
    kept = {f"{info.name}.arrow" for info in store.segment_infos}
    assert {p.name for p in cache.rglob("p*.arrow")} == kept < copies


def test_a_write_that_leaves_many_copies_out_warns_once(make_store, tmp_path, monkeypatch):
    """A compaction of every partition with a full read cache gave a warning per segment
    (16k at 16k partitions, s41A): one now, naming how many others."""
    store = lateseq.Store(make_store({"item": "int64"}, partitions=6).path, cache_dir=tmp_path / "cache")
    with monkeypatch.context() as patch:
        unwritable_cache(patch, tmp_path / "cache", "full")
        with pytest.warns(RuntimeWarning, match=r"is left out.* \(and 5 other segments' copies: (p\d+-\w+, ){2}"
                                                r"p\d+-\w+, \.\.\.\)$") as told:
            store.commit(pa.table({"user_id": np.arange(60), "ts": np.arange(60), "item": np.arange(60)}))
    assert len(told) == 1


def test_copies_left_out_are_told_of_once_the_write_is_published_and_at_the_callers_line(make_store, tmp_path,
                                                                                           monkeypatch):
    """A write that left a copy out and then failed (a later file, the publish) warned that
    the segment's durable files were written, of segments it then removed (s40B); and the
    warning named lateseq's own line. Now it is given once the write returns, at its caller."""
    make_store({"item": "int64"})
    cache = tmp_path / "cache"
    store = lateseq.Store(tmp_path / "store0", cache_dir=cache)
    events = pa.table({"user_id": [1, 2], "ts": [1, 2], "item": [3, 4]})

    def publish_fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, "full")
        patch.setattr(lateseq._versions.VersionLog, "publish", publish_fails)
        with warnings.catch_warnings(record=True) as told, pytest.raises(OSError):
            warnings.simplefilter("always")
            store.commit(events)
        assert told == []
        assert lateseq.open(tmp_path / "store0").version == 0
    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, "full")
        with pytest.warns(RuntimeWarning, match="is left out") as told:
            store.commit(events)
    assert [Path(w.filename).name for w in told] == [Path(__file__).name]
    # a commit that lands on a compaction published meanwhile writes its segment again: the first
    # one's copy, removed with it, is not told of (s40F: a warning named a segment of no version)
    real_publish, raced = lateseq.Store._publish, []

    def compaction_published_meanwhile(self, version, operation, infos, new, *args, **kwargs):
        if not raced:
            raced.append(new[0].name)
            self._remove_unpublished(new)
            raise lateseq.CommitConflict(f"version {version} was published by another writer; retry")
        return real_publish(self, version, operation, infos, new, *args, **kwargs)

    with monkeypatch.context() as patch:
        unwritable_cache(patch, cache, "full")
        patch.setattr(lateseq.Store, "_publish", compaction_published_meanwhile)
        patch.setattr(lateseq.Store, "_compacted_since", lambda self, base: base)
        with pytest.warns(RuntimeWarning, match="is left out") as told:
            published = store.commit(events)
    named = [re.search(r"segment (\S+) is left out", str(w.message)).group(1) for w in told]
    assert raced and raced[0] not in named and named == [published.segment_infos[-1].name]


@pytest.mark.parametrize("operation", ["commit", "compact", "tag", "cleanup"])
def test_a_rename_that_fails_leaves_no_temporary_and_names_the_file(small_store, monkeypatch, operation):
    """A file is written under a temporary name, then renamed into place: a rename that
    failed (a full disk, a folder made read-only) left the fsynced temporary in the store
    until cleanup's grace passed, and raised a bare OSError naming no file."""
    before = {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")}

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    act = {"commit": lambda: small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [1],
                                                          "rating": pa.array([1], pa.int8())})),
           "compact": small_store.compact, "tag": lambda: small_store.tag("prod", 1),
           "cleanup": lambda: small_store.cleanup(before=2, grace_s=0)}[operation]
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_room)
        with pytest.raises(lateseq.StoreError, match=rf"cannot write {small_store.path}/\S+ \(No space left"):
            act()
    after = {name: data for name, data in snapshot(small_store.path).items() if not name.endswith(".lock")}
    assert after == before


def test_two_creates_of_one_path_at_once_refuse_one(tmp_path, monkeypatch):
    """Both of two processes creating a store at one new path succeeded: the schema
    written last replaced the other, whose handle then held a schema it never asked for."""
    path = tmp_path / "s"
    real = lateseq._store._store_holding

    def another_process_creates_it_meanwhile(where):  # called after create's check for a store
        monkeypatch.setattr(lateseq._store, "_store_holding", real)
        lateseq.create(path, lateseq.Schema({"item": "int64"}))
        return real(where)

    monkeypatch.setattr(lateseq._store, "_store_holding", another_process_creates_it_meanwhile)
    with pytest.raises(lateseq.StoreError, match="already holds a store"):
        lateseq.create(path, lateseq.Schema({"item": "int64", "rating": "int8"}))
    assert dict(lateseq.open(path).schema.columns) == {"item": "int64"}


@pytest.mark.parametrize("tagged_again", [False, True])
def test_a_tag_moved_while_it_is_opened(small_store, monkeypatch, tagged_again):
    """A tag untagged (and tagged again) by another process between the check that its
    file exists and its read made ``open(path, tag)`` say the store was damaged ("restore
    it from a backup"), a StoreError, not the VersionNotFound of a missing tag."""
    small_store.tag("t", 1)
    real = lateseq._versions.read_regular

    def moved_first(path, *limits):
        if path.name != "t.json":
            return real(path, *limits)
        monkeypatch.setattr(lateseq._versions, "read_regular", real)
        small_store.untag("t")
        try:
            return real(path, *limits)
        finally:  # tagged again just after the read missed it
            if tagged_again:
                small_store.tag("t", 2)

    monkeypatch.setattr(lateseq._versions, "read_regular", moved_first)
    if tagged_again:
        assert lateseq.open(small_store.path, "t").version == 2
    else:
        with pytest.raises(lateseq.VersionNotFound, match="no tag 't'"):
            lateseq.open(small_store.path, "t")


def test_a_publish_that_fails_after_its_manifest_is_placed_keeps_the_version_s_files(small_store, monkeypatch):
    """Only a publish refused before placing its manifest (a conflict, a full disk) removes
    the commit's new files: one that fails after (the folder's fsync) is published, and
    another writer may already have built on it while cleanup made its manifest a
    tombstone (its files were removed then: the newer version could not be read)."""
    real, raced = lateseq._versions.fsync_dir, []

    def another_writer_then_a_failure(path):
        if path != small_store.path / "versions" or raced:
            return real(path)
        raced.append("another writer")  # its own publish calls this too
        rival = lateseq.open(small_store.path).commit(  # version 4, on version 3's files
            pa.table({"user_id": [4], "ts": [1], "item": [8], "rating": pa.array([1], pa.int8())}))
        rival._log.retire_before(4)  # cleanup's first step: version 3 a tombstone
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(lateseq._versions, "fsync_dir", another_writer_then_a_failure)
    with pytest.raises(OSError, match="Input/output error"):
        small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [7], "rating": pa.array([1], pa.int8())}))
    monkeypatch.undo()
    latest = lateseq.open(small_store.path)
    assert latest.version == 4 and segment_files(latest) >= referenced_files(latest)
    examples = lateseq.log_examples(latest, pa.table({"user_id": [3, 4], "request_ts": [2, 2]}))
    assert lateseq.materialize(latest, examples, lateseq.Projection(5, ["item"])).values["item"].tolist() == [7, 8]


def test_create_refuses_an_existing_store(small_store):
    with pytest.raises(lateseq.StoreError, match="already holds a store"):
        lateseq.create(small_store.path, small_store.schema)
    assert lateseq.open(small_store.path).version == 2


def test_commit_accepts_tables_readers_and_parquet_files(make_store, tmp_path):
    import pyarrow.parquet as pq

    table = events([1, 1, 2], [3, 1, 2], [1, 2, 3])
    pq.write_table(table, tmp_path / "events.parquet")
    sources = [table, table.to_reader(max_chunksize=1), tmp_path / "events.parquet",
               str(tmp_path / "events.parquet")]
    for source in sources:
        store = make_store().commit(source)
        examples = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [9, 9]}))
        batch = lateseq.materialize(store, examples, lateseq.Projection(5, ("ts", "item")))
        assert batch.values["item"].tolist() == [2, 1, 3], type(source)


# ---------------------------------------------------------------------- cleanup


@pytest.mark.parametrize("name", ["merged_reads", "readahead"])
def test_read_settings_travel_with_the_handle_and_are_checked(small_store, name):
    for setting in (True, False, "auto"):
        handle = lateseq.open(small_store.path, **{name: setting})
        assert getattr(pickle.loads(pickle.dumps(handle)), name) == setting
        assert getattr(handle.checkout(1), name) == setting and getattr(handle.latest(), name) == setting
    assert f"{name}=False" in repr(lateseq.open(small_store.path, **{name: False}))
    assert getattr(lateseq.open(small_store.path), name) == "auto" and name not in repr(lateseq.open(small_store.path))
    for bad in ("yes", 0, 1, None, "AUTO"):
        with pytest.raises(lateseq.SchemaError, match=name):
            lateseq.open(small_store.path, **{name: bad})


def test_a_cache_dir_inside_the_store_is_refused_but_its_own_cache(small_store):
    for inside in ("segments", "versions", "."):
        with pytest.raises(lateseq.SchemaError, match="is inside the store"):
            lateseq.open(small_store.path, cache_dir=small_store.path / inside)
    assert lateseq.open(small_store.path, cache_dir=small_store.path / "cache").cache_dir == small_store.path / "cache"


def test_a_shared_cache_dir_gives_each_user_a_folder_no_other_can_write(small_store, tmp_path):
    """In one LATESEQ_CACHE_DIR for all, another user made a store's folder writable and
    forged a merged copy there, digests and all: reads returned wrong values that passed
    every check; another planted a link there, and reads wrote, and cleanup deleted,
    through it (a stranger's). Each user gets a folder of their own, made for them alone,
    and one another user could write into is refused."""
    shared = tmp_path / "shared"
    handle = lateseq.open(small_store.path, cache_dir=shared)
    mine = handle.cache_dir
    assert mine.parent == shared and mine.name.endswith(f"-u{os.geteuid()}") and mine.is_dir()
    assert (mine.stat().st_mode & 0o777) == 0o700
    assert lateseq.open(small_store.path, cache_dir=shared).cache_dir == mine  # this user's processes share it
    examples = lateseq.log_examples(handle, pa.table({"user_id": [1], "request_ts": [10**6]}))
    expected = lateseq.materialize(handle, examples, lateseq.Projection(3)).values
    elsewhere = tmp_path / "docs"
    elsewhere.mkdir()
    shutil.rmtree(mine)
    mine.symlink_to(elsewhere)
    with pytest.raises(lateseq.StoreError, match="is a symbolic link: lateseq reads copies only from a folder no "
                                                 "other user can write"):
        lateseq.open(small_store.path, cache_dir=shared)
    assert not list(elsewhere.iterdir())
    mine.unlink()
    mine.mkdir(0o700)
    mine.chmod(0o777)
    with pytest.raises(lateseq.StoreError, match=r"may be written by its group or others \(mode 777; chmod go-w it\)"):
        lateseq.open(small_store.path, cache_dir=shared)
    if os.geteuid() == 0:  # (only root gives a folder away)
        mine.chmod(0o700)
        os.chown(mine, 65534, -1)
        with pytest.raises(lateseq.StoreError, match="belongs to user 65534, not this one"):
            lateseq.open(small_store.path, cache_dir=shared)
    shutil.rmtree(mine)
    again = lateseq.open(small_store.path, cache_dir=shared)
    assert all(np.array_equal(lateseq.materialize(again, examples, lateseq.Projection(3)).values[name], column)
               for name, column in expected.items())


def test_a_shared_cache_dir_is_refused_where_another_user_could_take_this_users_place(small_store, tmp_path):
    """Whoever may rename what is in a folder above this user's (its owner, whatever its
    mode; anyone, or its group, in one they may write that is not sticky) could put a
    folder of theirs in place of this user's after it was checked, and a live handle read
    forged copies (strangers'); so could whoever re-pointed a link in the root's path. A
    folder of another user's above is refused; one of root's or this user's that its
    group or every user may write, not sticky, is warned of (a one-user container's volume)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode, who in ((0o777, "every user"), (0o775, "its group")):
        shared.chmod(mode)
        with pytest.warns(RuntimeWarning, match=rf"shared, above this store's folder .* may be written by {who} "
                                                rf"\(mode {mode:o}\), who may put a folder of theirs in place"):
            lateseq.open(small_store.path, cache_dir=shared)
    shared.chmod(0o1777)  # sticky and this user's (or root's), as /tmp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lateseq.open(small_store.path, cache_dir=shared).cache_dir.parent == shared
    if os.geteuid() == 0:  # (only root gives a folder away)
        for mode in (0o1777, 0o755):  # whatever its mode: its owner may rename what is in it
            shared.chmod(mode)
            os.chown(shared, 65534, -1)
            with pytest.raises(lateseq.StoreError, match="shared/below, belongs to user 65534, who may put a folder "
                                                         "of theirs in place of this user's"):
                lateseq.open(small_store.path, cache_dir=shared / "below")
    (tmp_path / "real").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    handle = lateseq.open(small_store.path, cache_dir=tmp_path / "link")
    assert handle.cache_dir.parent == tmp_path / "real"  # resolved once: a link re-pointed later is not followed
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to(tmp_path / "other")
    assert handle.latest().cache_dir == handle.cache_dir == handle.checkout(1).cache_dir  # by its other handles too


def test_a_shared_cache_dir_made_by_lateseq_is_this_users_alone_whatever_the_umask(small_store, tmp_path):
    """Under umask 0, the folders lateseq made for a cache_dir (and those above a cache
    folder made again) were writable by every user (a stranger's)."""
    previous = os.umask(0)
    try:
        handle = lateseq.open(small_store.path, cache_dir=tmp_path / "made" / "here")
        examples = lateseq.log_examples(handle, pa.table({"user_id": [1], "request_ts": [10**6]}))
        shutil.rmtree(tmp_path / "made" / "here")
        lateseq.materialize(handle, examples, lateseq.Projection(3, where=lateseq.Filter("item", isin=[1, 2, 3])))
    finally:
        os.umask(previous)
    made = [tmp_path / "made", *(tmp_path / "made").rglob("*")]
    assert len(made) > 3 and not [p for p in made if p.is_dir() and p.stat().st_mode & 0o077]  # (755 again, s36G)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o700


def test_the_stores_own_cache_is_never_made_writable_by_all_and_is_warned_of_when_it_is(tmp_path):
    """Under umask 0 (a container's root), STORE/cache was made writable by every user,
    so anyone could write the merged and filtered copies reads trust; refusing such a
    cache at open then refused the store its first commit had published (a stranger's)."""
    previous = os.umask(0)
    try:
        store = lateseq.create(tmp_path / "s", lateseq.Schema({"item": "int64"}))
        store = store.commit(pa.table({"user_id": [1], "ts": [1], "item": [7]}))
        log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [5]}))
        lateseq.materialize(store, log, lateseq.Projection(3, where=lateseq.Filter("item", isin=[7])))
    finally:
        os.umask(previous)
    assert [p for p in (store.path / "cache").rglob("*") if p.is_dir()]  # (derived/ made too)
    assert not [p for p in [store.path / "cache", *(store.path / "cache").rglob("*")]
                if p.is_dir() and p.stat().st_mode & 0o002]
    (store.path / "cache").chmod(0o1777)
    with pytest.warns(RuntimeWarning, match=r"cache may be written by every user \(mode 1777, sticky\): a merged or "
                                            "filtered copy there decides what a read returns"):
        reopened = lateseq.open(store.path)
    assert lateseq.materialize(reopened, log, lateseq.Projection(3)).values["item"].tolist() == [7]


def test_a_relative_cache_dir_stays_where_it_was_when_the_directory_changes(small_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = lateseq.open(small_store.path, cache_dir="rc")
    assert store.cache_dir.is_absolute() and store.cache_dir.is_relative_to(tmp_path / "rc")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [10**6]})),
                        lateseq.Projection(3))
    assert not (tmp_path / "elsewhere" / "rc").exists()


def test_a_cache_dir_that_is_a_file_is_named(small_store, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(lateseq.StoreError, match="is a file, not a folder for the read cache"):
        lateseq.open(small_store.path, cache_dir=tmp_path / "file")


def test_stores_sharing_a_cache_dir_never_clean_up_each_other(make_store, tmp_path):
    """One LATESEQ_CACHE_DIR for every store: each store's cleanup deletes what it no
    longer uses there, and only its own files."""
    shared = tmp_path / "shared-cache"
    stores = []
    for _ in range(2):
        store = make_store({"item": "int64", "rating": "bool"})
        store = lateseq.open(store.path, cache_dir=shared)
        for k in range(2):
            store = store.commit(events([1, 2], [k, k + 1], [3, 4], rating=True))
        stores.append(store.compact())
    assert stores[0].cache_dir != stores[1].cache_dir and stores[0].cache_dir.parent == shared
    someone = shared / ".tmp-someone-elses-download"
    someone.write_bytes(b"x")
    os.utime(someone, (0, 0))  # older than any grace
    others = sorted(stores[1].cache_dir.rglob("*"))
    stores[0].cleanup(before=stores[0].version, grace_s=0)
    assert sorted(stores[1].cache_dir.rglob("*")) == others and someone.exists()
    assert len(list(stores[0].cache_dir.glob("*.arrow"))) == 1  # its retired versions' copies went


def test_a_reading_hosts_own_cache_is_cleaned_up_by_cleanup_cache_alone(make_store, tmp_path, dir_snapshot):
    """The writer's cleanup never sees a reader's cache_dir: it grew with every version
    read (s52C). cleanup_cache deletes there what no kept version reads, and nothing else."""
    writer = make_store({"item": "int64", "rating": "bool"})
    reader_cache = tmp_path / "reader-cache"
    examples = []
    for day in range(6):
        writer = writer.commit(events([1, 2, 3], [10 * day + 1] * 3, [day, day + 1, day + 2], rating=True))
        writer = writer.compact()  # a new segment every version: each day's read decodes another
        reader = lateseq.open(writer.path, cache_dir=reader_cache)
        requests = pa.table({"user_id": [1, 2, 3], "request_ts": [10 * day + 5] * 3})
        examples.append(lateseq.log_examples(reader, requests))
        lateseq.materialize(reader, examples[-1], lateseq.Projection(10))
        writer.cleanup(before=writer.version, grace_s=0)
    copies = sorted(p.name for p in reader.cache_dir.glob("*.arrow"))
    assert len(copies) == 6  # one per version read, five of them retired
    store_files = dir_snapshot(writer.path)
    with pytest.raises(lateseq.SchemaError, match="grace_s must be a non-negative number"):
        reader.cleanup_cache(grace_s=-1)
    reader.cleanup_cache(grace_s=0)
    kept = {info.name for info in writer.segment_infos}
    assert {p.name.split(".")[0] for p in reader.cache_dir.glob("*.arrow")} == kept  # the latest's alone
    assert dir_snapshot(writer.path) == store_files  # retired nothing, touched nothing of the store
    expected = [lateseq.materialize(writer, log, lateseq.Projection(10)) for log in examples]
    for log, want in zip(examples, expected, strict=True):  # every pointer still rebuilds, through the latest
        got = lateseq.materialize(lateseq.open(writer.path, cache_dir=reader_cache), log, lateseq.Projection(10))
        assert not got.rows_differ(want).any()


def test_cleanup_keeps_tagged_and_latest_versions_and_old_pointers_rebuild(make_store):
    store = make_store(partitions=2)
    logs = []
    for step in range(4):
        store = store.commit(events([1, 2, 3], [step, step, 10 - step], [step, step + 10, step + 20]))
        logs.append(lateseq.log_examples(store, pa.table({"user_id": [1, 2, 3], "request_ts": [9, 9, 9]})))
    store.tag("keep", 2)
    store = store.compact()
    projection = lateseq.Projection(9, ("ts", "item"))
    before = [lateseq.materialize(store, log, projection) for log in logs]
    unpublished = store.path / "segments" / "p00000-concurrent-writer.arrow"
    unpublished.write_bytes(b"not yet published")
    assert store.cleanup(before="latest") == [1, 3, 4]  # never the latest, never a tag
    assert [v.version for v in store.versions()] == [2, 5]
    assert unpublished.exists()  # younger than the grace period: maybe another writer's
    crashed = store.cache_dir / ".tmp-0badf00d-crashed-decoder.arrow"
    crashed.write_bytes(b"half")
    decoding = store.cache_dir / ".tmp-0badf00d-decoding-now.arrow"
    decoding.write_bytes(b"half")
    os.utime(crashed, (time.time() - 7200, time.time() - 7200))
    store.cleanup(before=store.version, grace_s=0)
    assert not crashed.exists() and decoding.exists()  # a decode may take a while: an hour's grace
    decoding.unlink()
    assert segment_files(store) == referenced_files(store)
    kept = {name.split(".")[0] for name in referenced_files(store)}
    assert {p.name for p in store.cache_dir.iterdir()} <= {f"{name}.arrow" for name in kept}
    assert {f"{i.name}.arrow" for i in store.segment_infos} <= {p.name for p in store.cache_dir.iterdir()}
    for log, expected in zip(logs, before, strict=True):  # events keep their version
        batch = lateseq.materialize(lateseq.open(store.path), log, projection)
        assert np.array_equal(batch.offsets, expected.offsets)
        assert all(np.array_equal(batch.values[n], expected.values[n]) for n in expected.values)
    with pytest.raises(lateseq.VersionNotFound):
        store.checkout(3)
    assert store.commit(events([1], [0], [0])).version == 6  # numbers are never reused


@pytest.mark.parametrize("operation", ["commit", "compact"])
def test_a_write_outlasting_another_hosts_grace_stamps_its_files_or_publishes_nothing(make_store, monkeypatch,
                                                                                     operation):
    """A cleanup on another host (its lock not this host's) removes unreferenced files older
    than its grace: a compaction taking longer lost its first segments, and its version
    was published naming files that were gone (a stranger's, with locks that did not reach
    across hosts). Before publishing, a writer stamps its files, and publishes nothing
    where one is gone."""
    store = make_store(partitions=2)
    for step in range(2):
        store = store.commit(events([1, 2, 3], [step, step, step], [step, step, step]))
    stamp = lateseq._store.Store._stamp_unpublished
    hour_ago = time.time() - 3600

    def aged(self, new, version):  # the files written an hour ago, as a long write's first ones
        for info in new:
            for path in info.files(self.path / "segments"):
                os.utime(path, (hour_ago, hour_ago))
        stamp(self, new, version)

    def write() -> lateseq.Store:
        return store.compact() if operation == "compact" else store.commit(events([4], [9], [9]))

    monkeypatch.setattr(lateseq._store.Store, "_stamp_unpublished", aged)
    written = write()
    assert all(p.stat().st_mtime > hour_ago + 1800 for i in written.segment_infos
               if i.name not in {j.name for j in store.segment_infos} for p in i.files(store.path / "segments"))
    assert written.cleanup(before="latest", grace_s=1800) is not None  # another host's cleanup now: nothing lost
    assert lateseq.audit.verify(lateseq.open(store.path)) == []

    def gone(self, new, version):  # another host's cleanup took one meanwhile
        new[0].files(self.path / "segments")[0].unlink()
        stamp(self, new, version)

    monkeypatch.setattr(lateseq._store.Store, "_stamp_unpublished", stamp)
    store = lateseq.open(store.path).commit(events([5], [10], [10]))  # something to compact again
    lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [99]})),
                        lateseq.Projection(3))  # its read cache filled before the snapshot
    before = snapshot(store.path)
    monkeypatch.setattr(lateseq._store.Store, "_stamp_unpublished", gone)
    with pytest.raises(lateseq.StoreError, match="was removed before it was published.*nothing was published"):
        write()
    assert lateseq.open(store.path).version == store.version
    assert snapshot(store.path) == before  # its other files removed too
    monkeypatch.setattr(lateseq._store.Store, "_stamp_unpublished", stamp)
    real_write = lateseq._format.write_synced

    def taken_at_once(path, data):  # removed right after it was written: a bare FileNotFoundError escaped
        crc = real_write(path, data)
        path.unlink()
        return crc

    monkeypatch.setattr(lateseq._format, "write_synced", taken_at_once)
    with pytest.raises(lateseq.StoreError, match="was removed before it was published.*nothing was published"):
        write()
    assert snapshot(store.path) == before


@pytest.mark.parametrize("stamped", ["before the move", "after the move"])
def test_cleanup_racing_another_hosts_publish_loses_no_version(make_store, monkeypatch, stamped):
    """A cleanup looked at a file's age, a writer on another host (its lock not this
    host's) then stamped the file and published, and cleanup removed it: the version named
    a file that was gone (a stranger's, 7 of 40 trials with a slow unlink). Cleanup moves
    a file aside and looks again: stamped before the move, the file goes back; stamped
    after it, the writer finds it gone and publishes nothing."""
    store = make_store(partitions=1).commit(events([1, 2], [0, 0], [0, 0]))
    monkeypatch.setattr(lateseq._versions.VersionLog, "writing", lambda self: contextlib.nullcontext())
    stamp, looked = lateseq._store.Store._stamp_unpublished, lateseq._store.older_than
    ready, go, written, outcome = threading.Event(), threading.Event(), set(), {}

    def long_write(self, new, version):  # written an hour ago, published now
        for path in (path for info in new for path in info.files(self.path / "segments")):
            os.utime(path, (time.time() - 3600,) * 2)
            written.add(path.name)
        ready.set()
        go.wait(30)
        stamp(self, new, version)

    def write():
        try:
            outcome["store"] = store.commit(events([3], [1], [1]))
        except lateseq.StoreError as exc:
            outcome["error"] = str(exc)

    def racing(path, grace_s):  # the other host's stamp and publish land right after this look
        old = looked(path, grace_s)
        moved = path.name not in written
        if any(path.name.endswith(name) for name in written) and moved == (stamped == "after the move"):
            go.set()
            writer.join(30)
        return old

    monkeypatch.setattr(lateseq._store.Store, "_stamp_unpublished", long_write)
    monkeypatch.setattr(lateseq._store, "older_than", racing)
    writer = threading.Thread(target=write)
    writer.start()
    assert ready.wait(30)
    store.cleanup(before="latest", grace_s=1800)
    go.set()
    writer.join(30)
    reopened = lateseq.open(store.path)
    assert lateseq.audit.verify(reopened) == []
    assert not [p for p in (store.path / "segments").iterdir() if p.name.startswith(".tmp-")]
    if stamped == "before the move":
        assert "error" not in outcome and reopened.version == store.version + 1
        log = lateseq.log_examples(reopened, pa.table({"user_id": [3], "request_ts": [5]}))
        assert lateseq.materialize(reopened, log, lateseq.Projection(3)).values["item"].tolist() == [1]
    else:
        assert "was removed before it was published" in outcome["error"] and reopened.version == store.version
        assert segment_files(reopened) == referenced_files(reopened)


def test_cleanup_puts_back_what_a_stopped_cleanup_moved_aside(make_store):
    """A cleanup killed between moving a file aside and looking at it again left a kept
    version without it; the next cleanup puts it back, and deletes what nothing names."""
    store = make_store(partitions=1).commit(events([1, 2], [0, 0], [0, 0]))
    store = store.commit(events([1], [1], [1]))
    old = store.segment_infos[0].files(store.path / "segments")[0]
    orphan = store.path / "segments" / f"p00000-{'f' * 32}.parquet"
    orphan.write_bytes(b"from a crashed write")
    for path, aside in ((old, ".tmp-aside-0badcafe-"), (orphan, ".tmp-aside-12345678-")):
        os.utime(path, (time.time() - 7200,) * 2)
        path.rename(path.with_name(aside + path.name))
    assert lateseq.audit.verify(lateseq.open(store.path)) != []
    store.cleanup(before="latest", grace_s=3600)
    assert lateseq.audit.verify(lateseq.open(store.path)) == []
    assert segment_files(store) == referenced_files(store)


@pytest.mark.parametrize("patience_s", [0.1, 30.0])
def test_cleanup_closes_the_gate_to_writers_once_it_waited_its_patience(make_store, monkeypatch, patience_s):
    """Writers whose shared locks overlapped never left the store's lock free, and cleanup
    waited as long as they came (s34D: 15 s median, 33 s at most, with 4 committers).
    Closed at once, the gate made every commit wait out a long compaction whenever a
    cleanup came (s34G): it closes after GATE_AFTER_S."""
    monkeypatch.setattr(lateseq._versions, "GATE_AFTER_S", patience_s)
    store = make_store(partitions=1).commit(events([1], [0], [0]))
    log = lateseq._versions.VersionLog(store.path)
    order, midway, first_done, go_on = [], threading.Event(), threading.Event(), threading.Event()
    go_on.set()

    def writer(name, hold):
        with log.writing():
            order.append(f"{name} in")
            midway.set()
            hold.wait(10)
        order.append(f"{name} out")

    def cleanup():
        with log.deleting():
            order.append("cleanup")

    first = threading.Thread(target=writer, args=("first", first_done))
    first.start()
    midway.wait(10)
    cleaner = threading.Thread(target=cleanup)
    cleaner.start()
    gate = os.open(store.path / lateseq._versions.GATE, os.O_RDONLY | os.O_CREAT)
    deadline = time.monotonic() + 10
    while patience_s < 1 and time.monotonic() < deadline:  # until the cleanup has closed the gate
        try:
            fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(gate, fcntl.LOCK_UN)
            time.sleep(0.01)
        except BlockingIOError:
            break
    os.close(gate)
    second = threading.Thread(target=writer, args=("second", go_on))
    second.start()
    if patience_s > 1:  # the gate is open: the second writer goes in beside the first
        deadline = time.monotonic() + 10
        while "second in" not in order and time.monotonic() < deadline:
            time.sleep(0.01)
    first_done.set()
    for thread in (first, cleaner, second):
        thread.join(20)
    if patience_s < 1:
        assert order.index("cleanup") < order.index("second in"), order
    else:
        assert order.index("second in") < order.index("cleanup"), order


def test_a_version_retired_before_its_writer_opened_it_returns_the_latest(make_store, monkeypatch):
    """A writer paused after publishing, while another committed and cleaned up, raised
    VersionNotFound for a commit that was made (s34B): a caller retrying it commits twice."""
    store = make_store(partitions=1).commit(events([1], [0], [0]))
    remember = lateseq._versions.VersionLog.remember

    cleaner = []

    def meanwhile(log, version, segments):  # the writer still holds its lock: cleanup retires, then waits
        remember(log, version, segments)
        monkeypatch.setattr(lateseq._versions.VersionLog, "remember", remember)
        other = lateseq.open(store.path).commit(events([2], [5], [5]))
        cleaner.append(threading.Thread(target=other.cleanup, args=("latest", 0)))
        cleaner[0].start()
        deadline = time.monotonic() + 10
        while other._kept(version) and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(lateseq._versions.VersionLog, "remember", meanwhile)
    with pytest.warns(UserWarning, match="version 2 \\(commit\\) was published, and retired by a cleanup"):
        latest = store.commit(events([1], [3], [3]))
    cleaner[0].join(10)
    assert latest.version == 3 and latest.num_events == 3


def test_cleanup_ages_leftovers_dated_in_the_future_from_now(make_store):
    """A crashed write on a host whose clock ran years ahead left files dated then: they
    stayed young, and no cleanup ever removed them (a stranger's). Cleanup dates them now;
    they age from then."""
    store = make_store(partitions=1).commit(events([1], [0], [0]))
    leftovers = [store.path / "segments" / f"p00000-{'e' * 32}.parquet", store.path / "versions" / ".tmp-0123"]
    for path in leftovers:
        path.write_bytes(b"a crashed write's")
        os.utime(path, (time.time() + 10 * 365 * 86400,) * 2)
    store.cleanup(before="latest", grace_s=0)
    assert all(path.exists() and path.stat().st_mtime <= time.time() for path in leftovers)  # young: from now on
    time.sleep(0.01)
    store.cleanup(before="latest", grace_s=0)
    assert not any(path.exists() for path in leftovers)
    assert segment_files(store) == referenced_files(store)


def test_cleanup_takes_a_tag_or_latest_as_the_cli_does(make_store):
    store = make_store()
    for step in range(4):
        store = store.commit(events([1], [step], [step]))
    store.tag("v3", 3)
    with pytest.raises(lateseq.SchemaError, match="a version number, a tag or 'latest', got float"):
        store.cleanup(before=2.0)
    with pytest.raises(lateseq.SchemaError, match="tag name"):
        store.cleanup(before="no such/tag")
    for past_either_end in (5, 999_999, "1000", -5):  # a typo's 1000 for 100 retired every untagged version
        with pytest.raises(lateseq.VersionNotFound, match="has versions 0 to the latest, 4; nothing was retired"):
            store.cleanup(before=past_either_end)
    assert [v.version for v in store.versions()] == [1, 2, 3, 4]
    assert store.cleanup(before="v3") == [1, 2]
    assert store.cleanup(before="latest") == []  # 3 is tagged
    store.untag("v3")
    assert store.cleanup(before="4") == [3]


def test_any_time_column_name_next_to_a_payload_called_ts(tmp_path):
    """Segments store time under a reserved name, so a payload column may be called "ts"."""
    schema = lateseq.Schema({"ts": "int64"}, user_col="u", time_col="t")
    store = lateseq.create(tmp_path / "s", schema).commit(
        pa.table({"u": [1, 1, 1], "t": [30, 10, 20], "ts": [7, 8, 9]}))
    store = store.commit(pa.table({"u": [1], "t": [15], "ts": [6]})).compact()
    pointers = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [25]}))
    batch = lateseq.materialize(store, pointers, lateseq.Projection(5, ("t", "ts")))
    assert batch.values["t"].tolist() == [10, 15, 20]
    assert batch.values["ts"].tolist() == [8, 6, 9]


# ---------------------------------------------------------------------- durable and decoded forms


def test_decoded_segments_are_rebuilt_from_the_durable_files(make_store, tmp_path, monkeypatch):
    store = make_store({"item": "int64", "score": "float32", "flag": "bool"}, partitions=2)
    rng = np.random.default_rng(1)
    for _ in range(3):
        n = 500
        store = store.commit(pa.table({
            "user_id": rng.integers(0, 40, n), "ts": rng.integers(-2**40, 2**40, n),
            "item": rng.integers(-2**62, 2**62, n),
            "score": pa.array(rng.choice([0.0, -0.0, np.nan, np.inf, 1.5], n).astype(np.float32)),
            "flag": rng.random(n) < 0.5,
        }))
    requests = pa.table({"user_id": np.arange(41), "request_ts": np.full(41, 2**40)})
    examples = lateseq.log_examples(store, requests)
    projection = lateseq.Projection(1000)
    written = lateseq.materialize(store, examples, projection)
    monkeypatch.setattr(lateseq._format, "_HASH_CHUNK", 7)  # hashing in chunks changes nothing
    for version in (store.version, store.compact().version):
        fresh = lateseq.open(store.path, version, cache_dir=tmp_path / f"fresh{version}")
        rebuilt = lateseq.materialize(fresh, examples, projection)  # verifies every checksum
        assert not rebuilt.rows_differ(written).any()
        for info in fresh.segment_infos:
            decoded = (fresh.cache_dir / f"{info.name}.arrow").read_bytes()
            assert decoded == (store.cache_dir / f"{info.name}.arrow").read_bytes()
    assert sum(i.bytes for i in fresh.segment_infos) == sum(
        p.stat().st_size for i in fresh.segment_infos for p in i.files(store.path / "segments"))


def test_a_truncated_decoded_copy_is_decoded_again(small_store):
    info = small_store.segment_infos[0]
    copy = small_store.cache_dir / f"{info.name}.arrow"
    whole = copy.read_bytes()
    copy.write_bytes(whole[: len(whole) // 2])
    examples = lateseq.log_examples(small_store, pa.table({"user_id": [1, 2], "request_ts": [99, 99]}))
    batch = lateseq.materialize(lateseq.open(small_store.path), examples, lateseq.Projection(9, ("item",)))
    assert batch.values["item"].tolist() == [100, 150, 200, 300, 400, 500]
    assert copy.read_bytes() == whole


def test_readers_that_need_the_same_segment_at_once_decode_it_once(small_store, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from lateseq._segments import Segment

    real, calls = lateseq._segments.decode_segment, []

    def slow_decode(*args):
        calls.append(args)
        time.sleep(0.2)  # long enough for every reader to be waiting
        real(*args)

    monkeypatch.setattr(lateseq._segments, "decode_segment", slow_decode)
    info = small_store.segment_infos[0]
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: Segment(small_store.path / "segments", info, tmp_path / "c"), range(4)))
    assert len(calls) == 1
    assert all(np.array_equal(s.stored("item"), opened[0].stored("item")) for s in opened)


def test_a_damaged_durable_file_is_named_and_never_decoded(small_store, tmp_path, dir_snapshot):
    info = small_store.segment_infos[0]
    packed = small_store.path / "segments" / f"{info.name}.parquet"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x01
    packed.write_bytes(bytes(data))
    before = dir_snapshot(small_store.path)
    with pytest.raises(lateseq.StoreError, match=f"segment {info.name} is damaged.*{info.name}.parquet.*CRC-32"):
        lateseq.open(small_store.path, cache_dir=tmp_path / "elsewhere").segments()
    assert dir_snapshot(small_store.path) == before
    assert not any((tmp_path / "elsewhere").glob("**/*.arrow"))
    assert len(lateseq.open(small_store.path).segments()) == 2  # the existing decoded copies still serve


def test_a_cache_that_cannot_be_created_is_named(small_store, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(lateseq.StoreError,
                       match="cannot create the read cache .*cache_dir= \\(the CLI.s --cache-dir, or LATESEQ_CACHE_DIR\\)"):
        lateseq.open(small_store.path, cache_dir=blocker / "cache").segments()


def test_tiered_compaction_merges_recent_runs_and_leaves_big_old_segments():
    assert _tiered_runs([10] * 4, 4) == [(0, 4)]
    assert _tiered_runs([10] * 3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert _tiered_runs([1000, 10, 10, 10, 10], 4) == [(0, 1), (1, 5)]  # the big old one is left alone
    assert _tiered_runs([10, 10, 10, 10, 1000], 4) == [(0, 4), (4, 5)]  # a big new one is not rewritten for them
    assert _tiered_runs([40, 10, 10, 10, 10], 4) == [(0, 5)]  # as many newer rows came: it joins them
    # daily commits of sizes on both sides of 16 (fanout 4's tier edge) formed no run of one tier
    assert _tiered_runs([12, 18] * 2, 4) == [(0, 4)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40) | st.integers(0, 10**6), max_size=120), st.integers(2, 8))
@example(rows=[12, 18] * 60, fanout=4)  # on both sides of a fixed tier's edge
@example(rows=list(range(120, 0, -1)), fanout=3)  # commits that shrink day by day form no run by size
def test_tiered_runs_leave_few_segments_and_nothing_to_merge(rows, fanout):
    """Any row counts: the runs cover the segments in order, merging again changes nothing,
    and at most fanout * log2(rows) segments stay (commits that grow or shrink day by day,
    or jump between sizes, included)."""
    runs = _tiered_runs(rows, fanout)
    assert [k for run in runs for k in range(*run)] == list(range(len(rows)))  # every segment once, in order
    merged = [sum(rows[a:b]) for a, b in runs]
    assert _tiered_runs(merged, fanout) == [(k, k + 1) for k in range(len(merged))]
    assert len(runs) <= fanout * max(1, math.ceil(math.log2(sum(rows) + 1)))


def test_tiered_compaction_of_daily_commits_keeps_few_segments(make_store):
    """Daily commits, each followed by a tiered compaction, keep a bounded number of
    segments (a stranger's 120 days of 10-19 events left 96 with tiers of one size)."""
    rng = np.random.default_rng(0)
    store = make_store()
    for day in range(60):
        n = int(rng.integers(10, 20))
        store = store.commit(events(rng.integers(1, 50, n).tolist(), (day * 100 + rng.integers(0, 100, n)).tolist(),
                                    rng.integers(0, 1000, n).tolist())).compact("tiered", fanout=4)
        assert len(store.segment_infos) <= 4 * math.ceil(math.log2(store.num_events + 1))
    assert len(store.segment_infos) <= 8


def test_tiered_compaction_keeps_every_history(make_store):
    store = make_store(partitions=2)
    for day in range(9):
        store = store.commit(events(list(range(20)), [day] * 20, list(range(20))))
    tiered = store.compact("tiered", fanout=3)
    assert len(tiered.segment_infos) < len(store.segment_infos) and tiered.num_events == store.num_events
    again = tiered.compact("tiered", fanout=3)
    assert len(again.segment_infos) <= len(tiered.segment_infos)
    examples = lateseq.log_examples(store, pa.table({"user_id": list(range(20)), "request_ts": [99] * 20}))
    for handle in (tiered, again, again.compact()):
        assert not lateseq.materialize(handle, examples, lateseq.Projection(5)).rows_differ(
            lateseq.materialize(store, examples, lateseq.Projection(5))).any()
    with pytest.raises(lateseq.SchemaError, match="policy"):
        store.compact("nightly")
    with pytest.raises(lateseq.SchemaError, match="fanout"):
        store.compact("tiered", fanout=1)


@settings(max_examples=30, deadline=None)
@given(commits=st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 40), st.integers(-2**63, 2**63 - 1),
                                           st.booleans(), st.floats(width=32), st.integers(-128, 127)),
                                 min_size=1, max_size=30), min_size=1, max_size=6),
       wide=st.booleans())
def test_a_merge_lays_out_the_segments_as_one_commit_of_their_sorted_events_would(tmp_path_factory, commits, wide):
    """Compaction and merged copies copy the segments' stored columns run by run, each
    re-encoded on the way: they must store exactly what encoding the events, decoded and
    stably sorted, gives (the same narrow types and bases, floats bit for bit, running hash
    sums), with ties broken by an int8 column, times and ids whose ranges span every width."""
    path = tmp_path_factory.mktemp("merge") / "store"
    columns = {"item": "int64", "flag": "bool", "score": "float32", "rank": "int8"}
    store = lateseq.create(path, lateseq.Schema(columns, tiebreak="rank", partitions=2))
    for rows in commits:
        user, ts, item, flag, score, rank = (list(c) for c in zip(*rows, strict=True))
        if not wide:
            item = [i % 1000 for i in item]
        store = store.commit(pa.table({"user_id": user, "ts": [t * (2**40 if wide else 1) for t in ts],
                                       "item": pa.array(item, pa.int64()), "flag": flag,
                                       "score": pa.array(score, pa.float32()), "rank": pa.array(rank, pa.int8())}))
    for partition in sorted({info.partition for info in store.segment_infos}):
        segments = store.segments(partition)
        merged = lateseq._merge.merge_segments(segments, store.schema)
        everything = [lateseq._merge.segment_events(segment, store.schema) for segment in segments]
        user, ts = (np.concatenate([getattr(e, name) for e in everything]) for name in ("user", "ts"))
        payload = {name: np.concatenate([e.payload[name] for e in everything]) for name in columns}
        order = np.lexsort([payload["rank"].astype(np.int64), ts, user])  # stable: segment order, then row order
        expected = lateseq._format.LaidOut.of(lateseq._events.Events(
            user[order], ts[order], {name: values[order] for name, values in payload.items()},
            np.concatenate([e.version for e in everything])[order],
            np.concatenate([e.hashes for e in everything])[order]))
        assert merged.user_ids.tolist() == expected.user_ids.tolist()
        assert merged.ends.tolist() == expected.ends.tolist() and merged.bases == expected.bases
        assert list(merged.stored) == list(expected.stored)
        for name, values in expected.stored.items():
            assert merged.stored[name].dtype == values.dtype, name
            assert merged.stored[name].view(np.uint8).tobytes() == values.view(np.uint8).tobytes(), name
        assert merged.hcum.tolist() == expected.hcum.tolist()


def test_a_mismatch_from_a_deleted_user_says_so(make_store):
    store = make_store().commit(pa.table({"user_id": [1, 2], "ts": [1, 2], "item": [10, 20]}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [9, 9]}))
    after = store.delete([2])
    with pytest.raises(lateseq.ChecksumMismatch, match=r"1 of them are examples of users deleted from the store"):
        lateseq.materialize(after, log, lateseq.Projection(5))


def test_delete_given_a_table_says_to_pass_its_id_column(make_store):
    store = make_store().commit(pa.table({"user_id": [1, 2], "ts": [1, 2], "item": [10, 20]}))
    with pytest.raises(lateseq.SchemaError, match=r"not a Table: pass its id column"):
        store.delete(pa.table({"user_id": [2]}))


# ---------------------------------------------------------------------- manifests of commits


def forget_resolved() -> None:
    """As a new process: no version's segments recalled."""
    lateseq._versions._resolved.clear()


def read_back(path: Path, version: int, users: list[int]) -> dict[int, list[tuple[int, int]]]:
    handle = lateseq.open(path, version)
    log = lateseq.log_examples(handle, pa.table({"user_id": pa.array(users, pa.int64()),
                                                 "request_ts": pa.array([10**12] * len(users), pa.int64())}))
    batch = lateseq.materialize(handle, log, lateseq.Projection(10**6, ("ts", "item")))
    return {u: list(zip(batch.values["ts"][a:b].tolist(), batch.values["item"][a:b].tolist(), strict=True))
            for u, a, b in zip(users, batch.offsets[:-1], batch.offsets[1:], strict=True)}


operations = st.lists(st.one_of(
    st.tuples(st.just("commit"), st.lists(st.integers(1, 6), max_size=5)),
    st.tuples(st.just("compact"), st.sampled_from(["full", "tiered"])),
    st.tuples(st.just("delete"), st.integers(1, 6)),
    st.tuples(st.just("cleanup"), st.integers(0, 6)),
    st.tuples(st.just("tag"), st.integers(0, 20)),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(ops=operations, depth=st.sampled_from([2, 3, lateseq._versions.DELTA_DEPTH]))
@example(ops=[("commit", [1]), ("tag", 1), ("commit", [1]), ("tag", 1), ("cleanup", 0)], depth=2)  # a tag moved
def test_every_kept_version_reads_its_events_through_chains_of_manifests(tmp_path_factory, ops, depth):
    """A commit's manifest lists only what it adds to its parent's: every kept version,
    after any mix of commits, compactions, deletions, tags and cleanups, holds exactly the
    events a plain model of the versions says, read in this process and as a new one."""
    path = tmp_path_factory.mktemp("chains") / "store"
    store = lateseq.create(path, lateseq.Schema({"item": "int64"}, partitions=2))
    model: dict[int, list[tuple[int, int, int]]] = {0: []}  # kept version -> (user, ts, item)
    tags: dict[str, int] = {}  # a tag given again moves: the version it pinned is no longer kept by it
    clock = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lateseq._versions, "DELTA_DEPTH", depth)
        for op, arg in ops:
            if op == "commit" and arg:
                rows = [(u, clock + i, clock + i) for i, u in enumerate(arg)]
                clock += len(arg)
                store = store.commit(events(*map(list, zip(*rows, strict=True))))
                model[store.version] = model[max(model)] + rows
            elif op == "compact" and (new := store.compact(arg)).version != store.version:
                store, model[new.version] = new, model[store.version]
            elif op == "delete" and (new := store.delete([arg])).version != store.version:
                store, model[new.version] = new, [e for e in model[store.version] if e[0] != arg]
            elif op == "cleanup":
                before = max(store.version - arg, 0)
                store.cleanup(before, grace_s=0)
                model = {v: e for v, e in model.items() if v >= before or v in tags.values() or v == 0}
            elif op == "tag" and (kept := sorted(v for v in model if v)):
                store.tag(f"t{arg}", kept[arg % len(kept)])
                tags[f"t{arg}"] = kept[arg % len(kept)]
    for fresh in (False, True):
        if fresh:
            forget_resolved()
        for version, held in model.items():
            if version:
                expected = {u: sorted((t, i) for user, t, i in held if user == u) for u in range(1, 7)}
                assert read_back(path, version, list(range(1, 7))) == expected, (version, fresh)
    assert [v.version for v in store.versions()] == sorted(v for v in model if v)
    assert not lateseq.audit.verify(lateseq.open(path))


def manifest_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "versions").glob("0*.json"))


def test_manifests_of_many_commits_grow_with_the_commits_not_with_the_store(make_store):
    """600 commits of a store never compacted held 308 MB of manifests, each listing every
    segment; a commit's now lists its own, and a full list is written as the segments
    double: all its manifests hold a few times what the last full list does."""
    store = make_store(partitions=4)
    every_segment, counts = 0, []  # what manifests listing every segment would hold
    for step in range(150):
        store = store.commit(events([step % 7, step % 5 + 10], [step, step], [step, step]))
        every_segment += len(json.dumps([i.to_dict() for i in store.segment_infos]))
        counts.append((len(store.segment_infos), sum(i.bytes for i in store.segment_infos)))
    assert manifest_bytes(store.path) < every_segment / 10
    # a full list whenever a chain would add more than its full list holds: the lists
    # double, so all of them hold about twice the last (one every 64 versions: quadratic)
    files = [json.loads(p.read_text()) for p in sorted((store.path / "versions").glob("0*.json"))]
    full, added = 0, 0
    for m in files:
        if "segments" in m:
            full, added = len(m["segments"]), 0
        else:
            added += len(m["added"])
            assert added <= full, m["version"]
    assert sum("segments" in m for m in files) <= 12
    forget_resolved()
    assert lateseq.open(store.path).segment_infos == store.segment_infos
    assert [(v.segments, v.bytes) for v in store.versions()] == counts


def test_cleanup_keeps_what_kept_versions_add_to_and_no_more(make_store):
    store = make_store(partitions=2)
    for step in range(10):
        store = store.commit(events([1, 2], [step, step], [step, 100 + step]))
    store.tag("keep", 3)
    users = [1, 2]
    before = {v: read_back(store.path, v, users) for v in range(1, 11)}
    assert store.cleanup(8, grace_s=0) == [1, 2, 4, 5, 6, 7]
    forget_resolved()
    assert {v: read_back(store.path, v, users) for v in (3, 8, 9, 10)} == {v: before[v] for v in (3, 8, 9, 10)}
    files = {n: json.loads((store.path / "versions" / f"{n:08d}.json").read_text()) for n in range(1, 11)}
    chain, number = set(), 10  # the versions whose lists 8, 9 and 10 add to
    while "segments" not in files[number]:
        number = files[number]["base"]
        chain.add(number)
    assert chain & {1, 2, 4, 5, 6, 7}  # some retired version is needed (a full list every few commits)
    for number in (1, 2, 4, 5, 6, 7):
        assert files[number]["retired"]
        assert bool({"added", "segments"} & set(files[number])) == (number in chain), number
    store.untag("keep")
    store = store.compact()  # lists every segment: no version needs the others any more
    store.cleanup(store.version, grace_s=0)
    for number in range(1, 11):
        tombstone = json.loads((store.path / "versions" / f"{number:08d}.json").read_text())
        assert tombstone["retired"] and not {"added", "segments", "base"} & set(tombstone)
    forget_resolved()
    assert read_back(store.path, store.version, users) == before[10]


def test_a_cleanup_that_stops_midway_leaves_every_kept_version_readable(make_store, monkeypatch):
    """Retired newest first: a version not retired yet adds only to older ones, still as
    they were."""
    store = make_store(partitions=2)
    for step in range(8):
        store = store.commit(events([1, 2], [step, step], [step, 100 + step]))
    before = {v: read_back(store.path, v, [1, 2]) for v in range(1, 9)}
    real = lateseq._versions.write_durably
    stops = 0
    while True:  # each try retires one more version and stops at the next one
        writes = []

        def failing(path, data):
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.EIO, "injected")
            real(path, data)

        monkeypatch.setattr(lateseq._versions, "write_durably", failing)
        try:
            store.cleanup(8, grace_s=0)
        except OSError:
            stops += 1
        else:
            break
        finally:
            monkeypatch.setattr(lateseq._versions, "write_durably", real)
        forget_resolved()
        for info in store.versions():
            assert read_back(store.path, info.version, [1, 2]) == before[info.version], (stops, info.version)
    assert stops == 6  # versions 7 to 2, one a try
    store.cleanup(8, grace_s=0)
    assert [v.version for v in store.versions()] == [8]
    assert read_back(store.path, 8, [1, 2]) == before[8]


def test_a_manifest_chain_mixing_another_store_s_file_is_refused(make_store):
    a, b = make_store(partitions=2), make_store(partitions=2)
    for store in (a, b):
        sign = 1 if store is a else -1
        store = store.commit(events([1, 2, 3, 4], [0] * 4, [0] * 4))  # both partitions: the first full list
        for step in range(1, 3):
            store = store.commit(events([1], [step], [sign * step]))
    (a.path / "versions" / "00000002.json").write_bytes((b.path / "versions" / "00000002.json").read_bytes())
    forget_resolved()
    for version in (2, 3):
        with pytest.raises(lateseq.StoreError, match="does not add to the segments of version"):
            lateseq.open(a.path, version)
    assert lateseq.open(a.path, 1).version == 1


def test_a_base_that_lost_its_segments_is_named(make_store):
    store = make_store()
    for step in range(2):
        store = store.commit(events([1], [step], [step]))
    base = store.path / "versions" / "00000001.json"
    base.write_bytes(lateseq._versions.dump_checked({"version": 1, "retired": True, "retired_at": 0.0}))
    forget_resolved()
    with pytest.raises(lateseq.StoreError, match=r"00000001.json is missing or has lost the segments that version 2"):
        lateseq.open(store.path)


def test_a_shared_cache_serves_a_store_whose_name_is_as_long_as_a_file_name_may_be(tmp_path):
    """The cache's folder for a store is its name and a hash of its path: a 250-byte name
    made it longer than a file name may be."""
    store = lateseq.create(tmp_path / ("é" * 127), lateseq.Schema({"item": "int64"}))
    store = store.commit(events([1, 1], [1, 2], [10, 20]))
    shared = lateseq.open(store.path, cache_dir=tmp_path / "cache")
    log = lateseq.log_examples(shared, pa.table({"user_id": [1], "request_ts": [5]}))
    assert lateseq.materialize(shared, log, lateseq.Projection(5, ("item",))).values["item"].tolist() == [10, 20]
    assert [len(p.name.encode()) <= 255 for p in (tmp_path / "cache").iterdir()] == [True]


def as_written_before_chains(store: lateseq.Store) -> None:
    """Rewrites every manifest of ``store`` as lateseq wrote it before format 2: every
    segment listed, the CRC under "crc32", no format."""
    log = lateseq._versions.VersionLog(store.path)
    for number in log.numbers():
        manifest = log.manifest(number)
        entries = [i.to_dict() for i in log.segments(number, manifest).infos]
        old = {k: v for k, v in manifest.items() if k not in ("base", "depth", "added", "segments_crc32",
                                                               "segment_count", "segment_bytes", "format")}
        log.manifest_path(number).write_bytes(lateseq._versions.dump_checked({**old, "segments": entries}))
    forget_resolved()


@pytest.mark.parametrize("lie", ["rows", "bases", "tag", "twice", "partition"])
def test_crafted_files_whose_checksums_hold_are_refused_by_name_not_decoded_or_crashed_on(make_store, lie):
    """Files rewritten consistently, checksums recomputed (s62T): a 1.6 MB segment of 2**27
    rows where its manifest said 40 was decoded whole (3.7 GB) before any count was
    checked; a manifest's value base of 2**63, and a tag naming "1", were a bare
    OverflowError and TypeError; each is now a StoreError naming the file."""
    import pyarrow.parquet as pq

    store = make_store().commit(events([1, 1, 2], [1, 2, 3], [10, 20, 30]))
    as_written_before_chains(store)
    manifest_path = store.path / "versions" / f"{store.version:08d}.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["segments"][0]
    segment = store.path / "segments" / f"{entry['name']}.parquet"
    if lie == "rows":
        table = pq.read_table(segment)
        pq.write_table(pa.concat_tables([table] * 1000), segment)
        entry["crc32"][0] = zlib.crc32(segment.read_bytes())
        entry["bytes"] += segment.stat().st_size
        (store.cache_dir / f"{entry['name']}.arrow").unlink()
        named, message = segment, f"holds {3000:,} rows, where its manifest and index say 3"
    elif lie == "bases":
        entry["bases"]["item"] = 2**63
        named, message = manifest_path, "lists a malformed segment entry"
    elif lie == "twice":  # verify passed it, and new pointers counted the history twice
        manifest["segments"].append(dict(entry))
        named, message = manifest_path, f"version 1 lists segment {entry['name']} twice"
    elif lie == "partition":  # verify passed it, and its users' histories were empty
        entry["name"], entry["partition"] = "p00007" + entry["name"][6:], 7
        named, message = manifest_path, f"lists segment {entry['name']} of partition 7, where the store has 1"
    else:
        (store.path / "tags" / "x.json").write_bytes(lateseq._versions.dump_checked({"version": "1", "tag": "x"}))
        named, message = store.path / "tags" / "x.json", "names no version (it holds '1')"
    manifest_path.write_bytes(lateseq._versions.dump_checked(manifest))
    forget_resolved()
    with pytest.raises(lateseq.StoreError, match=re.escape(message)):
        handle = lateseq.open(store.path, "x" if lie == "tag" else None, merged_reads=False)
        lateseq.materialize(handle, lateseq.log_examples(handle, pa.table({"user_id": [1], "request_ts": [9]})),
                            lateseq.Projection(5, ("item",)))
    if lie in ("rows", "tag"):  # (a manifest the handle cannot open is the error verify's caller gets)
        assert any(p.path == str(named) and message in p.message for p in lateseq.audit.verify(store, deep=True))


def test_format_2_manifests_are_refused_by_a_lateseq_that_would_misread_them(make_store):
    """lateseq before format 2 read a manifest without "segments" as a version of none, and
    its cleanup deleted the segments that version added: it requires a "crc32" key, which
    format-2 manifests and tombstones do not have, and refuses them as damaged."""
    store = make_store()
    for step in range(4):
        store = store.commit(events([1], [step], [step]))
    store.cleanup(3, grace_s=0)
    for path in sorted((store.path / "versions").glob("0*.json")):
        content = json.loads(path.read_text())
        assert "crc32" not in content and content["format"] == 2, path.name


def test_a_manifest_of_a_later_format_is_named_as_such(make_store):
    store = make_store().commit(events([1], [1], [1]))
    path = store.path / "versions" / "00000001.json"
    content = json.loads(path.read_text())
    content.pop("crc32_format2")
    body = {**content, "format": 3}
    path.write_text(json.dumps({**body, "crc32_format3": lateseq._versions.content_crc(body)}))
    with pytest.raises(lateseq.StoreError, match="written by a newer lateseq \\(manifest format 3; this one reads "
                                                 "formats up to 2\\): upgrade"):
        lateseq.open(store.path)


def test_a_store_written_before_chains_reads_and_grows_in_format_2(make_store):
    store = make_store(partitions=2)
    for step in range(3):
        store = store.commit(events([1, 2], [step, step], [step, 10 + step]))
    before = {v: read_back(store.path, v, [1, 2]) for v in (1, 2, 3)}
    as_written_before_chains(store)
    assert {v: read_back(store.path, v, [1, 2]) for v in (1, 2, 3)} == before
    store = lateseq.open(store.path).commit(events([1], [9], [99]))  # on a manifest a chain may not pass through
    store = store.commit(events([2], [9], [98]))
    files = {n: json.loads((store.path / "versions" / f"{n:08d}.json").read_text()) for n in (4, 5)}
    assert "segments" in files[4] and files[5]["base"] == 4 and "segments" not in files[5]
    store.cleanup(5, grace_s=0)
    forget_resolved()
    assert read_back(store.path, 5, [1, 2]) == {1: before[3][1] + [(9, 99)], 2: before[3][2] + [(9, 98)]}
    assert not lateseq.audit.verify(lateseq.open(store.path))


@pytest.mark.parametrize("reader", ["open", "commit", "cleanup"])
def test_a_version_retired_while_its_chain_is_read_is_read_again_or_skipped(make_store, monkeypatch, reader):
    """Another process compacts and cleans up while this one reads the latest version's
    chain of manifests: opening the latest and committing read the new latest; a cleanup
    skips the version retired meanwhile (VersionNotFound before, s21e)."""
    store = make_store()
    for step in range(5):
        store = store.commit(events([1], [step], [step]))
    real = lateseq._versions.VersionLog._chain_file

    def racing(self, base, version):
        monkeypatch.setattr(lateseq._versions.VersionLog, "_chain_file", real)
        other = lateseq.open(store.path, 5).compact()
        # cleanup's retirement (its deletions wait for this process's writer's lock)
        lateseq._versions.VersionLog(store.path).retire_before(other.version)
        return real(self, base, version)

    forget_resolved()  # else the chain's bases are recalled, not read
    monkeypatch.setattr(lateseq._versions.VersionLog, "_chain_file", racing)
    if reader == "open":
        assert lateseq.open(store.path).version == 6
    elif reader == "commit":
        assert store.commit(events([1], [9], [9])).version == 7
    else:  # versions read before the retirement stay in (keeping more is safe)
        kept = lateseq._versions.VersionLog(store.path).kept_partitions()
        assert (0, tuple(i.name for i in lateseq.open(store.path).segment_infos)) in kept
    assert read_back(store.path, lateseq.open(store.path).version, [1])[1][:5] == [(t, t) for t in range(5)]


def test_a_create_that_fails_leaves_nothing_it_made_and_keeps_what_it_did_not(tmp_path, monkeypatch):
    """A create that failed (its folder's fsync: EIO) left a whole store behind, or, earlier,
    the folders it made (parents included), which the next create took for someone else's."""
    real = lateseq._store.fsync_dir

    def failing(path):
        if (Path(path) / "schema.json").exists():  # the last one: the store's own folder
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path)

    monkeypatch.setattr(lateseq._store, "fsync_dir", failing)
    kept = tmp_path / "kept"
    kept.mkdir()  # an empty folder the user made: stays
    for target, left in ((tmp_path / "a" / "b" / "store", []), (kept, ["kept"])):
        with pytest.raises(lateseq.StoreError, match=rf"cannot create a store at {target}: .*syncing its folder"):
            lateseq.create(target, lateseq.Schema({"item": "int64"}))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(left + (["kept"] if target != kept else []))
        assert not any(kept.iterdir())
    monkeypatch.undo()
    assert lateseq.create(kept, lateseq.Schema({"item": "int64"})).version == 0


def test_an_interrupt_before_a_file_is_put_in_place_leaves_no_temporary(small_store, monkeypatch):
    """SIGINT or SIGTERM (raised by the CLI) between a segment's finished temporary and its
    rename left the full-size ``.tmp-*`` file in segments/ for good."""
    def interrupted(tmp, path):
        raise KeyboardInterrupt

    before = snapshot(small_store.path)
    monkeypatch.setattr(lateseq._format, "put_in_place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small_store.commit(pa.table({"user_id": [3], "ts": [1], "item": [1], "rating": pa.array([1], pa.int8())}))
    assert {n: d for n, d in snapshot(small_store.path).items() if not n.endswith(".lock")} == {
        n: d for n, d in before.items() if not n.endswith(".lock")}


def _replaced_by_another(store: lateseq.Store, commits: int) -> lateseq.Store:
    """``store`` removed and a store of the same schema made at its path, ``commits`` versions long."""
    shutil.rmtree(store.path)
    other = lateseq.create(store.path, store.schema)
    for k in range(commits):
        other = other.commit(pa.table({"user_id": [7], "ts": [100 + k], "item": [k]}))
    return other


@pytest.mark.parametrize("write", ["commit", "compact", "delete", "cleanup", "tag"])
def test_an_old_handle_never_writes_into_another_store_made_at_its_path(make_store, dir_snapshot, write):
    """A handle of a removed store committed into the store created at its path since (on
    top of its latest version: commits land on the latest whatever the handle), and its
    cleanup would retire that store's versions by the old one's numbers (a stranger's)."""
    store = make_store({"item": "int64"})
    for k in range(3):
        store = store.commit(pa.table({"user_id": [1], "ts": [10 + k], "item": [k]}))
    other = _replaced_by_another(store, commits=4)
    before = dir_snapshot(other.path)
    attempt = {"commit": lambda: store.commit(pa.table({"user_id": [1], "ts": [50], "item": [9]})),
               "compact": store.compact, "delete": lambda: store.delete([7]),
               "cleanup": lambda: store.cleanup(store.version + 1, grace_s=0), "tag": lambda: store.tag("mine")}
    with pytest.raises(lateseq.StoreError, match=r"not the one this handle opened: that store was removed and "
                                                 r"another created at its path since; open it again"):
        attempt[write]()
    assert dir_snapshot(other.path) == before


def test_an_old_handle_reading_another_store_made_at_its_path_says_so(make_store):
    """It said a segment index "is missing; restore it from a backup": the other store holds
    this version number, not its files (a stranger's)."""
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [1, 2], "ts": [10, 11], "item": [1, 2]}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [20]}))
    unread = lateseq.open(store.path)  # has mapped nothing yet
    _replaced_by_another(store, commits=3)
    projection = lateseq.Projection(5, ("item",))
    assert lateseq.materialize(store, log, projection).values["item"].tolist() == [1]  # what it mapped: kept
    for attempt in (lambda: lateseq.materialize(unread, log, projection), store.latest, lambda: store.latest_version,
                    store.versions, store.tags):
        with pytest.raises(lateseq.StoreError, match=r"not the one this handle opened"):
            attempt()


@pytest.mark.parametrize("how", ["made-before-ids", "being-made"])
def test_a_store_without_an_id_is_read_and_written_as_before(make_store, how):
    """Stores made before they had an id (no ``id`` file), or a handle opened while its
    store was being made (its id written just after its schema): nothing to tell by, so
    nothing is refused; a lateseq that predates ids reads a store that has one, which
    keeps its schema.json as it was (a stranger found an id inside it failed them)."""
    store = make_store({"item": "int64"})
    assert set(json.loads((store.path / "schema.json").read_text())) <= {
        "format", "user_col", "time_col", "columns", "feature_groups", "tiebreak", "partitions", "arrival_col",
        "event_id_col", "time_unit", "crc32"}
    ident = (store.path / "id").read_bytes()
    (store.path / "id").unlink()
    early = lateseq.open(store.path)
    if how == "being-made":
        (store.path / "id").write_bytes(ident)
    newer = early.commit(pa.table({"user_id": [1], "ts": [10], "item": [1]}))
    newer = newer.commit(pa.table({"user_id": [1], "ts": [20], "item": [2]})).compact()
    newer.tag("kept")
    assert (newer.version, newer.num_events, lateseq.open(store.path, "kept").version) == (3, 2, 3)


def test_a_pickled_handle_knows_its_store(make_store, dir_snapshot):
    """A handle pickled to a worker (a spawned DataLoader's, a Ray actor's) reopened by path
    and version alone: after its store was replaced, it wrote into the other one (a
    stranger's)."""
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [1], "ts": [10], "item": [1]}))
    shipped = pickle.dumps(store)
    other = _replaced_by_another(store, commits=2)
    before = dir_snapshot(other.path)
    with pytest.raises(lateseq.StoreError, match="not the one this handle opened"):
        pickle.loads(shipped)
    assert dir_snapshot(other.path) == before
    assert pickle.loads(pickle.dumps(other)).version == other.version


@pytest.mark.parametrize("damage", ["removed", "garbage", "folder"])
def test_a_missing_or_damaged_id_file_is_named(make_store, damage):
    """Its handles said the store "was removed and another created at its path", which it
    was not; verify said every file was sound (a stranger's)."""
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [1], "ts": [10], "item": [1]}))
    ident = store.path / "id"
    if damage == "removed":
        ident.unlink()
    elif damage == "folder":  # no id can be written into it: the advice says so (s50B)
        ident.unlink()
        ident.mkdir()
    else:
        ident.write_text("not an id")
    state = "missing" if damage == "removed" else "damaged"
    advice = "remove the folder and write as a file" if damage == "folder" else "write back into the file"
    with pytest.raises(lateseq.StoreError, match=rf"id, the store's id, is {state} \(it read [0-9a-f]{{32}} when "
                                                 rf"this handle opened the store\): .*{advice} that id"):
        store.commit(pa.table({"user_id": [1], "ts": [11], "item": [2]}))
    fresh = lateseq.open(store.path)
    problems = [p.message for p in lateseq.audit.verify(fresh)]
    if damage != "removed":
        assert any(f"the store's id, is damaged: {advice} the id" in p for p in problems), problems
    else:  # a store made before stores had ids looks the same
        assert problems == []


@pytest.mark.parametrize("error", [errno.EMFILE, errno.EACCES, errno.EIO])
def test_an_id_file_the_os_cannot_read_is_not_called_damaged(make_store, monkeypatch, error):
    """Out of file handles, a commit said the store's id was damaged and told the user to
    write it back (s49C): the OS's error is named, and nothing is changed."""
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [1], "ts": [10], "item": [1]}))
    before = snapshot(store.path)
    real_open = os.open

    def failing(path, flags, *args, **kwargs):
        if Path(path) == store.path / "id" and not flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(lateseq.StoreError, match=rf"the store's id, is unreadable: {re.escape(os.strerror(error))} "
                                                 r"\(it read [0-9a-f]{32} .*nothing was changed") as caught:
        store.commit(pa.table({"user_id": [1], "ts": [11], "item": [2]}))
    assert "damaged" not in str(caught.value)
    opened = lateseq.open(store.path)  # while it cannot be read: verify still names it (it passed, s50B)
    assert [p.message for p in lateseq.audit.verify(opened)] == [
        f"{store.path / 'id'}, the store's id, is unreadable: {os.strerror(error)}: make it readable by this process"]
    monkeypatch.undo()
    assert snapshot(store.path) == before
    assert store.commit(pa.table({"user_id": [1], "ts": [11], "item": [2]})).version == store.version + 1


def test_every_flipped_bit_of_the_id_is_damage_not_another_store(make_store):
    """A flip that left 32 hex digits read as another store's id: an open handle said the
    store was replaced, and verify passed it (s42A: 30 of 64 flips). The id's last digits
    check the others; an older store's uuid4 id is still taken."""
    store = make_store({"item": "int64"})
    ident = store.path / "id"
    sound = ident.read_bytes()
    assert re.fullmatch(rb"[0-9a-f]{32}", sound)
    flips = 0
    for i in range(len(sound)):
        for bit in range(8):
            flipped = bytearray(sound)
            flipped[i] ^= 1 << bit
            if not re.fullmatch(rb"[0-9a-f]{32}", bytes(flipped)):
                continue  # no hex: damaged before too
            flips += 1
            ident.write_bytes(bytes(flipped))
            problems = [p.message for p in lateseq.audit.verify(lateseq.open(store.path))]
            assert any("the store's id, is damaged" in p for p in problems), (i, bit, problems)
            with pytest.raises(lateseq.StoreError, match="the store's id, is damaged"):
                store.latest()
    assert flips > 32
    ident.write_bytes(uuid.uuid4().hex.encode())  # a store made before ids carried a check
    older = lateseq.open(store.path)
    assert lateseq.audit.verify(older) == [] and older.latest().version == 0


def test_a_store_moved_since_it_was_opened_is_said_to_be_gone(make_store, tmp_path):
    """A commit on a handle whose store was renamed said "cannot lock ... (this user may not
    write there)", sending an operator to permissions (a stranger's)."""
    store = make_store({"item": "int64"})
    store.path.rename(tmp_path / "moved")
    with pytest.raises(lateseq.StoreError, match=r"is gone: moved or removed since it was opened"):
        store.commit(pa.table({"user_id": [1], "ts": [1], "item": [1]}))
    assert not store.path.exists()  # nothing made where it was


def test_reads_of_a_store_moved_away_make_nothing_where_it_was(make_store, tmp_path):
    """A read's tally towards a merged copy made the store's old path again for its read
    cache; a commit then took its locks there and said "not a lateseq store", and create
    refused the path as not empty (s36A)."""
    store = make_store({"item": "int64"})
    for day in range(3):  # uncompacted: reads count towards a merged copy
        store = store.commit(pa.table({"user_id": [1, 2], "ts": [day, day], "item": [day, day]}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2] * 200, "request_ts": [9] * 400}))
    projection = lateseq.Projection(5, ("item",))
    lateseq.materialize(store, log, projection)
    old = store.path
    old.rename(tmp_path / "moved")
    with pytest.warns(RuntimeWarning, match=r"the store .* is gone: moved or removed since this handle opened it"):
        for _ in range(20):  # reads pay their tally, then the merged copy is wanted: read segment by segment
            assert lateseq.materialize(store, log, projection).values["item"].tolist()[:3] == [0, 1, 2]
    with pytest.raises(lateseq.StoreError, match=r"is gone: moved or removed since it was opened"):
        store.commit(pa.table({"user_id": [1], "ts": [5], "item": [5]}))
    assert not old.exists()
    lateseq.create(old, store.schema)


def test_a_record_batch_commits_as_its_table(make_store):
    """It was refused with a hint for pandas frames (a stranger's)."""
    batch = pa.record_batch({"user_id": [1, 1], "ts": [5, 6], "item": [50, 60]})
    store = make_store().commit(batch)
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]}))
    assert lateseq.materialize(store, log, lateseq.Projection(5, ("item",))).values["item"].tolist() == [50, 60]


def test_cleanup_of_a_store_missing_a_kept_versions_segment_retires_nothing(make_store):
    """A partial copy (segments/ copied before a commit published, versions/ after): its
    latest version reads a segment that is missing. Cleanup retired the older, whole
    versions, and no version read the partition again (s36A)."""
    store = make_store({"item": "int64"})
    first = store.commit(pa.table({"user_id": [1, 1], "ts": [1, 2], "item": [10, 11]}))
    log = lateseq.log_examples(first, pa.table({"user_id": [1], "request_ts": [5]}))
    latest = first.commit(pa.table({"user_id": [1], "ts": [3], "item": [12]}))
    lost = next(i.name for i in latest.segment_infos if i.name not in {j.name for j in first.segment_infos})
    before = sorted(p.name for p in (store.path / "versions").iterdir())
    for suffix, missing in ((".parquet", 1), (".index.arrow", 2)):  # rsync cut midway: the index came first
        (store.path / "segments" / f"{lost}{suffix}").unlink()
        for call in (lambda: lateseq.open(store.path).cleanup("latest", grace_s=0),
                     lambda: lateseq.open(store.path).cleanup(latest.version, grace_s=0)):
            with pytest.raises(lateseq.StoreError, match=rf"{missing} segment files that versions kept by this "
                                                         rf"cleanup read are missing \(segments/{lost}"):
                call()
        assert sorted(p.name for p in (store.path / "versions").iterdir()) == before
    projection = lateseq.Projection(5, ("item",))
    assert lateseq.materialize(lateseq.open(store.path, first.version), log, projection).values["item"].tolist() == [
        10, 11]


def test_a_schema_holding_the_store_id_as_some_lateseqs_wrote_it_opens(tmp_path):
    """Eight commits of lateseq kept the store's id inside schema.json; a store they made
    opened with a bare TypeError, every CLI command an "internal error" (s36H). A field no
    lateseq knows (a newer one's) is refused by name."""
    from lateseq._versions import dump_checked, load_checked

    for extra, error in (({"store_id": "2aaaeb392b3940658e7ea48fdbea47be"}, None),
                         ({"retention_days": 30}, r"schema.json has fields this lateseq does not know "
                                                  r"\(retention_days\): a newer lateseq wrote it")):
        path = tmp_path / next(iter(extra))
        lateseq.create(path, lateseq.Schema({"item": "int64"}))
        written = load_checked(path / "schema.json", kept_since_v01=True)
        (path / "schema.json").write_bytes(dump_checked({**written, **extra}))
        if error is not None:
            with pytest.raises(lateseq.SchemaError, match=error):
                lateseq.open(path)
            continue
        store = lateseq.open(path).commit(pa.table({"user_id": [1], "ts": [1], "item": [7]}))
        log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [5]}))
        assert lateseq.materialize(lateseq.open(path), log, lateseq.Projection(3, ("item",))).values[
            "item"].tolist() == [7]


def test_cleanup_warns_of_the_folder_an_older_lateseq_kept_in_a_shared_read_cache(make_store, tmp_path):
    """Before each user had a folder (``-u<uid>``), a shared read cache held a store's copies
    in ``<name>-<hash>``: no cleanup reaches it now, and a deleted user's events stayed in it
    after delete, cleanup and cleanup_cache, unsaid (s62U)."""
    store = make_store().commit(events([1, 2], [1, 2], [10, 20]))
    shared = lateseq.open(store.path, cache_dir=tmp_path / "shared")
    older = shared.cache_dir.with_name(shared.cache_dir.name.rsplit("-u", 1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared.cleanup_cache(grace_s=0)  # none there: nothing said
    older.mkdir()
    with pytest.warns(RuntimeWarning, match=f"{re.escape(str(older))} is this store's read-cache folder as an older"):
        shared.cleanup_cache(grace_s=0)
    with pytest.warns(RuntimeWarning, match="may hold events of users since deleted: remove it"):
        shared.delete([1]).cleanup(before="latest", grace_s=0)
