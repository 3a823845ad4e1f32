"""The Fat Row baseline against a brute-force oracle, and its Parquet round trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lateseq.cli.fatrow import (
    fat_rows,
    iter_fat_rows,
    jagged_columns,
    read_fat_rows_batches,
    write_fat_rows,
)


def brute_force(events: pa.Table, requests: pa.Table, columns: list[str], max_len: int,
                versioned: bool) -> list[dict[str, list]]:
    """Per request, the newest max_len visible events ordered by (ts, commit, row)."""
    ev = events.to_pylist()
    out = []
    for request in requests.to_pylist():
        rows = [
            (e["ts"], e["commit"] if versioned else 0, i)
            for i, e in enumerate(ev)
            if e["user_id"] == request["user_id"] and e["ts"] < request["request_ts"]
            and (not versioned or e["commit"] <= request["version"])
        ]
        rows = sorted(rows)[-max_len:] if rows else []
        out.append({c: [ev[i][c] for _, _, i in rows] for c in columns})
    return out


def check(events: pa.Table, requests: pa.Table, columns: list[str], max_len: int, **kwargs) -> pa.Table:
    versioned = kwargs.get("visible_version", None)
    if versioned is None:
        versioned = "commit" in events.column_names and "version" in requests.column_names
    table = fat_rows(events, requests, columns, max_len, **kwargs)
    assert table.num_rows == requests.num_rows
    assert table.column_names == [*requests.column_names, *columns]
    assert table.select(requests.column_names).equals(requests)
    got = table.select(columns).to_pylist()
    assert got == brute_force(events, requests, columns, max_len, bool(versioned))
    for name in columns:
        assert table.schema.field(name).type == pa.list_(events.schema.field(name).type)
    return table


EVENTS = pa.table({
    "user_id": pa.array([1, 2, 1, 1, 1, 2, 1, 3], pa.int64()),
    "ts": pa.array([10, 10, 20, 20, 5, 30, 20, 7], pa.int64()),
    "item_id": pa.array([100, 200, 101, 102, 99, 201, 103, 300], pa.int64()),
    "action": pa.array([0, 1, 2, 3, 4, 5, 6, 7], pa.int8()),
    "commit": pa.array([1, 1, 1, 2, 2, 1, 1, 3], pa.int64()),
})


def test_hand_made_ties_are_ordered_by_row():
    requests = pa.table({"user_id": [1, 1, 1, 2, 4], "request_ts": [21, 20, 5, 100, 50], "label": [1, 0, 1, 0, 1]})
    plain = EVENTS.drop_columns(["commit"])
    table = check(plain, requests, ["item_id", "ts"], 3)
    assert table.column("item_id").to_pylist() == [[101, 102, 103], [99, 100], [], [200, 201], []]


def test_max_len_longer_than_any_history():
    requests = pa.table({"user_id": [1, 3], "request_ts": [1000, 8]})
    table = check(EVENTS.drop_columns(["commit"]), requests, ["item_id", "action"], 10_000)
    assert table.column("item_id").to_pylist() == [[99, 100, 101, 102, 103], [300]]


def test_version_filter_orders_ties_by_commit():
    requests = pa.table({"user_id": [1, 1, 1, 3, 3], "request_ts": [21, 21, 21, 8, 8], "version": [0, 1, 2, 2, 3]})
    table = check(EVENTS, requests, ["item_id"], 4)
    # at version 2, commit 2's event 102 ties with commit 1's 101 and 103 at ts 20: it comes after them
    assert table.column("item_id").to_pylist() == [[], [100, 101, 103], [100, 101, 103, 102], [], [300]]
    ignored = check(EVENTS, requests, ["item_id"], 4, visible_version=False)
    assert ignored.column("item_id").to_pylist()[0] == [100, 101, 102, 103]


def test_visible_version_true_needs_the_columns():
    requests = pa.table({"user_id": [1], "request_ts": [21]})
    with pytest.raises(ValueError, match="visible_version"):
        fat_rows(EVENTS, requests, ["item_id"], 4, visible_version=True)


def test_no_events_and_no_requests():
    empty_events = EVENTS.drop_columns(["commit"]).slice(0, 0)
    requests = pa.table({"user_id": [1, 2], "request_ts": [10, 20]})
    assert check(empty_events, requests, ["item_id"], 4).column("item_id").to_pylist() == [[], []]
    no_requests = requests.slice(0, 0)
    assert check(EVENTS.drop_columns(["commit"]), no_requests, ["item_id"], 4).num_rows == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"columns": ["nope"]}, "no column 'nope'"),
    ({"columns": ["item_id", "item_id"]}, "repeat or clash"),
    ({"max_len": 0}, "max_len"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"events": EVENTS, "requests": pa.table({"user_id": [1], "request_ts": [5]}),
                 "columns": ["item_id"], "max_len": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        fat_rows(**arguments)


def test_requests_keep_their_own_columns_and_clashes_are_refused():
    requests = pa.table({"user_id": [1], "request_ts": [5], "item_id": [7]})
    with pytest.raises(ValueError, match="clash"):
        fat_rows(EVENTS, requests, ["item_id"], 4)


def test_spread_out_times_use_time_ranks():
    # times 2**62 apart cannot be packed with the user into one int64 key
    events = pa.table({"user_id": [1, 2, 1, 2], "ts": [-(2**62), 2**62, 2**62, 0], "item_id": [1, 2, 3, 4]})
    requests = pa.table({"user_id": [1, 1, 2, 2], "request_ts": [2**63 - 1, 0, 1, -(2**63)]})
    table = check(events, requests, ["item_id", "ts"], 8)
    assert table.column("item_id").to_pylist() == [[1, 3], [1], [4], []]


def test_extreme_request_times():
    requests = pa.table({"user_id": [1, 1, 1, 2], "request_ts": [-(2**63), 2**63 - 1, 20, 2**63 - 1]})
    table = check(EVENTS.drop_columns(["commit"]), requests, ["item_id"], 8)
    assert table.column("item_id").to_pylist() == [[], [99, 100, 101, 102, 103], [99, 100], [200, 201]]
    at_the_end = pa.table({"user_id": [1, 1], "ts": [5, 2**63 - 1], "item_id": [1, 2]})
    requests = pa.table({"user_id": [1, 1], "request_ts": [2**63 - 1, 6]})
    assert check(at_the_end, requests, ["item_id"], 8).column("item_id").to_pylist() == [[1], [1]]


@st.composite
def logs(draw):
    n = draw(st.integers(0, 40))
    users = st.integers(0, 4)
    times = st.integers(0, 12)  # few distinct times: many ties
    events = pa.table({
        "user_id": pa.array(draw(st.lists(users, min_size=n, max_size=n)), pa.int64()),
        "ts": pa.array(draw(st.lists(times, min_size=n, max_size=n)), pa.int64()),
        "item_id": pa.array(list(range(n)), pa.int64()),
        "dwell": pa.array(draw(st.lists(st.floats(0, 10, width=32), min_size=n, max_size=n)), pa.float32()),
        "commit": pa.array(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)), pa.int32()),
    })
    m = draw(st.integers(0, 15))
    requests = pa.table({
        "user_id": pa.array(draw(st.lists(users, min_size=m, max_size=m)), pa.int64()),
        "request_ts": pa.array(draw(st.lists(st.integers(-1, 14), min_size=m, max_size=m)), pa.int64()),
        "version": pa.array(draw(st.lists(st.integers(0, 5), min_size=m, max_size=m)), pa.int64()),
    })
    return events, requests, draw(st.integers(1, 6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.booleans())
def test_matches_brute_force(log, versioned):
    events, requests, max_len = log
    check(events, requests, ["item_id", "dwell", "ts"], max_len, visible_version=versioned)


@settings(max_examples=30, deadline=None)
@given(logs(), st.integers(1, 7))
def test_chunks_equal_the_whole(log, chunk_rows):
    events, requests, max_len = log
    whole = fat_rows(events, requests, ["item_id"], max_len)
    chunks = list(iter_fat_rows(events, requests, ["item_id"], max_len, chunk_rows=chunk_rows))
    joined = pa.concat_tables(chunks) if chunks else whole.slice(0, 0)
    assert joined.equals(whole)


def test_parquet_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    events = pa.table({
        "user_id": rng.integers(0, 50, 5000), "ts": rng.integers(0, 1000, 5000),
        "item_id": rng.integers(0, 10**6, 5000), "action": rng.integers(0, 8, 5000).astype(np.int8),
    })
    requests = pa.table({"user_id": rng.integers(0, 60, 3000), "request_ts": rng.integers(0, 1100, 3000)})
    columns = ["item_id", "action", "ts"]
    table = fat_rows(events, requests, columns, 37)
    path = tmp_path / "fat.parquet"
    # several writes with small row groups: batches straddle row groups and arrive sliced
    size = write_fat_rows(iter_fat_rows(events, requests, columns, 37, chunk_rows=700), path, row_group_size=300)
    assert size == path.stat().st_size > 0
    rows = 0
    for offsets, values in read_fat_rows_batches(path, columns, batch_size=128):
        n = len(offsets) - 1
        assert offsets.dtype == np.int64 and offsets[0] == 0
        expected = table.slice(rows, n)
        for name in columns:
            lists = expected.column(name).to_pylist()
            assert len(values[name]) == offsets[-1] == sum(map(len, lists))
            assert [values[name][offsets[i]:offsets[i + 1]].tolist() for i in range(n)] == lists
        rows += n
    assert rows == table.num_rows


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
def test_jagged_columns_of_slices(list_type):
    batch = pa.record_batch({
        "a": pa.array([[1], [2, 3], [], [4, 5, 6], [7]], list_type(pa.int64())),
        "b": pa.array([[True], [False, True], [], [True, True, False], [False]], list_type(pa.bool_())),
    })
    for piece in (batch.slice(1, 3), pa.Table.from_batches([batch.slice(0, 2), batch.slice(2, 3)]).slice(1, 3)):
        offsets, values = jagged_columns(piece, ["a", "b"])
        assert offsets.dtype == np.int64 and offsets.tolist() == [0, 2, 2, 5]
        assert values["a"].tolist() == [2, 3, 4, 5, 6]
        assert values["b"].tolist() == [False, True, True, True, False]


def test_reader_refuses_lists_of_other_lengths(tmp_path):
    path = tmp_path / "odd.parquet"
    write_fat_rows(pa.table({"a": [[1, 2], [3]], "b": [[1], [2, 3]]}), path)
    with pytest.raises(ValueError, match="other lengths"):
        list(read_fat_rows_batches(path, ["a", "b"]))
    with pytest.raises(ValueError, match="no tables"):
        write_fat_rows(iter([]), tmp_path / "none.parquet")


def test_lateseq_rebuilds_what_the_oracle_builds(tmp_path):
    """Versioned ingestion with late arrivals: lateseq at each version equals the oracle."""
    import lateseq
    from lateseq.datasets import synthetic_events, synthetic_requests

    events = synthetic_events(60, mean_len=40, seed=3, span_s=20_000)
    ts = events.column("ts").to_numpy()
    rng = np.random.default_rng(0)
    # commit 1: older events; commit 2: the rest plus a random fifth of the older ones arriving late
    late = rng.random(len(ts)) < 0.2
    commit = np.where((ts < np.median(ts)) & ~late, 1, 2)
    schema = lateseq.Schema({"item_id": "int64", "action": "int8", "dwell": "float32"})
    store = lateseq.create(tmp_path / "store", schema)
    for c in (1, 2):
        store = store.commit(events.filter(pa.array(commit == c)))
    compacted = store.compact()
    requests = synthetic_requests(events, 400, seed=2)
    columns = ["item_id", "action", "ts"]
    versioned = events.append_column("commit", pa.array(commit))
    for version in (1, 2):
        examples = lateseq.log_examples(store.checkout(version), requests)
        oracle = fat_rows(versioned, requests.append_column("version", pa.array(np.full(400, version))),
                          columns, 16)
        for handle in (store, compacted):
            jagged = lateseq.materialize(handle, examples, lateseq.Projection(16, tuple(columns)))
            assert jagged.to_arrow().equals(oracle.select(columns))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.integers(1, 3), st.booleans())
def test_lateseq_matches_the_oracle_on_random_logs(log, commits, compact):
    """Random commits (late arrivals and ties across commits included), with or without compaction."""
    import tempfile

    import lateseq

    events, requests, max_len = log
    if events.num_rows == 0:
        return
    commit = np.minimum(events.column("commit").to_numpy(), commits)
    events = events.set_column(events.schema.get_field_index("commit"), "commit", pa.array(commit))
    columns = ["item_id", "dwell", "ts"]
    with tempfile.TemporaryDirectory() as tmp:
        store = lateseq.create(tmp + "/store", lateseq.Schema({"item_id": "int64", "dwell": "float32"}))
        for c in range(1, commits + 1):
            if (commit == c).any():
                store = store.commit(events.filter(pa.array(commit == c)).select(["user_id", "ts", *columns[:2]]))
        latest = store.compact() if compact else store
        for version in range(1, store.version + 1):
            asked = requests.drop_columns(["version"])
            examples = lateseq.log_examples(store.checkout(version), asked)
            # the oracle's commit numbers count commits made; store versions count non-empty ones
            made = np.unique(commit)[version - 1]
            oracle = fat_rows(events, asked.append_column("version", pa.array(np.full(len(asked), made))),
                              columns, max_len)
            jagged = lateseq.materialize(latest, examples, lateseq.Projection(max_len, tuple(columns)))
            assert jagged.to_arrow().to_pylist() == oracle.select(columns).to_pylist()
