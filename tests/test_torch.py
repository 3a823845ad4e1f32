"""lateseq.torch against a brute-force oracle: real DataLoaders (0 and 2 workers, fork and
spawn), ranks, exact resume through torchdata's StatefulDataLoader, and the Batch API."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import mmap
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from oracle import Oracle, Request, as_list_views, assert_batch_equal
from torch.utils.data import DataLoader

import lateseq
from lateseq import JaggedBatch
from lateseq._derived import DERIVED_DIR
from lateseq._errors import TransformOverflow
from lateseq._pointers import pointers_from_log, write_log
from lateseq._store import AUTO_MERGE_RENT
from lateseq.torch import Batch, BatchStats, ExampleDataset, LoaderMetrics, rebatch

COLUMNS = ("item_id", "rating", "ts")
MAX_LEN = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store of three commits (late events, time ties) and a compaction, an oracle of it,
    and a log of examples made against each version as it was current."""
    root = tmp_path_factory.mktemp("torch")
    rng = np.random.default_rng(11)
    schema = lateseq.Schema({"item_id": "int64", "rating": "int8"})
    store = lateseq.create(root / "store", schema)
    oracle = Oracle(schema.columns)
    logs = []
    for _ in range(3):
        n = 120
        users, ts = rng.integers(0, 15, n), rng.integers(0, 200, n) // 4 * 4
        items, ratings = rng.integers(1, 500, n), rng.integers(0, 5, n).astype(np.int8)
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item_id": items, "rating": ratings}))
        oracle.commit(users.tolist(), ts.tolist(), {"item_id": items, "rating": ratings})
        m = 80
        logs.append(lateseq.log_examples(store, pa.table({
            "user_id": rng.integers(0, 18, m), "request_ts": rng.integers(0, 220, m),
            "label": rng.integers(0, 2, m).astype(np.int8), "weight": rng.random(m).astype(np.float32),
            "clicked": rng.random(m) < 0.5, "note": [f"n{i}" for i in range(m)],
        })))
    store = store.compact()
    oracle.compact()
    log = pa.concat_tables(logs)
    path = root / "examples.parquet"
    pq.write_table(log, path, row_group_size=16)  # 15 row groups: workers share them out
    return store, oracle, log, path


def check(batches: list[Batch], oracle: Oracle, log: pa.Table, rows_expected: int | None = None) -> None:
    """Every row exactly once, each with the oracle's sequence and its own example columns."""
    rows = np.concatenate([b.rows.numpy() for b in batches]) if batches else np.zeros(0, np.int64)
    want = log.num_rows if rows_expected is None else rows_expected
    assert len(rows) == want and len(np.unique(rows)) == want, "rows missing or repeated"
    for b in batches:
        picked = log.take(pa.array(b.rows.numpy()))
        requests = [Request(r["user_id"], r["request_ts"], r["uih_version"]) for r in picked.to_pylist()]
        offsets, values = oracle.expected(requests, MAX_LEN, COLUMNS)
        got = JaggedBatch(b.offsets.numpy(), {k: v.numpy() for k, v in b.values.items()}, np.zeros(len(b), bool))
        assert_batch_equal(got, offsets, values, f"rows {b.rows.tolist()}")
        assert np.array_equal(b.lengths.numpy(), np.diff(offsets))
        for name in ("label", "weight", "clicked"):
            assert np.array_equal(b.examples[name].numpy(), picked.column(name).to_numpy()), name


@pytest.fixture(scope="module")
def parts(world, tmp_path_factory):
    """The log as part files, as Spark writes it (``_SUCCESS``, checksums, ``_temporary/``)."""
    folder = tmp_path_factory.mktemp("parts") / "log"
    folder.mkdir()
    log = world[2]
    for k, (lo, hi) in enumerate([(0, 7), (7, 7), (7, 100), (100, log.num_rows)]):
        pq.write_table(log.slice(lo, hi - lo), folder / f"part-{k:05d}.snappy.parquet", row_group_size=16)
        (folder / f".part-{k:05d}.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "_SUCCESS").write_text("")
    (folder / "_temporary").mkdir()
    (folder / "_temporary" / "part-00009.parquet").write_text("a task still writing")
    return folder


def dataset(world, source="path", **options) -> ExampleDataset:
    store, _, log, path = world
    options = {"batch_size": 10, "block_rows": 32, "window_rows": 64, **options}  # several per shard
    return ExampleDataset(store, {"path": path, "table": log}.get(source, source), lateseq.Projection(MAX_LEN, COLUMNS),
                          **options)


def same(a: Batch, b: Batch) -> bool:
    pairs = [(a.rows, b.rows), (a.offsets, b.offsets)] + [(a.values[k], b.values[k]) for k in a.values]
    pairs += [(a.examples[k], b.examples[k]) for k in a.examples]
    return a.values.keys() == b.values.keys() and all(torch.equal(x, y) for x, y in pairs)


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_made_without_batch_size_none_says_how_to_make_it(world, num_workers):
    """DataLoader(ds), torch's default batch_size=1, failed with torch's own "default_collate:
    batch must contain tensors ... found Batch" (a new user's first try)."""
    with pytest.raises(TypeError, match=r"DataLoader\(dataset, batch_size=None\)"):
        next(iter(DataLoader(dataset(world), num_workers=num_workers)))


@pytest.mark.parametrize("source", ["path", "table", "folder"])
@pytest.mark.parametrize("shuffle, affinity", [(False, False), (True, False), (True, True)])
def test_single_process_loader_gives_every_example_once_with_its_exact_sequence(world, parts, source, shuffle,
                                                                                affinity):
    _, oracle, log, _ = world
    ds = dataset(world, parts if source == "folder" else source, shuffle=shuffle, affinity=affinity, block_rows=40,
                 window_rows=60)
    batches = list(DataLoader(ds, batch_size=None))
    check(batches, oracle, log)
    assert [len(b) for b in batches[:-1]] == [10] * (len(batches) - 1)
    assert sorted(batches[0].examples) == ["clicked", "label", "weight"]  # numeric, not pointers
    assert batches[0].examples["clicked"].dtype == torch.bool
    assert batches[0].values["rating"].dtype == torch.int8 and batches[0].values["ts"].dtype == torch.int64
    in_log_order = np.concatenate([b.rows.numpy() for b in batches])
    assert np.array_equal(in_log_order, np.arange(log.num_rows)) != shuffle
    assert ds.metrics.batches == len(batches) and ds.metrics.examples == log.num_rows
    assert ds.metrics.examples_per_s > 0 and 0 < ds.metrics.materialize_s < ds.metrics.busy_s
    assert ds.metrics.history_bytes == sum(v.nbytes for b in batches for v in b.values.values())
    assert ds.metrics.waited_s >= ds.metrics.busy_s * 0.5  # no prefetch: the consumer waits while each is made


@pytest.mark.parametrize("source, num_workers, readahead", [("path", 0, False), ("table", 0, True),
                                                              ("path", 2, False)])
def test_prefetch_makes_the_next_batch_ahead_and_changes_nothing(world, source, num_workers, readahead,
                                                                  monkeypatch):
    store, oracle, log, path = world
    store = lateseq.open(store.path, readahead=readahead)  # without readahead, the loader asks for pages itself
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: its pages asked for, made ahead
    options = {"shuffle": True, "affinity": True, "seed": 2, "batch_size": 9}

    def batches(prefetch: bool) -> list[Batch]:
        ds = ExampleDataset(store, path if source == "path" else log, lateseq.Projection(MAX_LEN, COLUMNS),
                            prefetch=prefetch, **options)
        return list(DataLoader(ds, batch_size=None, num_workers=num_workers))

    plain = batches(False)
    hints, made_in = [], []
    real_hint, real_materialize = lateseq.torch._will_need, lateseq.torch.materialize
    monkeypatch.setattr(lateseq.torch, "_will_need", lambda *a: hints.append(len(a[1])) or real_hint(*a))
    monkeypatch.setattr(lateseq.torch, "materialize",
                        lambda *a, **k: made_in.append(threading.current_thread().name) or real_materialize(*a, **k))
    ahead = batches(True)
    check(ahead, oracle, log)
    assert len(plain) == len(ahead) and all(same(a, b) for a, b in zip(plain, ahead, strict=True))
    if num_workers == 0:  # workers make batches in their own processes
        assert hints == ([] if readahead else [len(b) for b in ahead])
        assert len(made_in) == len(ahead) and all(n.startswith("lateseq-prefetch") for n in made_in)
        # pipelined: while the consumer holds batch 0, batch 1 is made, and the read after it
        # (a read a batch here) may be rebuilt too; no further
        made_in.clear()
        it = iter(ExampleDataset(store, path, lateseq.Projection(MAX_LEN, COLUMNS), prefetch=True, **options))
        next(it)
        deadline = time.monotonic() + 30
        while len(made_in) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(made_in) in (2, 3)
        it.close()


def test_a_prefetching_generator_closed_on_its_own_thread_does_not_wait_for_itself():
    """A collection on the prefetch thread can close a generator in a garbage cycle there:
    it joined its own thread, which raised and then hung (s53A)."""
    from lateseq.torch import _ahead

    closing, done = {}, threading.Event()

    class ClosesItsReader:
        def __init__(self) -> None:
            self.made = 0

        def __iter__(self):
            return self

        def __next__(self) -> int:
            self.made += 1
            if self.made == 3:  # made on the prefetch thread, while item 2 is in use
                try:
                    closing["generator"].close()
                except Exception as exc:  # noqa: BLE001 - what the old form raised here
                    closing["error"] = exc
                done.set()
            return self.made

    closing["generator"] = items = _ahead(ClosesItsReader())
    assert next(items) == 1 and next(items) == 2
    assert done.wait(30)
    assert "error" not in closing, closing.get("error")
    assert list(items) == []  # closed: nothing more


def test_will_need_asks_once_per_run_of_pages(monkeypatch):
    calls = []
    monkeypatch.setattr(lateseq.torch, "madvise", lambda start, size, advice: calls.append((start, size, advice)))
    page, gap = lateseq.torch.PAGE, lateseq.torch._GAP_PAGES
    column = np.frombuffer(mmap.mmap(-1, (gap + 10) * page), np.int64)  # page-aligned, like a mapped segment
    base, per_page = column.ctypes.data, page // 8
    far = (gap + 3) * per_page  # rows on page gap + 3 and on
    lo = np.array([0, far + 1, 5, far, 2 * per_page], np.int64)
    hi = np.array([10, far + per_page + 2, 20, far + 3, 2 * per_page + 1], np.int64)
    lateseq.torch._will_need_rows(column, lo, hi)
    # pages 0 and 2 in one call (closer than the gap); pages gap + 3 and gap + 4 in another
    assert calls == [(base, 3 * page, mmap.MADV_WILLNEED), (base + (gap + 3) * page, 2 * page, mmap.MADV_WILLNEED)]
    calls.clear()
    lateseq.torch._will_need_rows(column, lo[:0], hi[:0])
    assert calls == []


@pytest.mark.parametrize("source", ["path", "folder"])
def test_ranks_split_the_log_and_a_new_epoch_reshuffles(world, parts, source):
    _, oracle, log, _ = world
    per_rank = []
    for rank in range(3):
        ds = dataset(world, parts if source == "folder" else source, shuffle=True, seed=4, rank=rank, world_size=3)
        per_rank.append(list(DataLoader(ds, batch_size=None, num_workers=2 if rank == 1 else 0)))
        assert per_rank[-1], "every rank has row groups here"
    check([b for bs in per_rank for b in bs], oracle, log)
    if source == "folder":
        return
    ds = dataset(world, shuffle=True, seed=4)
    first = np.concatenate([b.rows.numpy() for b in ds])
    assert np.array_equal(first, np.concatenate([b.rows.numpy() for b in ds]))  # same epoch: same order
    ds.set_epoch(1)
    second = np.concatenate([b.rows.numpy() for b in ds])
    assert not np.array_equal(first, second) and np.array_equal(np.sort(first), np.sort(second))


@pytest.mark.filterwarnings("ignore:even_batches leaves out")
@pytest.mark.parametrize("options", [{}, {"drop_last": True}, {"even_batches": True}, {"shuffle": True}])
def test_len_is_the_batches_a_rank_yields_whatever_its_workers(world, options):
    """A learning-rate schedule needs the steps of an epoch: len() raised TypeError (a
    stranger's)."""
    for rank in range(3):
        ds = dataset(world, batch_size=7, seed=2, rank=rank, world_size=3, **options)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            for workers in (0, 2):
                loader = DataLoader(ds, batch_size=None, num_workers=workers)
                assert len(loader) == len(ds) == len(list(loader)), (rank, epoch, workers)


def test_even_batches_step_every_rank_the_same_number_of_times(world):
    """What DistributedDataParallel needs: 3 ranks of 2 workers with uneven shards all
    yield the fewest rank's count of batches, each an exact, distinct set of examples."""
    _, oracle, log, _ = world
    counts, batches = [], []
    for rank in range(3):
        # the table in blocks of 3 rows: ranks of 81, 81 and 78 rows, 9, 9 and 8 batches (blocks
        # leaving them further apart would be cut at even shares)
        ds = dataset(world, "table", shuffle=True, seed=4, rank=rank, world_size=3, block_rows=3, even_batches=True)
        got = list(DataLoader(ds, batch_size=None, num_workers=2))
        counts.append(len(got))
        batches += got
    uneven = [len(list(DataLoader(dataset(world, "table", shuffle=True, seed=4, rank=rank, world_size=3,
                                          block_rows=3), batch_size=None, num_workers=2))) for rank in range(3)]
    assert len(set(uneven)) > 1, "the shards are meant to be uneven here"
    assert counts == [min(uneven)] * 3
    rows = np.concatenate([b.rows.numpy() for b in batches])
    check(batches, oracle, log, rows_expected=len(rows))


def copartitioned(tmp_path: Path) -> tuple[lateseq.Store, pa.Table, Path]:
    """A store of 4 partitions, a log of 300 examples, and the log written by copartition_log."""
    rng = np.random.default_rng(5)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}, partitions=4))
    users = rng.integers(0, 40, 600)
    store = store.commit(pa.table({"user_id": users, "ts": rng.integers(0, 1000, 600), "item_id": users * 7}))
    log = lateseq.log_examples(store, pa.table({"user_id": rng.integers(0, 44, 300),
                                                "request_ts": rng.integers(0, 1100, 300)}))
    lateseq.copartition_log(store, log, tmp_path / "log.parquet", row_group_rows=16)
    return store, log, tmp_path / "log.parquet"


