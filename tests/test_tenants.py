"""Tenants (projections with a window, a filter and transforms) against the brute-force oracle.

A tenant's sequence is the newest ``max_len`` events of the pointer's visible history
that lie in its window and pass its filter (selection first, then length), oldest first,
with its transforms applied. ``materialize`` (one projection) and ``materialize_tenants``
(several in one pass) must both give exactly what ``Oracle.expected_projection`` says,
from stores in every shape: many commits per partition, late events, ties with and
without a tie-break column, arrival-bounded pointers, compaction "full" and "tiered".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import (
    NUMPY_TYPES,
    Oracle,
    Request,
    assert_batch_equal,
    oracle_requests,
    widened_pointers,
    window_ticks,
)

import lateseq
import lateseq._materialize
import lateseq._select
from lateseq import ChecksumMismatch, Filter, Projection, SchemaError
from lateseq._schema import coarser_unit_of

ARROW_TYPES = {name: pa.from_numpy_dtype(np.dtype(t)) for name, t in NUMPY_TYPES.items()}
INT64 = (-(2**63), 2**63 - 1)
WIDE = 2**61  # wide times stay within +-2**61, so request_ts - window (window <= 2**61) fits int64
AFTER_YEAR_3000_S = int(dt.datetime(3001, 1, 1, tzinfo=dt.UTC).timestamp())


# ---------------------------------------------------------------------- worlds


@dataclass
class World:
    columns: dict[str, str]
    tiebreak: str | None
    arrival: bool
    event_ids: bool
    time_unit: str | None
    partitions: int
    groups: dict[str, list[str]]
    steps: list  # ("commit", users, ts, payload) or ("compact", "full" | "tiered")
    users: list[int]
    ghost: int
    extra_ts: list[int]
    wide: bool
    seed: int

    def schema(self) -> lateseq.Schema:
        return lateseq.Schema(
            self.columns, tiebreak=self.tiebreak, partitions=self.partitions, feature_groups=self.groups,
            arrival_col="arr" if self.arrival else None, event_id_col="eid" if self.event_ids else None,
            time_unit=self.time_unit)


VALUES = {
    "f8": st.integers(-4, 7) | st.sampled_from([-128, 127, -1]),
    "fb": st.booleans(),
    "f64": st.integers(-4, 7) | st.sampled_from([INT64[0], INT64[1], 1 << 62, -(1 << 62)]),
    "tb": st.integers(-2, 2),
    "w": st.floats(width=32),
    "arr": st.integers(-3, 12),
    "eid": st.integers(0, 6),
}


@st.composite
def worlds(draw, max_commits: int = 6, max_rows: int = 10) -> World:
    columns = {"f8": "int8", "fb": "bool", "f64": "int64"}
    if draw(st.booleans()):
        columns["tb"] = "int16"
    if draw(st.booleans()):
        columns["w"] = "float32"
    arrival = draw(st.booleans())
    event_ids = arrival and draw(st.booleans())
    if arrival:
        columns["arr"] = "int64"
    if event_ids:
        columns["eid"] = "int64"
    names = draw(st.permutations(list(columns)))
    columns = {n: columns[n] for n in names}
    ints = [n for n in ("f8", "f64", "tb") if n in columns]
    tiebreak = draw(st.none() | st.sampled_from(ints))
    time_unit = draw(st.sampled_from([None, "s", "ms"]))
    groups = draw(st.sampled_from([{}, {"flags": ["f8", "fb"], "ids": ["f64", "ts"]}]))
    users = draw(st.lists(st.integers(-3, 3) | st.integers(*INT64), min_size=1, max_size=3, unique=True))
    ghost = draw(st.integers(*INT64).filter(lambda u: u not in users))
    wide = draw(st.integers(0, 4)) == 0
    # ordered: each commit's times follow the last one's (its first may tie the last's last),
    # so an uncompacted history is slices of segments in order, not a merge of late events
    ordered = not wide and draw(st.booleans())
    # (a store with a time unit refuses integer times past the year 3000 in it, s47A)
    top = WIDE if time_unit is None else min(WIDE, AFTER_YEAR_3000_S * {"s": 1, "ms": 1000}[time_unit] - 2)
    # nor times in 1990-2100 counted in seconds into a store in ms (warned of as likely
    # seconds: a commit of only such times raised as a warning, hypothesis found)
    ts_values = (st.integers(-4, 8) | st.integers(-WIDE, top).filter(
        lambda t: time_unit != "ms" or coarser_unit_of(t, t, "ms") is None)) if wide else st.integers(-4, 8)
    steps = []
    for k in range(draw(st.integers(1, max_commits))):
        rows = draw(st.integers(1, max_rows))
        payload = {n: draw(st.lists(VALUES[n], min_size=rows, max_size=rows)) for n in columns}
        times = st.integers(6 * k, 6 * k + 6) if ordered else ts_values
        steps.append(("commit", draw(st.lists(st.sampled_from(users), min_size=rows, max_size=rows)),
                      draw(st.lists(times, min_size=rows, max_size=rows)), payload))
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            steps.append(("compact", draw(st.sampled_from(["full", "tiered"]))))
    extra_ts = draw(st.lists(ts_values, min_size=1, max_size=2))
    return World(columns, tiebreak, arrival, event_ids, time_unit, draw(st.sampled_from([1, 1, 2, 3])), groups,
                 steps, users, ghost, extra_ts, wide, draw(st.integers(0, 2**32 - 1)))


def event_table(columns: dict[str, str], users, ts, payload) -> pa.Table:
    data = {"user_id": pa.array(users, pa.int64()), "ts": pa.array(ts, pa.int64())}
    for name, dtype in columns.items():
        data[name] = pa.array(np.array(payload[name], dtype=NUMPY_TYPES[dtype]), ARROW_TYPES[dtype])
    return pa.table(data)


def requests_for(oracle: Oracle, users: list[int], extra_ts: list[int]) -> pa.Table:
    """Requests at drawn times, at each event's time (the event is then out), and one
    before and after it: the edges of every window."""
    rows_user, rows_ts = [], []
    for user in users:
        times = set(extra_ts)
        for e in oracle.events:
            if e.user == user:
                times.update(t for t in (e.ts - 1, e.ts, e.ts + 1) if INT64[0] <= t <= INT64[1])
        rows_user += [user] * len(times)
        rows_ts += sorted(times)
    return pa.table({"user_id": pa.array(rows_user, pa.int64()), "request_ts": pa.array(rows_ts, pa.int64())})



def replay(world: World, path: Path) -> tuple[lateseq.Store, Oracle, list[pa.Table]]:
    """The world's steps into a store and the oracle, pointers logged after each step."""
    store = lateseq.create(path, world.schema())
    oracle = Oracle.for_schema(store.schema)
    logs = []
    for step in world.steps:
        if step[0] == "commit":
            _, users, ts, payload = step
            oracle.commit(users, ts, payload)
            store = store.commit(event_table(world.columns, users, ts, payload))
        else:
            compacted = store.compact(step[1], fanout=2)
            if compacted.version == store.version:
                continue
            oracle.compact()
            store = compacted
        assert store.version == oracle.version
        examples = lateseq.log_examples(store, requests_for(oracle, [*world.users, world.ghost], world.extra_ts))
        for r, length, checksum in zip(oracle_requests(examples), examples.column("uih_length").to_pylist(),
                                       examples.column("uih_checksum").to_pylist(), strict=True):
            assert (length, checksum) == oracle.pointer(r), f"pointer {r} at version {store.version}"
        logs.append(examples)
    return store, oracle, logs


# ---------------------------------------------------------------------- tenants


def windows(time_unit: str | None):
    small = st.integers(1, 12)
    if time_unit is None:
        return small | st.integers(1, WIDE)
    if time_unit == "s":
        return small | st.sampled_from(["1s", "2s", " 3 s", "5s", "1m", "1h", "90d", "4000ms", "2000000us",
                                        "1000000000ns"]) | st.builds(lambda k: dt.timedelta(seconds=k), small)
    return small | st.sampled_from(["1ms", "2ms", "3ms", "7ms", "1s", "2000us", "5000000ns", "1m"]) | st.builds(
        lambda k: dt.timedelta(milliseconds=k), small)


INT_ISIN = st.lists(st.integers(-5, 8) | st.sampled_from([-128, 127, INT64[0], INT64[1], 2**63, INT64[0] - 1]),
                    min_size=1, max_size=3)
