"""The streaming loader against a brute-force, one-event-at-a-time reading of the history."""

from __future__ import annotations

import os
import time
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lateseq
import lateseq._examplelog
from lateseq import _buffers
from lateseq import _loader as loader
from lateseq._loader import iter_batches, materialize_log, materialize_log_tenants

COLUMNS = ("item_id", "action", "ts")


def brute_force(events: list[dict], user: int, request_ts: int, version: int, max_len: int,
                columns=COLUMNS) -> dict[str, list]:
    """The newest ``max_len`` of the user's events before the request, visible in ``version``,
    oldest first, ties in (time, commit, row) order; every event is a dict with ``commit``."""
    visible = [e for e in events if e["user_id"] == user and e["ts"] < request_ts and e["commit"] <= version]
    visible.sort(key=lambda e: (e["ts"], e["commit"], e["row"]))
    window = visible[len(visible) - min(len(visible), max_len):]
    return {c: [e[c] for e in window] for c in columns}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store of three commits (late arrivals, ties) compacted once, with examples
    logged against every version as it was current, interleaved with ingestion."""
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(7)
    schema = lateseq.Schema({"item_id": "int64", "action": "int8"})
    store = lateseq.create(root / "store", schema)
    events: list[dict] = []
    logs = []
    row = 0
    for commit in (1, 2, 3):
        # online serves some requests from the current version before the next commit
        n_req = 40
        requests = pa.table({
            "user_id": rng.integers(0, 12, n_req),
            "request_ts": rng.integers(0, 120, n_req),
            "label": rng.integers(0, 2, n_req).astype(np.int8),
        })
        logs.append(lateseq.log_examples(store, requests))
        n = 150
        batch = pa.table({
            "user_id": rng.integers(0, 10, n),  # users 10, 11 never have events
            "ts": rng.integers(0, 100, n) // 3 * 3,  # many ties
            "item_id": rng.integers(0, 1000, n),
            "action": rng.integers(0, 4, n).astype(np.int8),
        })
        store = store.commit(batch)
        for r in batch.to_pylist():
            events.append({**r, "commit": store.version, "row": row})
            row += 1
    store = store.compact()
    requests = pa.table({"user_id": rng.integers(0, 12, 50), "request_ts": rng.integers(0, 120, 50),
                         "label": rng.integers(0, 2, 50).astype(np.int8)})
    logs.append(lateseq.log_examples(store, requests))
    log = pa.concat_tables(logs)
    path = root / "examples.parquet"
    pq.write_table(log, path, row_group_size=37)  # batches must cross row groups
    return store, events, log, path


def write_parts(log: pa.Table, folder, cuts=(0, 5, 5, 61, 100)) -> None:
    """``log`` as Spark leaves a log: part files in name order (one empty, row groups that
    end inside batches), ``_SUCCESS``, checksum files, an unfinished ``_temporary/``."""
    folder.mkdir()
    bounds = [*cuts, log.num_rows]
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(log.slice(lo, hi - lo), folder / f"part-{k:05d}-0a1b.snappy.parquet", row_group_size=23)
        (folder / f".part-{k:05d}-0a1b.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "_SUCCESS").write_text("")
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / "_temporary" / "0" / "part-00099.parquet").write_text("not yet written")


@pytest.fixture(scope="module")
def parts(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts") / "log"
    write_parts(world[2], folder)
    return folder


def expected(events, log, max_len, columns=COLUMNS):
    out = []
    for r in log.to_pylist():
        out.append(brute_force(events, r["user_id"], r["request_ts"], r["uih_version"], max_len, columns))
    return out


@pytest.mark.parametrize("source", ["path", "table", "folder"])
@pytest.mark.parametrize("max_len", [1, 4, 1000])
@pytest.mark.parametrize("read_bytes", [1, 3300, loader.READ_BYTES])  # batches per read: 1; 12, 3 or 1; all
def test_iter_batches_matches_brute_force(world, parts, source, max_len, read_bytes, monkeypatch):
    store, events, log, path = world
    monkeypatch.setattr(loader, "READ_BYTES", read_bytes)  # a batch: 16 x max_len events of 17 bytes
    examples = {"path": path, "table": log, "folder": parts}[source]
    projection = lateseq.Projection(max_len, COLUMNS)
    want = expected(events, log, max_len)
    got, labels, sizes = [], [], []
    for batch, seqs in iter_batches(store, examples, projection, batch_size=16, columns=["label"]):
        assert batch.schema.names == ["label"]
        assert not seqs.mismatched.any()
        sizes.append(batch.num_rows)
        labels += batch.column("label").to_pylist()
        for i in range(len(seqs)):
            lo, hi = seqs.offsets[i], seqs.offsets[i + 1]
            got.append({c: seqs.values[c][lo:hi].tolist() for c in COLUMNS})
    assert got == want
    assert labels == log.column("label").to_pylist()
    assert sizes == [16] * (log.num_rows // 16) + ([log.num_rows % 16] if log.num_rows % 16 else [])
    assert any(len(w["item_id"]) for w in want) and any(not w["item_id"] for w in want)


def reads_made(monkeypatch) -> list[int]:
    """The rows of each read ``_loader`` makes from here on (one ``materialize`` each)."""
    reads, materialize = [], loader.materialize

    def counted(store, examples, *args, **kwargs):
        reads.append(examples.num_rows)
        return materialize(store, examples, *args, **kwargs)

    monkeypatch.setattr(loader, "materialize", counted)
    return reads


def item_ids(batches: list[lateseq.JaggedBatch]) -> list[list[int]]:
    return [s.values["item_id"][lo:hi].tolist() for s in batches for lo, hi in zip(s.offsets[:-1], s.offsets[1:],
                                                                                     strict=True)]


@pytest.mark.parametrize("source", ["path", "table"])
@pytest.mark.parametrize(("read_pointers", "read_bytes"),
                         [(loader.READ_POINTERS, 16 * 60 * 17), (96, 9000), (32, loader.READ_BYTES)])
def test_a_read_holds_the_batches_whose_recorded_histories_fit_its_bytes(world, source, read_pointers, read_bytes,
                                                                         monkeypatch):
    """Reads were sized by max_len alone: at N=4096 a read held one batch of 256 pointers
    (13.6 MB allowed, about 2.7 MB returned) and paid a read's fixed cost every batch. Now
    consecutive batches share a read while their pointers' recorded lengths (each at most
    max_len) fit READ_BYTES and they are READ_POINTERS at most; a batch alone may hold
    more. The log is read many reads' pointers at a time: read one read's at a time, every
    second read was the rest of its chunk (12 of the benchmark's 37 at N=256 held 1-2 of
    its batches), and a read costs about 0.1 ms whatever it holds."""
    store, events, log, path = world
    monkeypatch.setattr(loader, "READ_BYTES", read_bytes)  # 16 * 60 * 17: by max_len (60), a batch of 16 a read
    # 96: 6 batches, the log's 176 rows one chunk; read 96 at a time, its reads held 5, 1, 2, 1, 1, 1 batches;
    # 32: reads of 2 batches, where the bytes would allow them all
    monkeypatch.setattr(loader, "READ_POINTERS", read_pointers)
    reads = reads_made(monkeypatch)
    projection = lateseq.Projection(60, COLUMNS)
    got = [seqs for _, seqs in iter_batches(store, {"path": path, "table": log}[source], projection, batch_size=16)]
    returned = [min(n, 60) * 17 for n in log.column("uih_length").to_pylist()]  # bytes, by what each recorded
    want, taken, held = [], 0, 0
    for start in range(0, len(returned), 16):  # greedily, batch by batch
        size = sum(returned[start:start + 16])
        if taken and (held + size > loader.READ_BYTES or taken + 16 > read_pointers):
            want.append(taken)
            taken = held = 0
        taken, held = taken + len(returned[start:start + 16]), held + size
    want.append(taken)
    assert reads == want and len(reads) < len(got) and max(reads) > 16
    assert item_ids(got) == [w["item_id"] for w in expected(events, log, 60)]


@pytest.mark.parametrize("source", ["path", "table"])
def test_wide_log_rows_are_read_a_few_batches_at_a_time(world, tmp_path, source, monkeypatch):
    """Reads sized by their histories read the log 8,192 rows at a time: a log of 19 KB rows
    held 360 MB (s49C). A chunk of the log holds what READ_BYTES of its columns allow."""
    store, events, log, _ = world
    blobs = [np.random.default_rng(i).bytes(2000) for i in range(log.num_rows)]  # as a Parquet footer sizes them
    wide = log.append_column("blob", pa.array(blobs, pa.binary()))
    pq.write_table(wide, tmp_path / "wide.parquet", row_group_size=64)
    monkeypatch.setattr(loader, "READ_BYTES", 20_000)  # about 9 rows of the log's columns; histories fit easily
    reads = reads_made(monkeypatch)
    examples = {"path": tmp_path / "wide.parquet", "table": wide}[source]
    got = list(iter_batches(store, examples, lateseq.Projection(2, ("item_id",)), batch_size=4, columns=["blob"]))
    assert max(reads) <= 8 and sum(reads) == log.num_rows
    assert [v for b, _ in got for v in b.column(0).to_pylist()] == blobs
    assert item_ids([seqs for _, seqs in got]) == [w["item_id"] for w in expected(events, log, 2, ("item_id",))]


@pytest.mark.parametrize("files", [1, 8])
def test_a_pass_holds_about_a_part_of_the_log_it_reads_not_all_it_read(world, tmp_path, files):
    """A pre-buffered ParquetFile keeps every range it read until it is freed, closed or
    not: a pass held the whole log by its end (10 MB a million pointers, s61J), a file or
    a folder of them. What it holds stays near an eighth of this log's bytes."""
    store, _, _, _ = world
    rng = np.random.default_rng(3)
    (tmp_path / "log").mkdir()
    rows = 1_200_000 // files
    for k in range(files):
        requests = pa.table({"user_id": rng.integers(0, 12, rows), "request_ts": rng.integers(0, 200, rows),
                             "label": rng.random(rows)})
        lateseq.log_examples(store, requests, tmp_path / "log" / f"part-{k}.parquet")
    size = sum(f.stat().st_size for f in (tmp_path / "log").iterdir())
    before = pa.total_allocated_bytes()
    held = []
    for examples, _ in iter_batches(store, tmp_path / "log", lateseq.Projection(1, ("item_id",)), batch_size=8192):
        held.append(pa.total_allocated_bytes() - before)
        del examples
    assert len(held) > 140 and held[-1] < 3 * size / 8, (held[-1], size)