def test_a_copartitioned_log_has_each_shard_map_its_own_partitions_only(tmp_path):
    store, log, path = copartitioned(tmp_path)
    written = pq.read_table(path)
    assert sorted(written.to_pylist(), key=str) == sorted(log.to_pylist(), key=str)  # the same examples
    projection = lateseq.Projection(10, ("item_id",))
    rows, opened_by = [], []
    for rank in range(2):
        ds = ExampleDataset(str(tmp_path / "store"), path, projection, batch_size=8, shuffle=True,
                            copartition=True, rank=rank, world_size=2)
        for b in ds:
            want = lateseq.materialize(store, written.take(pa.array(b.rows.numpy())), projection)
            assert np.array_equal(b.offsets.numpy(), want.offsets)
            assert np.array_equal(b.values["item_id"].numpy(), want.values["item_id"])
            rows.append(b.rows.numpy())
        opened_by.append({int(name[1:6]) for name in ds.store._segments._open})
    assert all(opened_by) and not opened_by[0] & opened_by[1], opened_by  # each rank its own partitions
    rows = np.concatenate(rows)
    assert np.array_equal(np.sort(rows), np.arange(len(log)))
    two = ExampleDataset(store, path, projection, batch_size=8, copartition=True)
    got = np.concatenate([b.rows.numpy() for b in DataLoader(two, batch_size=None, num_workers=2)])
    assert np.array_equal(np.sort(got), np.arange(len(log)))
    with pytest.raises(TypeError, match="copartitioned ExampleDataset has no len"):
        len(two)
    pq.write_table(log, tmp_path / "plain.parquet")
    with pytest.raises(lateseq.SchemaError, match="not co-partitioned"):
        ExampleDataset(store, tmp_path / "plain.parquet", projection, copartition=True)
    other = lateseq.create(tmp_path / "other", lateseq.Schema({"item_id": "int64"}, partitions=2))
    with pytest.raises(lateseq.SchemaError, match="for a store of 4 partitions"):
        ExampleDataset(other, path, projection, copartition=True)
    damaged = pq.read_table(path)
    damaged = damaged.replace_schema_metadata({**damaged.schema.metadata, b"lateseq.row_group_partitions": b"{"})
    pq.write_table(damaged, tmp_path / "damaged.parquet")
    with pytest.raises(lateseq.SchemaError, match="co-partitioning record .* is damaged"):
        ExampleDataset(store, tmp_path / "damaged.parquet", projection, copartition=True)


def test_a_dataset_without_a_writable_temporary_directory_makes_plain_batches(world, monkeypatch):
    """A read-only container: the dataset's slot lock file had nowhere to go, and making
    the dataset raised a bare FileNotFoundError (a stranger's)."""
    _store, oracle, log, _ = world
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/lateseq-tmp")
    check(list(DataLoader(dataset(world), batch_size=None, num_workers=0)), oracle, log)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_workers_under_fork_and_spawn(world, context):
    _store, oracle, log, _ = world
    ds = dataset(world, shuffle=True, affinity=True, seed=1, drop_last=False)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    metrics = LoaderMetrics()
    batches = list(metrics.watch(loader))
    check(batches, oracle, log)
    assert sum(len(b) < 10 for b in batches) <= 2  # each worker's last batch only may be short
    assert metrics.batches == len(batches) and metrics.examples == log.num_rows and metrics.busy_s > 0
    assert metrics.history_bytes == sum(v.nbytes for b in batches for v in b.values.values())
    assert metrics.waited_s > 0  # the trainer waited for workers to start, at least
    assert ds.metrics.batches == 0  # workers counted in their own processes, not here