MASKS = [0x80, 0xFF, 1 << 62, 1 << 63, (1 << 63) | 1, (1 << 64) - 1]  # masks of up to 64 bits
MASKS_8 = [0x80, 0xFF, 0x81]  # an int8 column's 8 bits, its sign bit included
FILTERS = st.one_of(  # isin lists mix values a column cannot hold (they match nothing) with one it can
    st.builds(Filter, st.just("f8"), isin=INT_ISIN.filter(lambda values: any(-128 <= v <= 127 for v in values))),
    st.builds(Filter, st.just("f64"), isin=INT_ISIN.filter(lambda values: any(INT64[0] <= v <= INT64[1]
                                                                              for v in values))),
    st.builds(Filter, st.sampled_from(["f8", "f64"]), any_bits=st.integers(1, 15) | st.sampled_from(MASKS_8)),
    st.builds(Filter, st.sampled_from(["f8", "f64"]), all_bits=st.integers(1, 7) | st.sampled_from(MASKS_8)),
    st.builds(Filter, st.just("f64"), any_bits=st.sampled_from(MASKS)),
    st.builds(Filter, st.just("f64"), all_bits=st.sampled_from(MASKS)),
    st.builds(Filter, st.just("fb"), isin=st.lists(st.integers(0, 1) | st.booleans(), min_size=1, max_size=2)),
    st.builds(Filter, st.just("fb"), any_bits=st.just(1)),
    st.builds(Filter, st.just("fb"), all_bits=st.just(1)),
)


@st.composite
def projections(draw, world: World, max_len: int = 70) -> Projection:
    selectable = ["ts", *world.columns]
    columns = draw(st.lists(st.sampled_from(selectable), unique=True, max_size=4))
    groups = draw(st.lists(st.sampled_from(sorted(world.groups)), unique=True, max_size=2)) if world.groups else []
    transforms = {}
    how = draw(st.sampled_from([None, None, "age"] + (["age_s"] if world.time_unit else [])))
    if how is not None:
        if "ts" not in columns and not (groups and "ids" in groups):
            columns.append("ts")
        transforms = {"ts": how}
    # most tenants select (a window, a filter or both): those go through the selection kernel
    shape = draw(st.sampled_from(["window", "window", "filter", "both", "both", "neither"]))
    window = draw(windows(world.time_unit)) if shape in ("window", "both") else None
    where = draw(FILTERS) if shape in ("filter", "both") else None
    return Projection(draw(st.sampled_from([1, 2, 3]) | st.integers(1, max_len)), tuple(columns), tuple(groups),
                      window, where, transforms)


def check(handle: lateseq.Store, examples, requests: list[Request], oracle: Oracle,
          tenants: dict[str, Projection], context: str, chunk: int | None = None) -> None:
    """Each tenant alone (``materialize``) and all at once (``materialize_tenants``)
    equal the oracle; every row verifies. ``chunk``: the selection's runs, and the events
    merged at once, held a few at a time."""
    expected = {name: oracle.expected_projection(requests, p) for name, p in tenants.items()}
    patch = contextlib.ExitStack()
    if chunk:
        patch.enter_context(mock.patch.object(lateseq._select, "_CHUNK_RUNS", chunk))
        patch.enter_context(mock.patch.object(lateseq._gather, "MERGE_BUDGET", chunk))
    with patch:
        together = lateseq.materialize_tenants(handle, examples, tenants)
        assert list(together) == list(tenants)
        for name, projection in tenants.items():
            where = f"{context} tenant {name}: {projection}"
            assert_batch_equal(together[name], *expected[name], f"materialize_tenants {where}")
            assert not together[name].mismatched.any()
            # each tenant's own: changing one tenant's flags in place changed every tenant's (s45B)
            assert not any(np.shares_memory(together[name].mismatched, together[other].mismatched)
                           for other in tenants if other != name)
            alone = lateseq.materialize(handle, examples, projection)
            assert_batch_equal(alone, *expected[name], f"materialize {where}")
            assert not alone.mismatched.any()


TENANT_NAMES = ["a", "b.2", "c-3", "d_4"]


def run_world(world: World, data, root: Path) -> None:
    store, oracle, logs = replay(world, root / "store")
    rng = np.random.default_rng(world.seed)
    count = data.draw(st.integers(2, 4), label="tenants")
    tenants = {TENANT_NAMES[i]: data.draw(projections(world), label=TENANT_NAMES[i]) for i in range(count)}
    chunk = data.draw(st.sampled_from([None, None, 1, 3]), label="chunk")
    final = store.version
    handles = {final: store}
    # an older handle, made by a commit (so as uncompacted as the world gets)
    older = int(rng.choice([v for v, what in oracle.operations.items() if what == "commit"]))
    handles.setdefault(older, store.checkout(older))
    for hv, handle in sorted(handles.items()):
        usable = [log for log in logs if log.column("uih_version")[0].as_py() <= hv]
        examples = pa.concat_tables(usable)
        examples = examples.take(rng.permutation(len(examples)))
        check(handle, examples, oracle_requests(examples), oracle, tenants,
              f"handle v{hv} of {final}, partitions={world.partitions} tiebreak={world.tiebreak}", chunk)
    if world.arrival:  # pointers that also see later versions' events that arrived before a limit
        requests, pointers = widened_pointers(oracle, pa.concat_tables(logs), rng, final)
        check(store, pointers, requests, oracle, tenants, "arrival-bounded pointers", chunk)


@given(worlds(), st.data())
@settings(max_examples=60, deadline=None)
def test_tenants_equal_oracle(world, data):
    with tempfile.TemporaryDirectory() as root:
        run_world(world, data, Path(root))


@pytest.mark.slow
@given(worlds(max_commits=8, max_rows=30), st.data())
@settings(max_examples=400, deadline=None)
def test_tenants_equal_oracle_thoroughly(world, data):
    with tempfile.TemporaryDirectory() as root:
        run_world(world, data, Path(root))


# ---------------------------------------------------------------------- long histories


LONG_TENANTS = {
    "recent": Projection(200, ("ts", "f8"), window="500ms", transforms={"ts": "age"}),
    "clicks": Projection(3000, ("f64", "fb"), where=Filter("fb", isin=[1])),
    "flags": Projection(50, ("ts", "tb"), window=2000, where=Filter("f8", any_bits=0x81)),
    "everything": Projection(5000),
    "one": Projection(1, ("ts",), window="1s", where=Filter("f64", all_bits=3), transforms={"ts": "age_s"}),
    "tail": Projection(7, ("ts", "f8"), where=Filter("f8", isin=[-1, 2, 5])),
}


@pytest.mark.parametrize("shape", ["uncompacted", "full", "tiered"])
def test_long_histories(tmp_path, shape):
    """Users with up to thousands of events over four commits (late events, many ties with
    a tie-break column), two partitions, pointers logged at every version, an unknown user."""
    rng = np.random.default_rng(11)
    schema = lateseq.Schema({"f8": "int8", "fb": "bool", "f64": "int64", "tb": "int16", "arr": "int64"},
                            tiebreak="tb", partitions=2, arrival_col="arr", time_unit="ms")
    store = lateseq.create(tmp_path / "store", schema)
    oracle = Oracle.for_schema(schema)
    logs = []
    for size in (1500, 700, 300, 120):
        users = rng.choice([42, 42, 42, 7, -3], size)
        payload = {"f8": rng.integers(-128, 128, size).tolist(), "fb": (rng.random(size) < 0.3).tolist(),
                   "f64": rng.integers(-8, 8, size).tolist(), "tb": rng.integers(0, 3, size).tolist(),
                   "arr": rng.integers(0, 100, size).tolist()}
        ts = rng.integers(0, 6000, size).tolist()
        oracle.commit(users.tolist(), ts, payload)
        store = store.commit(event_table(schema.columns, users.tolist(), ts, payload))
        if shape != "uncompacted":
            compacted = store.compact(shape, fanout=2)
            if compacted.version != store.version:
                oracle.compact()
                store = compacted
        requests = pa.table({"user_id": pa.array([42] * 12 + [7] * 4 + [-3, 99], pa.int64()),
                             "request_ts": pa.array(rng.integers(-10, 6100, 18), pa.int64())})
        logs.append(lateseq.log_examples(store, requests))
    examples = pa.concat_tables(logs)
    requests = oracle_requests(examples)
    assert max(oracle.pointer(r)[0] for r in requests) > 1000
    check(store, examples, requests, oracle, LONG_TENANTS, f"long {shape}")
    check(store, examples, requests, oracle, LONG_TENANTS, f"long {shape}, small chunks", chunk=64)


# ---------------------------------------------------------------------- fixed cases


def flags_store(make_store, shape: str) -> tuple[lateseq.Store, Oracle]:
    """User 1: events at times 10, 20, ..., 80 with flags 1 0 1 0 0 0 0 0 (only the oldest
    pass ``flag == 1``), in two commits (the second late: times 15 and 25, flag 0)."""
    store = make_store({"flag": "int8", "item": "int64", "clicked": "bool"}, time_unit="s")
    oracle = Oracle.for_schema(store.schema)
    first = ([1] * 8 + [2], [10, 20, 30, 40, 50, 60, 70, 80, 10],
             {"flag": [1, 0, 1, 0, 0, 0, 0, 0, 1], "item": [1, 2, 3, 4, 5, 6, 7, 8, 9],
              "clicked": [True, False, False, True, False, True, False, False, True]})
    second = ([1, 1], [15, 25], {"flag": [0, 0], "item": [15, 25], "clicked": [True, True]})
    for users, ts, payload in (first, second):
        oracle.commit(users, ts, payload)
        store = store.commit(event_table(store.schema.columns, users, ts, payload))
    if shape != "uncompacted":
        store = store.compact(shape, fanout=2)
        oracle.compact()
    return store, oracle


