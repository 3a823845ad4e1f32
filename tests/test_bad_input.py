"""Bad input raises the specific lateseq error, names the problem, and changes nothing.

Every error is also catchable as the builtin it resembles (SchemaError is a ValueError,
StoreError an OSError, VersionNotFound a LookupError...), and the store directory is
byte-for-byte the same afterwards.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ArrowExporter, snapshot

import lateseq
import lateseq.audit

COLUMNS = {"item": "int64", "rating": "int8", "w": "float32", "click": "bool"}


def good(**changes) -> pa.Table:
    data = {
        "user_id": pa.array([1, 2], pa.int64()), "ts": pa.array([10, 20], pa.int64()),
        "item": pa.array([5, 6], pa.int64()), "rating": pa.array([1, 2], pa.int8()),
        "w": pa.array([0.5, 1.5], pa.float32()), "click": pa.array([True, False]),
    }
    data.update(changes)
    return pa.table({k: v for k, v in data.items() if v is not None})


@pytest.fixture
def store(make_store):
    store = make_store(COLUMNS, tiebreak="rating", partitions=2)
    store = store.commit(good())
    store.tag("first")
    return store.commit(good(ts=pa.array([5, 5], pa.int64())))


def raises_and_changes_nothing(store: lateseq.Store, error: type[Exception], builtin: type[Exception],
                               pattern: str, action) -> Exception:
    before = snapshot(store.path)
    with pytest.raises(error) as info:
        action()
    assert isinstance(info.value, lateseq.LateseqError)
    assert isinstance(info.value, builtin)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert snapshot(store.path) == before, "a failed call changed the store"
    assert lateseq.open(store.path).version == store.version
    return info.value


BAD_EVENTS = {
    "missing column": (good(item=None), r"missing columns \['item'\]"),
    "string payload": (good(item=pa.array(["a", "b"])), r"'item' has type string"),
    "float time": (good(ts=pa.array([1.5, 2.0])), r"'ts' has type double"),
    "float user": (good(user_id=pa.array([1.0, 2.0])), r"'user_id' has type double"),
    "float into int payload": (good(item=pa.array([1.0, 2.0])), r"'item' has type double"),
    "string into bool": (good(click=pa.array(["y", "n"])), r"'click' has type string"),
    "null user": (good(user_id=pa.array([1, None], pa.int64())), r"'user_id' has 1 null"),
    "null time": (good(ts=pa.array([None, None], pa.int64())), r"'ts' has 2 null"),
    "null payload": (good(w=pa.array([None, 1.0], pa.float32())),
                     r"'w' has 1 null.*fill_null\(column, float\('nan'\)\)"),
    "null bool": (good(click=pa.array([None, True])), r"'click' has 1 null"),
    "empty table": (good().slice(0, 0), r"empty"),
    "extra column": (good(surprise=pa.array([1, 2])), r"\['surprise'\].*does not know"),
    "int8 overflow": (good(rating=pa.array([1, 300])), r"'rating' does not fit int8"),
    "user beyond int64": (good(user_id=pa.array([1, 2**64 - 1], pa.uint64())), r"'user_id' does not fit int64"),
    "bool from 2": (good(click=pa.array([1, 2])), r"'click' is bool but holds integers other than 0 and 1"),
    "list column": (good(item=pa.array([[1], [2]])), r"'item' has type list"),
}


@pytest.mark.parametrize("case", BAD_EVENTS, ids=list(BAD_EVENTS))
def test_bad_events_raise_schema_error(store, case):
    table, pattern = BAD_EVENTS[case]
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern, lambda: store.commit(table))


def test_bad_events_in_a_record_batch_reader_or_parquet_file(store, tmp_path):
    table, pattern = BAD_EVENTS["null payload"]
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                               lambda: store.commit(table.to_reader()))
    pq.write_table(BAD_EVENTS["extra column"][0], tmp_path / "extra.parquet")
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "surprise",
                               lambda: store.commit(tmp_path / "extra.parquet"))
    (tmp_path / "dataset").mkdir()  # a folder of files: read as a dataset, as pyarrow reads one
    pq.write_table(BAD_EVENTS["extra column"][0], tmp_path / "dataset" / "part-0.parquet")
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "surprise",
                               lambda: store.commit(tmp_path / "dataset"))
    # and each of its files read checked (a folder was read unchecked: a flipped value went in)
    (tmp_path / "dataset" / "part-0.parquet").unlink()
    pq.write_table(pa.table({"user_id": [3, 3], "ts": [1, 2], "item": [1000036, 1000037]}),
                   tmp_path / "dataset" / "part-0.parquet", write_page_checksum=True)
    data = bytearray((tmp_path / "dataset" / "part-0.parquet").read_bytes())
    data[data.index((1000037).to_bytes(8, "little"))] ^= 1
    (tmp_path / "dataset" / "part-0.parquet").write_bytes(bytes(data))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "could not verify page integrity",
                               lambda: store.commit(tmp_path / "dataset"))


@pytest.mark.parametrize("first", ["narrow", "wide"])
def test_a_folder_whose_files_hold_different_columns_is_refused(store, tmp_path, first):
    """pyarrow reads a folder with its first file's columns: a column that a later file
    added (an upstream export's schema grew) was silently dropped, and the other way round
    refused for its nulls, depending on the files' names."""
    folder = tmp_path / "events"
    folder.mkdir()
    narrow = pa.table({"user_id": [1], "ts": [1], "item": [10]})
    wide = narrow.append_column("rating", pa.array([5], pa.int8()))
    files = [narrow, wide] if first == "narrow" else [wide, narrow]
    for i, table in enumerate(files):
        pq.write_table(table, folder / f"part-{i}.parquet")
    pattern = (r"part-1.parquet has \['rating'\], which .*part-0.parquet has not" if first == "narrow"
               else r"part-1.parquet has not \['rating'\], which .*part-0.parquet has")
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "hold different columns: .*" + pattern,
                               lambda: store.commit(folder))


@pytest.mark.parametrize("payload, column, first, second", [
    ("int64", "ts", pa.array([1_700_000_000_000], pa.timestamp("ms")), pa.array([1_700_000_001])),  # s read as ms
    ("int64", "ts", pa.array([1_700_000_000_000]), pa.array([1_700_000_001_000_000_000], pa.timestamp("ns"))),
    ("float64", "item", pa.array([0.5], pa.float32()), pa.array([0.1], pa.float64())),  # 0.1 narrowed, 1e300: inf
    ("bool", "item", pa.array([True]), pa.array([2], pa.int8())),  # 2 cast to True, where a table's is refused
])
def test_a_folder_whose_files_hold_different_types_is_refused(make_store, tmp_path, dir_snapshot, payload, column,
                                                              first, second):
    """pyarrow reads a folder with its first file's types, casting the others silently: a
    file of epoch seconds after one of timestamp[ms] was stored as January 1970, float64
    values narrowed through float32 (a stranger's)."""
    store = make_store({"item": payload}, time_unit="ms")
    item = pa.array([1], pa.int64()).cast(pa.from_numpy_dtype(np.dtype(payload)))
    store = store.commit(pa.table({"user_id": [9], "ts": pa.array([5], pa.timestamp("ms")), "item": item}))
    folder = tmp_path / "events"
    folder.mkdir()
    for i, values in enumerate([first, second]):
        table = {"user_id": pa.array([1]), "ts": pa.array([1_700_000_000_000 + i], pa.timestamp("ms")), "item": item}
        pq.write_table(pa.table({**table, column: values}), folder / f"part-{i}.parquet")
    pq.write_table(pa.table({"user_id": pa.array([], pa.null()), "ts": pa.array([], pa.null()),
                             "item": pa.array([], pa.null())}), folder / "part-2.parquet")  # pandas' empty frame
    before = dir_snapshot(store.path)
    with pytest.raises(lateseq.SchemaError, match=rf"hold different types: .*part-1.parquet has {column} "
                                                  rf"{re.escape(str(second.type))}, .*part-0.parquet has {column}"):
        store.commit(folder)
    assert dir_snapshot(store.path) == before
    (folder / "part-1.parquet").unlink()  # one file of rows, one empty of null columns: read with the first's
    assert store.commit(folder).num_events == 2