def test_workers_share_what_auto_merged_reads_paid_for(world, tmp_path):
    """The uncompacted version of the fixture read by two workers, epoch after epoch (new
    worker processes each time): "auto" builds the merged copy once their reads together
    paid for it, not once each worker's did, and every epoch gives the oracle's sequences."""
    store, oracle, log, path = world
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    plain = lateseq.open(store.path, 3, cache_dir=tmp_path / "cache", merged_reads=False)
    cache = plain.cache_dir  # the store's folder in it
    assert len(plain.segment_infos) == 3
    # what an epoch pays: the events of pointers whose events lie in more than one segment
    pointers = pointers_from_log(pq.read_table(path), plain.schema)
    located = plain.locate(pointers.user_id, pointers.request_ts, pointers.visibility, MAX_LEN, pointers.length)
    paying = np.concatenate([w.rows for w in located.partitions if not w.single])
    per_epoch = int(np.minimum(located.count[paying], MAX_LEN).sum())
    paid_after = -(-AUTO_MERGE_RENT * plain.num_events // per_epoch)  # epochs, the two workers together
    assert paid_after >= 3  # each worker alone would need about twice as many
    ds = ExampleDataset(lateseq.open(store.path, 3, cache_dir=tmp_path / "cache"), path, projection, batch_size=10,
                        block_rows=32, window_rows=64, shuffle=True, seed=1)
    for epoch in range(1, paid_after + 2):
        ds.set_epoch(epoch)
        check(list(DataLoader(ds, batch_size=None, num_workers=2)), oracle, log)
        built = len(list((cache / DERIVED_DIR).glob("p*.json"))) if (cache / DERIVED_DIR).is_dir() else 0
        if epoch < paid_after:
            assert built == 0, f"built in epoch {epoch}, before the reads paid for it"
        elif epoch > paid_after:  # built in the epoch the reads paid for it, or at the next one's start
            assert built == 1, f"not built after epoch {epoch}"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_that_would_pay_for_the_merged_copy_builds_it_after_its_first_read(world, tmp_path, monkeypatch,
                                                                                    workers):
    """The dataset tells the store how much of the epoch is still to read: an epoch whose
    reads would pay "auto"'s rent twice over has the copy built after its first read (of
    eight; each worker's first, with two, each reckoning the other reads as much), having
    paid less than the rent, not once it paid it all; and gives the oracle's sequences."""
    store, oracle, log, _ = world
    plain = lateseq.open(store.path, 3, merged_reads=False)
    pointers = pointers_from_log(log, plain.schema)
    located = plain.locate(pointers.user_id, pointers.request_ts, pointers.visibility, MAX_LEN, pointers.length)
    paying = np.concatenate([w.rows for w in located.partitions if not w.single])
    price = AUTO_MERGE_RENT * plain.num_events
    copies = -(-2 * price // int(np.minimum(located.count[paying], MAX_LEN).sum()))  # of the log: paid twice over
    path = tmp_path / "examples.parquet"
    pq.write_table(pa.concat_tables([log] * copies), path)
    monkeypatch.setattr(lateseq.torch, "READ_POINTERS", -(-copies * log.num_rows // 8))  # eight reads an epoch
    cache = tmp_path / "cache"
    ds = ExampleDataset(lateseq.open(store.path, 3, cache_dir=cache), path, lateseq.Projection(MAX_LEN, COLUMNS),
                        batch_size=10)
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    check(batches, oracle, pa.concat_tables([log] * copies))
    derived = lateseq.open(store.path, 3, cache_dir=cache).cache_dir / DERIVED_DIR
    assert len(list(derived.glob("p*.json"))) == 1
    tally, = derived.glob(".tmp-rent-*")
    assert tally.stat().st_size * max(1, price // 4096) < price / (2 if workers == 0 else 1)


def test_more_workers_than_row_groups_and_rows_fewer_than_a_batch(world, tmp_path):
    store, oracle, log, _ = world
    for rows, sizes in ((7, [7]), (25, [5, 10, 10])):  # fewer rows than a batch: one batch, not two short
        small = log.slice(5, rows)
        path = tmp_path / f"small{rows}.parquet"
        pq.write_table(small, path)  # one row group for two workers: cut in runs of whole batches
        ds = ExampleDataset(store, path, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10, shuffle=True)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert sorted(len(b) for b in batches) == sizes
        check(batches, oracle, small)
    empty = ExampleDataset(store, log.slice(0, 0), lateseq.Projection(MAX_LEN, COLUMNS), batch_size=4)
    assert list(DataLoader(empty, batch_size=None, num_workers=2)) == []


def test_a_log_written_by_lateseq_feeds_every_worker(world, tmp_path):
    """A log in fewer row groups than workers (pyarrow's default of 1Mi rows made one of
    most logs, write_log's too) is cut again so that every worker gets a share: one
    worker took all 300,000 examples of a stranger's log, the other none."""
    store, oracle, log, _ = world
    path = tmp_path / "big-groups.parquet"
    pq.write_table(log, path, row_group_size=1 << 20)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    ds = ExampleDataset(store, path, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=8, shuffle=True)
    batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    check(batches, oracle, log)
    per_worker = {}
    for b in batches:
        per_worker[b.slot[1]] = per_worker.get(b.slot[1], 0) + len(b)
    assert len(per_worker) == 2 and abs(per_worker[0] - per_worker[1]) <= 1
    big = pa.concat_tables([log] * (70_000 // log.num_rows + 1))
    write_log(big, tmp_path / "written.parquet")  # lateseq's writer: row groups of a loader's block
    meta = pq.ParquetFile(tmp_path / "written.parquet").metadata
    assert meta.num_row_groups == 2 and meta.row_group(0).num_rows == 65536


def test_drop_last_drops_each_shards_short_batch(world):
    _, oracle, log, _ = world
    batches = list(DataLoader(dataset(world, batch_size=16, drop_last=True), batch_size=None))
    assert {len(b) for b in batches} == {16} and len(batches) == log.num_rows // 16
    check(batches, oracle, log, rows_expected=16 * (log.num_rows // 16))


def test_affinity_shares_histories_within_batches(world):
    users = world[2].column("user_id").to_numpy()
    shared = {}
    for affinity in (False, True):
        ds = dataset(world, shuffle=True, affinity=affinity, seed=3)
        for batch in ds:  # examples whose user has an earlier one in the batch
            assert batch.stats.shared_histories == len(batch) - len(set(users[batch.rows.numpy()].tolist()))
        shared[affinity] = ds.metrics.shared_share
    assert shared[True] > 2 * shared[False]


def test_a_handle_older_than_the_log_is_refused_when_the_dataset_is_made(world, tmp_path):
    """Not at the batch that holds the first newer pointer, mid-epoch."""
    store, _, log, path = world
    old = lateseq.open(store.path, 1)
    for examples in (path, log):
        with pytest.raises(lateseq.PointerError, match=r"versions up to \d+ but this store handle is at version 1"):
            ExampleDataset(old, examples, lateseq.Projection(MAX_LEN, COLUMNS))


def test_the_handle_pins_the_version_the_dataset_opened(world, tmp_path):
    store, _, log, _path = world
    copy = lateseq.create(tmp_path / "s", store.schema)
    copy = copy.commit(pa.table({"user_id": [1], "ts": [1], "item_id": [1], "rating": pa.array([1], pa.int8())}))
    ds = ExampleDataset(copy.path, log.slice(0, 0), lateseq.Projection(3, ("item_id",)))
    copy.commit(pa.table({"user_id": [1], "ts": [2], "item_id": [2], "rating": pa.array([1], pa.int8())}))
    assert pickle.loads(pickle.dumps(ds)).store.version == ds.store.version == 1



def test_two_tier_logs_with_inline_tails_load_as_served(tmp_path):
    from oracle import TWO_TIER_SCHEMA

    from lateseq.mutable import InMemoryTier
    from lateseq.twotier import OnlineReader, fold

    store = lateseq.create(tmp_path / "store", TWO_TIER_SCHEMA)
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=3600, store=store)
    for eid, (user, ts, arrival) in enumerate([(1, 5, 6), (2, 3, 7), (1, 12, 21), (1, 2, 22), (2, 9, 23)], 1):
        if eid == 3:
            store = fold(store, tier, watermark=20)
        tier.append(pa.table({"user_id": [user], "ts": [ts], "item_id": [eid * 10], "arrival_ts": [arrival],
                              "event_id": [eid]}))
    projection = lateseq.Projection(50, ("item_id", "ts"))
    log, served = OnlineReader(store, tier, projection).serve(
        pa.table({"user_id": [1, 2, 1, 3], "request_ts": [25, 25, 22, 25], "label": [1, 0, 1, 1]}))
    pq.write_table(log, tmp_path / "log.parquet")
    # tails as list views (DuckDB's) raised numpy's "Cannot change data-type for array of references"
    for source, prefetch in ((log, False), (tmp_path / "log.parquet", True), (as_list_views(log), False)):
        (b,) = list(ExampleDataset(store, source, projection, batch_size=8, prefetch=prefetch))
        assert sorted(b.examples) == ["label"]  # the record's seq_* columns are not examples
        assert np.array_equal(b.offsets.numpy(), served.offsets)
        assert all(np.array_equal(b.values[k].numpy(), served.values[k]) for k in served.values)
    # a log of no rows through pandas without its schema: tails of type null, refused as materialize refuses them
    empty = pa.Table.from_pandas(log.slice(0, 0).to_pandas(), preserve_index=False).replace_schema_metadata(None)
    assert empty.schema.field("tail_ts").type == pa.null()
    for rebuild in (lateseq.materialize, ExampleDataset):
        with pytest.raises(lateseq.PointerError, match="column 'tail_ts' has type null, expected list<int64>"):
            rebuild(store, empty, projection)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_rebuilt_several_in_one_read_are_those_rebuilt_one_by_one(world, tmp_path, monkeypatch, num_workers):
    """Small batches are rebuilt a few at a time (``READ_BYTES``) and each handed its part:
    shuffled with affinity, with deleted users' examples dropped, and resumed in the middle
    of a read, every batch is the one a read of its own makes, and its stats add up."""
    store, oracle, log, path = world
    shutil.copytree(store.path, tmp_path / "store")  # the world's store stays as it is for other tests
    deleted = lateseq.open(tmp_path / "store").delete([3, 8])
    options = {"batch_size": 10, "shuffle": True, "affinity": True, "seed": 5, "block_rows": 32, "window_rows": 64,
               "drop_deleted": True}

    def made(read_bytes: int, **more) -> ExampleDataset:
        monkeypatch.setattr(lateseq._loader, "READ_BYTES", read_bytes)
        return ExampleDataset(deleted, path, lateseq.Projection(MAX_LEN, COLUMNS), **options, **more)

    alone = list(DataLoader(made(1), batch_size=None, num_workers=num_workers))
    dropped = sum(b.stats.deleted_dropped for b in alone)
    assert dropped > 0
    for read_bytes in (3 * 10 * MAX_LEN * 17, 10**9):  # 3 batches a read (17 bytes an event); a shard's all
        ds = made(read_bytes)
        together = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
        assert len(together) == len(alone) and all(same(a, b) for a, b in zip(alone, together, strict=True))
        assert sum(b.stats.deleted_dropped for b in together) == dropped
        assert sum(b.stats.history_bytes for b in together) == sum(b.stats.history_bytes for b in alone)
        if num_workers == 0:
            assert ds.metrics.batches == len(together) and 0 < ds.metrics.materialize_s < ds.metrics.busy_s
    if num_workers == 0:
        for stop in (1, 4):  # in the middle of a read of 3, and where the next read begins
            ds = made(3 * 10 * MAX_LEN * 17)
            running = iter(ds)
            for _ in range(stop + 1):
                next(running)
            resumed = made(3 * 10 * MAX_LEN * 17)
            resumed.load_state_dict(ds.state_dict())
            rest = list(resumed)
            assert len(rest) == len(alone) - stop - 1
            assert all(same(a, b) for a, b in zip(alone[stop + 1:], rest, strict=True))


def test_reads_are_sized_by_recorded_lengths_in_the_trainer_and_by_max_len_in_a_worker(world, monkeypatch):
    """In the trainer's process a read holds the batches whose recorded histories fit
    READ_BYTES (by max_len alone, one batch a read at long max_len); in a worker a batch as
    big as a read can be keeps its read to itself, rebuilt straight into shared memory."""
    store, oracle, log, path = world
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 10 * 100 * 17)  # by max_len (100), a batch of 10 a read
    ds = ExampleDataset(store, path, lateseq.Projection(100, COLUMNS), batch_size=10)
    reads = []
    rebuild = ExampleDataset._materialized

    def counted(self, examples, recycler):
        reads.append(examples.num_rows)
        return rebuild(self, examples, recycler)

    monkeypatch.setattr(ExampleDataset, "_materialized", counted)
    batches = list(ds)
    assert max(reads) > 10 and sum(reads) == log.num_rows == sum(len(b.rows) for b in batches)
    alone = ExampleDataset(store, path, lateseq.Projection(100, COLUMNS), batch_size=10)
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)
    assert all(same(a, b) for a, b in zip(alone, batches, strict=True))

    class Worker:
        id, num_workers = 0, 2

    monkeypatch.setattr(lateseq.torch, "get_worker_info", lambda: Worker())
    assert ds._read_size()((log.slice(0, 10), np.arange(10), 0.0)) == 10 * 100 * 17


@pytest.mark.parametrize("prefetch", [False, True])
def test_the_arrays_a_pass_reuses_go_when_it_ends_and_kept_batches_keep_theirs(world, monkeypatch, prefetch):
    """Each pass writes its reads into the arrays of earlier ones once nothing holds them
    (``_buffers``); the batches kept stay as made, and what the pass kept for reuse goes
    when it ends (kept on the dataset, a read of 48 MB kept 4 such arrays a column from
    one epoch to the next, a stranger's, s40A)."""
    import gc
    import weakref

    from lateseq._buffers import Recycler

    made = []

    class Watched(Recycler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(lateseq.torch, "Recycler", Watched)
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: many reads
    store, oracle, log, _ = world
    ds = dataset(world, batch_size=6, prefetch=prefetch)
    kept = [batch for k, batch in enumerate(ds) if k % 3 == 0]  # the others dropped: their arrays reused
    check(kept, oracle, log, rows_expected=sum(len(b.rows) for b in kept))
    gc.collect()
    assert len(made) == 1 and made[0]() is None
    assert len(list(ds)) == len(ds) and len(made) == 2


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_mismatch_raises_at_its_batch_of_a_read_of_several(world, monkeypatch, prefetch):
    """Rebuilt 4 batches a read, a tampered pointer in the third batch of a read raises there,
    naming its row of the log: the batches before it come out, as a read per batch gave."""
    _, _, log, _ = world
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 4 * 10 * MAX_LEN * 17)  # 4 batches of 10 a read
    bad_row = 4 * 10 + 2 * 10 + 3  # the second read's third batch
    checksum = log.column("uih_checksum").to_numpy().copy()
    checksum[bad_row] ^= 1
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pa.array(checksum, pa.uint32()))
    ds = ExampleDataset(world[0], tampered, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10, prefetch=prefetch)
    got = []
    with pytest.raises(lateseq.ChecksumMismatch) as info:
        for batch in ds:
            got.append(batch.rows.tolist())
    assert info.value.rows == [bad_row]
    assert got == [list(range(k, k + 10)) for k in range(0, 60, 10)]


# ---------------------------------------------------------------------- resuming


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_with_exactly_the_next_batches(world, num_workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, oracle, log, _ = world

    def loader():
        ds = dataset(world, batch_size=7, shuffle=True, affinity=True, seed=5, block_rows=32, window_rows=40)
        ds.set_epoch(2)
        return StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    full = list(loader())
    check(full, oracle, log)
    for stop in (0, 5, len(full) - 2):
        interrupted = loader()
        it = iter(interrupted)
        for _ in range(stop + 1):
            next(it)
        state = interrupted.state_dict()
        del it
        resumed = loader()
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - stop - 1
        assert all(same(a, b) for a, b in zip(rest, full[stop + 1:], strict=True)), f"after batch {stop}"


@pytest.mark.parametrize("epoch", [-1, 2**63, True, "1"])
def test_an_epoch_is_a_non_negative_int64(world, epoch):
    """2**64 failed with torch's "Overflow when unpacking long long" (s35E)."""
    with pytest.raises(lateseq.SchemaError, match="epoch must be a non-negative integer"):
        dataset(world).set_epoch(epoch)


def test_lengths_past_int64_are_named(world):
    batch = next(iter(dataset(world)))
    for call, name in ((lambda: batch.padded("item_id", 2**64), "length"),
                       (lambda: batch.to_hstu("item_id", "ts", max_len=2**64), "max_len"),
                       (lambda: batch.to_hstu("item_id", "ts", max_output_length=2**64), "max_output_length")):
        with pytest.raises(lateseq.SchemaError, match=f"{name} must be a non-negative integer that fits int64"):
            call()


def test_the_datasets_state_after_an_epoch_resumes_with_any_workers(world):
    """The dataset's own state saved once an epoch was over, loaded with other workers,
    was refused as a state saved mid-epoch (a stranger's): it resumes at that epoch's end."""
    _, oracle, log, _ = world
    ds = dataset(world, batch_size=7, shuffle=True, seed=5)
    list(DataLoader(ds, batch_size=None, num_workers=0))
    state = ds.state_dict()
    assert state["done"]
    resumed = dataset(world, batch_size=7, shuffle=True, seed=5)
    resumed.load_state_dict(state)
    assert list(DataLoader(resumed, batch_size=None, num_workers=2)) == []
    resumed.set_epoch(1)
    check(list(DataLoader(resumed, batch_size=None, num_workers=2)), oracle, log)
    one_worker = dataset(world, batch_size=7, shuffle=True, seed=5)  # one worker's part done: not the rank's epoch
    one_worker.load_state_dict({**state, "worker": 0, "num_workers": 2})
    with pytest.raises(lateseq.SchemaError, match="cannot resume worker 0 of 1 from the state of worker 0 of 2"):
        list(DataLoader(one_worker, batch_size=None, num_workers=0))


def test_an_iterator_used_after_set_epoch_counts_nothing_of_the_new_epoch(world):
    """Batches an epoch-0 iterator still yielded after set_epoch(1) were counted as epoch
    1's: a state saved then skipped that many of epoch 1's batches (s42B)."""
    ds = dataset(world, shuffle=True, seed=2)
    old = iter(ds)
    next(old)
    ds.set_epoch(1)
    next(old), next(old)
    assert ds.state_dict()["epoch"] == 1 and ds.state_dict()["batches"] == 0
    resumed = dataset(world, shuffle=True, seed=2)
    resumed.load_state_dict(ds.state_dict())
    ds.set_epoch(1)
    assert all(same(a, b) for a, b in zip(resumed, ds, strict=True))


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("set_epoch_before_loading", [False, True])
def test_a_state_saved_at_an_epochs_end_resumes_at_the_start_of_the_next(world, num_workers, set_epoch_before_loading):
    """The loader puts the datasets' states back when it starts iterating, after the
    trainer's set_epoch(e + 1): a state that said "epoch e, every batch handed out"
    took the epoch back to e, and the resumed run trained on epoch e's order again."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, oracle, log, _ = world

    def loader() -> tuple[ExampleDataset, StatefulDataLoader]:
        ds = dataset(world, batch_size=7, shuffle=True, seed=5)
        return ds, StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    ds, whole = loader()
    epoch0 = list(whole)
    state = whole.state_dict()
    ds.set_epoch(1)
    epoch1 = list(whole)
    ds, resumed = loader()
    if set_epoch_before_loading:
        ds.set_epoch(1)
    resumed.load_state_dict(state)
    ds.set_epoch(1)
    again = list(resumed)
    check(again, oracle, log)
    assert not all(same(a, b) for a, b in zip(again, epoch0, strict=True))
    assert all(same(a, b) for a, b in zip(again, epoch1, strict=True))


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("num_workers", [0, 2])
def test_rebatch_saved_at_an_epochs_last_step_resumes_with_nothing_left_of_it(world, num_workers):
    """The short last training batch draws the loader to its end, so the loader's state
    saved at that step says its pass is over, and torchdata starts a new pass: the whole
    epoch was trained again. The next epoch then starts afresh."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, oracle, log, _ = world

    def loader() -> tuple[ExampleDataset, StatefulDataLoader]:
        ds = dataset(world, batch_size=7, shuffle=True, seed=5)
        ds.set_epoch(3)
        return ds, StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    ds, whole = loader()
    steps = rebatch(whole, 25)
    for _ in steps:  # a checkpoint after every step: the last one counts
        saved = {"loader": whole.state_dict(), "rebatch": steps.state_dict()}
    assert log.num_rows % 25  # a short last batch
    ds.set_epoch(4)
    epoch4 = list(rebatch(whole, 25))
    ds, resumed = loader()
    resumed.load_state_dict(saved["loader"])
    assert list(rebatch(resumed, 25, state=saved["rebatch"])) == []
    ds.set_epoch(4)
    again = list(rebatch(resumed, 25, state=saved["rebatch"]))  # the state of an earlier epoch: not this one's
    check(again, oracle, log)
    assert all(same(a, b) for a, b in zip(again, epoch4, strict=True))


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.filterwarnings("ignore:even_batches leaves out")
def test_rebatch_under_even_batches_resumed_in_the_next_epoch_makes_all_of_its_steps(world):
    """A state saved at the end of an epoch, resumed in the next: its steps were counted
    towards the next epoch's even_batches limit, which ended after one step (s42B)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader() -> tuple[ExampleDataset, StatefulDataLoader]:
        ds = dataset(world, batch_size=7, shuffle=True, seed=5, even_batches=True, rank=0, world_size=2)
        return ds, StatefulDataLoader(ds, batch_size=None, num_workers=0)

    ds, whole = loader()
    steps = rebatch(whole, 25)
    for _ in steps:
        saved = {"loader": whole.state_dict(), "rebatch": steps.state_dict()}
    ds.set_epoch(1)
    epoch1 = list(rebatch(whole, 25))
    assert len(epoch1) > 1
    ds, resumed = loader()
    resumed.load_state_dict(saved["loader"])
    ds.set_epoch(1)
    again = list(rebatch(resumed, 25, state=saved["rebatch"]))
    assert len(again) == len(epoch1) and all(same(a, b) for a, b in zip(again, epoch1, strict=True))


def test_a_log_named_relative_to_the_directory_it_was_made_in_is_read_after_a_chdir(world, monkeypatch):
    """Launchers (Hydra's) change directory after the trainer built its dataset: the log
    was found and checked at construction, then not found at the first read."""
    store, oracle, log, path = world
    monkeypatch.chdir(path.parent)
    ds = ExampleDataset(store.path.name, path.name, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=50)
    monkeypatch.chdir(path.parent.parent)
    check(list(ds), oracle, log)


def test_resume_state_is_checked(world):
    ds = dataset(world, shuffle=True)
    it = iter(ds)
    next(it), next(it)
    state = ds.state_dict()
    assert state["batches"] == 2
    other = dataset(world, shuffle=True, batch_size=11)
    with pytest.raises(lateseq.SchemaError, match="cannot resume"):
        other.load_state_dict(state)
    with pytest.raises(lateseq.SchemaError, match="not an ExampleDataset state"):
        other.load_state_dict({"epoch": 0})
    older = {**state, "plan": {k: v for k, v in state["plan"].items() if k != "dealing_rules"}}
    with pytest.raises(lateseq.SchemaError, match=r"cannot resume.*dealing_rules"):  # saved before the rules
        dataset(world, shuffle=True).load_state_dict(older)  # changed: resumed into another order
    again = dataset(world, shuffle=True)
    again.load_state_dict(state)
    assert same(next(iter(again)), next(it))
    assert len(list(again)) == len(list(dataset(world, shuffle=True)))  # the next epoch starts over


def test_a_state_saved_between_epochs_or_right_after_resuming_says_where_it_stands(world):
    _, oracle, log, _ = world
    ds = dataset(world, shuffle=True, seed=3)
    first = list(ds)
    end = ds.state_dict()  # after epoch 0's last batch
    assert (end["epoch"], end["batches"], end["done"]) == (0, len(first), True)
    restored = dataset(world, shuffle=True, seed=3)
    restored.load_state_dict(end)
    assert restored.state_dict() == end  # saved again before iterating: still done
    later = dataset(world, shuffle=True, seed=3)
    later.set_epoch(1)
    later.load_state_dict(end)  # a later epoch is set: it starts afresh, epoch 0 is not replayed
    assert later.epoch == 1 and len(list(later)) == len(first)
    ds.set_epoch(1)
    state = ds.state_dict()  # before any batch of epoch 1: all of it is still to come
    assert (state["epoch"], state["batches"]) == (1, 0)
    resumed = dataset(world, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    check(list(resumed), oracle, log)
    # iterated with no worker, then set to epoch 1: the state resumes with any number (it was
    # refused by 2 workers, as if saved mid-epoch by the one in-process shard)
    assert state["num_workers"] is None
    two = dataset(world, shuffle=True, seed=3)
    two.load_state_dict(state)
    check(list(DataLoader(two, batch_size=None, num_workers=2)), oracle, log)
    middle = dataset(world, shuffle=True, seed=3)
    middle.load_state_dict({**ds.state_dict(), "epoch": 0, "batches": 4})
    assert middle.state_dict()["batches"] == 4  # saved again before the next batch: the same place
    again = dataset(world, shuffle=True, seed=3)
    again.load_state_dict(middle.state_dict())
    rest = list(again)
    assert len(rest) == len(first) - 4 and all(same(a, b) for a, b in zip(rest, first[4:], strict=True))


def test_a_state_does_not_resume_over_another_log(world, tmp_path):
    store, _, log, _ = world
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    for name, groups in (("a", 16), ("b", 48)):  # the same rows, row groups of another size
        pq.write_table(log, tmp_path / f"{name}.parquet", row_group_size=groups)
    pq.write_table(pa.concat_tables([log.slice(80), log.slice(0, 80)]),
                   tmp_path / "c.parquet", row_group_size=16)  # other rows, the same layout
    ds = ExampleDataset(store, tmp_path / "a.parquet", projection, batch_size=10, shuffle=True)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    for name in ("b", "c"):
        with pytest.raises(lateseq.SchemaError, match="another plan or log.*'log'"):
            ExampleDataset(store, tmp_path / f"{name}.parquet", projection, batch_size=10,
                           shuffle=True).load_state_dict(state)
    other = ExampleDataset(store, log.slice(1), projection, batch_size=10, shuffle=True)
    with pytest.raises(lateseq.SchemaError, match="'log'"):
        other.load_state_dict(ExampleDataset(store, log.slice(0, log.num_rows - 1), projection, batch_size=10,
                                             shuffle=True).state_dict())


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
def test_a_folder_log_resumes_and_refuses_a_part_file_added_or_rewritten(world, parts, tmp_path, monkeypatch):
    """Rows are numbered across the part files in name order: a file added (a late Spark
    task) or rewritten would renumber them under a saved state or a running epoch."""
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: the last file is not read ahead
    from torchdata.stateful_dataloader import StatefulDataLoader

    _, oracle, log, _ = world
    folder = tmp_path / "log"
    shutil.copytree(parts, folder)

    def loader():
        return StatefulDataLoader(dataset(world, folder, batch_size=7, shuffle=True, seed=3), batch_size=None)

    full = list(loader())
    check(full, oracle, log)
    interrupted = loader()
    it = iter(interrupted)
    for _ in range(4):
        next(it)
    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert all(same(a, b) for a, b in zip(list(resumed), full[4:], strict=True))
    ds = dataset(world, folder, batch_size=7)
    pq.write_table(log.slice(0, 3), folder / "part-00000-late.parquet")
    with pytest.raises(lateseq.SchemaError, match="changed since this dataset was made"):
        list(ds)
    (folder / "part-00000-late.parquet").unlink()
    running = iter(ds)
    next(running)
    last = folder / "part-00003.snappy.parquet"
    pq.write_table(pq.read_table(last).slice(1), last, row_group_size=16)  # a file not yet opened
    with pytest.raises(lateseq.SchemaError, match="part-00003.snappy.parquet changed, or is gone, since"):
        list(running)


def test_a_rewrite_that_keeps_the_footer_is_refused_too(world, tmp_path):
    """A label corrected in a file without compression or dictionaries leaves its footer
    byte for byte: the footer's digest alone let the next epoch read the new labels (a
    stranger's)."""
    store, _, log, _ = world
    path = tmp_path / "log.parquet"
    options = {"compression": "none", "use_dictionary": False, "row_group_size": 16}
    pq.write_table(log, path, **options)
    ds = ExampleDataset(store, path, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10)
    assert sum(len(b) for b in ds) == log.num_rows
    def footer() -> bytes:
        data = path.read_bytes()
        return data[len(data) - 8 - int.from_bytes(data[-8:-4], "little"):]

    before = footer()
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    saving = ExampleDataset(store, path, projection, batch_size=10)
    next(iter(saving))
    state = saving.state_dict()
    labels = log.column("label").to_numpy().copy()
    j = int(np.flatnonzero(labels[:16] != labels[0])[0])
    labels[0], labels[j] = labels[j], labels[0]  # two of a row group's labels swapped: the same statistics
    time.sleep(0.01)
    pq.write_table(log.set_column(log.schema.get_field_index("label"), "label", pa.array(labels)), path, **options)
    assert footer() == before
    with pytest.raises(lateseq.SchemaError, match="changed since this dataset was made"):
        list(ds)
    # nor does a state saved before resume over it in a new process (the swap moved a
    # trained example into the batches to come, s35C); a copy given its times back does
    written = state["plan"]["log_written"][0]
    with pytest.raises(lateseq.SchemaError, match=r"cannot resume: example log .*log.parquet was written again "
                                                  r"since the state was saved .*os.utime\(path, ns=\(t, t\)\)"):
        ExampleDataset(store, path, projection, batch_size=10).load_state_dict(state)
    os.utime(path, ns=(written[1], written[1]))
    ExampleDataset(store, path, projection, batch_size=10).load_state_dict(state)
    older = {**state, "plan": {k: v for k, v in state["plan"].items() if k != "log_written"}}
    ExampleDataset(store, path, projection, batch_size=10).load_state_dict(older)  # saved before it was kept


def test_a_state_does_not_resume_over_a_table_whose_examples_moved(world):
    """A table's identity was its pointer columns: two examples of one pointer with their
    labels swapped resumed, training one twice and the other never (s35C)."""
    store, _, log, _ = world
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    labels = log.column("label").to_numpy().copy()
    j = int(np.flatnonzero(labels != labels[0])[0])
    labels[0], labels[j] = labels[j], labels[0]
    swapped = log.set_column(log.schema.get_field_index("label"), "label", pa.array(labels))
    ds = ExampleDataset(store, log, projection, batch_size=10)
    next(iter(ds))
    with pytest.raises(lateseq.SchemaError, match=r"another plan or log \(differing in \['log'\]\)"):
        ExampleDataset(store, swapped, projection, batch_size=10).load_state_dict(ds.state_dict())
    ExampleDataset(store, log.slice(0), projection, batch_size=10).load_state_dict(ds.state_dict())
    # the same rows with other example columns resume, as a Parquet log's do (a table's refused, s45A)
    for columns in (["weight"], []):
        other = ExampleDataset(store, log, projection, batch_size=10, example_columns=columns)
        other.load_state_dict(ds.state_dict())
        rest = [b.rows.tolist() for b in ExampleDataset(store, log, projection, batch_size=10)][1:]
        assert [b.rows.tolist() for b in other] == rest
        with pytest.raises(lateseq.SchemaError, match=r"another plan or log \(differing in \['log'\]\)"):
            ExampleDataset(store, swapped, projection, batch_size=10,
                           example_columns=columns).load_state_dict(ds.state_dict())
    # a timestamp column a dataset can read (s48): its values swapped are another log too
    stamps = pa.array(np.arange(log.num_rows) * 1000, pa.timestamp("ms"))
    timed = log.append_column("seen", stamps)
    moved = log.append_column("seen", pa.array(np.arange(log.num_rows)[::-1] * 1000, pa.timestamp("ms")))
    first = ExampleDataset(store, timed, projection, batch_size=10)
    next(iter(first))
    with pytest.raises(lateseq.SchemaError, match=r"another plan or log \(differing in \['log'\]\)"):
        ExampleDataset(store, moved, projection, batch_size=10).load_state_dict(first.state_dict())
    ExampleDataset(store, timed, projection, batch_size=10).load_state_dict(first.state_dict())


def test_a_log_rewritten_after_the_dataset_was_made_is_refused(world, tmp_path):
    store, _, log, _ = world
    path = tmp_path / "log.parquet"
    pq.write_table(log.slice(0, 100), path, row_group_size=16)
    ds = ExampleDataset(store, path, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10)
    first = [b.rows.tolist() for b in ds]
    assert sum(map(len, first)) == 100
    assert [b.rows.tolist() for b in ds] == first  # a second epoch, through the footer read when made
    pq.write_table(log, path, row_group_size=16)  # grown in place
    with pytest.raises(lateseq.SchemaError, match="changed since this dataset was made"):
        list(ds)


@pytest.mark.parametrize("reader", ["dataset", "iter_batches"])
def test_a_log_rewritten_in_place_while_read_is_refused_and_one_renamed_over_it_is_no_harm(world, tmp_path, reader,
                                                                                           monkeypatch):
    """The footer is read once, when reading starts: a log rewritten in place mid-epoch
    was read on through the old footer from the new bytes (300 rows of one file, 2,700 of
    the other, no error); a new file renamed over it leaves the open file's bytes."""
    store, _, log, _ = world
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: the rest is read after the rewrite
    monkeypatch.setattr(lateseq._loader, "READ_POINTERS", 16)  # iter_batches: the log read a batch at a time
    monkeypatch.setattr(lateseq._loader, "_CHUNK_READS", 1)
    path = tmp_path / "log.parquet"
    pq.write_table(log, path, row_group_size=16)
    projection = lateseq.Projection(MAX_LEN, COLUMNS)

    def batches():
        if reader == "dataset":
            return iter(ExampleDataset(store, path, projection, batch_size=16, block_rows=16, window_rows=32))
        return (examples for examples, _ in lateseq.iter_batches(store, path, projection, batch_size=16))

    flipped = log.set_column(log.schema.get_field_index("label"), "label", pc.subtract(1, log.column("label")))
    running = batches()
    next(running)
    pq.write_table(flipped, path, row_group_size=16)  # the same layout, in place
    with pytest.raises(lateseq.SchemaError, match="rewritten in place while it was read"):
        list(running)
    pq.write_table(log, path, row_group_size=16)
    running = batches()
    first = next(running)
    pq.write_table(flipped, tmp_path / "new.parquet", row_group_size=16)
    os.replace(tmp_path / "new.parquet", path)
    rest = list(running)
    labels = [first, *rest]
    got = np.concatenate([(b.examples["label"].numpy() if reader == "dataset" else b.column("label").to_numpy())
                          for b in labels])
    assert got.tolist() == log.column("label").to_pylist()  # the old file's, to its end


def test_rebatch_resumes_with_the_examples_it_held(world):
    _, oracle, log, _ = world
    whole = list(rebatch(dataset(world, batch_size=7, shuffle=True, seed=2), 25))
    for stop in (0, 1, len(whole) - 2):
        ds = dataset(world, batch_size=7, shuffle=True, seed=2)
        steps = rebatch(ds, 25)
        taken = [next(steps) for _ in range(stop + 1)]
        saved = {"loader": ds.state_dict(), "rebatch": steps.state_dict()}
        assert saved["rebatch"]["held"] is None or len(saved["rebatch"]["held"]["rows"]) < 25
        resumed = dataset(world, batch_size=7, shuffle=True, seed=2)
        resumed.load_state_dict(saved["loader"])
        rest = list(rebatch(resumed, 25, state=saved["rebatch"]))
        check(taken + rest, oracle, log)  # every example exactly once
        assert all(same(a, b) for a, b in zip(taken + rest, whole, strict=True)), f"after step {stop}"
    with pytest.raises(lateseq.SchemaError, match="not a rebatch state"):
        rebatch([], 4, state={"pending": 1})


def test_example_columns_with_nulls_are_refused_when_the_dataset_is_made(world, tmp_path):
    store, _, log, _ = world
    holes = log.set_column(log.schema.get_field_index("label"), "label",
                           pa.array([None] + log.column("label").to_pylist()[1:], pa.int8()))
    pq.write_table(holes, tmp_path / "holes.parquet", row_group_size=16)
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    for source in (holes, tmp_path / "holes.parquet"):
        with pytest.raises(lateseq.SchemaError, match="example columns with nulls: {'label': 1}"):
            ExampleDataset(store, source, projection)
        assert len(list(ExampleDataset(store, source, projection, example_columns=["weight"]))) > 0


def test_a_dictionary_encoded_label_is_an_example_column_from_a_table_as_from_parquet(world, tmp_path):
    """Parquet reads a dictionary<int64> column back as its values: from a Table the same
    label was left out of Batch.examples (a stranger's)."""
    store, _, log, _ = world
    coded = log.set_column(log.schema.get_field_index("label"), "label", log.column("label").dictionary_encode())
    pq.write_table(coded, tmp_path / "coded.parquet", row_group_size=16)
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    labels = []
    for source in (coded, tmp_path / "coded.parquet"):
        ds = ExampleDataset(store, source, projection)
        assert "label" in ds.example_columns
        batches = list(ds)
        rows = np.concatenate([b.rows.numpy() for b in batches])
        labels.append(np.concatenate([b.examples["label"].numpy() for b in batches])[np.argsort(rows)])
    assert np.array_equal(labels[0], log.column("label").to_numpy()) and np.array_equal(labels[0], labels[1])
    pointers = coded  # and its pointer columns dictionary-encoded: the dataset crashed on uih_version (s47C)
    for name in ("user_id", "uih_version", "uih_length"):
        index = pointers.schema.get_field_index(name)
        pointers = pointers.set_column(index, name, log.column(name).dictionary_encode())
    ids = log.column("user_id").to_pylist()  # and chunks of their own dictionaries, each with a null (s47D)
    chunks = [pa.DictionaryArray.from_arrays(pa.array([1 + sorted(set(part)).index(u) for u in part], pa.int32()),
                                             pa.array([None, *sorted(set(part))], pa.int64()))
              for part in (ids[:7], ids[7:])]
    chunked = pointers.set_column(pointers.schema.get_field_index("user_id"), "user_id", pa.chunked_array(chunks))
    plain, *decoded = (list(ExampleDataset(store, source, projection, shuffle=False))
                       for source in (log, pointers, chunked))
    assert all(len(plain) == len(other) and all(same(a, b) for a, b in zip(plain, other)) for other in decoded)


def test_unsigned_values_past_int64_and_repeated_columns_are_refused_when_the_dataset_is_made(world, tmp_path):
    store, _, log, _ = world
    big = log.append_column("big", pa.array([2**63] + [1] * (log.num_rows - 1), pa.uint64()))
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=16)
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    for source in (big, tmp_path / "big.parquet"):
        with pytest.raises(lateseq.SchemaError, match=r"\['big'\] hold uint64 values that do not fit int64"):
            ExampleDataset(store, source, projection)
        assert len(list(ExampleDataset(store, source, projection, example_columns=["label"]))) > 0
    twice = log.append_column("label", log.column("label"))
    with pytest.raises(lateseq.SchemaError, match=r"named more than once: \['label'\]"):
        ExampleDataset(store, twice, projection)


def test_a_log_whose_row_groups_a_worker_cannot_hold_is_warned_of(world, monkeypatch):
    """A worker reads a whole row group and holds it while it shuffles it: one of 2**26
    rows (1.2 MB on disk) ran it out of memory, unsaid (s62T). Sized as read, not as
    encoded (the footer gave that one 1 MB)."""
    store, _, log, path = world
    read = ExampleDataset(store, path, lateseq.Projection(4, ("item_id",)), batch_size=8)._read
    assert "note" not in read  # (a column not read counts for nothing)
    row = sum(log.schema.field(name).type.bit_width // 8 for name in read)  # its pointers' and labels' bytes
    monkeypatch.setattr(lateseq.torch, "_ROW_GROUP_WARNED", 16 * row - 1)  # its row groups hold 16 rows
    with pytest.warns(UserWarning, match="has a row group of 16 rows, about .* GiB read: each worker reads a whole"):
        ExampleDataset(store, path, lateseq.Projection(4, ("item_id",)), batch_size=8)
    monkeypatch.setattr(lateseq.torch, "_ROW_GROUP_WARNED", 16 * row)
    ExampleDataset(store, path, lateseq.Projection(4, ("item_id",)), batch_size=8)  # no warning


def test_even_batches_warn_when_they_leave_out_much_of_an_epoch(tmp_path):
    """A co-partitioned log of 3 partitions on 2 ranks: one rank gets two, the other one,
    and even_batches serves the second's share twice over: about a third left out."""
    rng = np.random.default_rng(3)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}, partitions=3))
    users = rng.integers(0, 60, 900)
    store = store.commit(pa.table({"user_id": users, "ts": rng.integers(0, 1000, 900), "item_id": users}))
    log = lateseq.log_examples(store, pa.table({"user_id": rng.integers(0, 60, 600),
                                                "request_ts": rng.integers(0, 1100, 600)}))
    lateseq.copartition_log(store, log, tmp_path / "log.parquet", row_group_rows=64)
    projection = lateseq.Projection(4, ("item_id",))
    with pytest.warns(UserWarning, match=r"even_batches leaves out [\d,]+ of 600 examples"):
        ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=16, copartition=True,
                       even_batches=True, rank=0, world_size=2)
    ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=16, copartition=True, rank=0,
                   world_size=2)  # without even_batches, nothing is left out: no warning


def test_even_batches_that_would_serve_no_rank_anything_are_refused(tmp_path):
    """60 examples on 100 ranks: the ranks without one make even_batches give every rank
    none, an epoch that trains on nothing (it only warned that every example was left out)."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}))
    store = store.commit(pa.table({"user_id": np.arange(60), "ts": np.zeros(60, np.int64), "item_id": np.arange(60)}))
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(60), "request_ts": np.ones(60, np.int64)}))
    pq.write_table(log, tmp_path / "log.parquet")
    projection = lateseq.Projection(5, ("item_id",))
    with pytest.raises(lateseq.SchemaError, match=r"world_size=100 ranks gets none of the log's 60 examples"):
        ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=4, even_batches=True, rank=7,
                       world_size=100)
    served = ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=4, rank=7, world_size=100)
    assert sum(len(b) for b in served) <= 1  # without even_batches a rank serves its own share
    # and a rank that gets none says so: under DDP the others would wait for it forever (s61F: silent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = next(rank for rank in range(100) if len(ExampleDataset(store, tmp_path / "log.parquet", projection,
                                                                       batch_size=4, rank=rank, world_size=100)) == 0)
    with pytest.warns(UserWarning, match=rf"rank {empty} of world_size=100 gets no batch of the log's 60 examples"):
        ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=4, rank=empty, world_size=100)
    # one rank has nothing to even: drop_last's empty epoch is accepted as without even_batches
    # (it was refused, saying to use fewer ranks than one, s42B)
    alone = ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=64, drop_last=True,
                           even_batches=True)
    assert len(alone) == 0 and list(alone) == []
    # 60 examples in one row group on 50 ranks: each rank gets one or two (blocks of 2 left 20 ranks without)
    for rank in (0, 49):
        ds = ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=4, even_batches=True, rank=rank,
                            world_size=50)
        assert [len(b) in (1, 2) for b in ds] == [True]


def test_even_batches_cut_uneven_row_groups_at_even_shares_and_warn_past_five_percent(tmp_path):
    """100 rows in row groups of 30, 30, 30, 10 on 2 ranks were blocks of 60 and 40 rows, and
    even_batches left 20 out; a log written by log_examples (row groups of 65,536) of 72,000
    rows kept 13,464 on 2 ranks (s45A). Cut at even shares, every row is served; the README's
    warning past 5% still comes where short last batches are dropped."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}))
    store = store.commit(pa.table({"user_id": np.arange(100), "ts": np.zeros(100, np.int64),
                                   "item_id": np.arange(100)}))
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(100), "request_ts": np.ones(100, np.int64)}))
    pq.write_table(log, tmp_path / "log.parquet", row_group_size=30)
    projection = lateseq.Projection(5, ("item_id",))
    rows = [ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=40, even_batches=True,
                           block_rows=30, rank=rank, world_size=2) for rank in range(2)]
    rows = np.concatenate([b.rows.numpy() for ds in rows for b in ds])
    assert sorted(rows.tolist()) == list(range(100))
    served = 0
    for rank in range(2):
        with pytest.warns(UserWarning, match=r"even_batches leaves out 20 of 100 examples .*a smaller batch_size"):
            ds = ExampleDataset(store, tmp_path / "log.parquet", projection, batch_size=40, even_batches=True,
                                drop_last=True, block_rows=30, rank=rank, world_size=2)
        served += sum(len(b) for b in ds)
    assert served == 80


