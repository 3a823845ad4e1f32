"""lateseq.ray on a local Ray instance: every example of the log exactly once, with the
sequence lateseq.materialize gives its row, from 1 and 2 actors, grouped by partition or
not; and the collate that makes lateseq.torch Batches of Arrow list columns."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lateseq[ray]'")
torch = pytest.importorskip("torch")

import lateseq  # noqa: E402
from lateseq._events import partition_of  # noqa: E402
from lateseq.ray import ROW, Collate, Materializer, materialized, read_examples  # noqa: E402

PROJECTION = lateseq.Projection(5, ("item_id", "liked", "ts"))
# Ray 2.60's DataContext sets three deprecated options of its own when it is first made
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store of 4 partitions (two commits, compacted) and a log of examples against both
    versions, with row groups for the read tasks to share out."""
    root = tmp_path_factory.mktemp("ray")
    rng = np.random.default_rng(5)
    store = lateseq.create(root / "store", lateseq.Schema({"item_id": "int64", "liked": "bool"}, partitions=4))
    logs = []
    for _ in range(2):
        n = 150
        store = store.commit(pa.table({"user_id": rng.integers(0, 20, n), "ts": rng.integers(0, 100, n),
                                       "item_id": rng.integers(1, 999, n), "liked": rng.random(n) < 0.3}))
        m = 60
        logs.append(lateseq.log_examples(store, pa.table({
            "user_id": rng.integers(0, 22, m), "request_ts": rng.integers(0, 110, m),
            "label": rng.integers(0, 2, m).astype(np.int8), "note": [f"n{i}" for i in range(m)]})))
    store = store.compact()
    log = pa.concat_tables(logs)
    path = root / "examples.parquet"
    pq.write_table(log, path, row_group_size=40)
    return store, log, path


def expect_exact(batches: list, store: lateseq.Store, log: pa.Table, rows: np.ndarray | None = None) -> None:
    """Every row of the log (``log`` holding those ``rows`` of it) exactly once, each with
    lateseq.materialize's sequence."""
    rows = np.arange(log.num_rows) if rows is None else rows
    got = np.concatenate([b.rows.numpy() for b in batches])
    assert np.array_equal(np.sort(got), rows), "rows missing or repeated"
    for b in batches:
        picked = log.take(pa.array(np.searchsorted(rows, b.rows.numpy())))
        want = lateseq.materialize(store, picked, PROJECTION)
        assert np.array_equal(b.offsets.numpy(), want.offsets)
        for name, values in want.values.items():
            assert b.values[name].numpy().dtype == values.dtype and np.array_equal(b.values[name].numpy(), values)
        assert np.array_equal(b.examples["label"].numpy(), picked.column("label").to_numpy())
        assert sorted(b.examples) == ["label"]  # numeric, not a pointer's, not the row number


@pytest.mark.parametrize("source, actors, by_partition", [("path", 1, False), ("table", 2, False),
                                                          ("path", 2, True)])
def test_every_example_exactly_once_with_its_exact_sequence(local_ray, world, source, actors, by_partition):
    store, log, path = world
    ds = materialized(store, path if source == "path" else log, PROJECTION, actors=actors, batch_size=16,
                      by_partition=by_partition)
    if not by_partition:
        batches = list(ds.iter_torch_batches(batch_size=40, collate_fn=Collate()))
    else:  # each block comes from one actor, which reads only its partitions (p % 2 == actor)
        blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        parts = partition_of(log.column("user_id").to_numpy(), 4)
        assert all(len(np.unique(parts[b.column(ROW).to_numpy()] % actors)) == 1 for b in blocks)
        assert {int(parts[b.column(ROW).to_numpy()][0] % actors) for b in blocks} == set(range(actors))
        batches = [Collate()(b) for b in blocks]
    expect_exact(batches, store, log)