def test_iter_batches_value_types_and_all_columns(world):
    store, _, log, path = world
    batch, seqs = next(iter_batches(store, path, lateseq.Projection(3, COLUMNS)))
    assert batch.schema.names == log.schema.names  # columns=None: every column of the log
    assert seqs.values["item_id"].dtype == np.int64
    assert seqs.values["action"].dtype == np.int8
    assert seqs.values["ts"].dtype == np.int64


def test_store_given_as_path_opens_latest(world):
    store, events, log, path = world
    got = [seqs for _, seqs in iter_batches(store.path, path, lateseq.Projection(5, ("item_id",)))]
    want = expected(events, log, 5, ("item_id",))
    flat = [v for w in want for v in w["item_id"]]
    assert np.concatenate([g.values["item_id"] for g in got]).tolist() == flat


@pytest.mark.parametrize("source", ["path", "table", "folder"])
@pytest.mark.parametrize("read_bytes", [1, 1300, loader.READ_BYTES])  # reads of 8, 24 and all rows
def test_materialize_log_round_trip(world, parts, tmp_path, source, read_bytes, monkeypatch):
    store, events, log, path = world
    monkeypatch.setattr(loader, "_ROW_GROUP_ROWS", 20)  # several row groups
    monkeypatch.setattr(loader, "READ_BYTES", read_bytes)  # a batch: 8 x 3 events of 17 bytes
    out = tmp_path / "out.parquet"
    seen = []
    examples = {"path": path, "table": log, "folder": parts}[source]
    rows = materialize_log(store, examples, lateseq.Projection(3, COLUMNS), out,
                           batch_size=8, columns=["label", "user_id"], progress=seen.append)
    assert rows == log.num_rows
    assert seen[-1] == rows and seen == sorted(seen)
    table = pq.read_table(out)
    assert table.column_names == ["label", "user_id", *COLUMNS]
    assert table.schema.field("action").type == pa.list_(pa.int8())
    meta = pq.ParquetFile(out).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert len(sizes) > 1 and set(sizes[:-1]) == {20} and 0 < sizes[-1] <= 20  # whatever the reads' sizes
    assert table.column("label").to_pylist() == log.column("label").to_pylist()
    want = expected(events, log, 3)
    for c in COLUMNS:
        assert table.column(c).to_pylist() == [w[c] for w in want]