SHAPES = ["uncompacted", "full", "tiered"]


@pytest.mark.parametrize("shape", SHAPES)
def test_filter_and_window_apply_before_the_length(make_store, shape):
    store, oracle = flags_store(make_store, shape)
    examples = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [81]}))
    tenants = {
        # the newest two with flag 1 are items 1 and 3; the newest two overall (7, 8) have none
        "flagged": Projection(2, ("item",), where=Filter("flag", isin=[1])),
        # window 60 from 81: times >= 21, so 25, 30 ... 80; the newest three are 60, 70, 80
        "window": Projection(3, ("item",), window=60),
        # in the window and clicked: 25, 40, 60; the newest two are 40 and 60
        "both": Projection(2, ("item",), window="60s", where=Filter("clicked", isin=[1])),
        # the newest clicked one at most 61 s ago: 60 (20 s before the request)
        "age": Projection(1, ("ts", "item"), window=dt.timedelta(seconds=61), where=Filter("clicked", any_bits=1),
                          transforms={"ts": "age_s"}),
        # a minute is 60 s: times >= 21 again, all of them this time
        "minute": Projection(100, ("item",), window="1m"),
    }
    batches = lateseq.materialize_tenants(store, examples, tenants)
    assert batches["flagged"].values["item"].tolist() == [1, 3]
    assert batches["window"].values["item"].tolist() == [6, 7, 8]
    assert batches["both"].values["item"].tolist() == [4, 6]
    assert batches["age"].values["item"].tolist() == [6]
    assert batches["age"].values["ts"].tolist() == [21]
    assert batches["minute"].values["item"].tolist() == [25, 3, 4, 5, 6, 7, 8]
    check(store, examples, oracle_requests(examples), oracle, tenants, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_window_edges(make_store, shape):
    """An event exactly window before the request is in; one at the request is out."""
    store, oracle = flags_store(make_store, shape)
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 1, 1], "request_ts": [80, 80, 30]}))
    for window, expected in ((10, [[7], [7], [2, 25]]), (9, [[], [], [25]]), (5, [[], [], [25]]), (4, [[], [], []]),
                             (1, [[], [], []]), (60, [[2, 25, 3, 4, 5, 6, 7]] * 2 + [[1, 15, 2, 25]])):
        projection = Projection(100, ("item",), window=window)
        batch = lateseq.materialize(store, examples, projection)
        assert [batch.values["item"][a:b].tolist() for a, b in zip(batch.offsets, batch.offsets[1:])] == expected, \
            window
        check(store, examples, oracle_requests(examples), oracle, {"w": projection}, f"{shape} window {window}")


@pytest.mark.parametrize("shape", SHAPES)
def test_edge_cases(make_store, shape):
    store, oracle = flags_store(make_store, shape)
    requests = pa.table({"user_id": [1, 1, 2, 3, -(2**63), 1], "request_ts": [84, 10, 12, 84, 84, -(2**63)]})
    examples = lateseq.log_examples(store, requests)
    assert examples.column("uih_length").to_pylist() == [10, 0, 1, 0, 0, 0]
    tenants = {
        "nothing_passes": Projection(5, ("item", "ts"), where=Filter("flag", isin=[7])),
        "one": Projection(1, ("item",), where=Filter("clicked", all_bits=1), window=3600),
        "tiny_window": Projection(5, ("item",), window=1),  # smaller than any gap
        "huge_window": Projection(3, ("item", "ts"), window=2**62, transforms={"ts": "age"}),
        "plain": Projection(4, ("item", "clicked")),
    }
    requests = oracle_requests(examples)
    check(store, examples, requests, oracle, tenants, shape)
    batches = lateseq.materialize_tenants(store, examples, tenants)
    assert batches["nothing_passes"].offsets.tolist() == [0] * 7
    assert batches["one"].values["item"].tolist() == [6, 9]
    assert batches["tiny_window"].offsets.tolist() == [0] * 7
    assert batches["huge_window"].values["item"].tolist() == [6, 7, 8, 9]
    assert batches["huge_window"].values["ts"].tolist() == [24, 14, 4, 2]
    # every pointer with an empty history, and an empty log
    for log in (examples.take([1, 3, 4, 5]), examples.slice(0, 0)):
        batches = lateseq.materialize_tenants(store, log, tenants)
        for name, batch in batches.items():
            assert batch.offsets.tolist() == [0] * (len(log) + 1), name
            expected = oracle.expected_projection(oracle_requests(log), tenants[name])
            assert_batch_equal(batch, *expected, name)
            assert {n: v.dtype for n, v in batch.values.items()} == {n: v.dtype for n, v in expected[1].items()}


def test_a_tenant_alone_equals_itself_among_others(small_store):
    """Two tenants with the same projection, and one projection under two names, give
    equal batches that share no arrays (transforming one cannot change another)."""
    examples = lateseq.log_examples(small_store, pa.table({"user_id": [1, 2], "request_ts": [31, 31]}))
    p = Projection(3, ("ts", "item"), window=16, transforms={"ts": "age"})
    batches = lateseq.materialize_tenants(small_store, examples, {"x": p, "y": p, "z": Projection(3, ("ts", "item"))})
    assert batches["x"].values["ts"].tolist() == [16, 11, 1, 16]
    assert batches["y"].values["ts"].tolist() == batches["x"].values["ts"].tolist()
    assert batches["z"].values["ts"].tolist() == [15, 20, 30, 10, 15]
    assert not np.shares_memory(batches["x"].values["ts"], batches["y"].values["ts"])
    assert lateseq.materialize(small_store, examples, p).values["ts"].tolist() == [16, 11, 1, 16]


def test_a_window_merges_no_deeper_than_the_tenants_take(make_store):
    """Late events in uncompacted segments are merged event by event; a tenant with a
    window (no filter) takes only the newest of a history, so only those are merged, not
    all of it (a stranger's 400 daily commits: 4.6x slower than without the window)."""
    store = make_store({"item": "int64"})
    rng = np.random.default_rng(3)
    for day in range(12):  # each day's commit holds events up to 10 days late
        ts = day * 100 + rng.integers(-1000, 100, 60)
        store = store.commit(pa.table({"user_id": rng.integers(1, 4, 60), "ts": ts, "item": rng.integers(0, 99, 60)}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 2, 3], "request_ts": [1150, 1150, 600]}))
    handle = lateseq.open(store.path, merged_reads=False)
    merged = []
    real = lateseq._select.merge_runs

    def counted(store, located, w, rows, visibility, offsets):
        merged.append(int(offsets[-1]))
        return real(store, located, w, rows, visibility, offsets)

    windowed = Projection(5, ("item",), window=10**6)  # every event is in it: the plain read's output
    filtered = Projection(5, ("item",), where=Filter("item", isin=list(range(99))))
    plain = lateseq.materialize(handle, examples, Projection(5, ("item",)))
    with mock.patch.object(lateseq._select, "merge_runs", counted):
        assert not lateseq.materialize(handle, examples, windowed).rows_differ(plain).any()
        assert sum(merged) <= 3 * 5 and sum(merged) > 0
        merged.clear()
        assert not lateseq.materialize(handle, examples, filtered).rows_differ(plain).any()
        assert sum(merged) > 3 * 5  # a filter's newest may lie anywhere: the whole history


@pytest.mark.parametrize("where", [None, Filter("item", isin=list(range(0, 99, 2)))])
def test_a_short_window_without_a_length_limit_merges_only_its_rows(make_store, where):
    """A window of the last days with no length limit (or with a filter) merged the whole
    history of a never-compacted store with late events, to keep the few events of its
    days: 4.5 s for one 4M-event user's 20 pointers where a compacted store took 1 ms (a
    stranger's). A merge now gives no more than the window's rows."""
    store = make_store({"item": "int64"})
    rng = np.random.default_rng(5)
    for day in range(12):  # each day's commit holds events up to 10 days late
        ts = day * 100 + rng.integers(-1000, 100, 60)
        store = store.commit(pa.table({"user_id": rng.integers(1, 4, 60), "ts": ts, "item": rng.integers(0, 99, 60)}))
    requests = [1150, 1150, 600, 1101]
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 2, 3, 1], "request_ts": requests}))
    handle = lateseq.open(store.path, merged_reads=False)
    whole = lateseq.materialize(handle, examples, Projection(10**9, ("item", "ts")))
    merged = []
    real = lateseq._select.merge_runs

    def counted(store, located, w, rows, visibility, offsets):
        merged.append(int(offsets[-1]))
        return real(store, located, w, rows, visibility, offsets)

    for window in (150, 1, 10**6):
        merged.clear()
        with mock.patch.object(lateseq._select, "merge_runs", counted):
            got = lateseq.materialize(handle, examples, Projection(10**9, ("item", "ts"), window=window, where=where))
        in_window = 0
        for row, request in enumerate(requests):
            lo, hi = whole.offsets[row], whole.offsets[row + 1]
            ts, item = whole.values["ts"][lo:hi], whole.values["item"][lo:hi]
            keep = (ts >= request - window) & (np.isin(item, where.isin) if where else True)
            in_window += int((ts >= request - window).sum())
            a, b = got.offsets[row], got.offsets[row + 1]
            assert got.values["item"][a:b].tolist() == item[keep].tolist()
            assert got.values["ts"][a:b].tolist() == ts[keep].tolist()
        assert 0 < sum(merged) or in_window == 0
        if window < 10**6:  # late rows of newer versions in the windows are counted too: a bound, not the count
            assert sum(merged) <= in_window < whole.offsets[-1], (sum(merged), in_window, whole.offsets[-1])