def test_numpy_integers_and_a_rank_without_a_world_size(world):
    ds = dataset(world)
    ds.set_epoch(np.int64(1))
    assert ds.epoch == 1
    b = next(iter(ds))
    assert b.padded("item_id", np.int64(3)).shape == (len(b), 3)
    with pytest.raises(lateseq.SchemaError, match="needs world_size"):
        dataset(world, rank=1)
    with pytest.raises(lateseq.SchemaError, match="needs rank"):  # each process would be rank 0
        dataset(world, world_size=2)


def test_a_spawned_worker_reports_a_store_gone_since_the_dataset_was_made(tmp_path):
    """A spawned worker unpickles its copy of the dataset before the DataLoader can pass
    on an error: reopening the store there killed it, and the trainer saw only "worker
    exited unexpectedly" (the reason on the worker's stderr)."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}))
    store = store.commit(pa.table({"user_id": [1, 2], "ts": [1, 2], "item_id": [10, 20]}))
    path = tmp_path / "examples.parquet"
    lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [5, 5]}), path)
    ds = ExampleDataset(store, path, lateseq.Projection(3, ("item_id",)), batch_size=2)
    store.path.rename(tmp_path / "moved")
    with pytest.raises(Exception, match="is not a lateseq store"):
        list(DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn"))


@pytest.mark.filterwarnings("ignore:version \\d+ of .* was cleaned up while it was read")
@pytest.mark.parametrize("workers, context", [(0, None), (2, "fork"), (1, "spawn")])
def test_a_run_outlives_the_cleanup_of_the_version_it_opened(tmp_path, workers, context):
    """Workers reopen the dataset's version each epoch: once a daily cleanup retired it,
    every later epoch failed (fork: a segment "is gone with it"; spawn: "was cleaned up")
    and a run of many epochs died (a stranger's). Pointers rebuild from any newer version:
    the dataset moves on to the latest and every row stays exact."""
    rng = np.random.default_rng(5)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}, partitions=2))
    oracle = Oracle({"item_id": "int64"})
    logs = []
    for day in range(3):
        users, ts = rng.integers(0, 20, 200), rng.integers(0, 300, 200)
        items = rng.integers(1, 999, 200)
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item_id": items}))
        oracle.commit(users.tolist(), ts.tolist(), {"item_id": items})
        logs.append(lateseq.log_examples(store, pa.table({"user_id": rng.integers(0, 22, 60),
                                                          "request_ts": rng.integers(0, 320, 60)})))
    log = pa.concat_tables(logs)
    path = tmp_path / "examples.parquet"
    pq.write_table(log, path, row_group_size=20)
    ds = ExampleDataset(lateseq.open(store.path), path, lateseq.Projection(MAX_LEN, ("item_id",)), batch_size=16,
                        shuffle=True)
    options = {"multiprocessing_context": context} if workers else {}
    requests = [Request(r["user_id"], r["request_ts"], r["uih_version"]) for r in log.to_pylist()]
    offsets, values = oracle.expected(requests, MAX_LEN, ("item_id",))
    for epoch in range(3):
        ds.set_epoch(epoch)
        batches = list(DataLoader(ds, batch_size=None, num_workers=workers, **options))
        rows = np.concatenate([b.rows.numpy() for b in batches])
        assert sorted(rows.tolist()) == list(range(log.num_rows)), epoch
        for b in batches:
            for i, row in enumerate(b.rows.tolist()):
                got = b.values["item_id"][b.offsets[i]:b.offsets[i + 1]].tolist()
                assert got == values["item_id"][offsets[row]:offsets[row + 1]].tolist(), (epoch, row)
        newer = store.commit(pa.table({"user_id": [99], "ts": [1], "item_id": [1]})).compact()
        newer.cleanup(before=newer.version, grace_s=0)  # the dataset's version too: its files deleted
        store = newer
    if workers == 0:
        assert ds.store.version == store.version - 2  # moved on at the start of the last epoch


def test_a_dataset_over_a_replaced_store_or_unverified_refuses_to_read_on(tmp_path):
    """Spawned workers reopened the store by path: after it was replaced they read the
    other store's events (with verify=False, silently); and with verify=False a retired
    version was read on at the latest, where a deletion since empties histories unseen
    (a stranger's)."""
    def made(path: Path, rows: int) -> lateseq.Store:
        store = lateseq.create(path, lateseq.Schema({"item_id": "int64"}))
        return store.commit(pa.table({"user_id": np.arange(rows), "ts": np.ones(rows, np.int64),
                                      "item_id": np.arange(rows) + 100}))

    store = made(tmp_path / "store", 6)
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(6), "request_ts": np.full(6, 5)}))
    projection = lateseq.Projection(3, ("item_id",))
    ds = ExampleDataset(store, log, projection, batch_size=3, verify=False)
    shutil.rmtree(store.path)
    made(tmp_path / "store", 9)
    with pytest.raises(lateseq.StoreError, match="not the one this handle opened"):
        list(DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn"))
    store = made(tmp_path / "again", 6)
    ds = ExampleDataset(lateseq.open(store.path), log, projection, batch_size=3, verify=False)
    newer = store.delete([2]).compact()
    newer.cleanup(before=newer.version, grace_s=0)
    with pytest.raises(lateseq.VersionNotFound, match="with verify=False reading does not go on at a newer version"):
        list(ds)


def test_a_version_retired_mid_epoch_is_read_on_at_the_latest(tmp_path, monkeypatch):
    """A batch that needs a segment the dataset had not mapped yet, deleted with its
    retired version mid-epoch, is read at the latest version instead."""
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: later ones map other segments
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}, partitions=8))
    users = np.arange(40)
    store = store.commit(pa.table({"user_id": users, "ts": users, "item_id": users + 100}))
    log = lateseq.log_examples(store, pa.table({"user_id": users, "request_ts": users + 1}))
    ds = ExampleDataset(lateseq.open(store.path), log, lateseq.Projection(3, ("item_id",)), batch_size=1)
    running = iter(ds)
    first = next(running)
    newer = store.commit(pa.table({"user_id": [99], "ts": [1], "item_id": [1]})).compact()
    newer.cleanup(before=newer.version, grace_s=0)
    with pytest.warns(UserWarning, match=f"version 1 of .* was cleaned up while it was read; version "
                                         f"{newer.version}, the latest, is read from now on"):
        rest = list(running)
    got = [b.values["item_id"].tolist() for b in [first, *rest]]
    assert got == [[u + 100] for u in users.tolist()]