def test_hive_folders_keyed_by_integer_user_ids_past_int32_read_as_integers(make_store, tmp_path):
    """pyarrow infers a hive key as int32, and as a string once a value is past int32: a
    folder ``user_id=3000000000/`` was refused as string ids, with advice to hash them."""
    folder = tmp_path / "events"
    for user, items in ((7, [70, 71]), (3_000_000_000, [30, 31])):
        (folder / f"user_id={user}").mkdir(parents=True)
        pq.write_table(pa.table({"ts": [1, 2], "item": items}), folder / f"user_id={user}" / "part.parquet")
    version = make_store({"item": "int64"}, partitions=2).commit(folder)
    examples = lateseq.log_examples(version, pa.table({"user_id": [7, 3_000_000_000], "request_ts": [10, 10]}))
    batch = lateseq.materialize(version, examples, lateseq.Projection(10, ("item",)))
    assert batch.offsets.tolist() == [0, 2, 4] and batch.values["item"].tolist() == [70, 71, 30, 31]
    other = tmp_path / "past-int64"
    (other / f"user_id={2**64 - 1}").mkdir(parents=True)
    pq.write_table(pa.table({"ts": [1], "item": [1]}), other / f"user_id={2**64 - 1}" / "part.parquet")
    raises_and_changes_nothing(version, lateseq.SchemaError, ValueError, "'user_id' does not fit int64",
                               lambda: version.commit(other))


@pytest.mark.parametrize("folders, problem", [
    (["007", "7"], "has folders user_id=007 and user_id=7, which pyarrow reads as one integer, 7"),
    (["-0", "0", "5"], "has folders user_id=-0 and user_id=0, which pyarrow reads as one integer, 0"),
    (["+3", "3"], "has folders user_id=\\+3 and user_id=3"),
    ([str(2**64 - 1), "-1"], f"folder key user_id={2**64 - 1} does not fit int64"),
])
@pytest.mark.parametrize("user_col", ["user_id", "customer"])
def test_hive_folders_whose_keys_are_one_integer_or_none_are_refused(make_store, tmp_path, folders, problem,
                                                                      user_col):
    """``user_id=007/`` and ``user_id=7/`` were one user's history; an id past int64 among
    negative ones was refused as string ids (s34A); a user column named otherwise than
    ``*_id`` (``customer=007/``) was not checked (s62K)."""
    folder = tmp_path / "events"
    for k, user in enumerate(folders):
        (folder / f"{user_col}={user}").mkdir(parents=True)
        pq.write_table(pa.table({"ts": [1], "item": [k]}), folder / f"{user_col}={user}" / "part.parquet")
    version = make_store({"item": "int64"}, partitions=2, user_col=user_col).commit(
        pa.table({user_col: [1], "ts": [0], "item": [0]}))
    raises_and_changes_nothing(version, lateseq.SchemaError, ValueError, problem.replace("user_id", user_col),
                               lambda: version.commit(folder))


def test_hive_folders_of_one_value_written_two_ways_are_one_value_where_no_id(make_store, tmp_path):
    """``item=07/`` and ``item=7/`` are one item 7, as pyarrow reads them; only ids must
    stay apart (a review: the check refused every key)."""
    folder = tmp_path / "events"
    for k, item in enumerate(["07", "7"]):
        (folder / f"item={item}").mkdir(parents=True)
        pq.write_table(pa.table({"user_id": [1], "ts": [k]}), folder / f"item={item}" / "part.parquet")
    version = make_store({"item": "int64"}, partitions=2).commit(folder)
    batch = lateseq.materialize(version, lateseq.log_examples(version, pa.table({"user_id": [1], "request_ts": [5]})),
                                lateseq.Projection(5, ("item",)))
    assert batch.values["item"].tolist() == [7, 7]


@pytest.mark.parametrize("width", [pa.int32(), pa.int64()])
@pytest.mark.parametrize("key, written", [("user_id", "user_id"), ("item", "item"), ("user_id", "user%5Fid")])
def test_a_folder_key_naming_a_column_its_files_hold_is_refused(make_store, tmp_path, width, key, written):
    """pyarrow reads a hive key over the file's column of that name: a folder
    ``user_id=1/`` whose file held user 2's events stored them as user 1's, silently
    (an int64 column gave pyarrow's "Unable to merge" instead). Keys are compared as
    pyarrow reads them, URI escapes undone."""
    folder = tmp_path / "events" / f"{written}=1"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": pa.array([2, 2], width), "ts": [1, 2], "item": pa.array([5, 6], width)}),
                   folder / "part-0.parquet")
    store = make_store({"item": "int64"})
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError,
                               rf"folder keys \({key}=\.\.\. in its paths\) that name a column its files also hold",
                               lambda: store.commit(tmp_path / "events"))


def test_bad_event_sources(store, tmp_path):
    missing = tmp_path / "nope.parquet"
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, re.escape(str(missing)),
                               lambda: store.commit(missing))
    text = tmp_path / "events.csv"
    text.write_text("user_id,ts,item\n1,2,3\n")
    error = raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"cannot read .* as Parquet.*read a "
                                       r"text file with pyarrow.csv.read_csv",
                                       lambda: store.commit(str(text)))
    assert error.__cause__ is not None  # the pyarrow error is chained, not lost
    for source in ({"user_id": [1]}, [1, 2], None, 3):
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, type(source).__name__,
                                   lambda source=source: store.commit(source))


def test_store_paths_that_are_not_stores(tmp_path):
    file = tmp_path / "file"
    file.write_bytes(b"not a store")
    schema = lateseq.Schema(columns={"item": "int64"})
    for action in (lambda: lateseq.create(file, schema), lambda: lateseq.open(file)):
        with pytest.raises(lateseq.StoreError, match="is a file") as info:
            action()
        assert isinstance(info.value, OSError)
    assert file.read_bytes() == b"not a store"
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(lateseq.StoreError, match="not a lateseq store"):
            lateseq.open(target)
    assert not (tmp_path / "absent").exists()
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("options, pattern", [
    ({"columns": {"item": "uint64"}}, r"'item' has type 'uint64'"),
    ({"columns": {"item": "string"}}, r"supported payload types"),
    ({"columns": {"item": pa.string()}}, r"'item' has type DataType\(string\); supported payload types"),
    ({"columns": {"item": pa.uint64()}}, r"'item' has type DataType\(uint64\); supported payload types"),
    ({"columns": {"item": np.uint32}}, r"'item' has type <class 'numpy.uint32'>; supported payload types"),
    ({"columns": {3: "int64"}}, r"column names are strings, not int \(3\)"),
    ({"columns": {"item": np.integer}}, r"'item' has type <class 'numpy.integer'>; supported payload types"),
    ({"columns": {"_item": "int64"}}, r"reserved"),
    ({"columns": {"ts": "int64"}}, r"'ts' is the user or time column"),
    ({"columns": {"user_id": "int64"}}, r"'user_id' is the user or time column"),
    ({"columns": {}, "user_col": "x", "time_col": "x"}, r"must differ"),
    ({"columns": {"w": "float64"}, "tiebreak": "w"}, r"tiebreak 'w' must name an integer"),
    ({"columns": {}, "tiebreak": "nope"}, r"tiebreak 'nope'"),
    ({"columns": {"a": "int32"}, "arrival_col": "a"}, r"arrival_col 'a' must name an int64"),
    ({"columns": {}, "event_id_col": "e"}, r"event_id_col 'e'"),
    ({"columns": {}, "partitions": 0}, r"partitions must be an integer from 1 to 65536"),
    ({"columns": {}, "partitions": 1.5}, r"partitions must be an integer from 1 to 65536"),
    ({"columns": {}, "partitions": "2"}, r"partitions must be an integer from 1 to 65536"),
    ({"columns": ["x"]}, r"columns must map names to types"),
    ({"columns": {}, "feature_groups": {"g": ["nope"]}}, r"feature group 'g' names unknown columns \['nope'\]"),
    # accepted and written, then every commit failed; a key 5 read back as "5"; letters named as columns (s61C)
    ({"columns": {}, "user_col": None}, r"user_col must name a column \(a non-empty string\), not None"),
    ({"columns": {}, "time_col": 5}, r"time_col must name a column \(a non-empty string\), not 5"),
    ({"columns": {}, "user_col": ""}, r"user_col must name a column"),
    ({"columns": {"item": "int64"}, "feature_groups": {5: ["item"]}}, r"names \(strings\).*got \{5: \['item'\]\}"),
    ({"columns": {"item": "int64"}, "feature_groups": {"g": "item"}}, r"lists of columns.*got \{'g': 'item'\}"),
    ({"columns": {}, "feature_groups": None}, r"feature_groups must map group names"),
])
def test_bad_schemas(options, pattern):
    with pytest.raises(lateseq.SchemaError, match=pattern) as info:
        lateseq.Schema(**options)
    assert isinstance(info.value, ValueError)


