"""Materialization against the brute-force oracle: random stores, pointers and projections.

Every scenario is replayed into two stores (1 and 3 partitions) and into the oracle;
after every commit or compaction, pointers are logged at that version, and at the end
every pointer is rebuilt from several later handles and must equal the oracle exactly.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import event_hash_reference
from oracle import (
    NUMPY_TYPES,
    Oracle,
    Request,
    assert_batch_equal,
    oracle_requests,
    widened_pointers,
)

import lateseq
import lateseq._gather
from lateseq._kernels import event_hashes

INT64 = (-(2**63), 2**63 - 1)
DTYPES = ["int8", "int16", "int32", "int64", "float32", "float64", "bool"]
ARROW_TYPES = {name: pa.from_numpy_dtype(np.dtype(t)) for name, t in NUMPY_TYPES.items()}


# ---------------------------------------------------------------------- event hashes


@given(
    user=st.integers(*INT64),
    ts=st.integers(*INT64),
    ints=st.lists(st.integers(*INT64), max_size=3),
    floats=st.lists(st.floats(), max_size=3),
    bools=st.lists(st.booleans(), max_size=2),
)
@settings(max_examples=200)
def test_event_hashes_match_the_scalar_reference(user, ts, ints, floats, bools):
    payload = [np.array([v], np.int64) for v in ints]
    payload += [np.array([v], np.float64) for v in floats]
    payload += [np.array([v], np.uint8) for v in bools]
    got = event_hashes(np.array([user], np.int64), np.array([ts], np.int64), payload)
    assert got.dtype == np.uint32
    assert int(got[0]) == event_hash_reference(user, ts, [*ints, *floats, *[int(b) for b in bools]])


@pytest.mark.parametrize("value", [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-310, -1.5])
def test_event_hashes_of_special_floats(value):
    got = event_hashes(np.array([-3], np.int64), np.array([-(2**62)], np.int64), [np.array([value])])
    assert int(got[0]) == event_hash_reference(-3, -(2**62), [value])


def test_event_hashes_see_every_input_and_its_bits():
    base = event_hash_reference(1, 2, [3, 0.0, True])
    for other in ([4, 0.0, True], [3, -0.0, True], [3, 0.0, False], [3, 0.0]):
        assert event_hash_reference(1, 2, other) != base
    assert event_hash_reference(2, 2, [3, 0.0, True]) != base
    assert event_hash_reference(1, 3, [3, 0.0, True]) != base
    # narrow integer types hash by value, so int8 -1 hashes as int64 -1
    narrow = event_hashes(np.array([1]), np.array([2]), [np.array([-1], np.int8)])
    wide = event_hashes(np.array([1]), np.array([2]), [np.array([-1], np.int64)])
    assert narrow[0] == wide[0] == event_hash_reference(1, 2, [-1])
    # float32 hashes as the float64 it widens to
    f32 = event_hashes(np.array([1]), np.array([2]), [np.array([0.1], np.float32)])
    assert f32[0] == event_hash_reference(1, 2, [float(np.float32(0.1))])
    # a signalling NaN (valid input) hashes as the quiet NaN it widens to, with no warning
    signalling = np.array([0x7F800001], np.uint32).view(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = event_hashes(np.array([1]), np.array([2]), [signalling])
    assert got[0] == event_hash_reference(1, 2, [np.array([0x7FF8000020000000], np.uint64).view(np.float64)[0]])


# ---------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    columns: dict[str, str]
    tiebreak: str | None
    two_tier: bool
    steps: list  # ("commit", users, ts, payload) or ("compact", "full" | "tiered")
    users: list[int]
    ghost: int
    request_ts: list[int]
    projections: list[lateseq.Projection] = field(default_factory=list)
    seed: int = 0
    user_col: str = "user_id"
    time_col: str = "ts"

    @property
    def schema_options(self) -> dict:
        options = {"columns": self.columns, "tiebreak": self.tiebreak, "user_col": self.user_col,
                   "time_col": self.time_col}
        if self.two_tier:
            options.update(arrival_col="arr", event_id_col="eid")
        return options


def value_strategy(dtype: str):
    if dtype == "bool":
        return st.booleans()
    if dtype == "float32":
        return st.floats(width=32)
    if dtype == "float64":
        return st.floats()
    info = np.iinfo(dtype)
    return st.one_of(st.integers(-2, 2), st.integers(int(info.min), int(info.max)))


def commit_step(draw, columns: dict[str, str], users: list[int], ts_values, rows: int) -> tuple:
    """A commit of ``rows`` events of ``users``, every column's values drawn for its type."""
    strategies = {n: value_strategy(t) for n, t in columns.items()}
    strategies.update(arr=st.integers(-3, 12), eid=st.integers(0, 3))
    payload = {n: draw(st.lists(strategies[n], min_size=rows, max_size=rows)) for n in columns}
    return ("commit", draw(st.lists(st.sampled_from(users), min_size=rows, max_size=rows)),
            draw(st.lists(ts_values, min_size=rows, max_size=rows)), payload)