@pytest.mark.parametrize("workers", [0, 2])
def test_drop_deleted_leaves_out_every_example_of_a_user_deleted_since(tmp_path, workers):
    """A user deleted mid-run ended the epoch with ChecksumMismatch, and verify=False, the
    way out the error named, trained on their labels with emptied histories (a stranger's).
    drop_deleted leaves their examples out (an empty history's too) and keeps raising for
    any other mismatch."""
    rng = np.random.default_rng(9)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}))
    users, ts = rng.integers(0, 12, 300), rng.integers(1, 500, 300)
    store = store.commit(pa.table({"user_id": users, "ts": ts, "item_id": rng.integers(1, 99, 300)}))
    requests = pa.table({"user_id": rng.integers(0, 14, 200), "request_ts": rng.integers(0, 520, 200)})
    log = lateseq.log_examples(store, requests)
    path = tmp_path / "examples.parquet"
    pq.write_table(log, path, row_group_size=25)
    deleted = store.delete([3, 7, 13])  # 13 never had events: its examples' histories stay empty
    projection = lateseq.Projection(MAX_LEN, ("item_id",))
    with pytest.raises(lateseq.ChecksumMismatch, match="users deleted from the store"):
        list(DataLoader(ExampleDataset(deleted, path, projection, batch_size=16), batch_size=None,
                        num_workers=workers))
    ds = ExampleDataset(deleted, path, projection, batch_size=16, shuffle=True, drop_deleted=True)
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    rows = np.concatenate([b.rows.numpy() for b in batches])
    gone = np.isin(log.column("user_id").to_numpy(), [3, 7, 13])
    assert gone.any() and sorted(rows.tolist()) == np.flatnonzero(~gone).tolist()
    assert sum(b.stats.deleted_dropped for b in batches) == gone.sum()
    plain = lateseq.materialize(deleted, log.filter(pa.array(~gone)), projection)
    got = {int(r): b.values["item_id"][b.offsets[i]:b.offsets[i + 1]].tolist()
           for b in batches for i, r in enumerate(b.rows)}
    want = {int(r): plain.values["item_id"][plain.offsets[i]:plain.offsets[i + 1]].tolist()
            for i, r in enumerate(np.flatnonzero(~gone))}
    assert got == want
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pc.bit_wise_xor(log.column("uih_checksum"), pa.scalar(1, pa.uint32())))
    with pytest.raises(lateseq.ChecksumMismatch, match="not of users deleted since"):
        list(ExampleDataset(deleted, tampered, projection, batch_size=16, drop_deleted=True))
    with pytest.raises(lateseq.SchemaError, match="drop_deleted .* needs verify=True"):
        ExampleDataset(deleted, path, projection, drop_deleted=True, verify=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_follow_latest_lets_a_deletion_take_effect_at_the_next_epoch(tmp_path, workers):
    """A dataset reads the version it opened: a user deleted mid-run stayed in training
    until the run ended. With follow_latest each epoch reads the latest version."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}, partitions=2))
    users = np.arange(12)
    store = store.commit(pa.table({"user_id": users, "ts": users, "item_id": users + 100}))
    log = lateseq.log_examples(store, pa.table({"user_id": users, "request_ts": users + 1}))
    projection = lateseq.Projection(3, ("item_id",))
    pinned = ExampleDataset(lateseq.open(store.path), log, projection, batch_size=4, drop_deleted=True)
    following = ExampleDataset(lateseq.open(store.path), log, projection, batch_size=4, drop_deleted=True,
                               follow_latest=True)

    def epoch(ds: ExampleDataset, number: int) -> list[int]:
        ds.set_epoch(number)
        return sorted(r for b in DataLoader(ds, batch_size=None, num_workers=workers) for r in b.rows.tolist())

    assert epoch(pinned, 0) == epoch(following, 0) == users.tolist()
    store.delete([3, 8])
    assert epoch(pinned, 1) == users.tolist()  # its own version still holds them
    assert epoch(following, 1) == [u for u in users.tolist() if u not in (3, 8)]
    with pytest.raises(lateseq.SchemaError, match="follow_latest .* needs verify=True"):
        ExampleDataset(store, log, projection, follow_latest=True, verify=False)


@pytest.mark.filterwarnings("ignore:version \\d+ of .* was cleaned up while it was read")
def test_once_its_version_is_retired_every_loader_reads_each_epoch_at_the_latest(tmp_path):
    """Fresh workers reopened the retired version each epoch and read on at the latest then,
    while the trainer's own copy and persistent workers stayed where they first moved: a
    later deletion took effect or not depending on num_workers (a stranger's)."""
    served = {}
    for workers, persistent in ((0, False), (2, False), (2, True)):
        root = tmp_path / f"store-{workers}-{persistent}"
        store = lateseq.create(root, lateseq.Schema({"item_id": "int64"}))
        users = np.arange(8)
        store = store.commit(pa.table({"user_id": users, "ts": users, "item_id": users + 100}))
        log = lateseq.log_examples(store, pa.table({"user_id": users, "request_ts": users + 1}))
        ds = ExampleDataset(lateseq.open(root), log, lateseq.Projection(3, ("item_id",)), batch_size=4,
                            drop_deleted=True)
        options = {"num_workers": workers, "persistent_workers": persistent} if workers else {}
        loader = DataLoader(ds, batch_size=None, **options)
        for epoch in range(3):
            if epoch == 1:
                newer = lateseq.open(root).commit(pa.table({"user_id": [99], "ts": [1], "item_id": [1]}))
                newer.cleanup(before=newer.version, grace_s=0)  # the dataset's version retired
            if epoch == 2:
                lateseq.open(root).delete([3])
            ds.set_epoch(epoch)
            rows = sorted(r for b in loader for r in b.rows.tolist())
        served[workers, persistent] = rows
    assert set(map(tuple, served.values())) == {(0, 1, 2, 4, 5, 6, 7)}, served


def test_persistent_workers_reshuffle_at_set_epoch(world):
    """A persistent worker keeps its copy of the dataset across epochs: set_epoch on the
    trainer's copy reaches it through shared memory."""
    def epoch_rows(loader, ds, epoch):
        ds.set_epoch(epoch)
        return np.concatenate([b.rows.numpy() for b in loader])

    ds = dataset(world, shuffle=True, seed=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    got = [epoch_rows(loader, ds, e) for e in (0, 1, 2)]
    fresh = dataset(world, shuffle=True, seed=2)
    want = [epoch_rows(DataLoader(fresh, batch_size=None, num_workers=2), fresh, e) for e in (0, 1, 2)]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert not np.array_equal(got[0], got[1])


def test_a_small_log_in_one_row_group_feeds_every_rank(world, tmp_path):
    """pyarrow writes up to a million rows in one row group: a small log is one, and it is
    cut between the ranks (with even_batches, none of them gets nothing)."""
    _, oracle, log, _ = world
    path = tmp_path / "one-group.parquet"
    pq.write_table(log, path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    batches, counts = [], []
    for rank in range(3):
        ds = ExampleDataset(world[0], path, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10, rank=rank,
                            world_size=3, even_batches=True, shuffle=True)
        got = list(DataLoader(ds, batch_size=None, num_workers=2))
        counts.append(len(got))
        batches += got
    assert counts == [8] * 3  # 80 rows a rank, 10 a batch
    check(batches, oracle, log)


# ---------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def batch(world):
    return next(iter(dataset(world, shuffle=True, seed=8)))


def test_batches_of_other_columns_are_not_joined(batch):
    """Joined, a batch without a column that the first had raised a bare KeyError; one
    with a column the first lacked lost it silently (s42B)."""
    assert len(Batch.cat([batch, batch])) == 2 * len(batch)
    fewer = dataclasses.replace(batch, examples={k: v for k, v in batch.examples.items() if k != "label"})
    for batches in ([batch, fewer], [fewer, batch]):
        with pytest.raises(lateseq.SchemaError, match=r"batch 1 has example columns .* batch 0 "):
            Batch.cat(batches)
    other = dataclasses.replace(batch, values={"ts": batch.values["ts"]})
    with pytest.raises(lateseq.SchemaError, match=r"batch 1 has sequence columns \['ts'\], batch 0 \["):
        Batch.cat([batch, other])


def test_a_batch_indexed_by_a_mask_or_positions_holds_those_examples_with_their_histories(batch):
    """``batch[batch.lengths > 0]``: HSTU takes no empty history, and a tenant's window or
    filter empties some whose pointer counts events, so dropping ``uih_length == 0`` from
    the log was not enough (s48B)."""
    def expected(positions):
        rows = [i % len(batch) for i in positions]
        history = {k: [x for i in rows for x in v[int(batch.offsets[i]):int(batch.offsets[i + 1])].tolist()]
                   for k, v in batch.values.items()}
        return [int(batch.rows[i]) for i in rows], history, [int(batch.lengths[i]) for i in rows]

    n = len(batch)
    mask = torch.arange(n) % 3 != 1
    for index, positions in ((mask, [i for i in range(n) if i % 3 != 1]), ([n - 1, 0, 0, -2], [n - 1, 0, 0, n - 2]),
                             (np.array([2, 1]), [2, 1]), (torch.tensor([], dtype=torch.int64), []),
                             ([], []),  # [] is a float tensor to torch (s48C)
                             # positions of narrow types: uint8 ones were taken for a mask, silently (s48F)
                             (torch.tensor([1, 0, 1], dtype=torch.uint8), [1, 0, 1]),
                             (np.array([n - 1, 0], np.uint8), [n - 1, 0]),
                             (torch.tensor([2, 1], dtype=torch.int8), [2, 1]), (np.array([1, 2], np.uint16), [1, 2])):
        got = batch[index]
        rows, history, lengths = expected(positions)
        assert got.rows.tolist() == rows and got.lengths.tolist() == lengths
        assert got.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
        assert {k: v.tolist() for k, v in got.values.items()} == history
        assert {k: v.tolist() for k, v in got.examples.items()} == {
            k: [v[i].item() for i in positions] for k, v in batch.examples.items()}
        assert all(got.values[k].dtype == v.dtype for k, v in batch.values.items())
    with pytest.raises(lateseq.SchemaError, match=f"one entry per example \\({n}\\), got shape \\(2,\\)"):
        batch[torch.tensor([True, False])]
    with pytest.raises(TypeError, match="a slice, a mask or a list of positions"):
        batch[torch.tensor([0.5])]
    nonempty = batch[batch.lengths > 0]
    assert len(nonempty) == int((batch.lengths > 0).sum()) and bool((nonempty.to_hstu()["past_lengths"] > 0).all())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("length", [None, 0, 1, 3, 20])
def test_padded_is_the_newest_events_like_the_numpy_batch(batch, side, length):
    jagged = JaggedBatch(batch.offsets.numpy(), {k: v.numpy() for k, v in batch.values.items()},
                         np.zeros(len(batch), bool))
    for name in COLUMNS:
        want = jagged.padded(name, length, pad_value=-1, side=side)
        got = batch.padded(name, length, side=side, pad_value=-1)
        assert got.dtype == batch.values[name].dtype and np.array_equal(got.numpy(), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.bool, torch.int16, torch.float64])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_in_host_memory_is_the_devices_gather_and_fill(batch, dtype, side):
    """A CPU batch pads by a compiled copy of bits; a device's by a gather and a fill: the same."""
    values = batch.values["item_id"].to(dtype)
    for length in (0, 2, 7):
        got = lateseq.torch._padded_on_cpu(values, batch.offsets, length, side == "left", 1)
        want = batch._padded(values, *batch._padding(length, side), 1)
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


def test_padded_refuses_a_pad_value_its_column_does_not_hold_as_the_numpy_batch_does(batch):
    for name, pad_value in (("item_id", 1.5), ("rating", 300), ("ts", float("nan"))):
        with pytest.raises(lateseq.SchemaError, match=f"pad_value {pad_value} does not fit column '{name}'"):
            batch.padded(name, 4, pad_value=pad_value)


def test_to_hstu_gives_sequential_features_fields_right_padded(batch):
    hstu = batch.to_hstu(max_len=4)
    assert set(hstu) == {"past_lengths", "past_ids", "past_embeddings", "past_payloads"}
    assert hstu["past_embeddings"] is None and set(hstu["past_payloads"]) == {"timestamps", "rating"}
    assert torch.equal(hstu["past_lengths"], torch.clamp(batch.lengths, max=4))
    assert torch.equal(hstu["past_ids"], batch.padded("item_id", 4).to(torch.int64))
    assert torch.equal(hstu["past_payloads"]["timestamps"], batch.padded("ts", 4))
    for i, n in enumerate(hstu["past_lengths"].tolist()):  # valid first, zeros after
        assert (hstu["past_ids"][i, n:] == 0).all() and (hstu["past_ids"][i, :n] > 0).all()
    assert batch.to_hstu()["past_ids"].shape[1] == int(batch.lengths.max())
    with pytest.raises(lateseq.SchemaError, match="no column 'movie'"):
        batch.to_hstu(ids="movie")
    # a column named "timestamps" took the place of the times (s62M); ids <= 0 read as padding
    clash = dataclasses.replace(batch, values={**batch.values, "timestamps": batch.values["rating"]})
    with pytest.raises(lateseq.SchemaError, match="a column named 'timestamps', which would take the place"):
        clash.to_hstu()
    zero = dataclasses.replace(batch, values={**batch.values, "item_id": batch.values["item_id"]
                                              - batch.values["item_id"].min()})
    with pytest.raises(lateseq.SchemaError, match="ids column 'item_id' holds ids <= 0 .the smallest is 0."):
        zero.to_hstu()


@pytest.mark.parametrize("unit", [None, "ms"])
def test_to_hstu_widens_for_the_targets_as_hstu_s_own_features_do(batch, unit):
    """HSTU's training loop writes each target id at ``past_lengths``: a full history's
    (200 of 200) raised "index 200 is out of bounds" on to_hstu's rows, and the target's
    timestamp was 0 there (a stranger's). Checked against the rows built one by one."""
    width, extra = 3, 2
    targets = torch.arange(len(batch), dtype=torch.int64) * 1000 + 7
    hstu = batch.to_hstu(max_len=width, time_unit=unit, max_output_length=extra, target_timestamps=targets)
    per_second = 1 if unit is None else 1000
    for i in range(len(batch)):
        lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
        kept = list(range(max(lo, hi - width), hi))
        n = len(kept)
        ids = [int(batch.values["item_id"][k]) for k in kept] + [0] * (width + extra - n)
        stamps = [int(batch.values["ts"][k]) for k in kept] + [0] * (width + extra - n)
        stamps[n] = int(targets[i])
        assert int(hstu["past_lengths"][i]) == n
        assert hstu["past_ids"][i].tolist() == ids
        assert hstu["past_payloads"]["timestamps"][i].tolist() == [t // per_second for t in stamps]
    assert any(int(n) == width for n in hstu["past_lengths"])  # a full history: its target at column 3 of 5
    as_array = batch.to_hstu(max_len=width, time_unit=unit, max_output_length=extra,
                             target_timestamps=targets.numpy().tolist())  # a list or an array as well
    assert torch.equal(as_array["past_payloads"]["timestamps"], hstu["past_payloads"]["timestamps"])
    logged = dataclasses.replace(batch, examples={**batch.examples, "request_ts": targets})  # a name, as read (s47A)
    by_name = logged.to_hstu(max_len=width, time_unit=unit, max_output_length=extra, target_timestamps="request_ts")
    assert torch.equal(by_name["past_payloads"]["timestamps"], hstu["past_payloads"]["timestamps"])
    with pytest.raises(lateseq.SchemaError, match=r"names example column 'request_ts', which this batch lacks"):
        batch.to_hstu(max_len=width, max_output_length=extra, target_timestamps="request_ts")
    for wrong in ({"target_timestamps": targets}, {"max_output_length": 1, "target_timestamps": targets[:1]}):
        with pytest.raises(lateseq.SchemaError, match="target_timestamps must be one per example"):
            batch.to_hstu(max_len=width, **wrong)
    with pytest.raises(lateseq.SchemaError, match="max_output_length"):
        batch.to_hstu(max_output_length=-1)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_to_hstu_gives_timestamps_in_seconds_for_a_store_s_unit(batch, unit):
    """HSTU buckets time gaps as seconds (log of the gap): a millisecond store's came out
    1000x too large, silently. Whole seconds, rounded down, with the store's unit."""
    per_second = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[unit]
    got = batch.to_hstu(max_len=4, time_unit=unit)["past_payloads"]["timestamps"]
    want = np.floor_divide(batch.padded("ts", 4).numpy().astype(np.int64), per_second)
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), want)


def test_to_hstu_and_to_kjt_refuse_what_they_would_misread(batch):
    with pytest.raises(lateseq.SchemaError, match="time_unit must be one of s, ms, us, ns"):
        batch.to_hstu(time_unit="sec")
    scored = Batch(batch.rows, batch.examples, batch.offsets, batch.lengths,
                   {**batch.values, "score": batch.values["rating"].to(torch.float32) + 0.9})
    with pytest.raises(lateseq.SchemaError, match="ids column 'score' holds floats"):  # truncated to ints, before
        scored.to_hstu(ids="score")
    with pytest.raises(lateseq.SchemaError, match=r"pass keys=\['item_id'\]"):  # 'batch has no columns ['i', 't', ...
        batch.to_kjt("item_id")
    with pytest.raises(lateseq.SchemaError, match="timestamps column 'score' holds floats"):  # NaN became -2**63
        scored.to_hstu(timestamps="score")
    with pytest.raises(lateseq.SchemaError, match="target_timestamps must be integers"):  # 31.9 became 31
        batch.to_hstu(max_output_length=1, target_timestamps=[31.9] * len(batch))
    with pytest.raises(lateseq.SchemaError, match=r"names columns \['item_id'\] more than once"):  # s36C
        batch.to_kjt(["item_id", "rating", "item_id"])
    flagged = Batch(batch.rows, batch.examples, batch.offsets, batch.lengths,
                    {**batch.values, "clicked": batch.values["rating"] > 2})
    with pytest.raises(lateseq.SchemaError, match="timestamps column 'clicked' holds bools"):  # s36G: 0s and 1s
        flagged.to_hstu(timestamps="clicked")
    with pytest.raises(lateseq.SchemaError, match="target_timestamps must be integers"):
        batch.to_hstu(max_output_length=1, target_timestamps=[True] * len(batch))


def test_to_kjt_builds_the_documented_constructor_call(batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchrec", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'lateseq\[torchrec\]'"):
        batch.to_kjt()
    calls = {}

    class KeyedJaggedTensor:
        def __init__(self, keys, values, lengths):
            calls.update(keys=keys, values=values, lengths=lengths)

    module = types.ModuleType("torchrec.sparse.jagged_tensor")
    module.KeyedJaggedTensor = KeyedJaggedTensor
    for name in ("torchrec", "torchrec.sparse"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "torchrec.sparse.jagged_tensor", module)
    batch.to_kjt(["item_id", "rating"])
    assert calls["keys"] == ["item_id", "rating"] and calls["values"].dtype == torch.int64
    # key-major: every row's item ids, then every row's ratings
    assert torch.equal(calls["values"], torch.cat([batch.values["item_id"], batch.values["rating"].long()]))
    assert torch.equal(calls["lengths"], torch.cat([batch.lengths, batch.lengths]))
    floaty = Batch(batch.rows, {}, batch.offsets, batch.lengths, {"w": batch.values["ts"].double()})
    with pytest.raises(lateseq.SchemaError, match=r"\['w'\] are floats"):
        floaty.to_kjt()


@pytest.mark.filterwarnings("ignore:.*(Failed to import|is now DEPRECATED).*:DeprecationWarning")  # fbgemm-gpu-cpu
def test_to_kjt_makes_a_real_keyed_jagged_tensor(batch):
    pytest.importorskip("torchrec.sparse.jagged_tensor", reason="TorchRec is not installed (see the Makefile)")
    kjt = batch.to_kjt(["item_id", "rating"])
    assert kjt.keys() == ["item_id", "rating"]
    jagged = kjt.to_dict()
    for key in ("item_id", "rating"):
        assert torch.equal(jagged[key].offsets(), batch.offsets)
        assert torch.equal(jagged[key].values(), batch.values[key].long())
    assert torch.equal(kjt.lengths(), torch.cat([batch.lengths, batch.lengths]))
    assert torch.equal(jagged["item_id"].to_padded_dense(), batch.padded("item_id").long())


def test_rebatch_joins_worker_batches_into_exact_training_batches(world):
    small = list(dataset(world, batch_size=7))
    big = list(dataset(world, batch_size=25))
    joined = list(rebatch(small, 25))
    assert [len(b) for b in joined] == [len(b) for b in big]
    assert all(same(a, b) for a, b in zip(joined, big, strict=True))
    assert sum(b.stats.busy_s for b in joined) == pytest.approx(sum(b.stats.busy_s for b in small))
    assert list(rebatch([], 4)) == []
    with pytest.raises(lateseq.SchemaError, match="batch_size"):
        next(rebatch(small, 0))


@pytest.mark.filterwarnings("ignore:even_batches leaves out")
def test_rebatch_under_even_batches_makes_every_rank_as_many_steps(world):
    """even_batches gives ranks as many batches, not as many rows (a rank's last one may be
    short): joined by rebatch, a rank made one step more, and under DistributedDataParallel
    waited forever in its all-reduce (s37C). Each rank's steps are the first rows of its
    stream, all but its last step full; a state saved at any step resumes the same."""
    uneven = 0
    for world_size, size in ((2, 25), (2, 13), (3, 25), (3, 16)):
        for epoch in range(3):
            counts = []
            for rank in range(world_size):
                ds = dataset(world, batch_size=7, shuffle=True, seed=3, even_batches=True, rank=rank,
                             world_size=world_size)
                ds.set_epoch(epoch)
                stream = torch.cat([b.rows for b in ds])
                whole = list(rebatch(ds, size))
                counts.append(len(whole))
                uneven += len(stream) % size != 0
                assert [len(b) for b in whole[:-1]] == [size] * (len(whole) - 1) and 0 < len(whole[-1]) <= size
                assert torch.equal(torch.cat([b.rows for b in whole]), stream[:sum(len(b) for b in whole)])
                for stop in range(len(whole)):  # saved after step ``stop``, resumed on a fresh dataset
                    ds = dataset(world, batch_size=7, shuffle=True, seed=3, even_batches=True, rank=rank,
                                 world_size=world_size)
                    ds.set_epoch(epoch)
                    steps = rebatch(ds, size)
                    taken = [next(steps) for _ in range(stop + 1)]
                    saved = {"loader": ds.state_dict(), "rebatch": steps.state_dict()}
                    resumed = dataset(world, batch_size=7, shuffle=True, seed=3, even_batches=True, rank=rank,
                                      world_size=world_size)
                    resumed.set_epoch(epoch)
                    resumed.load_state_dict(saved["loader"])
                    rest = list(rebatch(resumed, size, state=saved["rebatch"]))
                    assert all(same(a, b) for a, b in zip(taken + rest, whole, strict=True)), (rank, stop)
            assert len(set(counts)) == 1, (world_size, size, epoch, counts)
    assert uneven  # ranks held rows that no whole step took


@pytest.mark.filterwarnings("ignore:even_batches leaves out")
def test_rebatch_of_a_copartitioned_log_under_even_batches_needs_drop_last(tmp_path):
    """Each worker's partitions end in a short batch: a rank's rows depend on every rank's
    num_workers, which no rank knows, so joined steps cannot be made even (s37C)."""
    store, _, path = copartitioned(tmp_path)
    projection = lateseq.Projection(10, ("item_id",))
    options = {"batch_size": 7, "copartition": True, "even_batches": True, "world_size": 2}
    with pytest.raises(lateseq.SchemaError, match="needs drop_last=True"):
        rebatch(ExampleDataset(store, path, projection, rank=0, **options), 25)
    steps = [[len(b) for b in rebatch(ExampleDataset(store, path, projection, rank=rank, drop_last=True, **options),
                                      14)] for rank in (0, 1)]
    assert steps[0] == steps[1] and set(steps[0]) == {14}


def test_to_device_and_pin_memory_move_every_tensor(batch, monkeypatch):
    moved = batch.to("meta")
    tensors = [moved.rows, moved.offsets, moved.lengths, *moved.values.values(), *moved.examples.values()]
    assert all(t.device.type == "meta" for t in tensors) and len(moved) == len(batch)
    if not torch.cuda.is_available():  # nothing to pin for: the batch itself, as DataLoader(pin_memory=True) does
        assert batch.pin_memory() is batch
    pinned = []
    monkeypatch.setattr(lateseq.torch, "has_accelerator", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t) or t.clone())
    from torch.utils.data._utils.pin_memory import (
        pin_memory,  # what DataLoader(pin_memory=True) calls
    )

    out = pin_memory(batch)
    assert isinstance(out, Batch) and len(pinned) == 3 + len(batch.values) + len(batch.examples)
    assert same(out, batch)


def test_batch_stats_add_up():
    total = BatchStats(1.0, 2.0, 3.0, 4, 4096, 80) + BatchStats(0.5, 0.5, 0.5, 1, 0, 8)
    assert total == BatchStats(1.5, 2.5, 3.5, 5, 4096, 88)


def test_disk_read_bytes_counts_what_this_process_reads_from_storage(tmp_path):
    if not os.path.exists("/proc/self/io"):
        pytest.skip("this system has no /proc/self/io")
    path = tmp_path / "data"
    path.write_bytes(os.urandom(4 << 20))
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # written back, so that it can be dropped from the page cache
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
        _, kind = max((m for m in mounts if str(path).startswith(m[0])), key=lambda m: len(m[0]))
        if kind in ("tmpfs", "ramfs"):
            pytest.skip(f"{tmp_path} is on {kind}: nothing is read from storage")
        before = lateseq.torch._disk_read_bytes()
        f.read()
    assert lateseq.torch._disk_read_bytes() - before >= 1 << 20


# ---------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_lateseq_errors(world):
    store, _, log, path = world
    projection = lateseq.Projection(MAX_LEN, COLUMNS)
    cases = [
        ({"batch_size": 0}, lateseq.SchemaError, "batch_size"),
        ({"example_columns": ["note"]}, lateseq.SchemaError, r"note \(string\)"),
        ({"example_columns": ["nope"]}, lateseq.SchemaError, "no columns"),
        ({"rank": 3, "world_size": 2}, lateseq.SchemaError, "rank"),
        # strings are true to Python: shuffle="no" shuffled, drop_last="False" dropped (a stranger's)
        ({"shuffle": "no"}, lateseq.SchemaError, "shuffle must be True or False, not 'no'"),
        ({"drop_last": "False"}, lateseq.SchemaError, "drop_last must be True or False, not 'False'"),
        ({"prefetch": 1}, lateseq.SchemaError, "prefetch must be True or False"),
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            ExampleDataset(store, path, projection, **kwargs)
    with pytest.raises(lateseq.PointerError, match="missing pointer columns"):
        ExampleDataset(store, log.drop_columns(["uih_checksum"]), projection)
    with pytest.raises(lateseq.SchemaError, match="unknown columns"):
        ExampleDataset(store, log, lateseq.Projection(3, ("price",)))
    with pytest.raises(lateseq.StoreError):
        ExampleDataset(path.parent / "nowhere", log, projection)
    ds = ExampleDataset(store, log, projection, example_columns=["user_id", "uih_length"], shuffle=np.bool_(False))
    b = next(iter(ds))
    assert sorted(b.examples) == ["uih_length", "user_id"] and b.examples["uih_length"].dtype == torch.int64
    with pytest.raises(lateseq.SchemaError, match="side"):
        b.padded("item_id", 3, side="middle")
    with pytest.raises(lateseq.SchemaError, match=r"no column 'itemid'; it has \['item_id', 'rating', 'ts'\]"):
        b.padded("itemid", 3)
    with pytest.raises(TypeError):  # side and pad_value are keywords: JaggedBatch.padded takes them so too
        b.padded("item_id", 3, "left")


def test_the_trainers_copy_refuses_a_state_while_workers_iterate(world):
    ds = dataset(world, shuffle=True, seed=1)
    loader = iter(DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork"))
    next(loader)
    with pytest.raises(lateseq.SchemaError, match="iterated by DataLoader worker processes.*StatefulDataLoader"):
        ds.state_dict()  # it would say 0 batches: resuming from it would replay the epoch
    del loader
    it = iter(ds)  # iterated here again: this copy's count is the truth once more
    next(it)
    assert ds.state_dict()["batches"] == 1


def test_import_error_names_the_extra_when_torch_is_missing():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import lateseq.torch\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'lateseq[torch]'" in out.stdout


def test_a_mismatch_names_its_row_of_the_log_whatever_the_order(world):
    store, _, log, _ = world
    bad = int(np.flatnonzero(log.column("uih_length").to_numpy() > 0)[-1])
    checksum = log.column("uih_checksum").to_numpy().copy()
    checksum[bad] ^= 1
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pa.array(checksum, pa.uint32()))
    ds = ExampleDataset(store, tampered, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=7, shuffle=True, seed=3)
    with pytest.raises(lateseq.ChecksumMismatch, match=rf"first rows of the log: \[{bad}\]") as info:
        list(ds)
    assert info.value.rows == [bad]
    # from a worker, torch raises it again from its message: it stays a ChecksumMismatch (it was
    # a RuntimeError, which `except lateseq.LateseqError` missed), the rows in the message
    with pytest.raises(lateseq.ChecksumMismatch, match=rf"first rows of the log: \[{bad}\]"):
        list(DataLoader(ds, batch_size=None, num_workers=1))
    overflow = TransformOverflow("Caught TransformOverflow in DataLoader worker process 0 {where}")
    assert str(overflow) == "Caught TransformOverflow in DataLoader worker process 0 {where}"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_reuse_shared_memory_only_once_the_trainer_let_go(world, context):
    """Workers write batches into a few buffers allocated once: a buffer is reused when the
    trainer's batch in it is gone, never while the trainer holds it (held batches stay exact)."""
    _store, oracle, log, _ = world
    ds = dataset(world, batch_size=4, shuffle=True, seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    slots = []
    for batch in loader:  # each checked as it arrives, then let go
        check([batch], oracle, log, rows_expected=len(batch))
        slots.append(batch.slot[1:3])
    assert all(s >= 0 for _, s in slots), "a worker found no free buffer though the trainer let each batch go"
    assert len(set(slots)) <= 2 * 8 < len(slots)
    kept = list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context))
    check(kept, oracle, log)  # every batch held: none written over
    assert len(kept) > 2 * 8 and sum(b.slot[2] < 0 for b in kept) >= len(kept) - 2 * 8


def _byte_offset(t: torch.Tensor) -> int:
    return t.storage_offset() * t.element_size()


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_workers_read_of_one_batch_is_rebuilt_in_the_buffer_it_crosses_in(world, monkeypatch, prefetch):
    """A worker's read of one batch (the reads from N=1024 on) is rebuilt straight into the
    shared buffer its batch crosses to the trainer in (copied in after, it was a third of a
    worker's time a batch at N=4096): its histories lie before the rows copied in after
    them. Batches stay exact whether let go or all held (the buffers then all taken)."""
    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)  # a read per batch: forked workers inherit it
    _store, oracle, log, _ = world
    ds = dataset(world, batch_size=4, shuffle=True, seed=3, prefetch=prefetch)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    in_place, slots, with_values = 0, [], 0
    for batch in loader:  # each checked as it arrives, then let go
        check([batch], oracle, log, rows_expected=len(batch))
        slots.append(batch.slot[1:3])
        filled = [v for v in batch.values.values() if v.numel()]
        if filled:
            with_values += 1
            same_buffer = {v.untyped_storage().data_ptr() for v in filled} == {batch.rows.untyped_storage().data_ptr()}
            in_place += same_buffer and all(_byte_offset(v) < _byte_offset(batch.rows) for v in filled)
    assert all(s >= 0 for _, s in slots) and len(set(slots)) <= 2 * 8 < len(slots)
    assert in_place >= with_values - 2 * 8 > 0  # a slot's first batch finds no buffer yet: it is copied in
    kept = list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    check(kept, oracle, log)  # every batch held: none written over