WINDOWS = ["90d", "12h", "30m", "45s", "500ms", "1500ms", "7us", "2000us", "3ns", " 2 d ", "1m", "1s", "1ms",
           dt.timedelta(days=1, seconds=3), dt.timedelta(milliseconds=250), dt.timedelta(microseconds=7), 1, 10**12]


@pytest.mark.parametrize("time_unit", ["s", "ms", "us", "ns", None])
@pytest.mark.parametrize("window", WINDOWS, ids=repr)
def test_window_conversion(time_unit, window):
    """A window in the store's unit, exactly; finer than that unit (or with a unit, on a
    store of plain integers): a SchemaError naming the window."""
    schema = lateseq.Schema({"flag": "int8"}, time_unit=time_unit)
    projection = Projection(3, window=window)
    try:
        expected = window_ticks(window, time_unit)
    except AssertionError:  # not a whole number of the store's unit, or no unit to convert to
        with pytest.raises(SchemaError, match="window"):
            projection.window_in(schema)
        assert lateseq.check_tenants({"t": projection}, schema)[0].startswith("tenant 't': window")
        return
    assert projection.window_in(schema) == expected
    assert lateseq.check_tenants({"t": projection}, schema) == []


NUMPY_AND_PANDAS_WINDOWS = [  # (window, its length in ns), the length worked out by hand
    (np.timedelta64(1, "D"), 86_400 * 10**9), (np.timedelta64(86_400 * 10**9, "ns"), 86_400 * 10**9),
    (np.timedelta64(2, "h"), 7_200 * 10**9), (np.timedelta64(3, "W"), 21 * 86_400 * 10**9),
    (np.timedelta64(250, "ms"), 250 * 10**6), (pd.Timedelta(1500, unit="ns"), 1500), (pd.Timedelta(1, unit="ns"), 1),
    (pd.Timedelta(days=1, nanoseconds=7), 86_400 * 10**9 + 7), (pd.Timedelta("36h"), 36 * 3_600 * 10**9)]


@pytest.mark.parametrize("time_unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize(("window", "ns"), NUMPY_AND_PANDAS_WINDOWS, ids=repr)
def test_numpy_and_pandas_windows_keep_their_length(time_unit, window, ns):
    """A numpy timedelta64 counts as an integer and was read as that many store ticks (a
    day in ns: 86,400,000,000,000 seconds); a pandas Timedelta's nanoseconds were dropped."""
    schema = lateseq.Schema({"flag": "int8"}, time_unit=time_unit)
    tick = 10 ** (9 - 3 * ["s", "ms", "us", "ns"].index(time_unit))
    projection = Projection(3, window=window)
    if ns % tick:
        with pytest.raises(SchemaError, match="finer than the store's time unit"):
            projection.window_in(schema)
    else:
        assert projection.window_in(schema) == ns // tick


@pytest.mark.parametrize("window", [np.timedelta64(1, "M"), np.timedelta64(1, "Y"), np.timedelta64(5),
                                    np.timedelta64("NaT"), np.timedelta64(-1, "D"), pd.Timedelta(0),
                                    "٣d", "９０d", "3w"], ids=repr)  # digits other than ASCII's were taken (s45B)
def test_timedelta64_windows_without_a_fixed_positive_length_are_refused(window):
    with pytest.raises(SchemaError, match="window"):
        Projection(3, window=window)


# ---------------------------------------------------------------------- times at the ends of int64


def test_window_reaching_below_the_smallest_time(make_store):
    """request_ts - window below -2**63: every visible event is in the window (the
    contract compares numbers, not wrapped int64s)."""
    store = make_store({"flag": "int8"})
    low = INT64[0]
    store = store.commit(pa.table({"user_id": [1, 1, 1], "ts": [low, low + 1, low + 3],
                                   "flag": pa.array([1, 1, 1], pa.int8())}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [low + 5]}))
    batch = lateseq.materialize(store, examples, Projection(10, ("ts",), window=10))
    assert batch.values["ts"].tolist() == [low, low + 1, low + 3]


@pytest.mark.parametrize("time_unit", ["s", "ms", "us", "ns"])
def test_ages_in_seconds_are_exact_where_the_age_in_ticks_is_past_int64(make_store, time_unit):
    """An event at pandas' smallest time (an 'unknown time' placeholder) read by a request
    of 2024 in a store of nanoseconds: the age in seconds fits int64, the age in ns does not,
    and it was refused as an overflow (s34A)."""
    store = make_store({"flag": "int8"}, time_unit=time_unit)
    per = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[time_unit]
    low, high = INT64
    # the newest time a store with a unit takes: the year 3000's last (a later one is a finer unit's, s47A)
    high = min(high, AFTER_YEAR_3000_S * per - 1)
    ts = [low, low + 1, low + per - 1, -per - 1, -1, 0, 1, high - per - 3]
    store = store.commit(pa.table({"user_id": [1] * len(ts), "ts": ts, "flag": pa.array([1] * len(ts), pa.int8())}))
    requests = [low + per, -1, 0, 5, high]
    examples = lateseq.log_examples(store, pa.table({"user_id": [1] * len(requests), "request_ts": requests}))
    projection = Projection(20, ("ts",), transforms={"ts": "age_s"})
    want = [[(request - t) // per for t in sorted(ts) if t < request] for request in requests]
    if per == 1:  # ages in seconds are the ages in ticks: some are past int64
        with pytest.raises(lateseq.TransformOverflow, match="does not fit int64"):
            lateseq.materialize(store, examples, projection)
        return
    batch = lateseq.materialize(store, examples, projection)
    assert [batch.values["ts"][a:b].tolist() for a, b in zip(batch.offsets, batch.offsets[1:])] == want


@pytest.mark.parametrize("window, time_unit", [
    (2**62, None), (2**63 - 1, None), (2**63, None), (2**63 + 5, None), (2**64 - 1, None), (2**64, None),
    (10**30, None),
    ("100000d", "ns"),  # 8.64e18 ns: fits int64
    ("200000d", "ns"),  # 1.7e19 ns: more than int64 holds, still a window like any other
])
def test_windows_as_wide_as_int64_and_wider(make_store, window, time_unit):
    """Events at the smallest times, requests from the smallest time to the largest: each
    keeps exactly the events at or after request_ts - window (no wrapping, no clamping)."""
    store = make_store({"flag": "int8"}, time_unit=time_unit)
    oracle = Oracle.for_schema(store.schema)
    low = INT64[0]
    users, ts, payload = [1] * 5, [low, low + 1, low + 6, -20, 3], {"flag": [1] * 5}
    oracle.commit(users, ts, payload)
    store = store.commit(event_table(store.schema.columns, users, ts, payload))
    requests = [low, low + 2, -10, 0, 5, INT64[1]]
    examples = lateseq.log_examples(store, pa.table({"user_id": [1] * len(requests), "request_ts": requests}))
    projection = Projection(10, ("ts",), window=window)
    ticks = window_ticks(window, time_unit)
    expected = [sorted(t for t in ts if request - ticks <= t < request) for request in requests]
    batch = lateseq.materialize(store, examples, projection)
    assert [batch.values["ts"][a:b].tolist() for a, b in zip(batch.offsets, batch.offsets[1:])] == expected
    check(store, examples, oracle_requests(examples), oracle, {"wide": projection}, f"window {window!r}")


@pytest.mark.parametrize("where, expected", [
    # any_bits = 1 << 63 is a positive mask: it keeps the values with bit 63 set (the negative ones)
    (Filter("flags", any_bits=1 << 63), [-5, INT64[0]]),
    (Filter("flags", all_bits=(1 << 63) | 1), [-5]),
    # the same masks as TOML writes them (its integers are int64): two's complement (s52A)
    (Filter("flags", any_bits=-(1 << 63)), [-5, INT64[0]]),
    (Filter("flags", all_bits=-(1 << 63) + 1), [-5]),
    (Filter("flags", any_bits=-1), [-5, 5, INT64[0]]),
    # on an int8 column, -4 is its bits there, 0xfc: -4 and -1 have them all, 4 does not (flags of those rows)
    (Filter("small", all_bits=-4), [-5, 5]),
    # a value no int64 holds matches nothing; the others still match
    (Filter("flags", isin=[2**63, 5]), [5]),
])
def test_filter_values_at_the_ends_of_int64(make_store, where, expected):
    store = make_store({"flags": "int64", "small": "int8"})
    store = store.commit(pa.table({"user_id": [1, 1, 1], "ts": [1, 2, 3], "flags": [-5, 5, INT64[0]],
                                   "small": pa.array([-4, -1, 4], pa.int8())}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [4]}))
    batch = lateseq.materialize(store, examples, Projection(10, ("flags",), where=where))
    assert batch.values["flags"].tolist() == expected


def test_a_toml_config_writes_bit_63_as_a_negative_int64(tmp_path):
    """0x8000000000000000 is past TOML's int64 range (a spec-following parser refuses the
    file); -9223372036854775808, the spelling TOML allows, was refused (s52A)."""
    config = tmp_path / "t.toml"
    config.write_text('[tenants.top]\nmax_len = 5\nwhere = { column = "flags", any_bits = -9223372036854775808 }\n')
    schema = lateseq.Schema({"flags": "int64"})
    assert lateseq.load_tenants(config, schema)["top"].where == Filter("flags", any_bits=1 << 63)
    with pytest.raises(lateseq.SchemaError, match="a negative int64 for its two's-complement bits"):
        Filter("flags", any_bits=-(1 << 63) - 1)
    with pytest.raises(lateseq.SchemaError, match="mask of 1 to 64 bits"):
        Filter("flags", all_bits=0)


# ---------------------------------------------------------------------- verification


VERIFIED_TENANTS = {
    "window": Projection(2, ("item",), window=30),
    "filter": Projection(2, ("item", "ts"), where=Filter("flag", isin=[1])),
    "keeps_nothing": Projection(5, ("item",), where=Filter("flag", any_bits=64)),
    "all": Projection(1, ("ts",), window="40s", where=Filter("clicked", all_bits=1), transforms={"ts": "age_s"}),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_tampered_pointers_raise_or_flag_for_every_tenant(make_store, shape):
    store, oracle = flags_store(make_store, shape)
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 1, 2, 3], "request_ts": [81, 50, 81, 81]}))
    checksum = examples.column("uih_checksum").to_numpy().copy()
    checksum[1] += np.uint32(1)
    length = examples.column("uih_length").to_numpy().copy()
    length[3] += 1  # a user with no events at all, whose pointer claims one
    tampered = examples.set_column(4, "uih_checksum", pa.array(checksum)).set_column(
        3, "uih_length", pa.array(length))
    for name, projection in VERIFIED_TENANTS.items():
        with pytest.raises(ChecksumMismatch) as info:
            lateseq.materialize(store, tampered, projection)
        assert info.value.rows == [1, 3], name
        flagged = lateseq.materialize(store, tampered, projection, on_mismatch="flag")
        assert flagged.mismatched.tolist() == [False, True, False, True], name
        # the rows are still rebuilt from the store (flagging drops nothing by itself)
        assert_batch_equal(flagged, *oracle.expected_projection(oracle_requests(examples), projection), name)
        unchecked = lateseq.materialize(store, tampered, projection, verify=False)
        assert not unchecked.mismatched.any()
    with pytest.raises(ChecksumMismatch) as info:
        lateseq.materialize_tenants(store, tampered, VERIFIED_TENANTS)
    assert info.value.rows == [1, 3]
    batches = lateseq.materialize_tenants(store, tampered, VERIFIED_TENANTS, on_mismatch="flag")
    for name, batch in batches.items():
        assert batch.mismatched.tolist() == [False, True, False, True], name