def test_a_schema_takes_the_pyarrow_and_numpy_types_of_its_columns_by_name(tmp_path):
    """``pa.int64() == "int64"`` holds: a DataType passed the check by name, then create
    failed to write it as JSON and a tenant's filter failed to read it as a dtype (s35A);
    pa.float32() was refused as "DataType(float)"."""
    given = {"a": pa.int64(), "b": pa.float32(), "c": pa.float64(), "d": pa.bool_(), "e": np.int8,
             "f": np.dtype("int16"), "g": "int32"}
    schema = lateseq.Schema(given)
    assert schema.columns == {"a": "int64", "b": "float32", "c": "float64", "d": "bool", "e": "int8",
                              "f": "int16", "g": "int32"}
    assert lateseq.create(tmp_path / "s", schema).schema == schema
    assert lateseq.check_tenants({"t": lateseq.Projection(10, ("a",), where=lateseq.Filter("e", isin=[1, 3])),
                                  "u": lateseq.Projection(10, ("a",), where=lateseq.Filter("e", any_bits=1))},
                                 schema) == []


@pytest.mark.parametrize("max_len", [0, -1, 2.5, "3", None, True, np.bool_(True), 2**63, np.uint64(2**63)])
def test_bad_max_len(max_len):
    with pytest.raises(lateseq.SchemaError, match=r"max_len must be an integer from 1 to 2\*\*63 - 1") as info:
        lateseq.Projection(max_len)
    assert isinstance(info.value, ValueError)


def test_numpy_integers_are_integers(store):
    """What configs read through numpy hand over: taken as the ints they are."""
    numpy = lateseq.Projection(np.int64(2), ("item",), window=np.int32(25), where=lateseq.Filter("item", isin=[
        np.int64(v) for v in range(1000)]))
    plain = lateseq.Projection(2, ("item",), window=25, where=lateseq.Filter("item", isin=list(range(1000))))
    assert numpy == plain and type(numpy.max_len) is int and type(numpy.window) is int
    assert lateseq.Filter("item", any_bits=np.uint64(3)).any_bits == 3
    examples = examples_for(store)
    batch = lateseq.materialize(store, examples, numpy)
    assert not batch.rows_differ(lateseq.materialize(store, examples, plain)).any()


def examples_for(store: lateseq.Store) -> pa.Table:
    return lateseq.log_examples(store, pa.table({"user_id": [1, 2, 3], "request_ts": [30, 30, 30]}))


@pytest.mark.parametrize("projection, pattern", [
    (lateseq.Projection(5, ("item", "nope")), r"unknown columns \['nope'\]"),
    (lateseq.Projection(5, ("user_id",)), r"unknown columns \['user_id'\]"),
    (lateseq.Projection(5, ("_version",)), r"unknown columns \['_version'\]"),
    (lateseq.Projection(5, feature_groups=("tenant_a",)), r"unknown feature groups \['tenant_a'\]"),
])
def test_bad_projections(store, projection, pattern):
    examples = examples_for(store)
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                               lambda: lateseq.materialize(store, examples, projection))


def test_what_is_no_projection_or_schema_is_named(store, tmp_path):
    """Each was a bare AttributeError ("'NoneType' object has no attribute 'resolve'") deep
    in the read (s61C)."""
    examples = examples_for(store)
    for given in (None, 5, "item", {"max_len": 5}):
        for call in (lambda: lateseq.materialize(store, examples, given),
                     lambda: list(lateseq.iter_batches(store, examples, given)),
                     lambda: lateseq.materialize_log(store, examples, given, tmp_path / "out.parquet")):
            raises_and_changes_nothing(store, lateseq.SchemaError, ValueError,
                                       rf"projection must be a lateseq.Projection .*not {type(given).__name__}", call)
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"tenant 'a' must be a lateseq.Projection",
                               lambda: lateseq.materialize_tenants(store, examples, {"a": "item"}))
    with pytest.raises(lateseq.SchemaError, match=r"create takes a lateseq.Schema, e.g. lateseq.Schema\(\{'item'"):
        lateseq.create(tmp_path / "new", {"item": "int64"})
    assert not (tmp_path / "new").exists() and not (tmp_path / "out.parquet").exists()


def test_a_store_given_as_its_example_log_is_named(store):
    """Read as a folder log, a decoded copy deep in its read cache was named as no Parquet
    file (the CLI said "is a lateseq store"; the Python API did not, s61C)."""
    lateseq.materialize(store, examples_for(store), lateseq.Projection(5))  # (a read cache to blame)
    for call in (lambda: list(lateseq.iter_batches(store, store.path, lateseq.Projection(5))),
                 lambda: lateseq.materialize_log(store, store.path, lateseq.Projection(5), store.path.parent / "o")):
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "is a lateseq store, not an example log",
                                   call)


def test_pointers_newer_than_the_handle(store):
    examples = examples_for(store)  # version 2
    old = store.checkout(1)
    error = raises_and_changes_nothing(store, lateseq.PointerError, ValueError, r"versions up to 2.*version 1",
                                       lambda: lateseq.materialize(old, examples, lateseq.Projection(5)))
    assert "open the store at a version" in str(error)
    empty = lateseq.open(store.path, version=0)
    raises_and_changes_nothing(store, lateseq.PointerError, ValueError, r"version 0",
                               lambda: lateseq.materialize(empty, examples, lateseq.Projection(5)))


def test_bad_pointer_tables(store):
    examples = examples_for(store)
    cases = [
        (examples.drop_columns(["uih_checksum"]), r"missing pointer columns \['uih_checksum'\]"),
        (examples.set_column(0, "user_id", pa.array([1, None, 3], pa.int64())), r"'user_id' has null"),
        (examples.set_column(2, "uih_version", pa.array([-1, 1, 1], pa.int64())),
         r"'uih_version' has type int64, expected uint32: 1 of its values lie outside uint32's 0..4294967295 "
         r"\(first: \[-1\]\)"),
        (examples.set_column(0, "user_id", pa.array([1, 2**63, 3], pa.uint64())),
         r"'user_id' has type uint64, expected int64: 1 of its values lie outside .*"
         r"\(first: \[9223372036854775808\]\)"),
        (examples.set_column(3, "uih_length", pa.array([2**40, 1, 2**41], pa.uint64())),
         r"'uih_length' has type uint64, expected uint32: 2 of its values lie outside .*"
         r"\(first: \[1099511627776, 2199023255552\]\)"),
        (examples.set_column(1, "request_ts", pa.array(["a", "b", "c"])), r"'request_ts' has type string"),
        # a checksum's bits kept as int32 by a writer without unsigned types (and widened since, s48C): told how
        # to take them back
        *[(examples.set_column(4, "uih_checksum", pa.array([-5, 1, -2**31], kind)),
           rf"'uih_checksum' has type {kind}, expected uint32: 2 of its values lie outside .*\(first: \[-5, "
           r"-2147483648\]\), which no pointer lateseq makes holds; a writer without unsigned types \(Spark, Java\) "
           r"may have kept uint32's bits as signed integers: reinterpret them, "
           r"pa.array\(column.to_numpy\(\).astype\(np.int32\).view\(np.uint32\)\)$")
          for kind in (pa.int32(), pa.int64())],
        (examples.set_column(4, "uih_checksum", pa.array([-5, 1, -2**31 - 1], pa.int64())),  # no int32's bits
         r"\(first: \[-5, -2147483649\]\), which no pointer lateseq makes holds$"),
        (examples.set_column(3, "uih_length", pa.array([-1, 1, 1], pa.int32())),  # a length's: no bits to take back
         r"'uih_length' has type int32, .*\(first: \[-1\]\), which no pointer lateseq makes holds$"),
        # whole floats: above 2**53 a float names another user or time (pandas makes them of an int column with a null)
        (examples.set_column(0, "user_id", examples.column("user_id").cast(pa.float64())),
         r"'user_id' has type double, expected int64 \(floats cannot hold every id"),
        (examples.set_column(1, "request_ts", examples.column("request_ts").cast(pa.float64())),
         r"'request_ts' has type double"),
        (examples.append_column("user_id", examples.column("user_id")), r"2 columns named 'user_id'"),
    ]
    for table, pattern in cases:
        lateseq.materialize(store, examples, lateseq.Projection(5))  # a good batch of the log first: each is checked
        raises_and_changes_nothing(store, lateseq.PointerError, ValueError, pattern,
                                   lambda table=table: lateseq.materialize(store, table, lateseq.Projection(5)))