@pytest.mark.filterwarnings("ignore:version \\d+ of .* was cleaned up while it was read")
def test_an_epoch_after_a_cleanup_reads_on_at_the_latest_version(local_ray, world, tmp_path):
    """Each execution of the dataset (each epoch) starts its actors anew, which reopened
    the driver's version: once a cleanup retired it, every later epoch failed."""
    _, log, path = world
    shutil.copytree(world[0].path, tmp_path / "store")
    store = lateseq.open(tmp_path / "store")
    ds = materialized(store, path, PROJECTION, actors=1, batch_size=16)
    expect_exact(list(ds.iter_torch_batches(batch_size=40, collate_fn=Collate())), store, log)
    newer = store.commit(pa.table({"user_id": [99], "ts": [1], "item_id": [1], "liked": [True]})).compact()
    newer.cleanup(before=newer.version, grace_s=0)
    expect_exact(list(ds.iter_torch_batches(batch_size=40, collate_fn=Collate())), newer, log)


def test_read_examples_numbers_rows_across_row_groups(local_ray, world, tmp_path):
    _, log, path = world
    got = pa.concat_tables(ray.get(read_examples(path).to_arrow_refs())).sort_by(ROW)
    assert got.column(ROW).to_pylist() == list(range(log.num_rows))
    assert np.array_equal(got.column("request_ts").to_numpy(), log.column("request_ts").to_numpy())
    assert "note" not in got.column_names  # not numeric: not an example column
    empty = tmp_path / "empty.parquet"
    pq.write_table(log.slice(0, 0), empty)
    assert read_examples(empty).count() == 0
    small = tmp_path / "small.parquet"  # 40 row groups of 3 rows: read by fewer tasks, each row once
    pq.write_table(log, small, row_group_size=3)
    refs = read_examples(small).to_arrow_refs()
    assert len(refs) < 40
    assert sorted(pa.concat_tables(ray.get(refs)).column(ROW).to_pylist()) == list(range(log.num_rows))
    parts = tmp_path / "parts"  # Spark's part files: rows numbered across them in name order
    parts.mkdir()
    for k, lo in enumerate(range(0, log.num_rows, 70)):
        pq.write_table(log.slice(lo, 70), parts / f"part-{k:05d}.parquet", row_group_size=30)
    (parts / "_SUCCESS").write_text("")
    got = pa.concat_tables(ray.get(read_examples(parts).to_arrow_refs())).sort_by(ROW)
    assert got.column(ROW).to_pylist() == list(range(log.num_rows))
    assert np.array_equal(got.column("request_ts").to_numpy(), log.column("request_ts").to_numpy())


def test_a_log_rewritten_after_it_was_planned_is_refused(local_ray, world, tmp_path):
    _, log, _ = world
    path = tmp_path / "log.parquet"
    pq.write_table(log, path, row_group_size=40)
    planned = read_examples(path)
    pq.write_table(log.slice(1), path, row_group_size=40)  # one example fewer: every row group moves
    with pytest.raises(Exception, match=r"log.parquet changed since lateseq.ray planned its reads"):
        planned.count()


def test_a_worker_that_read_one_log_reads_another_with_the_same_footer_afresh(world, tmp_path):
    """A Ray worker keeps the logs it read: kept by footer digest alone, a copy with labels
    corrected in place (no compression or dictionaries: the footer byte for byte) read as
    the first one's rows, wrong labels and all (s36A)."""
    from lateseq._examplelog import ExampleLog
    from lateseq.ray import _read_row_groups

    _, log, _ = world
    fixed = log.set_column(log.schema.get_field_index("label"), "label",
                           pc.subtract(pa.scalar(1, pa.int8()), log.column("label")))
    plain = {"compression": "none", "use_dictionary": False, "row_group_size": 40}
    pq.write_table(log, tmp_path / "v1.parquet", **plain)
    pq.write_table(fixed, tmp_path / "v2.parquet", **plain)
    first, second = ExampleLog(tmp_path / "v1.parquet"), ExampleLog(tmp_path / "v2.parquet")
    assert first.digest == second.digest
    task = pa.table({"groups": [[0, len(first.row_groups)]], "first": [0]})
    for each, table in ((first, log), (second, fixed), (first, log)):
        got = _read_row_groups(task, path=each.path, digest=each.digest, written=each.written, columns=["label"])
        assert got.column("label").to_pylist() == table.column("label").to_pylist()