def test_a_slot_taken_for_a_read_that_raised_is_free_again(world, monkeypatch):
    """A worker's slot taken for a read of one batch that raised (a tampered pointer) is
    free again: none stays taken once the batches made are gone."""
    import gc

    from torch.utils.data._utils.worker import WorkerInfo

    monkeypatch.setattr(lateseq._loader, "READ_BYTES", 1)
    store, _, log, _ = world
    checksum = log.column("uih_checksum").to_numpy().copy()
    checksum[23] ^= 1
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pa.array(checksum, pa.uint32()))
    ds = ExampleDataset(store, tampered, lateseq.Projection(MAX_LEN, COLUMNS), batch_size=10)
    info = WorkerInfo(id=0, num_workers=1, seed=0, dataset=ds)
    monkeypatch.setattr(lateseq.torch, "get_worker_info", lambda: info)  # this process plays a worker
    made = []
    with pytest.raises(lateseq.ChecksumMismatch) as raised:
        for batch in ds:
            made.append(batch)
    assert raised.value.rows == [23] and len(made) == 2
    assert all(b.slot is not None and b.slot[2] >= 0 for b in made)  # made in slots, as a worker makes them
    del made, batch, raised
    gc.collect()
    assert not ds._slots.flags[0].any(), ds._slots.flags[0]
    ds._slots._lock_file[1].close()  # a worker's, kept open for its life: this process is none