def test_a_projection_changed_after_a_read_is_checked_again(store):
    """A projection remembers the columns it resolved against a schema; its transforms
    (a dict) can still change, and then it is checked again."""
    projection = lateseq.Projection(5, ["ts"])
    lateseq.materialize(store, examples_for(store), projection)
    projection.transforms["item_id"] = "age"
    with pytest.raises(lateseq.SchemaError, match=r"applies to the time column"):
        lateseq.materialize(store, examples_for(store), projection)


def test_arrival_bounds_on_a_store_without_arrival(store):
    pointers = lateseq.Pointers(np.array([1]), np.array([30]), np.array([1]), np.array([1]),
                                np.array([0], np.uint32), version_hi=np.array([2]), arrival_limit=np.array([9]))
    raises_and_changes_nothing(store, lateseq.PointerError, ValueError, r"arrival_col",
                               lambda: lateseq.materialize(store, pointers, lateseq.Projection(5)))


def test_bad_requests(store, tmp_path):
    cases = [
        (pa.table({"user_id": [1]}), r"no column 'request_ts'"),
        (pa.table({"user_id": [1], "request_ts": pa.array([None], pa.int64())}), r"'request_ts' has null"),
        (pa.table({"user_id": ["x"], "request_ts": [1]}), r"user_id must be integer user ids, not string"),
        (pa.table({"user_id": [1], "request_ts": [1], "uih_length": [3]}), r"already have pointer columns"),
        # a two-tier record's names: the log would be taken for records, or hold two columns of one name
        *[(pa.table({"user_id": [1], "request_ts": [1], name: [3]}), rf"already have pointer columns \['{name}'\]")
          for name in ("seq_length", "seq_checksum", "tail_version", "tail_item")],
        (pa.table([[1], [1], [0], [1]], names=["user_id", "request_ts", "label", "label"]),
         r"named more than once: \['label'\]"),
    ]
    for table, pattern in cases:
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                                   lambda table=table: lateseq.log_examples(store, table, tmp_path / "log.parquet"))
        assert not (tmp_path / "log.parquet").exists()


@pytest.mark.parametrize("watermark", ["20", True, 20.0, float("nan"), 2**70, np.float64(20)])
def test_a_watermark_that_is_not_an_integer_is_refused_before_anything_is_written(store, watermark):
    """It goes into the manifest and every later read compares with it: a string made the
    store unusable for the two-tier protocol, a numpy integer failed after the segment
    files were written (left behind)."""
    events = good(ts=pa.array([40, 40], pa.int64()))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"watermark",
                               lambda: store.commit(events, watermark=watermark))


@pytest.mark.parametrize("column, kind, pattern", [
    ("item", pa.string(), "column 'item' has type string, expected int64"),
    ("ts", pa.float64(), "column 'ts' has type double; times must be integers"),
    ("user_id", pa.float32(), "column 'user_id' has type float, expected int64")])
def test_a_commit_of_no_events_checks_the_types_of_the_columns_it_names(store, column, kind, pattern):
    """A watermark's commit checked only the names of its columns: a broken export of a
    quiet hour (strings where ids go) moved the watermark, and the next busy hour failed."""
    empty = pa.table({column: pa.array([], kind)})
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                               lambda: store.commit(empty, watermark=90))
    # columns of no type (pa.table of empty lists, an empty DataFrame's) hold nothing wrong
    assert store.commit(pa.table({"user_id": [], "ts": []}), watermark=90).watermark == 90


def test_a_numpy_integer_watermark_is_published_as_an_int(store):
    events = good(ts=pa.array([40, 40], pa.int64()))
    assert store.commit(events, watermark=np.int64(50)).watermark == 50
    assert lateseq.open(store.path).watermark == 50


def test_a_log_with_some_two_tier_record_columns_only_is_refused(store):
    """Not read as plain pointers (a two-tier log that lost a column would rebuild without
    its tails, unflagged), nor as records (KeyError)."""
    partial = examples_for(store).append_column("seq_checksum", pa.array([1, 2, 3], pa.uint32()))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError,
                               r"two-tier record columns \['seq_checksum'\] but not \['seq_length', 'tail_version'\]",
                               lambda: lateseq.materialize(store, partial, lateseq.Projection(5)))


def test_checksum_mismatch_changes_nothing(store):
    examples = examples_for(store)
    wrong = examples.set_column(3, "uih_length", pa.array([9, 9, 9], pa.uint32()))
    error = raises_and_changes_nothing(store, lateseq.ChecksumMismatch, ValueError, r"3 of 3",
                                       lambda: lateseq.materialize(store, wrong, lateseq.Projection(5)))
    assert error.rows == [0, 1, 2]


def test_unknown_versions_and_tags(store):
    for version in (3, 99, "nope"):
        raises_and_changes_nothing(store, lateseq.VersionNotFound, LookupError, str(version),
                                   lambda version=version: lateseq.open(store.path, version=version))
        raises_and_changes_nothing(store, lateseq.VersionNotFound, LookupError, str(version),
                                   lambda version=version: store.checkout(version))
    raises_and_changes_nothing(store, lateseq.VersionNotFound, LookupError, "nope", lambda: store.untag("nope"))
    raises_and_changes_nothing(store, lateseq.VersionNotFound, LookupError, "7", lambda: store.tag("x", 7))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "tag name", lambda: store.tag("1"))


def test_create_over_an_existing_store(store):
    raises_and_changes_nothing(store, lateseq.StoreError, OSError, "already holds a store",
                               lambda: lateseq.create(Path(store.path), store.schema))


def test_float_overflow_and_bool_max_len_are_refused(tmp_path):
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"w": "float32"}))
    with pytest.raises(lateseq.SchemaError, match="too large for float"):
        store.commit(pa.table({"user_id": [1], "ts": [1], "w": pa.array([1e300], pa.float64())}))
    assert store.latest().version == 0
    with pytest.raises(lateseq.SchemaError, match="max_len"):
        lateseq.Projection(True)


@pytest.mark.parametrize("users, pattern", [
    ([1.9], "must be integer user ids, not double"),  # would have deleted user 1
    (np.array([2**64 - 1], np.uint64), "do not fit int64"),  # would have wrapped to user -1
    (["2"], "must be integer user ids, not string"),
    ([None, 1], "null values"),
    ([2**64 - 1], "must be integer user ids"),
])
def test_a_deletion_of_ids_that_are_not_user_ids_deletes_nobody(store, users, pattern):
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern, lambda: store.delete(users))