@st.composite
def scenarios(draw, max_commits: int = 8, max_rows: int = 12) -> Scenario:
    dtypes = draw(st.lists(st.sampled_from(DTYPES), max_size=len(DTYPES), unique=True))
    names = [f"c_{d}" for d in dtypes]
    two_tier = draw(st.booleans())
    if two_tier:
        names += ["arr", "eid"]
    names = draw(st.permutations(names))
    columns = {n: ("int64" if n in ("arr", "eid") else n[2:]) for n in names}
    ints = [n for n, t in columns.items() if t.startswith("int")]
    tiebreak = draw(st.none() | st.sampled_from(ints)) if ints else None

    users = draw(st.lists(st.one_of(st.integers(-3, 3), st.integers(*INT64)), min_size=1, max_size=4, unique=True))
    ghost = draw(st.integers(*INT64).filter(lambda u: u not in users))
    wide = draw(st.booleans())
    ts_values = st.one_of(st.integers(-4, 4), st.integers(*INT64)) if wide else st.integers(-4, 4)

    steps = []
    for _ in range(draw(st.integers(1, max_commits))):
        steps.append(commit_step(draw, columns, users, ts_values, draw(st.integers(1, max_rows))))
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            steps.append(("compact", draw(st.sampled_from(["full", "tiered"]))))
    request_ts = draw(st.lists(ts_values, min_size=1, max_size=3))
    user_col, time_col = draw(st.sampled_from([("user_id", "ts"), ("uid", "event_time")]))
    selectable = [time_col, *columns]
    projections = [
        lateseq.Projection(
            draw(st.sampled_from([1, 2, 3]) | st.integers(1, 2 * max_rows * max_commits)),
            columns=tuple(draw(st.lists(st.sampled_from(selectable), unique=True, max_size=len(selectable)))),
        )
        for _ in range(2)
    ]
    return Scenario(columns, tiebreak, two_tier, steps, users, ghost, request_ts, projections,
                    draw(st.integers(0, 2**32 - 1)), user_col, time_col)


@st.composite
def tiered_late_scenarios(draw) -> Scenario:
    """A large first commit, then small commits of events among its times (late events)
    that tiered compaction (fanout 2) merges while the first segment stays: a pointer of a
    small commit's version then reads two overlapping windows, one holding late rows of
    newer versions it cannot see (the merge kernel's windows with holes), rare in the
    free-form scenarios."""
    sc = draw(scenarios(max_commits=1))
    ts_values = st.integers(-30, 30)

    def commit(rows: int) -> tuple:
        return commit_step(draw, sc.columns, sc.users, ts_values, rows)

    steps = [commit(draw(st.integers(37, 45)))]  # more than the small ones together: never merged with them
    for _ in range(draw(st.integers(1, 3))):
        steps += [commit(draw(st.integers(1, 3))) for _ in range(draw(st.integers(2, 4)))]
        steps.append(("compact", "tiered"))
    return replace(sc, steps=steps, request_ts=draw(st.lists(ts_values, min_size=1, max_size=3)))


def event_table(columns: dict[str, str], users, ts, payload, user_col="user_id", time_col="ts") -> pa.Table:
    data = {user_col: pa.array(users, pa.int64()), time_col: pa.array(ts, pa.int64())}
    for name, dtype in columns.items():
        data[name] = pa.array(np.array(payload[name], dtype=NUMPY_TYPES[dtype]), ARROW_TYPES[dtype])
    return pa.table(data)