def test_a_batch_whose_arrays_outgrow_the_buffer_they_were_rebuilt_in_keeps_its_values(monkeypatch):
    """Arrays rebuilt in a slot's buffer beside arrays made elsewhere that do not fit after
    them (a transform's column, examples dropped): the batch goes to a new buffer, every
    array copied in. Copied into the same buffer from its start, an array rebuilt there
    was written over before its turn."""
    from torch.utils.data._utils.worker import WorkerInfo

    from lateseq.torch import _aligned, _Slots

    info = WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    monkeypatch.setattr(lateseq.torch, "get_worker_info", lambda: info)  # this process plays a worker
    slots = _Slots()
    try:
        reserved = slots.reserve()
        buffer = slots._buffers[reserved.slot] = torch.empty(4096, dtype=torch.uint8).share_memory_()  # as 4 KB left it
        kept = reserved.empty("kept", 300, np.int64)  # rebuilt in the buffer, and in the batch
        kept[:] = np.arange(300) * 7
        reserved.empty("replaced", 100, np.int64)  # rebuilt in it, then replaced (by a transform's)
        made = np.arange(150, dtype=np.int64) * -3  # made elsewhere
        rows, offsets, lengths = np.arange(2, dtype=np.int64), np.array([0, 300, 450]), np.array([300, 150])
        arrays = (rows, offsets, lengths, kept, made)
        outside = sum(_aligned(a.nbytes) for a in (rows, offsets, lengths, made))
        assert reserved.used + outside > len(buffer) >= sum(_aligned(a.nbytes) for a in arrays)
        batch = slots.batch(rows, {}, offsets, lengths, {"kept": kept, "made": made}, reserved)
        assert np.array_equal(batch.values["kept"].numpy(), np.arange(300) * 7)
        assert np.array_equal(batch.values["made"].numpy(), np.arange(150) * -3)
        assert np.array_equal(batch.offsets.numpy(), [0, 300, 450]) and batch.slot[2] == reserved.slot
        assert batch.rows.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    finally:
        if slots._lock_file is not None:
            slots._lock_file[1].close()