@pytest.mark.parametrize("shape", SHAPES)
def test_pointers_from_another_store_state_do_not_verify(make_store, shape):
    """A log made on a store that held one more event for user 1 (a late one, outside
    every tenant's window and filter): its rows of user 1 fail, whatever a tenant keeps."""
    store, oracle = flags_store(make_store, shape)
    other = make_store(dict(store.schema.columns), time_unit="s")
    for e_users, e_ts, e_payload in (
            ([1] * 8 + [2], [10, 20, 30, 40, 50, 60, 70, 80, 10],
             {"flag": [1, 0, 1, 0, 0, 0, 0, 0, 1], "item": [1, 2, 3, 4, 5, 6, 7, 8, 9],
              "clicked": [True, False, False, True, False, True, False, False, True]}),
            ([1, 1, 1], [15, 25, 5], {"flag": [0, 0, 0], "item": [15, 25, 99], "clicked": [True, True, False]})):
        other = other.commit(event_table(store.schema.columns, e_users, e_ts, e_payload))
    requests = pa.table({"user_id": [1, 2, 1], "request_ts": [81, 81, 4]})
    foreign = lateseq.log_examples(other, requests)
    assert (foreign.column("uih_length").to_pylist()
            != lateseq.log_examples(store, requests).column("uih_length").to_pylist())
    for name, projection in VERIFIED_TENANTS.items():
        with pytest.raises(ChecksumMismatch) as info:
            lateseq.materialize(store, foreign, projection)
        assert info.value.rows == [0], name
    batches = lateseq.materialize_tenants(store, foreign, VERIFIED_TENANTS, on_mismatch="flag")
    for name, batch in batches.items():
        assert batch.mismatched.tolist() == [True, False, False], name


# ---------------------------------------------------------------------- two-tier logs


def two_tier_log(world) -> tuple[lateseq.Store, pa.Table]:
    from lateseq.twotier import OnlineReader, fold

    store, tier = world
    tier.append(pa.table({"user_id": [1, 1, 2], "ts": [5, 8, 3], "item_id": [10, 20, 30],
                          "arrival_ts": [6, 9, 10], "event_id": [1, 2, 3]}))
    store = fold(store, tier, 20)
    tier.append(pa.table({"user_id": [1], "ts": [12], "item_id": [40], "arrival_ts": [21], "event_id": [4]}))
    reader = OnlineReader(store, tier, Projection(10, ("item_id", "ts", "arrival_ts")))
    log, _ = reader.serve(pa.table({"user_id": [1, 2], "request_ts": [25, 25]}))
    return fold(store, tier, 40), log


def test_two_tier_logs_refuse_selecting_tenants_by_name(world):
    store, log = two_tier_log(world)
    tenants = {"plain": Projection(5, ("item_id",)), "recent": Projection(5, ("item_id",), window=10),
               "picky": Projection(5, ("item_id",), where=Filter("event_id", isin=[1])),
               "aged": Projection(5, ("ts",), transforms={"ts": "age"})}
    with pytest.raises(SchemaError) as info:
        lateseq.materialize_tenants(store, log, tenants)
    message = str(info.value)
    assert "'recent'" in message and "'picky'" in message
    assert "'plain'" not in message and "'aged'" not in message
    with pytest.raises(SchemaError, match="this projection selects.*inline"):
        lateseq.materialize(store, log, tenants["recent"])
    # tenants that only cut by length (and transform) still read a two-tier log
    plain = {"plain": tenants["plain"], "aged": tenants["aged"]}
    batches = lateseq.materialize_tenants(store, log, plain)
    assert batches["plain"].values["item_id"].tolist() == [10, 20, 40, 30]
    assert batches["aged"].values["ts"].tolist() == [20, 17, 13, 22]
    for name, projection in plain.items():
        alone = lateseq.materialize(store, log, projection)
        assert alone.offsets.tolist() == batches[name].offsets.tolist()
        for column in alone.values:
            assert alone.values[column].tolist() == batches[name].values[column].tolist()


def test_stripped_two_tier_logs_serve_selecting_tenants(world):
    from lateseq.twotier import strip_tails

    store, log = two_tier_log(world)
    store = store.compact()
    stripped, count = strip_tails(store, log)
    assert count == 2 and all(v > 0 for v in stripped.column("tail_version").to_pylist())
    whole = lateseq.materialize(store, stripped, Projection(10, ("item_id", "ts")))  # verified against the log
    assert whole.values["item_id"].tolist() == [10, 20, 40, 30]
    tenants = {"recent": Projection(5, ("item_id",), window=15),  # request 25: events at ts >= 10
               "picky": Projection(5, ("item_id",), where=Filter("event_id", isin=[1, 3]))}
    batches = lateseq.materialize_tenants(store, stripped, tenants)
    assert batches["recent"].values["item_id"].tolist() == [40] and batches["recent"].offsets.tolist() == [0, 1, 1]
    assert batches["picky"].values["item_id"].tolist() == [10, 30]
    alone = lateseq.materialize(store, stripped, tenants["recent"])
    assert alone.values["item_id"].tolist() == [40]


# ---------------------------------------------------------------------- configs