@pytest.mark.parametrize("user_id, request_ts, pattern", [
    ([1.7], [5], "user_id must be integer user ids, not double"),
    ([1], [15.9], "request_ts has type double"),
    ([1], [np.nan], "request_ts has type double"),
    ([1, 2], [5], "2 user ids but 1 request times"),
])
def test_pointers_are_never_made_from_truncated_input(store, user_id, request_ts, pattern):
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                               lambda: lateseq.make_pointers(store, user_id, request_ts))


@pytest.mark.parametrize("inside", ["versions/00000001.json", "schema.json", "new.parquet"])
def test_an_example_log_is_never_written_into_the_store(store, inside):
    requests = pa.table({"user_id": [1], "request_ts": [30]})
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "is inside the store",
                               lambda: lateseq.log_examples(store, requests, store.path / inside))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "is inside the store",
                               lambda: lateseq.copartition_log(store, lateseq.log_examples(store, requests),
                                                               store.path / inside))


def test_an_example_log_is_not_written_over_unless_asked(store, tmp_path):
    """A log records what online served, which a later version cannot make again: written
    over silently by a rerun (the CLI asks for --force)."""
    path = tmp_path / "log.parquet"
    first = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), path)
    with pytest.raises(FileExistsError, match="log.parquet exists; pass overwrite=True"):
        lateseq.log_examples(store, pa.table({"user_id": [2], "request_ts": [40]}), path)
    assert pq.read_table(path).equals(first)
    second = lateseq.log_examples(store, pa.table({"user_id": [2], "request_ts": [40]}), path, overwrite=True)
    assert pq.read_table(path).equals(second)


def test_more_mistakes_users_make_are_named_and_change_nothing(store, tmp_path):
    twice = pa.table([pa.array([1]), pa.array([1]), pa.array([2])], names=["user_id", "ts", "ts"])
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"columns \['ts'\] more than once",
                               lambda: store.commit(twice))
    for before, grace in (("x/y", 0), (1, float("nan")), (True, 0), (1, float("inf")), (1, True), (1, "0")):
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError,
                                   "before must be|grace_s must be|'x/y' is neither a version number",
                                   lambda before=before, grace=grace: store.cleanup(before, grace_s=grace))
    raises_and_changes_nothing(store, lateseq.VersionNotFound, LookupError, "no tag 'x'",
                               lambda: store.cleanup("x"))
    assert store.cleanup(1, grace_s=np.int64(0)) == []  # numpy's numbers are numbers (s35A)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"user_id": [1], "request_ts": [30]})
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "requests are a pyarrow Table, not a "
                               r"DataFrame \(pa.Table.from_pandas\(df, preserve_index=False\)",
                               lambda: lateseq.log_examples(store, frame))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "cannot commit a DataFrame.*from_pandas",
                               lambda: store.commit(frame))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"not a DataFrame \(pa.Table.from_pandas",
                               lambda: lateseq.materialize(store, frame, lateseq.Projection(3)))
    sorted_frame = good().to_pandas().set_axis([7, 3])  # an index as sorting leaves it: kept as a column
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"\['__index_level_0__'\] that the store's "
                               r"schema does not know \(.*pa.Table.from_pandas\(df, preserve_index=False\)",
                               lambda: store.commit(pa.Table.from_pandas(sorted_frame)))
    named = sorted_frame.rename_axis("row")  # a named index is a column too, named as the frame named it (s47A)
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"\['row'\] that the store's schema does "
                               r"not know \('row': a pandas DataFrame's named index.*to_parquet\(index=False\)",
                               lambda: store.commit(pa.Table.from_pandas(named)))
    requests = pa.table(frame)  # a RecordBatch is taken as commit and materialize take it
    assert lateseq.log_examples(store, requests.to_batches()[0]).equals(lateseq.log_examples(store, requests))
    strings = "map string ids to integers the same way for events and requests.*hash_array"
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, f"'user_id' has type string.*{strings}",
                               lambda: store.commit(good(user_id=pa.array(["u1", "u2"]))))
    named = pa.table({"user_id": pa.array(["u1"], pa.large_string()), "request_ts": [30]})
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, f"not large_string.*{strings}",
                               lambda: lateseq.log_examples(store, named))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "'item' has type string.*map the strings to "
                               "integer ids", lambda: store.commit(good(item=pa.array(["a", "b"]))))
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}))
    for path in ("log.parquet", Path("log.parquet")):  # the other calls take one: the message says how
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"not a \w*Path.*read_table\(path\)"
                                   if isinstance(path, Path) else r"not a str.*iter_batches\(store, path",
                                   lambda path=path: lateseq.materialize(store, path, lateseq.Projection(3)))
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"not a \w*(Path|str).*read_table\(path\)",
                                   lambda path=path: lateseq.copartition_log(store, path, tmp_path / "co.parquet"))
    raises_and_changes_nothing(store, lateseq.PointerError, ValueError, f"'user_id' has type string.*{strings}",
                               lambda: lateseq.materialize(store, log.set_column(0, "user_id", pa.array(["1"])),
                                                           lateseq.Projection(3)))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"not DataFrame \(pa.Table.from_pandas",
                               lambda: next(lateseq.iter_batches(store, log.to_pandas(), lateseq.Projection(3))))
    path = tmp_path / "twice.parquet"  # a join's second label: refused naming it, not a bare KeyError
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30], "label": [1]}))
    pq.write_table(log.append_column("label", pa.array([0])), path)
    with pytest.raises(lateseq.SchemaError, match=r"columns named more than once: \['label'\]"):
        next(lateseq.iter_batches(store, path, lateseq.Projection(3)))
    assert len(next(lateseq.iter_batches(store, path, lateseq.Projection(3), columns=["uih_length"]))[0]) == 1


def test_categories_and_dates_are_taken_as_the_values_they_stand_for(make_store):
    """A categorical column holds its values exactly, a date its whole days: both are
    decoded, not refused."""
    days = pa.array([19_000, 19_001], pa.date32())
    plain = good(ts=pa.array([19_000 * 86_400, 19_001 * 86_400]))
    coded = good(ts=days.dictionary_encode(), item=pa.array([5, 6]).dictionary_encode(),
                 user_id=pa.array([1, 2]).dictionary_encode())
    read = []
    for events in (plain, coded):
        store = make_store(COLUMNS, time_unit="s").commit(events)
        pointers = lateseq.make_pointers(store, [1, 2], [20_000 * 86_400] * 2)
        batch = lateseq.materialize(store, pointers, lateseq.Projection(5, tuple(COLUMNS) + ("ts",)))
        read.append((batch.offsets.tolist(), {k: v.tolist() for k, v in batch.values.items()}))
    assert read[0] == read[1] and read[0][1]["ts"] == [19_000 * 86_400, 19_001 * 86_400]
    inferred = lateseq.Schema.infer(coded.schema)
    assert inferred.time_unit == "s" and inferred.columns["item"] == "int64"
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, "an example log is a pyarrow Table, not a dict",
                               lambda: lateseq.materialize(store, {"user_id": [1]}, lateseq.Projection(3)))
    with pytest.raises(lateseq.StoreError, match="is inside the store"):
        lateseq.create(store.path / "versions" / "nested", lateseq.Schema({"item": "int64"}))
    assert not (store.path / "versions" / "nested").exists()


