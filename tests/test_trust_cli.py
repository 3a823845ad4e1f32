"""The trust commands of the CLI: verify, delete, ingest --commit-id, strip --drop-deleted."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

import lateseq
from lateseq.cli import app
from tests.test_twotier import serve_one_scenario

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def events_file(path, users, ts):
    pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()), "ts": pa.array(ts, pa.int64()),
                             "item": pa.array(range(len(users)), pa.int64())}), path)
    return path


def test_ingest_with_a_commit_id_runs_once(tmp_path):
    store, first = tmp_path / "store", events_file(tmp_path / "e1.parquet", [1, 2], [5, 6])
    assert run("ingest", store, first, "--commit-id", "day-1")[:2] == (0, "1\n")
    code, out, err = run("ingest", store, first, "--commit-id", "day-1")
    assert (code, out) == (0, "1\n") and "nothing to do" in err
    assert lateseq.open(store).num_events == 2
    other = events_file(tmp_path / "e2.parquet", [3], [7])
    code, _, err = run("ingest", store, other, "--commit-id", "day-1")
    assert code == 1 and "for other events" in err and err.count("\n") == 1
    assert run("ingest", store, other, "--commit-id", "day-2")[:2] == (0, "2\n")


def test_verify_exits_1_and_names_each_damaged_file(tmp_path):
    store = tmp_path / "store"
    run("ingest", store, events_file(tmp_path / "e.parquet", [1, 2, 3], [1, 2, 3]))
    code, out, err = run("verify", store, "--deep")
    assert code == 0 and out == "" and "every file sound" in err
    info = lateseq.open(store).segment_infos[0]
    packed = store / "segments" / f"{info.name}.parquet"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 1
    packed.write_bytes(bytes(data))
    code, out, err = run("verify", store)
    assert code == 1 and f"{info.name}.parquet" in out and "1 problem in" in err
    lateseq.open(store).tag("a", 1)
    lateseq.open(store).tag("b", 1)
    (store / "tags" / "a.json").write_bytes((store / "tags" / "b.json").read_bytes())  # b's file under a's name
    code, out, err = run("verify", store)
    assert code == 1 and "a.json is the file of tag 'b'" in out and err == "error: 2 problems in " + f"{store}\n"


def test_delete_then_cleanup_then_strip(world, tmp_path):
    store, log, _ = serve_one_scenario(*world)
    pq.write_table(pa.table({"user_id": [1]}), tmp_path / "users.parquet")
    code, out, err = run("delete", store.path, tmp_path / "users.parquet")
    assert code == 0 and int(out) == store.latest().version and "strip --drop-deleted" in err
    pq.write_table(log, tmp_path / "log.parquet")
    code, _, _ = run("strip", store.path, tmp_path / "log.parquet", "--out", tmp_path / "s.parquet",
                     "--drop-deleted")
    assert code == 0
    code, _, err = run("strip", store.path, tmp_path / "s.parquet", "--out", tmp_path / "again.parquet",
                       "--drop-deleted")
    assert code == 0 and "stripped 0 of" in err  # nothing left to strip: nothing counted
    stripped = pq.read_table(tmp_path / "s.parquet")
    users = stripped.column("user_id").to_pylist()
    assert all(t == [] for u, t in zip(users, stripped.column("tail_item_id").to_pylist(), strict=True) if u == 1)
    code, out, err = run("audit", store.path, tmp_path / "s.parquet")
    # a deletion is not a fault: said as what it is, and how to leave those examples out
    assert code == 1 and "deleted" in out and "do not match" not in err
    assert "served from a version before their user's deletion" in err and "deleted_after" in err
    assert run("cleanup", store.path, "--grace", "0")[0] == 0
    assert run("verify", store.path)[0] == 0


def test_a_sampled_audit_says_what_its_sample_can_tell(tmp_path):
    """A clean sample of 200 passed a log with 50 of 20,000 rows changed, saying only
    "matched 200" (s50A): a sampled audit says how much of the log may mismatch unseen,
    or how much does; an audit of every example says neither."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item": "int64"}))
    store = store.commit(pa.table({"user_id": [1, 2] * 50, "ts": list(range(100)), "item": list(range(100))}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2] * 200, "request_ts": list(range(400))}))
    pq.write_table(log, tmp_path / "log.parquet")
    for sample, bound in ((40, "7.2%"), (1, "95%"), (2, "78%"), (399, "0.75%")):  # 1 - 0.05 ** (1 / sample)
        code, out, _ = run("audit", store.path, tmp_path / "log.parquet", "--sample", sample)
        said = f"none of {sample} mismatched, so likely fewer than {bound} of the log does (95% confidence)"
        assert code == 0 and said in " ".join(out.split()), out
    code, out, _ = run("audit", store.path, tmp_path / "log.parquet")
    assert code == 0 and "random sample" not in out
    moved = log.set_column(1, "request_ts", pa.array([t + 50 if t < 100 else t for t in range(400)], pa.int64()))
    pq.write_table(moved, tmp_path / "moved.parquet")  # a quarter of the rows mismatch
    code, out, err = run("audit", store.path, tmp_path / "moved.parquet", "--sample", 200)
    found = 200 - int(out.split("matched")[1].split()[1])  # (first requests, of empty histories, stay "unknown")
    assert code == 1 and f"{found} of 200 mismatched, about {found / 2:.2g}% of the log" in " ".join(out.split()), out
    assert 20 < found < 80