CONFIG_SCHEMA = lateseq.Schema({"item_id": "int64", "action": "int8", "clicked": "bool", "dwell": "float32"},
                               feature_groups={"ids": ["item_id", "ts"], "flags": ["action", "clicked"]},
                               time_unit="s")
PLAIN_SCHEMA = lateseq.Schema(dict(CONFIG_SCHEMA.columns), feature_groups=CONFIG_SCHEMA.feature_groups)
VALID = '''
[tenants.ok]
columns = ["item_id", "ts"]
max_len = 8
'''


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(body)
    return path


# (the bad tenant's fields, the schema, what the message must name: the field as the TOML
# spells it, or for a filter's own keys that key)
BAD_TENANTS = {
    "unknown_field": ('max_len = 5\ncolour = "red"', CONFIG_SCHEMA, "colour"),
    "max_len_zero": ("max_len = 0", CONFIG_SCHEMA, "max_len"),
    "max_len_negative": ("max_len = -3", CONFIG_SCHEMA, "max_len"),
    "max_len_string": ('max_len = "10"', CONFIG_SCHEMA, "max_len"),
    "max_len_float": ("max_len = 2.5", CONFIG_SCHEMA, "max_len"),
    "max_len_bool": ("max_len = true", CONFIG_SCHEMA, "max_len"),
    "max_len_missing": ('columns = ["item_id"]', CONFIG_SCHEMA, "max_len"),
    "columns_string": ('max_len = 5\ncolumns = "item_id"', CONFIG_SCHEMA, "columns"),
    "columns_numbers": ("max_len = 5\ncolumns = [1, 2]", CONFIG_SCHEMA, "columns"),
    "columns_unknown": ('max_len = 5\ncolumns = ["item_id", "nope"]', CONFIG_SCHEMA, "columns"),
    "groups_string": ('max_len = 5\nfeature_groups = "ids"', CONFIG_SCHEMA, "feature_groups"),
    "groups_unknown": ('max_len = 5\nfeature_groups = ["ids", "nope"]', CONFIG_SCHEMA, "feature_groups"),
    "filter_float": ('max_len = 5\nwhere = { column = "dwell", isin = [1] }', CONFIG_SCHEMA, "where"),
    "filter_unknown_column": ('max_len = 5\nwhere = { column = "nope", isin = [1] }', CONFIG_SCHEMA, "where"),
    "filter_time_column": ('max_len = 5\nwhere = { column = "ts", isin = [1] }', CONFIG_SCHEMA, "where"),
    "filter_not_a_table": ("max_len = 5\nwhere = 5", CONFIG_SCHEMA, "where"),
    "filter_no_column": ("max_len = 5\nwhere = { isin = [1] }", CONFIG_SCHEMA, "where"),
    "filter_unknown_key": ('max_len = 5\nwhere = { column = "action", isnt = [1] }', CONFIG_SCHEMA,
                           "unknown key(s) ['isnt']"),
    "filter_no_test": ('max_len = 5\nwhere = { column = "action" }', CONFIG_SCHEMA, "isin"),
    "filter_two_tests": ('max_len = 5\nwhere = { column = "action", isin = [1], any_bits = 1 }', CONFIG_SCHEMA,
                         "any_bits"),
    "isin_empty": ('max_len = 5\nwhere = { column = "action", isin = [] }', CONFIG_SCHEMA, "isin"),
    "isin_strings": ('max_len = 5\nwhere = { column = "action", isin = ["a"] }', CONFIG_SCHEMA, "isin"),
    "isin_floats": ('max_len = 5\nwhere = { column = "action", isin = [1.5] }', CONFIG_SCHEMA, "isin"),
    "isin_scalar": ('max_len = 5\nwhere = { column = "action", isin = 1 }', CONFIG_SCHEMA, "isin"),
    "filter_column_list": ('max_len = 5\nwhere = { column = ["action"], isin = [1] }', CONFIG_SCHEMA, "where"),
    "any_bits_zero": ('max_len = 5\nwhere = { column = "action", any_bits = 0 }', CONFIG_SCHEMA, "any_bits"),
    "any_bits_negative": ('max_len = 5\nwhere = { column = "action", any_bits = -129 }', CONFIG_SCHEMA, "any_bits"),
    "any_bits_wide": ('max_len = 5\nwhere = { column = "action", any_bits = 256 }', CONFIG_SCHEMA, "any_bits"),
    "all_bits_zero": ('max_len = 5\nwhere = { column = "action", all_bits = 0 }', CONFIG_SCHEMA, "all_bits"),
    "transform_unknown": ('max_len = 5\ncolumns = ["ts"]\ntransforms = { ts = "weeks" }', CONFIG_SCHEMA,
                          "transforms"),
    "transform_not_a_table": ('max_len = 5\ncolumns = ["ts"]\ntransforms = "age"', CONFIG_SCHEMA, "transforms"),
    "transform_list": ('max_len = 5\ncolumns = ["ts"]\ntransforms = { ts = ["age"] }', CONFIG_SCHEMA, "transforms"),
    "transform_table": ('max_len = 5\ncolumns = ["ts"]\ntransforms = { ts = { a = 1 } }', CONFIG_SCHEMA,
                        "transforms"),
    "transform_not_time": ('max_len = 5\ncolumns = ["item_id", "ts"]\ntransforms = { item_id = "age" }',
                           CONFIG_SCHEMA, "transforms"),
    "transform_not_read": ('max_len = 5\ncolumns = ["item_id"]\ntransforms = { ts = "age" }', CONFIG_SCHEMA,
                           "transforms"),
    "age_s_plain_times": ('max_len = 5\ncolumns = ["ts"]\ntransforms = { ts = "age_s" }', PLAIN_SCHEMA,
                          "transforms"),
    "window_unit": ('max_len = 5\nwindow = "90x"', CONFIG_SCHEMA, "window"),
    "window_negative": ('max_len = 5\nwindow = "-5d"', CONFIG_SCHEMA, "window"),
    "window_zero": ('max_len = 5\nwindow = "0d"', CONFIG_SCHEMA, "window"),
    "window_zero_int": ("max_len = 5\nwindow = 0", CONFIG_SCHEMA, "window"),
    "window_negative_int": ("max_len = 5\nwindow = -5", CONFIG_SCHEMA, "window"),
    "window_float": ("max_len = 5\nwindow = 1.5", CONFIG_SCHEMA, "window"),
    "window_empty": ('max_len = 5\nwindow = ""', CONFIG_SCHEMA, "window"),
    "window_plain_times": ('max_len = 5\nwindow = "90d"', PLAIN_SCHEMA, "window"),
    "window_finer": ('max_len = 5\nwindow = "1500ms"', CONFIG_SCHEMA, "window"),
    "window_finer_ns": ('max_len = 5\nwindow = "7ns"', CONFIG_SCHEMA, "window"),
}


@pytest.mark.parametrize("tenant", sorted(BAD_TENANTS))
def test_config_error_names_tenant_and_field(tmp_path, tenant):
    fields, schema, field = BAD_TENANTS[tenant]
    path = write_config(tmp_path, f"{VALID}\n[tenants.{tenant}]\n{fields}\n")
    with pytest.raises(SchemaError) as info:
        load_tenants_twice(path, schema)
    message = str(info.value)
    assert "1 problem" in message, message
    problem = [line for line in message.splitlines() if f"'{tenant}'" in line]
    assert len(problem) == 1, message  # one line, naming the tenant ...
    text = problem[0].replace(f"'{tenant}'", "")  # (some tenants are named after their field)
    assert field in text, f"the problem does not name the field {field!r}: {problem[0]}"  # ... and the field
    assert "'ok'" not in message, message


def load_tenants_twice(path: Path, schema: lateseq.Schema) -> dict:
    """load_tenants; and the tenants that parse, checked on their own, fail the same way."""
    try:
        unchecked = lateseq.load_tenants(path)
    except SchemaError:
        return lateseq.load_tenants(path, schema)  # a problem of the file itself: the schema adds none
    problems = lateseq.check_tenants(unchecked, schema)
    assert problems, "a problem only a schema can find, yet check_tenants finds none"
    return lateseq.load_tenants(path, schema)


# tenants whose value of the wrong type escapes as a TypeError (see their own cases above):
# left out of the file below, which is about collecting problems across tenants
CRASHING = {"isin_scalar", "filter_column_list", "transform_list", "transform_table"}


def test_every_bad_tenant_in_one_file_is_listed(tmp_path):
    """Problems of the file (parsing) and of the schema, across all tenants, in one error."""
    bad = [name for name, (_, schema, _) in BAD_TENANTS.items() if schema is CONFIG_SCHEMA and name not in CRASHING]
    body = VALID + "".join(f"\n[tenants.{name}]\n{BAD_TENANTS[name][0]}\n" for name in bad)
    path = write_config(tmp_path, body)
    with pytest.raises(SchemaError) as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    message = str(info.value)
    assert f"{len(bad)} problem(s)" in message
    for name in bad:
        assert f"'{name}'" in message, name
    assert "'ok'" not in message