def test_materialize_log_empty(world, tmp_path):
    store, _, log, _ = world
    out = tmp_path / "empty.parquet"
    assert materialize_log(store, log.slice(0, 0), lateseq.Projection(3, ("item_id",)), out,
                           columns=["label"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema == pa.schema([("label", pa.int8()), ("item_id", pa.list_(pa.int64()))])


@pytest.mark.parametrize("read_bytes", [1, 3300, loader.READ_BYTES])  # batches per read: 1, 6, all
def test_tampered_pointer_raises_or_flags(world, tmp_path, read_bytes, monkeypatch):
    store, _, log, _ = world
    monkeypatch.setattr(loader, "READ_BYTES", read_bytes)  # a batch: 16 x 4 events of 8 bytes
    nonempty = np.flatnonzero(log.column("uih_length").to_numpy() > 0)
    bad_row = int(nonempty[len(nonempty) // 2])
    checksum = log.column("uih_checksum").to_numpy().copy()
    checksum[bad_row] ^= 1
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pa.array(checksum, pa.uint32()))
    projection = lateseq.Projection(4, ("item_id",))
    assert bad_row >= 16  # not in the first batch: the error names the row of the log, not of its batch
    got = []
    with pytest.raises(lateseq.ChecksumMismatch, match=rf"first rows of the log: \[{bad_row}\]") as info:
        for batch, _ in iter_batches(store, tampered, projection, batch_size=16):
            got.append(batch.num_rows)
    assert info.value.rows == [bad_row]
    assert got == [16] * (bad_row // 16)  # every batch before the bad one's, wherever its read began
    flagged = np.concatenate([s.mismatched for _, s in iter_batches(store, tampered, projection, 16,
                                                                   on_mismatch="flag")])
    assert np.flatnonzero(flagged).tolist() == [bad_row]
    unchecked = np.concatenate([s.mismatched for _, s in iter_batches(store, tampered, projection, 16,
                                                                     verify=False)])
    assert not unchecked.any()
    # a failed materialize_log leaves no partial output behind
    out = tmp_path / "partial.parquet"
    with pytest.raises(lateseq.ChecksumMismatch) as info:
        materialize_log(store, tampered, projection, out, batch_size=16)
    assert info.value.rows == [bad_row]
    assert list(tmp_path.iterdir()) == []


def test_a_transform_overflow_raises_at_its_batch_of_a_read_of_several(tmp_path, monkeypatch):
    """Rebuilt 4 batches a read, an age past int64 in the read's last batch raises there,
    naming its row of the log: the batches before it come out, as a read per batch gave."""
    low = np.iinfo(np.int64).min
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"flag": "int8"}, time_unit="s"))
    store = store.commit(pa.table({"user_id": [1, 1], "ts": [low, -5], "flag": pa.array([1, 0], pa.int8())}))
    requests = [-1] * 12
    requests[7] = 5  # its age of the event at int64's smallest time does not fit int64
    log = lateseq.log_examples(store, pa.table({"user_id": [1] * 12, "request_ts": requests}))
    monkeypatch.setattr(loader, "READ_BYTES", 4 * 2 * 20 * 8)  # 4 batches a read: 2 x 20 events of 8 bytes
    projection = lateseq.Projection(20, ("ts",), transforms={"ts": "age_s"})
    got = []
    with pytest.raises(lateseq.TransformOverflow, match="row 7 of the example log"):
        for batch, _ in iter_batches(store, log, projection, batch_size=2):
            got.append(batch.num_rows)
    assert got == [2, 2, 2]


def test_bad_inputs(world, tmp_path):
    store, _, log, path = world
    projection = lateseq.Projection(3, ("item_id",))
    with pytest.raises(FileNotFoundError):
        iter_batches(store, tmp_path / "missing.parquet", projection)
    (tmp_path / "spark").mkdir()
    (tmp_path / "spark" / "_SUCCESS").write_text("")
    with pytest.raises(lateseq.SchemaError, match="is a folder without Parquet files"):
        iter_batches(store, tmp_path / "spark", projection)
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_text("not parquet")
    with pytest.raises(lateseq.SchemaError, match="Parquet"):
        iter_batches(store, not_parquet, projection)
    with pytest.raises(lateseq.SchemaError, match="no columns"):
        iter_batches(store, path, projection, columns=["nope"])
    with pytest.raises(lateseq.SchemaError, match="unknown columns"):
        iter_batches(store, path, lateseq.Projection(3, ("nope",)))
    for wrong in (0, True, 2.0, "8"):
        with pytest.raises(lateseq.SchemaError, match="batch_size must be a positive integer"):
            iter_batches(store, path, projection, batch_size=wrong)
    assert next(iter_batches(store, path, projection, batch_size=np.int64(1)))[0].num_rows == 1  # refused (s35A)
    for missing in ("uih_checksum", "uih_length"):  # the length sizes reads: its absence too is named (s49)
        with pytest.raises(lateseq.PointerError, match=rf"missing pointer columns \['{missing}'\]"):
            next(iter_batches(store, log.drop_columns([missing]), projection))
        with pytest.raises(lateseq.PointerError, match=rf"missing pointer columns \['{missing}'\]"):
            materialize_log(store, log.drop_columns([missing]), projection, tmp_path / "o.parquet")
    twice = pa.Table.from_arrays([*log.columns, log.column("uih_length")], [*log.column_names, "uih_length"])
    with pytest.raises(lateseq.SchemaError, match=r"columns named more than once: \['uih_length'\]"):
        next(iter_batches(store, twice, projection))
    with pytest.raises(lateseq.SchemaError, match=r"not RecordBatch \(pa.Table.from_batches\(\[batch\]\) makes a "
                                                  r"Table of a RecordBatch\)$"):  # (told of DataFrames, s47E)
        iter_batches(store, log.to_batches()[0], projection)
    with pytest.raises(lateseq.SchemaError, match="clash"):
        materialize_log(store, path, projection, tmp_path / "o.parquet", columns=["item_id"])
    # pointers into a version newer than the handle cannot be served
    with pytest.raises(lateseq.PointerError):
        next(iter_batches(store.checkout(1), log, projection))


def test_a_folder_log_of_unlike_files_or_written_into_is_refused(world, tmp_path, dir_snapshot):
    """Read as one log, a file with other columns would change a batch's columns midway;
    an output written into the folder would be read as a part file next time."""
    store, _, log, _ = world
    folder = tmp_path / "log"
    write_parts(log, folder, cuts=(0, 50))
    projection = lateseq.Projection(3, COLUMNS)
    before = dir_snapshot(tmp_path)
    with pytest.raises(lateseq.SchemaError, match="is in the example log this reads"):
        materialize_log(store, folder, projection, folder / "sequences.parquet")
    assert dir_snapshot(tmp_path) == before
    pq.write_table(log.slice(50).append_column("extra", pa.array(np.zeros(log.num_rows - 50))),
                   folder / "part-00001-0a1b.snappy.parquet")
    with pytest.raises(lateseq.SchemaError, match=r"hold different columns: \S+part-00001-0a1b.snappy.parquet has"):
        iter_batches(store, folder, projection)


def test_a_folder_log_reads_linked_folders_and_files_whose_nullability_differs(world, tmp_path):
    """A linked folder's rows were left out silently (os.walk follows no link; pyarrow's
    datasets do), and files that differed only in a column declared not-null were refused
    with two lists that read the same (a stranger's)."""
    store, events, log, _ = world
    shared = tmp_path / "shared"
    shared.mkdir()
    pq.write_table(log.slice(0, 60), shared / "part-0.parquet")
    folder = tmp_path / "log"
    (folder / "date=2").mkdir(parents=True)
    (folder / "date=1").symlink_to(shared, target_is_directory=True)
    (folder / "date=2" / "loop").symlink_to(folder, target_is_directory=True)  # a link above: read once
    strict = pa.schema([f.with_nullable(f.name != "label") for f in log.schema])
    pq.write_table(log.slice(60).cast(strict), folder / "date=2" / "part-0.parquet")
    projection = lateseq.Projection(4, COLUMNS)
    got = [(b, s) for b, s in iter_batches(store, folder, projection, batch_size=16)]
    assert pa.concat_tables([pa.Table.from_batches([b]) for b, _ in got]).column("label").to_pylist() == \
        log.column("label").to_pylist()
    values = [v for _, seqs in got for v in seqs.values["item_id"].tolist()]
    assert values == [v for w in expected(events, log, 4) for v in w["item_id"]]


def test_a_log_path_through_a_link_and_up_reads_the_file_the_system_opens(world, tmp_path, monkeypatch):
    """``data/../ex.parquet``, ``data`` a link to ``vol/deep``, names ``vol/ex.parquet``;
    the path was shortened as text to ``ex.parquet`` beside the link, and another log
    there was read in its place, with valid pointers (a stranger's)."""
    store, _, log, _ = world
    (tmp_path / "vol" / "deep").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data").symlink_to(tmp_path / "vol" / "deep", target_is_directory=True)
    pq.write_table(log.slice(0, 3), tmp_path / "vol" / "ex.parquet")
    pq.write_table(log.slice(3, 4), tmp_path / "work" / "ex.parquet")
    path = str(tmp_path / "work" / "data" / ".." / "ex.parquet")
    assert pq.read_table(path).num_rows == 3
    read = [b for b, _ in iter_batches(store, path, lateseq.Projection(3, COLUMNS))]
    assert sum(b.num_rows for b in read) == 3
    # kept as given, links not resolved: a worker on another host resolves them there (its
    # own mount of /shared), and a link pointed at another log is a changed log
    assert lateseq._examplelog.parquet_path(path) == path
    monkeypatch.chdir(tmp_path)
    assert lateseq._examplelog.parquet_path("work/data/../ex.parquet") == path


def test_a_sequences_file_written_through_a_link_into_a_folder_log_is_refused(world, tmp_path, dir_snapshot):
    """The output named a link in the folder (or its target elsewhere): it was written over
    the part file, and the log, which cannot be made again, was lost (a stranger's)."""
    store, _, log, _ = world
    shared, folder = tmp_path / "shared", tmp_path / "log"
    shared.mkdir()
    folder.mkdir()
    pq.write_table(log.slice(0, 60), folder / "part-0.parquet")
    pq.write_table(log.slice(60), shared / "part-1.parquet")
    (folder / "part-1.parquet").symlink_to(shared / "part-1.parquet")
    before = dir_snapshot(tmp_path)
    for out in (folder / "part-1.parquet", shared / "part-1.parquet"):
        with pytest.raises(lateseq.SchemaError, match="the example log this reads"):
            materialize_log(store, folder, lateseq.Projection(3, COLUMNS), out)
    assert dir_snapshot(tmp_path) == before


def test_a_part_file_whose_name_is_not_utf8_is_named_in_a_lateseq_error(world, tmp_path):
    _, _, log, _ = world
    folder = tmp_path / "log"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"part-\xff.parquet"), "wb") as file:
        pq.write_table(log, file)
    with pytest.raises(lateseq.SchemaError, match=r"part-\\udcff.parquet'.* not UTF-8"):
        iter_batches(world[0], folder, lateseq.Projection(3, COLUMNS))