def requests_for(oracle: Oracle, users: list[int], ghost: int, extra_ts: list[int]) -> pa.Table:
    """Requests at drawn times, exactly at events' times, just after, and before the first."""
    rows_user, rows_ts = [], []
    for user in [*users, ghost]:
        times = set(extra_ts)
        for e in oracle.events:
            if e.user == user:
                times.update(t for t in (e.ts, e.ts + 1, e.ts - 1) if INT64[0] <= t <= INT64[1])
        for t in sorted(times):
            rows_user.append(user)
            rows_ts.append(t)
    return pa.table({"user_id": pa.array(rows_user, pa.int64()), "request_ts": pa.array(rows_ts, pa.int64()),
                     "label": pa.array(range(len(rows_user)), pa.int32())})



def projected(projection: lateseq.Projection, columns: dict[str, str]) -> list[str]:
    return list(projection.columns) if projection.columns else list(columns)


def check_invariants(batch: lateseq.JaggedBatch, examples: pa.Table, projection: lateseq.Projection,
                     time_col: str = "ts") -> None:
    """Facts that hold whatever the oracle says: lengths, strictly-before, time order."""
    lengths = np.diff(batch.offsets)
    available = examples.column("uih_length").to_numpy().astype(np.int64)
    assert np.array_equal(lengths, np.minimum(available, projection.max_len))
    assert not batch.mismatched.any()
    if time_col in batch.values:
        ts = batch.values[time_col]
        request = np.repeat(examples.column("request_ts").to_numpy(), lengths)
        assert (ts < request).all(), "an event at or after the request time was returned"
        same_row = np.repeat(np.arange(len(lengths)), lengths)
        assert (ts[1:] >= ts[:-1])[same_row[1:] == same_row[:-1]].all(), "events out of time order"


def replay(sc: Scenario, path: Path, partitions: int) -> tuple[lateseq.Store, Oracle, dict[int, pa.Table]]:
    """Applies the scenario's steps to a new store and the oracle; logs pointers after each."""
    store = lateseq.create(path, lateseq.Schema(partitions=partitions, **sc.schema_options))
    oracle = Oracle.for_schema(store.schema)
    logs: dict[int, pa.Table] = {}  # step -> example log made right after it
    for i, step in enumerate(sc.steps):
        if step[0] == "commit":
            _, users, ts, payload = step
            oracle.commit(users, ts, payload)
            store = store.commit(event_table(sc.columns, users, ts, payload, sc.user_col, sc.time_col))
        else:
            compacted = store.compact(step[1], fanout=2)  # fanout 2: tiny commits do climb tiers
            if compacted.version == store.version:  # nothing to merge: no new version
                assert step[1] == "tiered" or all(len(s) == 1 for s in _segments_by_partition(store).values())
                assert len(store.versions()) == store.version
                continue
            oracle.compact()
            store = compacted
        assert store.version == oracle.version
        requests = requests_for(oracle, sc.users, sc.ghost, sc.request_ts)
        examples = lateseq.log_examples(store, requests)
        assert examples.column("uih_version").to_pylist() == [store.version] * len(requests)
        assert examples.column("label").equals(requests.column("label"))
        for r, length, checksum in zip(oracle_requests(examples), examples.column("uih_length").to_pylist(),
                                       examples.column("uih_checksum").to_pylist(), strict=True):
            assert (length, checksum) == oracle.pointer(r), f"pointer {r} at version {store.version}"
        logs[i] = examples
    return store, oracle, logs


def _segments_by_partition(store: lateseq.Store) -> dict[int, list]:
    out: dict[int, list] = {}
    for info in store.segment_infos:
        out.setdefault(info.partition, []).append(info)
    return out