def test_every_problem_of_one_tenant_is_listed(tmp_path):
    """A tenant with two independent problems gets both listed, each naming its field."""
    path = write_config(tmp_path, '[tenants.twice]\nmax_len = 5\ncolumns = ["nope"]\nwindow = "1500ms"\n')
    with pytest.raises(SchemaError) as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    message = str(info.value)
    assert "columns" in message and "window" in message, message


def test_a_field_given_twice_is_quoted(tmp_path):
    """tomllib's "Cannot overwrite a value (at line 3, column 12)" named neither the tenant
    nor the field (s52A): the line is quoted."""
    path = write_config(tmp_path, '[tenants.b]\nmax_len = 1\nmax_len = 2\n')
    with pytest.raises(SchemaError, match=r"not valid TOML: .*\(at line 3, column \d+\): 'max_len = 2'$"):
        lateseq.load_tenants(path)


def test_every_field_that_cannot_be_read_is_listed(tmp_path):
    """Only the first field that failed was listed; the others were dropped unsaid."""
    path = write_config(tmp_path, '[tenants.a]\nmax_len = "200"\nwindow = "3x"\n'
                                  'where = { column = "action", isin = ["1"] }\ntransforms = "age"\n')
    with pytest.raises(SchemaError, match=r"4 problem\(s\)") as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    lines = str(info.value).splitlines()[1:]
    for field in ("max_len", "window", "where", "transforms"):
        assert sum(field in line for line in lines) == 1, (field, lines)


@pytest.mark.parametrize("fields, problems", [
    ('max_len = 5\nwindow = "3w"', 2), ("max_len = 0", 2), ("max_len = 5\nsizes = 3", 2),
    # a filter that cannot be made still has its column checked: dwell is a float column (s52A)
    ('max_len = 5\nwhere = {column = "dwell"}', 3), ('max_len = 5\nwhere = {column = "zzz", isin = []}', 3)])
def test_a_field_that_makes_no_projection_hides_no_other_problem(tmp_path, fields, problems):
    """One field that cannot be read at all (a bad window, max_len, filter, an unknown
    field) is listed with the schema problems of the tenant's other fields."""
    path = write_config(tmp_path, f'[tenants.many]\ncolumns = ["nope"]\n{fields}\n')
    with pytest.raises(SchemaError) as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    message = str(info.value)
    assert "unknown columns ['nope']" in message and message.count("tenant 'many'") == problems, message
    if "zzz" in fields:
        assert "filter names unknown column 'zzz'" in message


def test_a_dropped_field_raises_no_follow_on_problem(tmp_path):
    path = write_config(tmp_path, '[tenants.t]\nmax_len = 5\ncolumns = ["ts", 5]\ntransforms = {ts = "age"}\n')
    with pytest.raises(SchemaError, match=r"1 problem\(s\):\n.*'columns' must be a list of names"):
        lateseq.load_tenants(path, CONFIG_SCHEMA)


def test_check_tenants_collects_problems_across_tenants():
    tenants = {
        "fine": Projection(5, ("item_id",), window="1d", where=Filter("action", isin=[1])),
        "bad_column": Projection(5, ("nope",)),
        "also_fine": Projection(5, feature_groups=("flags",)),
        "bad_filter": Projection(5, where=Filter("dwell", any_bits=1)),
        "bad_window": Projection(5, window="1ms"),
        "bad_transform": Projection(5, ("item_id",), transforms={"ts": "age"}),
        "not_a_projection": {"max_len": 3},
    }
    problems = lateseq.check_tenants(tenants, CONFIG_SCHEMA)
    assert len(problems) == 5, problems
    for problem, name in zip(problems, ["bad_column", "bad_filter", "bad_window", "bad_transform",
                                        "not_a_projection"], strict=True):
        assert problem.startswith(f"tenant '{name}'"), problem
    assert lateseq.check_tenants({"fine": tenants["fine"]}, CONFIG_SCHEMA) == []
    on_time = lateseq.check_tenants({"t": Projection(5, where=Filter("ts", isin=[1]))}, CONFIG_SCHEMA)
    assert on_time == ["tenant 't': where: filters select by a payload column; 'ts' is the time column: bound it "
                       "with window"]  # it said 'ts' was an unknown column, which columns= takes (s45B)
    plain = lateseq.check_tenants({"fine": tenants["fine"], "aged": Projection(5, ("ts",),
                                                                               transforms={"ts": "age_s"})},
                                  PLAIN_SCHEMA)
    assert len(plain) == 2 and plain[0].startswith("tenant 'fine'") and plain[1].startswith("tenant 'aged'")


def test_a_transform_renamed_after_the_projection_was_made_is_refused_at_the_read():
    """``transforms`` is a dict a caller can still change: a name changed after the check at
    construction was read as 'age' (the store's unit, where 'age_days' was meant)."""
    projection = Projection(5, ("ts",), transforms={"ts": "age_s"})
    assert projection.resolve(CONFIG_SCHEMA) == ["ts"]
    projection.transforms["ts"] = "age_days"
    with pytest.raises(SchemaError, match=r"transforms: unknown \{'ts': 'age_days'\}; known: \['age', 'age_s'\]"):
        projection.resolve(CONFIG_SCHEMA)


def test_valid_config_round_trips(tmp_path):
    path = write_config(tmp_path, '''
[tenants.retrieval]
columns = ["item_id", "ts"]
max_len = 128

[tenants.engaged]
columns = ["item_id", "ts"]
max_len = 1024
window = "90d"
where = { column = "action", isin = [3, 1, 3] }
transforms = { ts = "age_s" }

[tenants."flags.v2"]
feature_groups = ["flags"]
max_len = 16
window = 3600
where = { column = "clicked", any_bits = 1 }

[tenants.all-bits]
max_len = 1
where = { column = "action", all_bits = 6 }
transforms = { ts = "age" }
columns = ["ts"]
''')
    tenants = lateseq.load_tenants(path, CONFIG_SCHEMA)
    assert tenants == {
        "retrieval": Projection(128, ("item_id", "ts")),
        "engaged": Projection(1024, ("item_id", "ts"), window="90d", where=Filter("action", isin=(1, 3)),
                              transforms={"ts": "age_s"}),
        "flags.v2": Projection(16, feature_groups=("flags",), window=3600, where=Filter("clicked", any_bits=1)),
        "all-bits": Projection(1, ("ts",), where=Filter("action", all_bits=6), transforms={"ts": "age"}),
    }
    assert list(tenants) == ["retrieval", "engaged", "flags.v2", "all-bits"]
    assert lateseq.load_tenants(path) == tenants  # without a schema: parsed, not checked
    assert tenants["engaged"].window_in(CONFIG_SCHEMA) == 90 * 86_400
    assert lateseq.check_tenants(tenants, CONFIG_SCHEMA) == []


@pytest.mark.parametrize("body, expected", [
    ("[tenants.a\nmax_len = 1\n", "not valid TOML"),
    ("max_len = 1\n", "tenants"),
    ("[tenant.a]\nmax_len = 1\n", "tenants"),
    ("[tenants]\n", "tenants"),
    ("tenants = 5\n", "tenants"),
    ('[tenants.ok]\nmax_len = 1\n[other]\nx = 1\n', "other"),
    ('[[tenants]]\nname = "a"\nmax_len = 1\n', r"found an array of tables \(\[\[tenants\]\]\)"),
    ("[tenants.early.ranking]\nmax_len = 1\n",  # TOML's dotted key: tenant 'early', field 'ranking'
     r"tenant 'early': unknown field\(s\) \['ranking'\].*quoted in TOML: \[tenants.\"early.ranking\"\]"),
    ("[tenants.ranking.v2.early]\nmax_len = 1\n", r"quoted in TOML: \[tenants.\"ranking.v2.early\"\]"),
])
def test_malformed_config_files(tmp_path, body, expected):
    path = write_config(tmp_path, body)
    with pytest.raises(SchemaError, match=expected):
        lateseq.load_tenants(path, CONFIG_SCHEMA)