def test_a_log_changed_in_place_with_the_same_footer_before_it_is_read_is_refused(world, tmp_path):
    """iter_batches opens its files as it reaches them: one changed in place before that,
    its footer byte for byte the same (two labels of a row group swapped, no compression
    or dictionaries), was read with the new labels (a stranger's, on a folder and on a file)."""
    store, _, log, _ = world
    options = {"compression": "none", "use_dictionary": False}
    labels = log.column("label").to_numpy().copy()
    j = int(np.flatnonzero(labels != labels[0])[0])
    labels[0], labels[j] = labels[j], labels[0]
    swapped = log.set_column(log.schema.get_field_index("label"), "label", pa.array(labels))
    for as_folder in (False, True):
        path = tmp_path / ("log" if as_folder else "log.parquet")
        target = path / "part-1.parquet" if as_folder else path
        if as_folder:
            path.mkdir()
            pq.write_table(log.slice(0, 0), path / "part-0.parquet", **options)
        pq.write_table(log, target, **options)
        reader = iter_batches(store, path, lateseq.Projection(3, COLUMNS), batch_size=16)
        time.sleep(0.01)
        pq.write_table(swapped, target, **options)  # in place: the same file, truncated and written again
        with pytest.raises(lateseq.SchemaError, match="changed, or is gone, since the log was first read"):
            list(reader)