def run_scenario(sc: Scenario, root: Path) -> None:
    rng = np.random.default_rng(sc.seed)
    replays = {p: replay(sc, root / f"p{p}", p) for p in (1, 3)}
    # partitions change neither what a pointer counts nor (below) what it rebuilds
    one, three = replays[1][2], replays[3][2]
    for step in one.keys() & three.keys():
        for name in ("user_id", "request_ts", "uih_length", "uih_checksum"):
            assert one[step].column(name).equals(three[step].column(name)), f"step {step}: {name}"
    rebuilt: dict[int, list] = {}
    for p, (last, oracle, logs) in replays.items():
        final = last.version
        # the latest version read segment by segment and through merged copies (a local compaction)
        handles = [(final, lateseq.open(last.path, final, merged_reads=False)),
                   (final, lateseq.open(last.path, final, merged_reads=True))]
        for v in {int(rng.integers(1, final + 1)) for _ in range(2)}:
            # an empty cache: every segment read below is decoded from the durable files
            handles.append((v, lateseq.open(last.path, v, cache_dir=root / f"decoded-p{p}-v{v}",
                                            merged_reads=[False, True, "auto"][rng.integers(3)])))
        # "auto" at the latest version, its oldest segments read through the merged copy an
        # earlier version built on its host: the newest whose segments of a partition begin
        # the latest's, two at least and fewer
        latest = {q: [i.name for i in infos] for q, infos in _segments_by_partition(last).items()}
        for base in range(final - 1, 0, -1):
            if any(2 <= len(infos) < len(latest.get(q, [])) and [i.name for i in infos] == latest[q][:len(infos)]
                   for q, infos in _segments_by_partition(last.checkout(base)).items()):
                lateseq.open(last.path, base, cache_dir=root / f"based-p{p}", merged_reads=True).prefault([])
                handles.append((final, lateseq.open(last.path, final, cache_dir=root / f"based-p{p}")))
                break
        for k, projection in enumerate(sc.projections):
            columns = projected(projection, sc.columns)
            for hv, handle in handles:
                # every log at or before the handle's version, shuffled into one batch
                usable = [log for log in logs.values() if log.column("uih_version")[0].as_py() <= hv]
                examples = pa.concat_tables(usable)
                examples = examples.take(rng.permutation(len(examples)))
                batch = lateseq.materialize(handle, examples, projection)
                offsets, values = oracle.expected(oracle_requests(examples), projection.max_len, columns)
                assert_batch_equal(batch, offsets, values, f"partitions={p} handle v{hv} {projection} "
                                   f"tiebreak={sc.tiebreak} merged_reads={handle.merged_reads}")
                check_invariants(batch, examples, projection, sc.time_col)
            # all logs in step order, from the last handle: compared across partitions below
            ordered = pa.concat_tables([logs[s] for s in sorted(logs.keys() & one.keys() & three.keys())])
            rebuilt.setdefault(k, []).append(lateseq.materialize(last, ordered, projection))
        if sc.two_tier:
            for _, handle in handles[:2]:
                check_two_tier(oracle, handle, list(logs.values()), sc, rng)
        for _, handle in handles:  # decoding gives back, bit for bit, what the writer mapped
            for path in handle.cache_dir.glob("*.arrow"):
                assert path.read_bytes() == (last.cache_dir / path.name).read_bytes(), path.name
    for k, (a, b) in rebuilt.items():
        assert np.array_equal(a.offsets, b.offsets)
        assert a.values.keys() == b.values.keys()
        for name in a.values:
            assert a.values[name].tobytes() == b.values[name].tobytes(), f"partitions differ in {name}"


def check_two_tier(oracle: Oracle, store: lateseq.Store, logs: list[pa.Table], sc: Scenario,
                   rng: np.random.Generator) -> None:
    """Pointers widened by arrival: later versions' events that arrived before the limit."""
    requests, pointers = widened_pointers(oracle, pa.concat_tables(logs), rng, oracle.version)
    for projection in sc.projections:
        columns = projected(projection, sc.columns)
        batch = lateseq.materialize(store, pointers, projection)
        offsets, values = oracle.expected(requests, projection.max_len, columns)
        assert_batch_equal(batch, offsets, values, f"two-tier {projection}")


@given(scenarios())
@settings(max_examples=120, deadline=None)  # 150 took 150-280 s of CI's 20 minutes; the slow twin runs 600
def test_materialize_equals_oracle(sc):
    with tempfile.TemporaryDirectory() as root:
        run_scenario(sc, Path(root))


@given(tiered_late_scenarios(), st.sampled_from([1, 5, 1 << 22]))
@settings(max_examples=12, deadline=None)
def test_merged_windows_with_late_rows_equal_oracle(sc, merge_budget):
    """``merge_budget``: events of merged pointers whose runs are made at once."""
    with tempfile.TemporaryDirectory() as root, mock.patch.object(lateseq._gather, "MERGE_BUDGET", merge_budget):
        run_scenario(sc, Path(root))


@pytest.mark.slow
@given(scenarios(max_commits=8, max_rows=40))
@settings(max_examples=600, deadline=None)
def test_materialize_equals_oracle_thoroughly(sc):
    with tempfile.TemporaryDirectory() as root:
        run_scenario(sc, Path(root))