def test_ingest_that_creates_a_store_says_its_time_unit(tmp_path):
    """A file's timestamps in us made a new store in us without a word, and every later
    integer request time had to count us (s50A): creating a store says its unit."""
    import datetime as dt

    stamped = tmp_path / "stamped.parquet"
    pq.write_table(pa.table({"user_id": [1], "ts": pa.array([dt.datetime(2020, 1, 1)], pa.timestamp("us")),
                             "item": [1]}), stamped)
    integers = events_file(tmp_path / "integers.parquet", [1], [5])
    for store, args, said in [("a", [stamped], "times in us, from the events file's time column"),
                              ("b", [integers, "--time-unit", "ms"], "times in ms;"),
                              ("c", [integers], "times are plain integers of no unit")]:
        code, out, err = run("ingest", tmp_path / store, *args)
        assert (code, out) == (0, "1\n") and f"created store ({said}" in err, err
        assert (lateseq.open(tmp_path / store).schema.time_unit or "no unit") in said
    code, _, err = run("ingest", tmp_path / "a", stamped)
    assert code == 0 and "created" not in err


def test_ingest_that_creates_a_store_names_its_columns(tmp_path):
    """A Spark folder partitioned by integer keys (dt=20261101/hour=13/) gave the new store
    columns dt and hour, read from the folder names, without a word (s51A)."""
    folder = tmp_path / "spark"
    for day, hour in (("20261101", "13"), ("20261102", "7")):
        (folder / f"dt={day}" / f"hour={hour}").mkdir(parents=True)
        events_file(folder / f"dt={day}" / f"hour={hour}" / "part-0.parquet", [1, 2], [10, 20])
    code, out, err = run("ingest", tmp_path / "store", folder)
    assert (code, out) == (0, "1\n") and "; columns: item int64, dt int32, hour int32)" in err, err
    code, out, err = run("ingest", tmp_path / "other", folder, "--drop", "dt,hour")
    assert (code, out) == (0, "1\n") and "; columns: item int64)" in err, err


def test_ingest_drops_a_hive_folder_string_key_it_is_told_to(tmp_path):
    """A Spark folder partitioned by a string date (dt=2024-01-01/) read as a string column
    a store cannot hold, and ingest had no way to leave it out (s50A): --drop does, naming
    a column the input lacks; the refusal without it says so."""
    folder = tmp_path / "spark"
    for day, users in (("2024-01-01", [1, 2]), ("2024-01-02", [1])):
        (folder / f"dt={day}").mkdir(parents=True)
        events_file(folder / f"dt={day}" / "part-0.parquet", users, [10 * len(users)] * len(users))
    code, _, err = run("ingest", tmp_path / "store", folder)
    assert code == 1 and "column 'dt' has type string" in err and "--drop dt" in err
    assert not (tmp_path / "store").exists()
    code, _, err = run("ingest", tmp_path / "store", folder, "--drop", "dt,nope")
    assert code == 1 and "--drop names columns" in err and "['nope']" in err
    code, out, err = run("ingest", tmp_path / "store", folder, "--drop", "dt")
    assert (code, out) == (0, "1\n"), err
    store = lateseq.open(tmp_path / "store")
    assert list(store.schema.columns) == ["item"] and store.num_events == 3
    assert run("ingest", tmp_path / "store", folder, "--drop", " , ")[0] == 1