def test_a_mismatch_in_an_actor_names_rows_of_the_log(world):
    """An actor rebuilds parts of the blocks Ray gives it: the error named rows of its part
    (a user dropping them dropped healthy examples, s36F)."""
    from lateseq.ray import Materializer

    store, log, _ = world
    part = log.slice(90, 30).append_column(ROW, pa.array(np.arange(90, 120)))
    checksum = part.column("uih_checksum").to_numpy().copy()
    checksum[21] += 1
    part = part.set_column(part.schema.get_field_index("uih_checksum"), "uih_checksum", pa.array(checksum))
    actor = Materializer(store, PROJECTION, ["label"], batch_size=16)
    with pytest.raises(lateseq.ChecksumMismatch, match=r"first rows of the log: \[111\]") as info:
        list(actor(part))  # the second part of 16 holds row 21 of this block: the log's row 111
    assert info.value.rows == [111]


def test_drop_deleted_leaves_out_the_examples_of_deleted_users_only(local_ray, world, tmp_path):
    """lateseq.ray had no drop_deleted, and its error sent a user to verify=False, which
    trained deleted users' examples with empty histories and their labels (s45A)."""
    from lateseq.ray import Materializer

    _, log, path = world
    shutil.copytree(world[0].path, tmp_path / "store")
    store = lateseq.open(tmp_path / "store").delete([3, 7])
    users = log.column("user_id").to_numpy()
    kept = np.flatnonzero(~np.isin(users, [3, 7]))
    assert 0 < len(kept) < log.num_rows
    ds = materialized(store, path, PROJECTION, actors=2, batch_size=16, drop_deleted=True)
    expect_exact(list(ds.iter_torch_batches(batch_size=40, collate_fn=Collate())), store, log.take(kept),
                 rows=kept)
    with pytest.raises(Exception, match=r"lateseq\.ray\.materialized\(drop_deleted=True\)"):
        list(materialized(store, path, PROJECTION, batch_size=16).iter_batches(batch_format="pyarrow"))
    part = log.append_column(ROW, pa.array(np.arange(log.num_rows)))
    checksum = part.column("uih_checksum").to_numpy().copy()
    checksum[kept[0]] += 1  # another changed history still raises, naming its row
    part = part.set_column(part.schema.get_field_index("uih_checksum"), "uih_checksum", pa.array(checksum))
    with pytest.raises(lateseq.ChecksumMismatch, match=rf"first rows of the log: \[{kept[0]}\]"):
        list(Materializer(store, PROJECTION, ["label"], batch_size=16, drop_deleted=True)(part))
    with pytest.raises(lateseq.SchemaError, match="drop_deleted"):
        materialized(store, path, PROJECTION, verify=False, drop_deleted=True)


def test_collate_makes_a_batch_of_values_and_offsets_from_chunked_list_columns():
    def part(rows, lists, labels):
        offsets = pa.array(np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int64))
        flat = [v for x in lists for v in x]
        return pa.table({ROW: pa.array(rows, pa.int64()), "label": pa.array(labels, pa.int8()),
                         "item_id": pa.LargeListArray.from_arrays(offsets, pa.array(flat, pa.int64())),
                         "liked": pa.LargeListArray.from_arrays(offsets, pa.array([v > 2 for v in flat]))})

    table = pa.concat_tables([part([7, 3], [[1, 2], []], [1, 0]), part([0, 9, 4], [[3], [4, 5, 6], [9]], [0, 0, 1])])
    table = table.slice(1)  # chunked, and the first chunk sliced: offsets no longer start at 0
    batch = Collate()(table)
    assert batch.rows.tolist() == [3, 0, 9, 4] and batch.examples["label"].tolist() == [0, 0, 0, 1]
    assert batch.offsets.tolist() == [0, 0, 1, 4, 5] and batch.lengths.tolist() == [0, 1, 3, 1]
    assert batch.values["item_id"].tolist() == [3, 4, 5, 6, 9]
    assert batch.values["liked"].dtype == torch.bool and batch.values["liked"].tolist() == [True, True, True,
                                                                                              True, True]
    assert batch.padded("item_id", 2).tolist() == [[0, 0], [3, 0], [5, 6], [9, 0]]
    assert Collate(device="meta")(table).values["item_id"].device.type == "meta"
    with pytest.raises(lateseq.SchemaError, match="no list columns"):
        Collate()(table.drop_columns(["item_id", "liked"]))
    odd = table.set_column(3, "liked", pa.array([[True]] * 4, pa.large_list(pa.bool_())))
    with pytest.raises(lateseq.SchemaError, match="other lengths"):
        Collate()(odd)