# ---------------------------------------------------------------------- fixed cases


def test_ties_keep_commit_then_row_order(make_store):
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [7, 7, 7], "ts": [5, 5, 3], "item": [1, 2, 3]}))
    store = store.commit(pa.table({"user_id": [7, 7], "ts": [5, 3], "item": [4, 5]}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [7, 7, 7], "request_ts": [3, 5, 6]}))
    assert examples.column("uih_length").to_pylist() == [0, 2, 5]
    for handle in (store, store.compact()):
        batch = lateseq.materialize(handle, examples, lateseq.Projection(10, ("item",)))
        assert batch.values["item"].tolist() == [3, 5, 3, 5, 1, 2, 4]
        assert batch.offsets.tolist() == [0, 0, 2, 7]


def test_tiebreak_orders_ties_before_commit_order(make_store):
    store = make_store({"item": "int64", "seq": "int16"}, tiebreak="seq")
    store = store.commit(pa.table({"user_id": [1, 1], "ts": [5, 5], "item": [1, 2],
                                   "seq": pa.array([2, 1], pa.int16())}))
    store = store.commit(pa.table({"user_id": [1], "ts": [5], "item": [3], "seq": pa.array([0], pa.int16())}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [6]}))
    for handle in (store, store.compact()):
        batch = lateseq.materialize(handle, examples, lateseq.Projection(2, ("item", "seq")))
        assert batch.values["item"].tolist() == [2, 1]
        assert batch.values["seq"].tolist() == [1, 2]


def test_merges_of_overlapping_segments_are_held_a_budget_at_a_time(make_store, monkeypatch):
    """Pointers whose windows overlap in time (late events, uncompacted) are merged, and a
    batch's runs were all held at once: a run per event where segments interleave, 3.4x a
    full-history batch's output (a stranger's: 3.5 GB for 1 GB out). They are made a
    budget of events at a time, each pointer's output the same."""
    store = make_store({"item": "int64", "flag": "bool"})
    ts = np.arange(60)
    for step in range(3):  # interleaved times: every history lies in three overlapping windows
        mine = ts[step::3]
        store = store.commit(pa.table({"user_id": np.full(len(mine), 7), "ts": mine, "item": mine * 10,
                                       "flag": mine % 2 == 0}))
    handle = lateseq.open(store.path, merged_reads=False)
    requests = [61, 30, 45, 7, 0, 59]
    examples = lateseq.log_examples(handle, pa.table({"user_id": [7] * len(requests), "request_ts": requests}))
    held = []
    merge_runs = lateseq._gather.merge_runs

    def counted(store, located, w, rows, visibility, offsets):
        held.append(int((offsets[rows + 1] - offsets[rows]).sum()))
        return merge_runs(store, located, w, rows, visibility, offsets)

    monkeypatch.setattr(lateseq._gather, "merge_runs", counted)
    monkeypatch.setattr(lateseq._gather, "MERGE_BUDGET", 70)
    batch = lateseq.materialize(handle, examples, lateseq.Projection(50, ("item", "ts", "flag")))
    assert held == [50, 30, 45 + 7 + 0, 50]  # at most the budget each (a pointer alone may hold more)
    for row, request in enumerate(requests):
        expected = [t for t in range(60) if t < request][-50:]
        assert batch.values["ts"][batch.offsets[row]:batch.offsets[row + 1]].tolist() == expected
        assert batch.values["item"][batch.offsets[row]:batch.offsets[row + 1]].tolist() == [t * 10 for t in expected]
        assert batch.values["flag"][batch.offsets[row]:batch.offsets[row + 1]].tolist() == [t % 2 == 0
                                                                                            for t in expected]
    assert batch.values["flag"].dtype == np.bool_


def test_late_arrival_is_invisible_to_older_pointers(small_store):
    # small_store: v1 has user 1 at ts 10, 20, 30; v2 adds ts 15 for user 1
    v1 = small_store.checkout(1)
    old = lateseq.log_examples(v1, pa.table({"user_id": [1, 2, 3], "request_ts": [31, 31, 31]}))
    new = lateseq.log_examples(small_store, pa.table({"user_id": [1], "request_ts": [31]}))
    assert old.column("uih_length").to_pylist() == [3, 2, 0]
    assert new.column("uih_length").to_pylist() == [4]
    compacted = small_store.compact()
    for handle in (small_store, compacted):
        batch = lateseq.materialize(handle, old, lateseq.Projection(2, ("ts", "item")))
        assert batch.values["ts"].tolist() == [20, 30, 10, 15]
        assert batch.offsets.tolist() == [0, 2, 4, 4]
        batch = lateseq.materialize(handle, new, lateseq.Projection(3, ("ts",)))
        assert batch.values["ts"].tolist() == [15, 20, 30]