def test_user_ids_in_every_form_users_hold_them(store):
    """Categoricals (dictionary arrays), scalars, byte-swapped arrays, pandas nullable
    integers: the ids they hold, as before the checks."""
    pd = pytest.importorskip("pandas")
    requests = pa.table({"user_id": pa.array([1, 2, 1]).dictionary_encode(), "request_ts": [30, 30, 30]})
    plain = pa.table({"user_id": [1, 2, 1], "request_ts": [30, 30, 30]})
    assert lateseq.log_examples(store, requests).equals(lateseq.log_examples(store, plain))
    log = lateseq.log_examples(store, plain)  # and in a log that went through a categorical (s47B: refused)
    coded = pa.table({n: log.column(n).dictionary_encode() if n in ("user_id", "uih_version") else log.column(n)
                      for n in log.column_names})
    projection = lateseq.Projection(4, ("ts",))
    assert lateseq.materialize(store, coded, projection).rows_differ(lateseq.materialize(store, log, projection)) \
        .sum() == 0
    chunks = []  # chunks of their own dictionaries, each holding a null no row uses: Arrow cannot combine them
    for part in (log.column("user_id").to_pylist()[:1], log.column("user_id").to_pylist()[1:]):
        values = sorted(set(part))
        chunks.append(pa.DictionaryArray.from_arrays(pa.array([1 + values.index(u) for u in part], pa.int32()),
                                                     pa.array([None, *values], pa.int64())))
    chunked = log.set_column(0, "user_id", pa.chunked_array(chunks))
    assert lateseq.audit.audit(store, chunked).mismatches == {}  # (s47D: "cannot yet unify dictionaries")
    read = [batch for _, batch in lateseq.iter_batches(store, chunked, projection, 2)]
    assert lateseq.JaggedBatch.concat(read).rows_differ(lateseq.materialize(store, log, projection)).sum() == 0
    for _ in range(2):  # a null in the dictionary itself is no null of the column until decoded (s47C)
        with pytest.raises(lateseq.PointerError, match="pointer column 'user_id' has null values"):
            lateseq.materialize(store, coded.set_column(0, "user_id", pa.compute.dictionary_encode(
                pa.array([1, None, 1], pa.int64()), null_encoding="encode")), projection)
    assert lateseq.make_pointers(store, np.array([1, 2], ">i8"), [30, 30]).equals(
        lateseq.make_pointers(store, pd.Series([1, 2], dtype="Int64"), [30, 30]))
    assert 1 in store.delete(1).deleted_users()
    assert 2 in store.delete(pd.Categorical([2])).deleted_users()


def test_columns_of_types_arrow_cannot_compare_or_decode_are_read_or_refused_by_name(make_store):
    """Half floats into a float32 column are stored exactly (their check compared them with
    Arrow, which has no comparison of half floats: Arrow's error named no column); polars'
    categories of string_view, which Arrow cannot decode, are refused naming the column;
    ids exported with a null are refused for the null, not as floats."""
    store = make_store({"score": "float32"})
    halves = np.array([0.5, -0.0, np.inf, 65504.0], np.float16)
    stored = store.commit(pa.table({"user_id": [1] * 4, "ts": [1, 2, 3, 4], "score": halves}))
    batch = lateseq.materialize(stored, lateseq.make_pointers(stored, [1], [10]), lateseq.Projection(8, ("score",)))
    assert batch.values["score"].view(np.uint32).tolist() == halves.astype(np.float32).view(np.uint32).tolist()
    categories = pa.DictionaryArray.from_arrays(pa.array([0], pa.uint32()), pa.array(["u1"], pa.string_view()))
    raises_and_changes_nothing(stored, lateseq.SchemaError, ValueError, r"'user_id' is categorical, of string_view",
                               lambda: stored.commit(pa.table({"user_id": categories, "ts": [5], "score": [1.0]})))
    with pytest.raises(lateseq.SchemaError, match="user_id is categorical, of string_view.*map string ids"):
        lateseq.log_examples(stored, pa.table({"user_id": categories, "request_ts": [5]}))
    log = lateseq.log_examples(stored, pa.table({"user_id": [1], "request_ts": [5]}))
    with pytest.raises(lateseq.SchemaError, match="pointer column 'user_id' is categorical, of string_view"):
        lateseq.materialize(stored, log.set_column(0, "user_id", categories), lateseq.Projection(3))
    with pytest.raises(lateseq.SchemaError, match="user_id has 1 null values"):
        lateseq.make_pointers(stored, ArrowExporter(pa.array([1, None], pa.int64())), [5, 5])


def test_values_a_column_cannot_hold_as_given_are_refused(make_store):
    """A float64 that a float32 column would store as 0, a timestamp into a payload or user
    column (its unit would silently become the store's), an empty commit that only moves
    the watermark but names other columns."""
    store = make_store({"score": "float32", "click_time": "int64"}, time_unit="ns")
    row = {"user_id": [1], "ts": [1], "score": pa.array([0.5], pa.float64()), "click_time": [7]}
    cases = [
        ({**row, "score": pa.array([1e-50], pa.float64())}, r"'score' holds nonzero values too small"),
        ({**row, "click_time": pa.array([1000], pa.timestamp("ms"))}, r"'click_time' has type timestamp\[ms\]"),
        ({**row, "user_id": pa.array([1000], pa.timestamp("ms"))}, r"'user_id' has type timestamp\[ms\]"),
    ]
    for table, pattern in cases:
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, pattern,
                                   lambda table=table: store.commit(pa.table(table)))
    raises_and_changes_nothing(store, lateseq.SchemaError, ValueError, r"\['nonsense'\] that the store's schema",
                               lambda: store.commit(pa.table({"nonsense": pa.array([], pa.string())}), watermark=5))
    assert store.commit(pa.table({**row, "score": pa.array([1e-40], pa.float64())})).num_events == 1  # rounded


def test_requests_and_filters_users_really_send(store, make_store):
    timed = make_store({"item": "int64"}, time_unit="s")
    minutes = np.array(["1970-01-02T00:02"], "datetime64[m]")
    for given, seconds in ((minutes, 86_520), (minutes.astype("datetime64[h]"), 86_400),
                           (minutes.astype("datetime64[D]"), 86_400)):
        assert lateseq.make_pointers(timed, np.array([1]), given).column("request_ts").to_pylist() == [seconds]
    with pytest.raises(lateseq.SchemaError, match=r"datetime64\[M\]"):
        lateseq.make_pointers(timed, np.array([1]), minutes.astype("datetime64[M]"))
    twice = pa.table({"user_id": [1], "request_ts": [5]}).append_column("user_id", pa.array([2]))
    with pytest.raises(lateseq.SchemaError, match=r"2 columns named 'user_id'"):
        lateseq.log_examples(store, twice)
    flags = lateseq.Projection(5, where=lateseq.Filter("rating", isin=[True]))
    with pytest.raises(lateseq.SchemaError, match=r"holds bools; bools are for a bool column"):
        lateseq.materialize(store, examples_for(store), flags)
    batch = lateseq.materialize(store, examples_for(store), lateseq.Projection(5))
    with pytest.raises(ValueError, match=r"padded: length must be .* got -1"):
        batch.padded("item", -1)


def test_request_times_are_read_as_user_ids_are(store):
    """A scalar, a byte-swapped array and an empty list of requests, which user ids take,
    were a raw Arrow error (or "type double" for no requests at all) as request times."""
    want = lateseq.make_pointers(store, np.array([1]), np.array([30]))
    for users, times in ((1, 30), (np.array([1], ">i8"), np.array([30], ">i8")), ([1], [np.int32(30)])):
        assert lateseq.make_pointers(store, users, times).equals(want)
    assert lateseq.make_pointers(store, [], []).num_rows == 0
    with pytest.raises(lateseq.SchemaError, match=r"request_ts must be one-dimensional"):
        lateseq.make_pointers(store, [1], [[30]])
    with pytest.raises(lateseq.SchemaError, match=r"request_ts must be integer times"):
        lateseq.make_pointers(store, [1], [2**70])
    with pytest.raises(lateseq.SchemaError, match=r"too far from 1970"):  # wrapped around in seconds
        lateseq.make_pointers(store, [1], np.array([10**17], "datetime64[D]"))


def test_copartition_log_names_columns_it_cannot_reorder(store, tmp_path):
    """pyarrow cannot reorder string_view columns: a raw ArrowNotImplementedError before."""
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [5, 5],
                                                "note": pa.array(["a", "b"], pa.string_view())}))
    with pytest.raises(lateseq.SchemaError, match="cast such columns to string"):
        lateseq.copartition_log(store, log, tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()


def test_copartition_log_replaces_a_file_only_when_told(store, tmp_path):
    """It wrote over any file at its path, the log it was reading from included (s34E)."""
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [5, 5]}))
    kept = tmp_path / "precious.txt"
    kept.write_text("not a log")
    with pytest.raises(FileExistsError, match="precious.txt exists; pass overwrite=True"):
        lateseq.copartition_log(store, log, kept)
    assert kept.read_text() == "not a log"
    lateseq.copartition_log(store, log, kept, overwrite=True)
    assert pq.read_table(kept).num_rows == 2