def test_tenant_names_and_unreadable_files(tmp_path):
    path = write_config(tmp_path, VALID + '\n[tenants.".hidden"]\nmax_len = 1\n\n[tenants."a/b"]\nmax_len = 1\n'
                        '\n[tenants."abc\\n"]\nmax_len = 1\n\n[tenants.' + "x" * 129 + ']\nmax_len = 1\n'
                        '\n[tenants._legacy]\nmax_len = 1\n')
    with pytest.raises(SchemaError) as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    # _legacy.parquet: left out by pyarrow.dataset and lateseq's own readers of DIR (s37B)
    for name in (".hidden", "a/b", "abc\n", "x" * 129, "_legacy"):  # a newline at the end is no name either
        assert repr(name) in str(info.value), name
    assert "5 problem(s)" in str(info.value) and "1 to 128" in str(info.value)
    # a bad name's fields are checked in the same run, its columns against the schema too (s38A)
    path.write_text(VALID + '\n[tenants._b]\nmax_len = 1\ncolumns = ["nope"]\nwindow = "3 days"\n')
    with pytest.raises(SchemaError) as info:
        lateseq.load_tenants(path, CONFIG_SCHEMA)
    assert "3 problem(s)" in str(info.value) and "'nope'" in str(info.value) and "window" in str(info.value)
    with pytest.raises(SchemaError, match="cannot read"):
        lateseq.load_tenants(tmp_path / "missing.toml", CONFIG_SCHEMA)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # no writer: reading it blocked forever (s37B)
    for call in (lateseq.load_tenants, lateseq.check_tenants):
        with pytest.raises(SchemaError, match="fifo.toml' is not a file .a pipe or a device"):
            call(fifo, CONFIG_SCHEMA)
    path.write_bytes(VALID.encode() + b"# caf\xe9 in Latin-1\n")
    with pytest.raises(SchemaError, match="not UTF-8"):
        lateseq.load_tenants(path, CONFIG_SCHEMA)


def test_filter_masks_fit_their_column_and_bool_columns_take_bools():
    too_wide = Projection(1, where=Filter("action", any_bits=0x100))  # action is int8
    assert any("beyond the 8 of int8" in p for p in too_wide.problems(CONFIG_SCHEMA))
    assert not Projection(1, where=Filter("action", all_bits=0x80)).problems(CONFIG_SCHEMA)
    assert any("beyond the 1 of bool" in p for p in Projection(1, where=Filter("clicked", any_bits=2)).problems(
        CONFIG_SCHEMA))
    assert Filter("clicked", isin=[True]) == Filter("clicked", isin=[1])
    # a filter none of whose values the column can hold matches nothing: a mistake, refused
    for column, values, dtype in (("action", [300], "int8"), ("clicked", [2], "bool"), ("action", [-129], "int8"),
                                  ("item_id", [2**63], "int64")):
        problems = Projection(1, where=Filter(column, isin=values)).problems(CONFIG_SCHEMA)
        assert any("all lie outside" in p and f"{dtype} column {column!r}" in p for p in problems), problems
    for values in ([-128, 127], [1, 300]):  # one value that fits is enough (a config shared by stores)
        assert not Projection(1, where=Filter("action", isin=values)).problems(CONFIG_SCHEMA)


def test_an_age_that_does_not_fit_int64_is_an_error(tmp_path):
    low, high = -(1 << 63), (1 << 63) - 1
    store = lateseq.create(tmp_path / "s", lateseq.Schema({"item_id": "int64"})).commit(
        pa.table({"user_id": [1, 1], "ts": [low, 10], "item_id": [1, 2]}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 1], "request_ts": [11, high]}))
    newest = lateseq.materialize(store, examples, Projection(1, ("ts",), transforms={"ts": "age"}))
    assert newest.values["ts"].tolist() == [1, high - 10]
    with pytest.raises(SchemaError, match="'age' of an event of example 0 does not fit int64"):
        lateseq.materialize(store, examples, Projection(5, ("ts",), transforms={"ts": "age"}))
    # read batch by batch, the error names the example's row in the log; read as a tenant, the tenant
    aged = Projection(5, ("ts",), transforms={"ts": "age"})
    later = lateseq.log_examples(store, pa.table({"user_id": [3, 1], "request_ts": [5, 11]}))  # 3: no events
    with pytest.raises(SchemaError, match="'age' of an event of row 1 of the example log does not fit int64"):
        list(lateseq.iter_batches(store, later, aged, batch_size=1))
    with pytest.raises(SchemaError, match="^tenant 'aged': transforms: the 'age' of an event of example 1 "):
        lateseq.materialize_tenants(store, later, {"aged": aged, "plain": Projection(5, ("ts",))})




def test_the_calls_users_get_wrong_are_refused_naming_what_is_expected_or_taken(small_store, tmp_path):
    """Raw TypeErrors and AttributeErrors a stranger got from the tenant API."""
    examples = lateseq.log_examples(small_store, pa.table({"user_id": [1], "request_ts": [31]}))
    one = Projection(3, ("rating",))
    with pytest.raises(SchemaError, match="got Projection .for one Projection, call materialize"):
        lateseq.materialize_tenants(small_store, examples, one)
    with pytest.raises(SchemaError, match="mapping of name -> lateseq.Projection, got list"):
        lateseq.materialize_tenants(small_store, examples, [one, one])
    for call, what in ((lateseq.materialize_tenants, "materialize_tenants"),
                       (lambda s, e, t: lateseq.materialize(s, e, t["a"]), "materialize")):
        with pytest.raises(SchemaError, match=f"^{what} reads a lateseq Store .lateseq.open.path., once, then reused., "
                                              "not a str '/"):
            call(str(small_store.path), examples, {"a": one})
    path = write_config(tmp_path, VALID.replace('"item_id"', '"item"'))
    assert lateseq.load_tenants(path, small_store) == lateseq.load_tenants(path, small_store.schema)  # a Store too
    assert lateseq.check_tenants(path, small_store) == []  # a config's path, as load_tenants takes
    assert lateseq.check_tenants(path, CONFIG_SCHEMA) == [
        "tenant 'ok': columns: unknown columns ['item']; the store has ['action', 'clicked', 'dwell', 'item_id', 'ts']"]
    with pytest.raises(SchemaError, match="expected a lateseq.Schema .or a Store., got str"):
        lateseq.check_tenants(path, "schema.json")
    # integers in any container users hold them in; a 0-d array or a string is no list
    assert Filter("action", isin=np.array([3, 1])) == Filter("action", isin=range(1, 4, 2)) == Filter("action",
                                                                                                   isin=[1, 3])
    for values in (np.array(3), "13", np.array([1.5])):
        with pytest.raises(SchemaError, match="non-empty list .tuple, set, range or array. of integers"):
            Filter("action", isin=values)


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Notepad's UTF-8: tomllib said "Invalid statement (at line 1, column 1)"."""
    path = write_config(tmp_path, VALID)
    expected = lateseq.load_tenants(path, CONFIG_SCHEMA)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert lateseq.load_tenants(path, CONFIG_SCHEMA) == expected


def test_materialize_refuses_bad_tenants_by_name(small_store):
    examples = lateseq.log_examples(small_store, pa.table({"user_id": [1], "request_ts": [31]}))
    with pytest.raises(SchemaError, match="tenant 'late'.*unit"):
        lateseq.materialize_tenants(small_store, examples, {"ok": Projection(1), "late": Projection(1, window="1d")})
    with pytest.raises(SchemaError, match="tenant 'odd'"):
        lateseq.materialize_tenants(small_store, examples, {"odd": "not a projection"})
    with pytest.raises(SchemaError, match="unknown column 'nope'"):
        lateseq.materialize(small_store, examples, Projection(1, ("rating",), where=Filter("nope", isin=[1])))
    # the names materialize_log_tenants and a config refuse: this call took them (s42C)
    for tenants, found in (({}, "no tenants"), ({1: Projection(1)}, "tenant 1: a name is"),
                           ({"": Projection(1)}, "tenant '': a name is"), ({"../x": Projection(1)}, "'../x': a name")):
        with pytest.raises(SchemaError, match=found):
            lateseq.materialize_tenants(small_store, examples, tenants)


def test_an_empty_list_of_columns_is_refused_not_read_as_every_column(tmp_path):
    """``columns = []`` read every payload column, where the CLI's ``--columns ''`` is refused (s34E);
    a name given twice is refused too."""
    for field in ("columns", "feature_groups"):
        path = write_config(tmp_path, VALID + f"\n[tenants.empty]\nmax_len = 4\n{field} = []\n")
        with pytest.raises(SchemaError, match=f"tenant 'empty': field '{field}' names none; leave it out"):
            lateseq.load_tenants(path, CONFIG_SCHEMA)
        path = write_config(tmp_path, VALID + f'\n[tenants.twice]\nmax_len = 4\n{field} = ["b", "a", "b"]\n')
        with pytest.raises(SchemaError, match=rf"tenant 'twice': field '{field}' names \['b'\] more than once"):
            lateseq.load_tenants(path, CONFIG_SCHEMA)  # read once, silently (s43B): likelier a typo
    for body, found in (("tenants = 3", "found tenants = 3"), ("[tenants]", "found no tenants")):
        with pytest.raises(SchemaError, match=found):
            lateseq.load_tenants(write_config(tmp_path, body), CONFIG_SCHEMA)


def test_every_problem_of_a_transform_is_told_at_once():
    """'age_s' on a column not read, in a store of plain integers: the second problem was
    told only once the first was mended (s34A)."""
    problems = Projection(4, ("item_id",), transforms={"ts": "age_s"}).problems(PLAIN_SCHEMA)
    assert any("which the projection does not read" in p for p in problems), problems
    assert any("'age_s' needs a store with a time_unit" in p for p in problems), problems