def test_merge_skips_late_rows_a_pointer_cannot_see(make_store):
    store = make_store({"item": "int64"})
    store = store.commit(pa.table({"user_id": [1, 1] + [2] * 6, "ts": [10, 45, 1, 2, 3, 4, 5, 6],
                                   "item": [10, 45, 0, 0, 0, 0, 0, 0]}))
    store = store.commit(pa.table({"user_id": [1, 1], "ts": [30, 40], "item": [30, 40]}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [100]}))
    store = store.commit(pa.table({"user_id": [1, 1], "ts": [35, 50], "item": [35, 50]}))  # 35 arrives late
    # the two small segments merge (one holds 35, invisible to version 2), the first stays:
    # the pointer's windows overlap in time and one has a hole
    tiered = store.compact("tiered", fanout=2)
    assert [info.rows for info in tiered.segment_infos] == [8, 4]
    for handle in (lateseq.open(tiered.path, merged_reads=False), lateseq.open(tiered.path, merged_reads=True)):
        for max_len, expected in ((10, [10, 30, 40, 45]), (3, [30, 40, 45]), (1, [45])):
            batch = lateseq.materialize(handle, examples, lateseq.Projection(max_len, ("item",)))
            assert batch.values["item"].tolist() == expected


def test_wrong_checksum_raises_or_flags(small_store):
    examples = lateseq.log_examples(small_store, pa.table({"user_id": [1, 2], "request_ts": [31, 31]}))
    checksum = examples.column("uih_checksum").to_numpy().copy()
    checksum[1] += np.uint32(1)
    tampered = examples.set_column(4, "uih_checksum", pa.array(checksum))
    with pytest.raises(lateseq.ChecksumMismatch) as info:
        lateseq.materialize(small_store, tampered, lateseq.Projection(5))
    assert info.value.rows == [1]
    assert isinstance(info.value, ValueError)
    batch = lateseq.materialize(small_store, tampered, lateseq.Projection(5), on_mismatch="flag")
    assert batch.mismatched.tolist() == [False, True]
    batch = lateseq.materialize(small_store, tampered, lateseq.Projection(5), verify=False)
    assert batch.mismatched.tolist() == [False, False]
    length = examples.column("uih_length").to_numpy().copy()
    length[0] -= 1
    short = examples.set_column(3, "uih_length", pa.array(length))
    with pytest.raises(lateseq.ChecksumMismatch):
        lateseq.materialize(small_store, short, lateseq.Projection(5))


def test_signed_zero_and_nan_survive_every_read_path(make_store):
    store = make_store({"f": "float64", "g": "float32"})
    nan_bits = np.array([0x7FF8000000000123], np.uint64).view(np.float64)[0]
    store = store.commit(pa.table({"user_id": [1, 1], "ts": [1, 2], "f": [-0.0, nan_bits],
                                   "g": pa.array([-0.0, -np.inf], pa.float32())}))
    store = store.commit(pa.table({"user_id": [1], "ts": [0], "f": [-0.0],
                                   "g": pa.array([np.float32(-0.0)], pa.float32())}))
    first = lateseq.log_examples(store.checkout(1), pa.table({"user_id": [1], "request_ts": [9]}))
    both = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]}))
    for handle in (store, store.compact()):
        one = lateseq.materialize(handle, first, lateseq.Projection(9))
        assert one.values["f"].view(np.uint64).tolist() == [1 << 63, 0x7FF8000000000123]
        assert one.values["g"].view(np.uint32).tolist() == [1 << 31, 0xFF800000]
        spread = lateseq.materialize(handle, both, lateseq.Projection(9))
        assert spread.values["f"].view(np.uint64).tolist() == [1 << 63, 1 << 63, 0x7FF8000000000123]