def test_bad_input_is_refused_on_the_driver(world, tmp_path):
    store, log, path = world
    with pytest.raises(lateseq.SchemaError, match="unknown columns"):
        materialized(store, path, lateseq.Projection(3, ("price",)))
    with pytest.raises(lateseq.SchemaError, match="actors"):
        materialized(store, path, PROJECTION, actors=0)
    with pytest.raises(lateseq.SchemaError, match="verify must be True or False, not .no."):  # not in an actor
        materialized(store, path, PROJECTION, verify="no")
    with pytest.raises(lateseq.SchemaError, match="clashes with the row numbers"):
        read_examples(log.append_column(ROW, pa.array(np.zeros(log.num_rows, np.int64))), [ROW])
    with pytest.raises(lateseq.PointerError, match="missing pointer columns"):
        read_examples(log.drop_columns(["uih_checksum"]))
    with pytest.raises(lateseq.SchemaError, match=r"example columns \['item_id'\] clash with projected columns"):
        materialized(store, log.append_column("item_id", pa.array(np.zeros(log.num_rows, np.int64))), PROJECTION)
    old = store.checkout(1)  # the log points into version 2 too: refused here, not in an actor mid-pipeline
    for source in (log, path):
        with pytest.raises(lateseq.PointerError, match="points into versions up to 2 but this store handle is at "
                                                       "version 1"):
            materialized(old, source, PROJECTION)
    one = lateseq.create(tmp_path / "one", lateseq.Schema({"item_id": "int64", "liked": "bool"}))
    with pytest.raises(lateseq.SchemaError, match="has one"):
        materialized(one, log.slice(0, 0), PROJECTION, by_partition=True)


def test_import_error_names_the_extra_when_ray_is_missing():
    code = ("import sys; sys.modules['ray'] = None\n"
            "try:\n    import lateseq.ray\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'lateseq[ray]'" in out.stdout


def test_a_timestamp_example_column_comes_out_in_the_store_s_unit(tmp_path):
    """As lateseq.torch.ExampleDataset gives it: a timestamp[ms] request_ts beside a store
    in µs is counted in µs (it was refused as not numeric), without a Ray instance."""
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"item_id": "int64"}, time_unit="us"))
    store = store.commit(pa.table({"user_id": [1, 1], "ts": pa.array([1_000, 2_500], pa.timestamp("us")),
                                   "item_id": [10, 11]}))
    stamps = pa.array([3, 2], pa.timestamp("ms"))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 1], "request_ts": stamps}))
    log = log.set_column(log.schema.get_field_index("request_ts"), "request_ts", stamps)
    log = log.append_column(ROW, pa.array([0, 1], pa.int64())).append_column("coded", stamps.dictionary_encode())
    (out,) = Materializer(store, lateseq.Projection(4, ("item_id",)), ["request_ts", "coded"])(log)
    batch = Collate()(out)
    assert batch.examples["request_ts"].tolist() == [3_000, 2_000] == batch.examples["coded"].tolist()
    assert batch.values["item_id"].tolist() == [10, 11, 10] and batch.lengths.tolist() == [2, 1]