def test_a_log_into_a_missing_folder_names_the_folder_not_a_temporary(store, tmp_path):
    """log_examples to log/day=0.parquet before log/ existed raised "No such file or
    directory: log/.tmp-fec6d758-day=0.parquet": a file the user never named."""
    requests = pa.table({"user_id": [1], "request_ts": [5]})
    for write in (lambda path: lateseq.log_examples(store, requests, path),
                  lambda path: lateseq.copartition_log(store, lateseq.log_examples(store, requests), path)):
        with pytest.raises(FileNotFoundError, match=r"day=0.parquet: directory .*/log does not exist$"):
            write(tmp_path / "log" / "day=0.parquet")
        (tmp_path / "afile").write_text("mine")
        with pytest.raises(NotADirectoryError, match=r"x.parquet: .*afile is a file, not a directory$"):
            write(tmp_path / "afile" / "x.parquet")
        with pytest.raises(IsADirectoryError, match="names a folder"):  # pathlib drops the slash (s51B)
            write(f"{tmp_path}/newdir/")
    assert not (tmp_path / "log").exists() and not (tmp_path / "newdir").exists()
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("overwrite", ["no", "false", 0, None])
def test_overwrite_is_a_bool_not_a_truthy_string(store, tmp_path, overwrite):
    """``overwrite="no"`` replaced the log: a string is truthy."""
    kept = tmp_path / "log.parquet"
    first = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), kept)
    for write in (lambda: lateseq.log_examples(store, pa.table({"user_id": [2], "request_ts": [40]}), kept,
                                               overwrite=overwrite),
                  lambda: lateseq.copartition_log(store, first, kept, overwrite=overwrite)):
        with pytest.raises(lateseq.SchemaError, match=f"overwrite must be True or False, not {overwrite!r}"):
            write()
        assert pq.read_table(kept).equals(first)


@pytest.mark.parametrize("argument, value", [("on_mismatch", "RAISE"), ("on_mismatch", "error"),
                                             ("on_mismatch", None), ("verify", "false"), ("verify", None),
                                             ("verify", 0)])
def test_a_misspelt_on_mismatch_or_verify_is_refused_not_read_as_flag(store, tmp_path, argument, value):
    """Anything but "raise" returned histories that failed their checksum, only flagged:
    a typo turned the check off (s35E)."""
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [30, 30]}))
    damaged = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                             pa.array([1, 2], log.schema.field("uih_checksum").type))
    projection = lateseq.Projection(4, ("item",))
    pq.write_table(damaged, tmp_path / "log.parquet")
    reads = [lambda kw: lateseq.materialize(store, damaged, projection, **kw),
             lambda kw: lateseq.materialize_tenants(store, damaged, {"t": projection}, **kw),
             lambda kw: next(lateseq.iter_batches(store, tmp_path / "log.parquet", projection, **kw))]
    for read in reads:
        raises_and_changes_nothing(store, lateseq.SchemaError, ValueError,
                                   f"{argument} must be .*, not {re.escape(repr(value))}",
                                   lambda read=read: read({argument: value}))
    with pytest.raises(lateseq.ChecksumMismatch):
        lateseq.materialize(store, damaged, projection, on_mismatch="raise")
    assert lateseq.materialize(store, damaged, projection, on_mismatch="flag").mismatched.all()


@pytest.mark.parametrize("name", ["a" * 245 + ".parquet", "é" * 123 + ".parquet"])
def test_an_output_named_near_the_limit_is_written(store, tmp_path, name):
    """Its temporary's name (14 bytes more) was too long: a name the file system takes
    was refused, the error naming the temporary (s35E)."""
    assert len(os.fsencode(name)) <= 255
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / name
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), path)
    assert pq.read_table(path).equals(log) and os.listdir(tmp_path / "out") == [name]


def test_a_store_is_created_in_a_new_or_empty_folder_only(tmp_path, monkeypatch):
    """create("") made the current folder a store, and a folder holding other stores took
    them inside it (s35E)."""
    schema = lateseq.Schema({"item": "int64"})
    monkeypatch.chdir(tmp_path)
    for make in (lateseq.create, lambda path, _: lateseq.open(path)):  # open("") opened the current folder (s48A)
        with pytest.raises(lateseq.StoreError, match="a store's path is empty"):
            make("", schema)
    with pytest.raises(lateseq.SchemaError, match="cache_dir is empty"):
        lateseq.open(lateseq.create(tmp_path / "inner", schema).path, cache_dir="")
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(lateseq.StoreError, match=r"is not empty \(it holds inner, notes.txt\); create a store in a "
                                                 "new or empty folder"):
        lateseq.create(tmp_path, schema)
    assert snapshot(tmp_path) == before
    killed = tmp_path / "killed"  # a create killed before its schema: its empty folders
    for sub in ("versions", "segments", "tags"):
        (killed / sub).mkdir(parents=True)
    assert lateseq.create(killed, schema).version == 0


def test_integers_past_int64_strings_for_lists_and_ids_of_other_types_are_named(store, tmp_path):
    """Each failed with numpy's, pyarrow's or a wrong reason's error (s35E)."""
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30], "label": [1]}))
    projection = lateseq.Projection(4, ("item",))
    for call, pattern in (
            (lambda: next(lateseq.iter_batches(store, log, projection, batch_size=2**64)),
             "batch_size must be a positive integer that fits int64, got 18446744073709551616"),
            (lambda: next(lateseq.iter_batches(store, log, projection, columns="label")),
             r"columns must be a list of names, not the string 'label' \(columns=\['label'\]\)"),
            (lambda: lateseq.materialize(store, log, projection).padded("item", 2**64),
             "padded: length must be a non-negative integer that fits int64"),
            (lambda: store.commit(good(), commit_id=5), r"a commit id is a string, not int \(5\)"),
            (lambda: store.commit(good(), commit_id="ü"), "must be 1-256 printable ASCII characters")):
        with pytest.raises(lateseq.SchemaError, match=pattern):
            call()
    assert lateseq.open(store.path).version == store.version