def test_time_column_with_another_name_can_be_projected(make_store):
    store = make_store({"item": "int64"}, time_col="event_time")
    store = store.commit(pa.table({"user_id": [1, 1], "event_time": [5, 6], "item": [10, 11]}))
    store = store.commit(pa.table({"user_id": [1], "event_time": [4], "item": [9]}))
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, 1], "request_ts": [6, 7]}))
    for handle in (store, store.compact()):
        batch = lateseq.materialize(handle, examples, lateseq.Projection(5, ("event_time", "item")))
        assert batch.values["event_time"].tolist() == [4, 5, 4, 5, 6]
        assert batch.values["item"].tolist() == [9, 10, 9, 10, 11]


def test_example_log_round_trips_through_parquet(small_store, tmp_path):
    import pyarrow.parquet as pq

    requests = pa.table({"user_id": [1, 2, 3], "request_ts": [31, 16, 5], "label": [1.0, 0.0, 1.0]})
    logged = lateseq.log_examples(small_store.checkout(1), requests, tmp_path / "log.parquet")
    read = pq.read_table(tmp_path / "log.parquet")
    assert read.equals(logged)
    assert read.schema.field("uih_checksum").type == pa.uint32()
    assert read.column("label").to_pylist() == [1.0, 0.0, 1.0]
    batch = lateseq.materialize(small_store.compact(), read, lateseq.Projection(2, ("ts",)))
    assert batch.values["ts"].tolist() == [20, 30, 10, 15]
    assert batch.offsets.tolist() == [0, 2, 4, 4]


def test_empty_store_and_empty_pointer_batches(make_store):
    store = make_store({"item": "int64", "flag": "bool"})
    examples = lateseq.log_examples(store, pa.table({"user_id": [1, -5], "request_ts": [0, 2**62]}))
    assert examples.column("uih_version").to_pylist() == [0, 0]
    assert examples.column("uih_length").to_pylist() == [0, 0]
    batch = lateseq.materialize(store, examples, lateseq.Projection(3, ("ts", "item", "flag")))
    assert batch.offsets.tolist() == [0, 0, 0]
    assert {n: v.dtype for n, v in batch.values.items()} == {
        "ts": np.dtype(np.int64), "item": np.dtype(np.int64), "flag": np.dtype(np.bool_)}
    store = store.commit(pa.table({"user_id": [1], "ts": [0], "item": [1], "flag": [True]}))
    batch = lateseq.materialize(store, examples.slice(0, 0), lateseq.Projection(3))
    assert len(batch) == 0 and batch.offsets.tolist() == [0]
    batch = lateseq.materialize(store, examples, lateseq.Projection(3))  # v0 pointers on v1
    assert batch.offsets.tolist() == [0, 0, 0]


# ---------------------------------------------------------------------- a huge history


def test_huge_history(make_store):
    """One user with 200k events over three commits (late arrivals, ties), compacted."""
    rng = np.random.default_rng(7)
    store = make_store({"item": "int32", "w": "float32", "click": "bool"}, partitions=3)
    oracle = Oracle(store.schema.columns)
    sizes = [120_000, 60_000, 20_000]
    for size in sizes:
        ts = rng.integers(0, 50_000, size)  # many ties, and old times arriving late
        payload = {"item": rng.integers(-(2**31), 2**31, size).astype(np.int32),
                   "w": rng.standard_normal(size).astype(np.float32), "click": rng.random(size) < 0.1}
        users = np.full(size, 42, np.int64)
        users[:50] = rng.integers(-100, 100, 50)  # a few other users, so 42 is not alone
        oracle.commit(users.tolist(), ts.tolist(), payload)
        store = store.commit(pa.table({"user_id": users, "ts": ts, **payload}))
    ends = [(3, 49_000), (3, 10**9), (2, 25_000), (1, 50_000), (1, 1)]
    requests = [Request(42, t, v) for v, t in ends] + [Request(7, 100, 3)]
    lengths, checksums = zip(*(oracle.pointer(r) for r in requests), strict=True)
    pointers = lateseq.Pointers(
        np.array([r.user for r in requests], np.int64), np.array([r.request_ts for r in requests], np.int64),
        np.array([r.version for r in requests], np.int64), np.array(lengths, np.int64),
        np.array(checksums, np.uint32),
    )
    assert pointers.length[1] > 190_000
    compacted = store.compact()
    assert compacted.version == 4 and len(compacted.segment_infos) <= 3
    for max_len in (4096, 10**6):
        projection = lateseq.Projection(max_len, ("ts", "item", "w", "click"))
        offsets, values = oracle.expected(requests, max_len, projection.columns)
        for handle in (store, compacted):
            batch = lateseq.materialize(handle, pointers, projection)
            assert_batch_equal(batch, offsets, values, f"max_len={max_len} v{handle.version}")