def test_two_threads_of_a_worker_never_take_one_slot(monkeypatch):
    """With prefetch a worker takes slots from two threads (the read ahead reserves one, the
    batch maker places a batch in another). The file lock shuts out other processes, not
    this one's threads: two took the same slot, and one batch was written over the other
    (a stranger's: 194 wrong batches of 1,400, s46A)."""
    from torch.utils.data._utils.worker import WorkerInfo

    from lateseq.torch import _Slots

    info = WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)
    monkeypatch.setattr(lateseq.torch, "get_worker_info", lambda: info)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the race shows within a few hundred tries
    slots = _Slots()
    try:
        same = 0
        for _ in range(300):
            slots.flags.zero_()
            got = [None, None]
            start = threading.Barrier(2)

            def take(k, start=start, got=got):
                start.wait()
                got[k] = slots._take(0)
            threads = [threading.Thread(target=take, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            same += got[0] == got[1]
        assert same == 0, f"both threads took one slot in {same} of 300 tries"
    finally:
        sys.setswitchinterval(interval)
        if slots._lock_file is not None:
            slots._lock_file[1].close()


def test_buffers_the_trainer_held_all_at_once_are_reused_once_it_lets_go(world):
    """A trainer that held every buffer of a worker (a list of an epoch's batches) and let
    go: the batches of the next epoch reuse them. They were freed only when a batch in a
    buffer arrived, and with all taken none came in one again: every later batch was
    copied into new shared memory (0.55-0.65x the loader's speed, a stranger measured)."""
    _store, oracle, log, _ = world
    loader = DataLoader(dataset(world, batch_size=4, shuffle=True, seed=3), batch_size=None, num_workers=1,
                        persistent_workers=True)
    held = list(loader)
    check(held, oracle, log)
    assert len(held) > 8 and sum(b.slot[2] < 0 for b in held) >= len(held) - 8  # all 8 taken at once
    del held
    again = []
    for batch in loader:
        check([batch], oracle, log, rows_expected=len(batch))
        again.append(batch.slot[2])
    # the first few are made before the trainer saw one arrive (the DataLoader's prefetch)
    assert len(again) > 8 and sum(s < 0 for s in again) <= 3, again


def test_buffers_of_a_loop_left_early_are_freed(world):
    """Batches in flight when the trainer leaves a loop never arrive: their buffers, taken
    by workers that are gone, are freed, so later epochs still reuse memory."""
    loader = DataLoader(dataset(world, batch_size=4), batch_size=None, num_workers=1)
    for _ in range(6):
        for i, _batch in enumerate(loader):
            if i == 1:
                break
    fell_back = [batch.slot is None for batch in loader]
    assert len(fell_back) > 8 and not any(fell_back)


def test_lock_files_of_trainers_killed_are_removed_by_the_next_dataset(world, tmp_path, monkeypatch):
    """A trainer killed (kill -9) never removes its slot lock file; the next dataset
    made on the host removes those of trainers that are gone, and only those."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = tmp_path / f"lateseq-slots-{int(gone.stdout)}-abc123"
    alive = tmp_path / f"lateseq-slots-{os.getppid()}-def456"
    unrelated = tmp_path / "lateseq-slots-notapid"
    for path in (orphan, alive, unrelated):
        path.touch()
    made = dataset(world, batch_size=4)
    assert not orphan.exists() and alive.exists() and unrelated.exists()
    assert Path(made._slots.lock_path).parent == tmp_path and Path(made._slots.lock_path).exists()


def test_a_copy_of_a_batch_let_go_does_not_free_the_batch_it_copied(world):
    """A deep copy names the same buffer; dropping it must not free the buffer while the
    batch it copied is still held."""
    _store, oracle, log, _ = world
    kept, first = None, None
    for batch in DataLoader(dataset(world, batch_size=4), batch_size=None, num_workers=1):
        if kept is None:
            kept, first = batch, copy.deepcopy(batch)
            first = first.rows.clone(), first.offsets.clone(), {k: v.clone() for k, v in first.values.items()}
    assert torch.equal(kept.rows, first[0]) and torch.equal(kept.offsets, first[1])
    assert all(torch.equal(kept.values[k], v) for k, v in first[2].items())
    check([kept], oracle, log, rows_expected=len(kept))


def _digests(queue, out) -> None:
    """Receives (batch, digest as sent) pairs until None; after a pause, counts the
    batches whose bytes changed since they were sent."""
    kept = []
    while (item := queue.get()) is not None:
        kept.append(item)
    time.sleep(0.3)
    out.put(sum(_digest(b) != d for b, d in kept))


def _digest(batch: Batch) -> str:
    tensors = [batch.rows, batch.offsets, *batch.values.values(), *batch.examples.values()]
    return hashlib.sha1(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()


def test_a_batch_sent_on_to_another_process_keeps_its_values(world):
    """The trainer cannot see when another process lets go of a worker's buffer: a batch
    it sends on goes in memory of its own."""
    ctx = torch.multiprocessing.get_context("fork")
    queue, out = ctx.Queue(), ctx.Queue()
    consumer = ctx.Process(target=_digests, args=(queue, out))
    consumer.start()
    for i, batch in enumerate(DataLoader(dataset(world, batch_size=4), batch_size=None, num_workers=1)):
        if i < 3:
            queue.put((batch, _digest(batch)))
        del batch
    queue.put(None)
    assert out.get(timeout=60) == 0
    consumer.join(timeout=60)


def test_persistent_workers_left_early_with_prefetch_still_reuse_buffers(world):
    """The batch a worker's prefetch thread made when the epoch was left is never sent:
    its buffer frees itself."""
    ds = dataset(world, batch_size=4, prefetch=True)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i, _batch in enumerate(loader):
            if i == 1:
                break
    ds.set_epoch(6)
    fell_back = [batch.slot is None for batch in loader]
    assert len(fell_back) > 8 and not any(fell_back)


def test_a_log_that_is_not_parquet_is_said_to_be_so(world, tmp_path):
    """Text, an empty file or a log cut short said "[Errno 22] Invalid argument" (a seek
    before the file's start, looking for a footer it does not have)."""
    store, _, _, path = world
    good = Path(path).read_bytes()
    for name, data in (("text", b"user_id,request_ts\n1,2\n"), ("empty", b""), ("short", b"PAR"),
                       ("cut", good[:-100])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(lateseq.SchemaError, match=rf"{name} is not a Parquet file \({len(data):,} bytes"):
            ExampleDataset(store, tmp_path / name, lateseq.Projection(MAX_LEN, COLUMNS))


def _labels_and_views(batch: Batch) -> tuple[torch.Tensor, ...]:
    """A user's collate_fn: tensors of the batch, not the batch."""
    return batch.rows, batch.examples["label"], batch.offsets, batch.values[COLUMNS[0]]


class _Unwrapped(torch.utils.data.IterableDataset):
    """A user's dataset wrapping the loader's: yields a dict of the batch's tensors."""

    def __init__(self, ds: ExampleDataset):
        self.ds = ds

    def __iter__(self):
        return map(self._tensors, self.ds)

    @staticmethod
    def _tensors(batch: Batch) -> dict[str, torch.Tensor]:
        return {"rows": batch.rows, "label": batch.examples["label"], "offsets": batch.offsets,
                "values": batch[1:].values[COLUMNS[0]]}


def _as_lists(items: Iterable) -> list:
    """Batches' tensors (tuples or dicts of them) as lists, in the order of their rows
    (workers deal batches in turn)."""
    items = [dict(enumerate(i)) if isinstance(i, tuple) else i for i in items]
    return sorted(({k: v.tolist() for k, v in i.items()} for i in items), key=lambda i: i[next(iter(i))])


@pytest.mark.parametrize("workers", [1, 2])
def test_tensors_a_worker_takes_out_of_its_batches_keep_their_values(world, workers):
    """A collate_fn or a wrapping dataset that sends a batch's tensors, not the batch: the
    batch died in the worker unsent and freed its buffer, which the worker wrote the next
    batches into while the trainer still read these (labels of other examples, s36C)."""
    ds = dataset(world, batch_size=4, shuffle=True, seed=3)
    got = list(DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=_labels_and_views))
    wrapped = list(DataLoader(_Unwrapped(ds), batch_size=None, num_workers=workers))
    # made last: batches held take every buffer, and the loaders above would have had none to reuse
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))  # each sent whole: held exact
    assert len(got) == len(batches) > 2 * 8 and _as_lists(got) == _as_lists(map(_labels_and_views, batches))
    assert _as_lists(wrapped) == _as_lists(_Unwrapped._tensors(b) for b in batches)


def _with_twice(batch: Batch) -> Batch:
    """A user's collate_fn adding an example column."""
    return dataclasses.replace(batch, examples={**batch.examples, "twice": batch.examples["label"] * 2})


@pytest.mark.parametrize("collate", [copy.copy, copy.deepcopy, _with_twice])
def test_a_copy_of_a_batch_sent_by_its_worker_keeps_its_values(world, collate):
    """A copy named its batch's slot without the means to free it: pickling it to send
    raised in the DataLoader's feeder thread, and the loader hung (s36R)."""
    ds = dataset(world, batch_size=4, shuffle=True, seed=3)
    got = list(DataLoader(ds, batch_size=None, num_workers=1, collate_fn=collate, timeout=60))
    batches = list(DataLoader(ds, batch_size=None, num_workers=1))
    assert len(got) == len(batches) > 2 * 8
    assert _as_lists(map(_labels_and_views, got)) == _as_lists(map(_labels_and_views, batches))



def test_a_timestamp_example_column_is_counted_in_the_store_s_unit(tmp_path):
    """A log's request_ts as timestamp[ms] (a pandas round trip) beside a store in µs: it
    was refused as an example column ("not numeric"), so to_hstu(target_timestamps=
    "request_ts") needed a cast by hand; it is the history's unit now, converted exactly."""
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"item_id": "int64"}, time_unit="us"))
    store = store.commit(pa.table({"user_id": [1, 1, 2], "ts": pa.array([1_000, 2_500, 4_000], pa.timestamp("us")),
                                   "item_id": [10, 11, 20]}))
    stamps = pa.array([3, 5, 1], pa.timestamp("ms"))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2, 1], "request_ts": stamps}))
    assert log.column("request_ts").to_pylist() == [3_000, 5_000, 1_000]  # the oracle: log_examples' conversion
    as_stamps = log.set_column(log.schema.get_field_index("request_ts"), "request_ts", stamps)
    projection = lateseq.Projection(4, ("item_id", "ts"))
    (batch,) = ExampleDataset(store, as_stamps, projection, example_columns=["request_ts"], batch_size=8)
    (want,) = ExampleDataset(store, log, projection, example_columns=["request_ts"], batch_size=8)
    assert batch.examples["request_ts"].dtype == torch.int64
    assert batch.examples["request_ts"].tolist() == [3_000, 5_000, 1_000]
    coded = as_stamps.append_column("target", stamps.dictionary_encode())  # refused as not a timestamp (s48C)
    (from_codes,) = ExampleDataset(store, coded, projection, example_columns=["target"], batch_size=8)
    assert from_codes.examples["target"].tolist() == [3_000, 5_000, 1_000]
    targets = [b.to_hstu(max_output_length=1, target_timestamps="request_ts")["past_payloads"]["timestamps"]
               for b in (batch, want)]
    assert torch.equal(*targets)
    plain = lateseq.create(tmp_path / "p", lateseq.Schema({"item_id": "int64"}))  # integer times: no unit to count
    plain = plain.commit(pa.table({"user_id": [1], "ts": [1], "item_id": [10]}))
    integer_log = lateseq.log_examples(plain, pa.table({"user_id": [1], "request_ts": [5]}))
    stamped = integer_log.append_column("seen", pa.array([5], pa.timestamp("ms")))
    with pytest.raises(lateseq.SchemaError, match="example column 'seen' has type timestamp"):
        ExampleDataset(plain, stamped, projection, example_columns=["seen"])
    with pytest.raises(lateseq.SchemaError, match=r"\['note \(string\)'\] are not numeric, bool or timestamps"):
        ExampleDataset(plain, integer_log.append_column("note", pa.array(["x"])), projection, example_columns=["note"])