def test_a_path_no_file_can_have_is_named_before_anything_is_written(store, tmp_path):
    """A name over 255 bytes surfaced as the OS's "[Errno 36] File name too long", a NUL
    byte as Python's "embedded null byte" (s48A)."""
    before = snapshot(tmp_path)
    deep = "/".join(["d" * 200] * 21)  # each name fits, the whole path does not (s48C)
    near = "/".join(["d" * 200] * 19)  # it fits, but the names lateseq writes inside it would not (s48F)
    folded = "/".join(["x/.."] * 900) + "/s"  # short once ".." is folded, not as the system is given it
    for name, pattern in (("x" * 256, "is 256 bytes long, over the 255 a file system takes"),
                          ("ü" * 128, "is 256 bytes long"), ("a\0b", "a path cannot hold a NUL byte"),
                          (deep, r"the path is \d+ bytes long, over the 3840 that leave room for the names lateseq "
                                 r"writes in or beside it \(the system takes 4095\)"),
                          (near, "over the 3840 that leave room"), (folded, "over the 3840 that leave room")):
        log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}))
        for call in (lambda: lateseq.create(tmp_path / name / "store", store.schema),
                     lambda: lateseq.open(tmp_path / name), lambda: lateseq.open(store.path, cache_dir=tmp_path / name),
                     lambda: lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}),
                                                  tmp_path / name),
                     lambda: lateseq.materialize_log_tenants(store, log, {"a": lateseq.Projection(3)}, tmp_path / name),
                     lambda: lateseq.iter_batches(store, tmp_path / name, lateseq.Projection(3))):
            with pytest.raises(lateseq.SchemaError, match=pattern):
                call()
    assert snapshot(tmp_path) == before
    made = lateseq.create(tmp_path / ("x" * 255), store.schema)  # 255 bytes: a name a file system takes
    assert lateseq.open(made.path).version == 0

    class Given:  # a PathLike of the user's: "" opened the current folder, bytes raised pathlib's TypeError (s48F)
        def __init__(self, path: str | bytes) -> None:
            self.path = path

        def __fspath__(self) -> str | bytes:
            return self.path

    for call, error, pattern in ((lambda p: lateseq.open(p), lateseq.StoreError, "a store's path is empty"),
                                 (lambda p: lateseq.create(p, store.schema), lateseq.StoreError,
                                  "a store's path is empty"),
                                 (lambda p: lateseq.materialize_log_tenants(
                                     store, log, {"a": lateseq.Projection(3)}, p), lateseq.SchemaError,
                                  "out_dir is empty")):
        with pytest.raises(error, match=pattern):
            call(Given(""))
        with pytest.raises(lateseq.SchemaError, match="give paths as str or pathlib.Path, not bytes"):
            call(os.fsencode(tmp_path / "b"))
    with pytest.raises(lateseq.SchemaError, match="not bytes"):
        lateseq.open(store.path, cache_dir=os.fsencode(tmp_path / "cache"))
    with pytest.raises(lateseq.SchemaError, match="not bytes"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), Given(os.fsencode(tmp_path / "l")))
    assert not (tmp_path / "b").exists() and not (tmp_path / "l").exists() and not (tmp_path / "cache").exists()


def test_a_url_is_refused_where_pathlib_would_take_it_for_a_relative_path(store, tmp_path, monkeypatch):
    """``create("s3://bucket/store")`` made the folders ``s3:/bucket/store`` in the current
    one, and a user took the store for one in the bucket."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}))
    for url in ("s3://bucket/store", "gs://b/s", "file:///tmp/s", "hdfs://namenode:8020/s", Path("s3://bucket/x"),
                "./s3://bucket/x", "s3://", "gs:///", " s3://b/s", "S3://b", "weird+scheme://x"):  # (s49C: s3:// made ./s3:)
        for call in (lambda: lateseq.create(url, store.schema), lambda: lateseq.open(url),
                     lambda: lateseq.open(store.path, cache_dir=url),
                     lambda: lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), url),
                     lambda: lateseq.materialize_log(store, log, lateseq.Projection(3), url),
                     lambda: lateseq.materialize_log_tenants(store, log, {"a": lateseq.Projection(3)}, url),
                     lambda: lateseq.iter_batches(store, url, lateseq.Projection(3))):
            with pytest.raises(lateseq.SchemaError, match="is a URL: lateseq reads and writes files on a file system"):
                call()
    assert snapshot(tmp_path) == before
    made = lateseq.create(tmp_path / "in" / "s3:" / "x", store.schema)  # such a name inside a path is a name
    assert lateseq.open(made.path).version == 0
    for name in ("backup:/store", "v1.2:/s"):  # a folder whose name ends in ":" is no URL (s49C)
        assert lateseq.open(lateseq.create(name, store.schema).path).version == 0


def test_an_output_name_of_no_utf8_is_named(store, tmp_path):
    """Valid on Linux, but pyarrow's writer raised a bare UnicodeEncodeError (s35G)."""
    path = tmp_path / os.fsdecode(b"log-\xff.parquet")
    with pytest.raises(lateseq.SchemaError, match="pyarrow reads and writes only UTF-8 file names"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [30]}), path)
    with pytest.raises(lateseq.SchemaError, match="pyarrow reads and writes only UTF-8 file names"):
        lateseq.create(tmp_path / os.fsdecode(b"store-\xff"), store.schema)
    assert not any(tmp_path.glob("log-*")) and not any(tmp_path.glob("store-*"))
    moved = tmp_path / os.fsdecode(b"moved-\xe9")  # a store moved there opened, then every read failed (s36A)
    shutil.copytree(store.path, moved)
    for call in (lambda: lateseq.open(moved), lambda: lateseq.open(store.path, cache_dir=moved / "cache")):
        with pytest.raises(lateseq.SchemaError, match="pyarrow reads and writes only UTF-8 file names"):
            call()
    (tmp_path / "link").symlink_to(moved)  # a UTF-8 name for it: read, in a shared cache too (s36G)
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [10**6]}))
    for options in ({}, {"cache_dir": tmp_path / "shared"}):
        handle = lateseq.open(tmp_path / "link", **options)
        assert lateseq.materialize(handle, log, lateseq.Projection(3)).lengths.tolist() == [
            lateseq.materialize(store, log, lateseq.Projection(3)).lengths[0]]


def test_the_store_constructor_shows_only_public_parameters():
    """Its signature listed the handles' shared segments and store id (private plumbing)."""
    assert [name for name in inspect.signature(lateseq.Store).parameters if name.startswith("_")] == []


def test_prefault_names_a_column_the_store_lacks(store):
    """It raised a StoreError saying a segment had no such column, as if a file were damaged."""
    with pytest.raises(lateseq.SchemaError, match=r"prefault: unknown columns \['nope'\]; the store has \['ts'"):
        store.prefault(["item", "nope"])
    with pytest.raises(lateseq.SchemaError, match="not the string 'item'"):
        store.prefault("item")
    store.prefault(["ts", "item"])


def test_hashed_uint64_ids_past_int64_are_refused_with_a_way_that_works(tmp_path):
    """Hashed 64-bit ids (common in recommendation logs) past 2**63 got Arrow's "not in
    range" alone (s50A): the error says to keep their bits as int64, and doing so gives
    each user their own history back, in commits, pointers and reads."""
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"item": "int64"}))
    hashed = pa.array([2**64 - 1, 2**63 + 5, 7, 2**63 + 5], pa.uint64())
    events = pa.table({"user_id": hashed, "ts": [1, 2, 3, 4], "item": pa.array([2**63 + 1, 11, 12, 13], pa.uint64())})
    hint = r"keep their bits as int64, pyarrow.compute.cast\(values, pa.int64\(\), safe=False\)"
    with pytest.raises(lateseq.SchemaError, match=rf"'user_id' does not fit int64: .*{hint}.*requests alike"):
        store.commit(events)
    bits = events.set_column(0, "user_id", pa.compute.cast(hashed, pa.int64(), safe=False))
    with pytest.raises(lateseq.SchemaError, match=rf"'item' does not fit int64: .*{hint}.*wherever they are compared"):
        store.commit(bits)
    assert store.latest().version == 0
    with pytest.raises(lateseq.SchemaError, match=rf"user_id holds ids that do not fit int64: .*{hint}"):
        lateseq.log_examples(store, pa.table({"user_id": hashed, "request_ts": [9, 9, 9, 9]}))
    with pytest.raises(lateseq.SchemaError, match=rf"must be integer user ids: .*{hint}"):
        store.delete([2**64 - 1])
    logged = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]}))  # a warehouse's log of them
    with pytest.raises(lateseq.PointerError, match=rf"'user_id' has type uint64, expected int64: .*{hint}"):
        lateseq.materialize(store, logged.set_column(0, "user_id", pa.array([2**63 + 5], pa.uint64())),
                            lateseq.Projection(10, ["item"]))
    bits = bits.set_column(2, "item", pa.compute.cast(bits["item"], pa.int64(), safe=False))
    store = store.commit(bits)
    requests = pa.table({"user_id": pa.compute.cast(pa.array([2**63 + 5, 2**64 - 1, 7, 2**63 + 4], pa.uint64()),
                                                    pa.int64(), safe=False), "request_ts": [9, 9, 9, 9]})
    batch = lateseq.materialize(store, lateseq.log_examples(store, requests), lateseq.Projection(10, ["item"]))
    assert batch.offsets.tolist() == [0, 2, 3, 4, 4]
    assert batch.values["item"].tolist() == [11, 13, -(2**63) + 1, 12]