@pytest.mark.parametrize("state", ["uncompacted", "merged", "compacted", "tiered"])
def test_windows_cut_into_more_runs_than_a_batch_first_holds(make_store, state):
    """A history whose versions interleave row by row: read at an older version every
    other row is a hole (one run per row), and overlapping segments merge row by row;
    the runs outgrow the batch's first array mid-batch, after another user's run."""
    store = make_store({"item": "int64"})
    k = np.arange(150)
    store = store.commit(pa.table({"user_id": np.r_[np.full(150, 1), [2, 2]], "ts": np.r_[4 * k, 5, 6],
                                   "item": np.r_[4 * k, 5, 6]}))
    store = store.commit(pa.table({"user_id": np.full(150, 1), "ts": 4 * k + 2, "item": 4 * k + 2}))
    requests = pa.table({"user_id": [2, 1, 1, 1], "request_ts": [10**6] * 4})
    at_two = lateseq.log_examples(store, requests)
    for shift in (1, 3):  # late events, between every two rows already stored
        store = store.commit(pa.table({"user_id": np.full(150, 1), "ts": 4 * k + shift, "item": 4 * k + shift}))
    at_four = lateseq.log_examples(store, requests)
    handle = {"uncompacted": lambda: lateseq.open(store.path, merged_reads=False),
              "merged": lambda: lateseq.open(store.path, merged_reads=True),
              "compacted": lambda: store.compact(),
              "tiered": lambda: store.compact("tiered", fanout=2)}[state]()
    seen = {2: np.sort(np.r_[4 * k, 4 * k + 2]), 4: np.arange(600)}
    for examples, version in ((at_two, 2), (at_four, 4)):
        for max_len in (1000, 77, 1):
            batch = lateseq.materialize(handle, examples, lateseq.Projection(max_len, ("item",)))
            ones = seen[version][-max_len:]
            assert np.array_equal(batch.offsets, [0, min(2, max_len)] + [min(2, max_len) + len(ones) * i
                                                                          for i in (1, 2, 3)])
            assert np.array_equal(batch.values["item"], np.r_[[5, 6][-max_len:], ones, ones, ones])


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.05, 0.3, 0.9]))
@settings(max_examples=6, deadline=None)
def test_late_events_backfilled_deep_into_compacted_histories_equal_oracle(seed, late_share):
    """Late events land anywhere in a user's past, hundreds of them (many blocks of
    ``late_rows``), compacted: every pointer against every version counts those it cannot
    see a block at a time (s38B: it visited them one by one), and its window skips them."""
    rng = np.random.default_rng(seed)
    oracle = Oracle({"item": "int64"})
    logs = []
    with tempfile.TemporaryDirectory() as root:
        store = lateseq.create(Path(root) / "s", lateseq.Schema({"item": "int64"}))
        for day in range(12):
            n = int(rng.integers(1, 120))
            users = rng.integers(0, 3, n)
            ts = rng.integers(day * 100, (day + 1) * 100, n)
            late = rng.random(n) < late_share
            ts[late] = rng.integers(0, (day + 1) * 100, int(late.sum()))  # anywhere in the past: a backfill
            item = rng.integers(0, 1 << 40, n)
            store = store.commit(pa.table({"user_id": users, "ts": ts, "item": item}))
            oracle.commit(users.tolist(), ts.tolist(), {"item": item.tolist()})
            requests = pa.table({"user_id": rng.integers(0, 4, 30), "request_ts": rng.integers(0, 1400, 30)})
            logs.append(lateseq.log_examples(store, requests))
        store = store.compact()
        oracle.compact()
        log = pa.concat_tables(logs)
        requests = oracle_requests(log)
        for projection in (lateseq.Projection(1, ("item", "ts")), lateseq.Projection(70, ("item", "ts")),
                           lateseq.Projection(1 << 40, ("item", "ts")),
                           lateseq.Projection(1 << 40, ("item", "ts"), window=150)):
            offsets, values = oracle.expected_projection(requests, projection)
            assert_batch_equal(lateseq.materialize(store, log, projection), offsets, values, str(projection))