def test_a_folder_it_cannot_list_is_an_error_not_rows_left_out(world, tmp_path, monkeypatch):
    store, _, log, _ = world
    folder = tmp_path / "log"
    for day in ("date=1", "date=2"):
        (folder / day).mkdir(parents=True)
        pq.write_table(log, folder / day / "part-0.parquet")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("date=2"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(lateseq.SchemaError, match=r"cannot list \S+date=2, a folder of example log"):
        iter_batches(store, folder, lateseq.Projection(3, COLUMNS))


def test_tenant_names_are_checked_as_the_config_checks_them(world, tmp_path):
    store, _, log, _ = world
    projection = lateseq.Projection(2, ("item_id",))
    for tenants, problem in (({"Rank": projection, "rank": projection}, "differs from tenant 'Rank' only in case"),
                             ({"../x": projection}, "'../x': a name is 1 to 128"), ({}, "no tenants")):
        with pytest.raises(lateseq.SchemaError, match=problem):
            materialize_log_tenants(store, log, tenants, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_tenants_output_folder_is_made_as_the_cli_makes_it_and_removed_when_the_run_fails(world, tmp_path,
                                                                                                monkeypatch):
    """The CLI made --out, the API refused it as missing (s48B)."""
    store, _, log, _ = world
    monkeypatch.chdir(tmp_path)  # out_dir="" wrote into the current folder (s48C)
    tenants = {"a": lateseq.Projection(2, ("item_id",)), "b": lateseq.Projection(3, ("item_id",))}
    paths = materialize_log_tenants(store, log, tenants, tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.parquet", "b.parquet"]
    for name, projection in tenants.items():
        alone = materialize_log(store, log, projection, tmp_path / f"{name}-alone.parquet")
        assert alone == log.num_rows
        assert pq.read_table(paths[name]).equals(pq.read_table(tmp_path / f"{name}-alone.parquet"))
    with pytest.raises(lateseq.SchemaError, match="example log has no columns"):
        materialize_log_tenants(store, log, tenants, tmp_path / "failed", columns=["nope"])
    assert not (tmp_path / "failed").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):  # its parent is not made
        materialize_log_tenants(store, log, tenants, tmp_path / "missing" / "out")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("mine")
    for out_dir, error, pattern in (("", lateseq.SchemaError, "out_dir is empty"),  # it wrote to the current folder
                                    (tmp_path / "file", NotADirectoryError, "is a file"),
                                    (tmp_path / ("x" * 256), lateseq.SchemaError, "is 256 bytes long")):
        with pytest.raises(error, match=pattern):
            materialize_log_tenants(store, log, tenants, out_dir)
    assert (tmp_path / "file").read_text() == "mine" and not any(p.name.startswith("x") for p in tmp_path.iterdir())


def test_tenant_outputs_are_replaced_all_or_nothing(world, tmp_path, monkeypatch):
    store, _, log, _ = world
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b"):
        (out / f"{name}.parquet").write_text(f"old {name}")
    tenants = {"a": lateseq.Projection(2, ("item_id",)), "b": lateseq.Projection(3, ("item_id",))}
    real, failed = os.replace, []

    def replace(src, dst):  # the new b cannot be put in place, once
        if os.fspath(dst) == os.fspath(out / "b.parquet") and not failed:
            failed.append(src)
            raise PermissionError(13, "Permission denied", os.fspath(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError):
        materialize_log_tenants(store, log, tenants, out)
    assert failed and {p.name: p.read_text() for p in out.iterdir()} == {"a.parquet": "old a", "b.parquet": "old b"}
    monkeypatch.setattr(os, "replace", real)
    materialize_log_tenants(store, log, tenants, out)
    assert sorted(p.name for p in out.iterdir()) == ["a.parquet", "b.parquet"]
    assert pq.read_table(out / "b.parquet").num_rows == log.num_rows


def test_example_columns_to_keep_are_checked_and_kept_once(world, tmp_path):
    store, _, log, _ = world
    projection = lateseq.Projection(3, ("item_id",))
    with pytest.raises(lateseq.SchemaError, match=r"no columns \['nope'\]"):
        materialize_log(store, log, projection, tmp_path / "a.parquet", columns=["nope"])
    with pytest.raises(lateseq.SchemaError, match="not the string"):
        materialize_log(store, log, projection, tmp_path / "a.parquet", columns="label")
    materialize_log(store, log, projection, tmp_path / "a.parquet", columns=["label", "label"])
    assert pq.read_table(tmp_path / "a.parquet").column_names == ["label", "item_id"]


def test_batches_kept_in_any_form_keep_their_values_and_dropped_ones_give_theirs_back(world, monkeypatch):
    """Reads write into the arrays of earlier reads once nothing holds those (``_buffers``):
    a batch kept whole, as a slice of its values, a tensor or an Arrow array keeps its
    values; batches dropped as they come give their arrays back for later reads."""
    import torch

    store, events, log, path = world
    monkeypatch.setattr(loader, "READ_BYTES", 1)  # a read per batch: many reads
    projection = lateseq.Projection(1000, COLUMNS)
    want = expected(events, log, 1000)
    holders = [lambda s: s, lambda s: s.values["item_id"][:], lambda s: torch.from_numpy(s.values["item_id"]),
               lambda s: pa.array(s.values["item_id"])]
    kept, offsets = [], []
    for k, (_, seqs) in enumerate(iter_batches(store, path, projection, batch_size=8, columns=[])):
        kept.append(holders[k % len(holders)](seqs))
        offsets.append(seqs.offsets)
    got = []
    for held, offs in zip(kept, offsets, strict=True):
        values = held.values["item_id"] if isinstance(held, lateseq.JaggedBatch) else np.asarray(held)
        got += [values[lo:hi].tolist() for lo, hi in zip(offs[:-1], offs[1:], strict=True)]
    assert got == [w["item_id"] for w in want]

    seen, again = [], 0  # (weak references: a fresh array's dies with its batch)
    for _, seqs in iter_batches(store, path, projection, batch_size=8, columns=[]):
        base = seqs.values["item_id"].base
        again += any(ref() is base for ref in seen)
        seen.append(weakref.ref(base))
    assert again >= len(seen) // 4  # (sizes vary several-fold here; an array serves reads up to twice its size)


def test_a_new_pass_writes_into_the_arrays_an_ended_one_used(world, monkeypatch):
    """A pass's arrays outlive it as spares (``_buffers``): the next pass (an epoch, or a
    short log read after another) faulted every page of its reads in again, 2.1x slower
    over 20,000 examples at N=256. Its batches still hold exactly their own values."""
    store, events, log, path = world
    monkeypatch.setattr(_buffers, "_spares", [], raising=False)  # (none from other tests)
    monkeypatch.setattr(loader, "READ_BYTES", 1)  # a read per batch: many reads, arrays of many sizes
    projection = lateseq.Projection(1000, COLUMNS)
    want = [w["item_id"] for w in expected(events, log, 1000)]
    used = [weakref.ref(seqs.values["item_id"].base)
            for _, seqs in iter_batches(store, path, projection, batch_size=8, columns=[])]
    again, got = 0, []
    for _, seqs in iter_batches(store, path, projection, batch_size=8, columns=[]):
        again += any(ref() is seqs.values["item_id"].base for ref in used)
        values, offsets = seqs.values["item_id"], seqs.offsets
        got += [values[lo:hi].tolist() for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)]
    assert got == want
    assert again >= len(used) // 4


def test_materialize_log_drops_the_examples_of_deleted_users_when_asked(world, tmp_path):
    """After ``Store.delete``, the examples of deleted users make ``materialize_log`` raise
    (their histories changed); with ``drop_deleted`` they are left out, labels too, as the
    training loader leaves them out, and any other mismatch still raises naming its rows
    (s40C: the CLI had no way to rebuild a log after a GDPR deletion but to filter it by hand)."""
    import shutil

    store, events, log, path = world
    shutil.copytree(store.path, tmp_path / "store")  # the module's store stays as it is
    gone = [3, 8]
    deleted = lateseq.open(tmp_path / "store").delete(gone)
    projection = lateseq.Projection(4, COLUMNS)
    with pytest.raises(lateseq.ChecksumMismatch, match="drop_deleted"):
        materialize_log(deleted, path, projection, tmp_path / "all.parquet", batch_size=16)
    kept = [r for r in range(log.num_rows) if log.column("user_id")[r].as_py() not in gone]
    written = materialize_log(deleted, path, projection, tmp_path / "kept.parquet", batch_size=16,
                              columns=["label"], drop_deleted=True)
    out = pq.read_table(tmp_path / "kept.parquet")
    assert written == out.num_rows == len(kept) < log.num_rows
    assert out.column("label").to_pylist() == log.column("label").to_numpy()[kept].tolist()
    want = expected(events, log.take(pa.array(kept)), 4)
    assert [{c: row[c] for c in COLUMNS} for row in out.select(list(COLUMNS)).to_pylist()] == want
    paths = materialize_log_tenants(deleted, path, {"a": projection, "b": lateseq.Projection(1, ["ts"])},
                                    tmp_path, batch_size=16, drop_deleted=True)
    assert [pq.read_metadata(p).num_rows for p in paths.values()] == [len(kept)] * 2
    checksum = log.column("uih_checksum").to_numpy().copy()
    checksum[kept[5]] ^= 1  # a mismatch no deletion explains
    tampered = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                              pa.array(checksum, pa.uint32()))
    with pytest.raises(lateseq.ChecksumMismatch, match="not of users deleted since") as info:
        materialize_log(deleted, tampered, projection, tmp_path / "t.parquet", batch_size=16, drop_deleted=True)
    assert info.value.rows == [kept[5]]
    with pytest.raises(lateseq.SchemaError, match="needs verify=True"):
        materialize_log(deleted, path, projection, tmp_path / "v.parquet", verify=False, drop_deleted=True)
    with pytest.raises(lateseq.SchemaError, match="drop_deleted must be True or False, not 'no'"):
        materialize_log(deleted, path, projection, tmp_path / "v.parquet", drop_deleted="no")
    assert lateseq.materialize_log is materialize_log  # public, as the errors and README name it (s40D)


def test_a_written_transformed_column_says_what_it_holds(tmp_path):
    """A tenant's ``ts`` as age_s kept the name ``ts`` and nothing in the file told ages from
    times (s48B): its field names the transform, the file the projection; times, their unit."""
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"item_id": "int64"}, time_unit="s"))
    store = store.commit(pa.table({"user_id": [1, 1], "ts": pa.array([10, 20], pa.timestamp("s")), "item_id": [1, 2]}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": pa.array([30], pa.timestamp("s"))}))
    tenants = {"aged": lateseq.Projection(4, ("item_id", "ts"), transforms={"ts": "age_s"}),
               "plain": lateseq.Projection(4, ("item_id", "ts"))}
    paths = materialize_log_tenants(store, log, tenants, tmp_path / "out")
    aged, plain = (pq.read_table(paths[name]) for name in ("aged", "plain"))
    assert aged.column("ts").to_pylist() == [[20, 10]] and plain.column("ts").to_pylist() == [[10, 20]]  # 30-10, 30-20
    assert aged.schema.field("ts").metadata[b"lateseq.transform"] == b"age_s"
    assert b"in whole seconds" in aged.schema.field("ts").metadata[b"description"]
    # times as integers name their unit (a Fat Row's timestamp[s] came back as int64 alone, s51A)
    assert plain.schema.field("ts").metadata == {b"lateseq.time_unit": b"s",
                                                 b"description": b"event times, seconds since 1970-01-01 UTC"}
    assert aged.schema.field("item_id").metadata is None
    for name, table in (("aged", aged), ("plain", plain)):
        assert table.schema.metadata[b"lateseq.projection"].decode() == repr(tenants[name])
        assert table.schema.metadata[b"lateseq.store_time_unit"] == b"s"  # (an age_s column's field says seconds)
