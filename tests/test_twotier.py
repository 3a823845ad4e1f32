"""The two-tier O2O protocol: exact streaming and batch rebuilds, and the audit."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import TWO_TIER_SCHEMA, as_list_views

import lateseq
from lateseq import PointerError, SchemaError, StoreError
from lateseq._format import write_segment
from lateseq._merge import segment_events
from lateseq.audit import audit
from lateseq.cli.simulate import SimulationConfig, simulate
from lateseq.mutable import InMemoryTier
from lateseq.twotier import (
    OnlineReader,
    fold,
    rebuild_batch,
    rebuild_streaming,
    strip_tails,
)

SCHEMA = TWO_TIER_SCHEMA
PROJECTION = lateseq.Projection(10, ("item_id", "ts", "arrival_ts"))


def events(*rows: tuple[int, int, int, int]) -> pa.Table:
    """Rows of (user, event time, arrival time, event id); item id = 10 * event id."""
    user, ts, arrival, eid = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"user_id": user, "ts": ts, "item_id": [10 * e for e in eid],
                     "arrival_ts": arrival, "event_id": eid})


def requests(*rows: tuple[int, int]) -> pa.Table:
    user, t = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"user_id": user, "request_ts": t})


def serve_one_scenario(store, tier):
    """Events folded at 20, a tail with a late event, then more late arrivals."""
    tier.append(events((1, 5, 6, 1), (1, 8, 9, 2), (2, 3, 10, 3)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 4), (1, 2, 22, 5)))
    reader = OnlineReader(store, tier, PROJECTION)
    log, served = reader.serve(requests((1, 25), (2, 25), (3, 25)))
    tier.append(events((1, 3, 30, 6), (2, 1, 31, 7)))  # arrive after the request: never seen
    store = fold(store, tier, 40).compact()
    return store, log, served


def test_served_sequence_is_what_arrived_before_the_request(world):
    store, log, served = serve_one_scenario(*world)
    # user 1: events 1, 2 from the store and 4, 5 from the tail (5 is late but arrived at 22)
    assert served.lengths.tolist() == [4, 1, 0]
    assert served.values["item_id"][:4].tolist() == [50, 10, 20, 40]
    assert log.column("tail_event_id").to_pylist() == [[4, 5], [], []]


def test_streaming_and_batch_rebuild_exactly(world):
    store, log, served = serve_one_scenario(*world)
    for batch in (rebuild_streaming(store, log, PROJECTION), rebuild_batch(store, log, PROJECTION)):
        assert batch.offsets.tolist() == served.offsets.tolist()
        for name in PROJECTION.columns:
            assert batch.values[name].tolist() == served.values[name].tolist()
    stripped, count = strip_tails(store, log)
    assert count == 3
    assert stripped.column("tail_item_id").to_pylist() == [[], [], []]
    again = lateseq.materialize(store, stripped, PROJECTION)
    assert again.values["item_id"].tolist() == served.values["item_id"].tolist()


def test_online_names_requests_that_are_no_table(world):
    """A DataFrame failed with AttributeError ('DataFrame' object has no attribute 'column'),
    where log_examples says how to make the table (s35E)."""
    pd = pytest.importorskip("pandas")
    store, tier = world
    with pytest.raises(lateseq.SchemaError, match=r"requests are a pyarrow Table, not a DataFrame \(pa.Table"):
        OnlineReader(store, tier, PROJECTION).serve(pd.DataFrame({"user_id": [1], "request_ts": [25]}))
    with pytest.raises(lateseq.SchemaError, match="requests have no column 'request_ts'"):
        OnlineReader(store, tier, PROJECTION).serve(pa.table({"user_id": [1]}))
    log, _ = OnlineReader(store, tier, PROJECTION).serve(pa.record_batch({"user_id": [1], "request_ts": [25]}))
    assert log.num_rows == 1


@pytest.mark.parametrize("id_type", [pa.uint64(), pa.int32(), "dictionary", "chunked"])
def test_online_serves_the_tail_of_user_ids_of_any_integer_type(world, id_type):
    """Ids as Arrow sends them: uint64 ids above 2**53 searched among the tier's int64
    ones compared as floats, and users whose events were all in the tier were served none."""
    store, tier = world
    big = 2**60 if id_type != pa.int32() else 2**30
    users = [big + 1, big + 2, big + 3]
    tier.append(events((users[0], 1, 1, 1), (users[1], 1, 1, 2)))
    store = fold(store, tier, 5)
    tier.append(events((users[0], 6, 6, 3), (users[1], 6, 7, 4), (users[2], 7, 8, 5)))
    reader = OnlineReader(store, tier, PROJECTION)
    ids = pa.array(users, pa.int64())
    if id_type == "dictionary":
        ids = ids.dictionary_encode()
    elif id_type == "chunked":
        ids = pa.chunked_array([ids[:1], ids[1:]])
    else:
        ids = ids.cast(id_type)
    log, served = reader.serve(pa.table({"user_id": ids, "request_ts": [10, 10, 10]}))
    assert [served.values["item_id"][a:b].tolist() for a, b in zip(served.offsets[:-1], served.offsets[1:])] == [
        [10, 30], [20, 40], [50]]
    assert log.column("seq_length").to_pylist() == [2, 2, 1]


def test_a_log_whose_tail_columns_do_not_match_the_store_is_refused(world):
    """A damaged footer renamed a tail column: a SchemaError naming the columns, not a raw KeyError."""
    store, log, _ = serve_one_scenario(*world)
    names = ["tail_ts_" if n == "tail_ts" else n for n in log.schema.names]
    for bad, words in ((log.rename_columns(names), r"missing \['tail_ts'\], unknown \['tail_ts_'\]"),
                       (log.drop_columns(["tail_item_id"]), r"missing \['tail_item_id'\], unknown \[\]")):
        with pytest.raises(lateseq.SchemaError, match=words):
            lateseq.materialize(store, bad, PROJECTION)


def test_naive_join_would_leak(world):
    store, log, _ = serve_one_scenario(*world)
    with pytest.raises(PointerError, match="watermark"):  # pointers into the final store are refused
        lateseq.log_examples(store, requests((1, 25)))
    plain = log.select(["user_id", "request_ts", "uih_version", "uih_length", "uih_checksum"]).slice(0, 1)
    naive = plain.set_column(2, "uih_version", pa.array([store.version], pa.uint32()))  # the final store's
    read = lateseq.materialize(store, naive, PROJECTION, on_mismatch="flag")
    assert 30 in read.values["arrival_ts"].tolist()  # event 6 arrived after the request: leaked, and
    assert read.mismatched.tolist() == [True]  # flagged: online counted what arrived before it


def test_strip_keeps_uncovered_tails(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    log, _ = OnlineReader(store, tier, PROJECTION).serve(requests((1, 10)))
    stripped, count = strip_tails(store, log)
    assert count == 0 and stripped.equals(log)
    for flag in ("no", "False", 0):  # "no" erased tails of deleted users (s35G)
        with pytest.raises(lateseq.SchemaError, match=f"drop_deleted must be True or False, not {flag!r}"):
            strip_tails(store, log, drop_deleted=flag)
    with pytest.raises(PointerError, match="no kept version covers"):
        rebuild_batch(store, log, PROJECTION)
    assert lateseq.materialize(store, log, PROJECTION).values["item_id"].tolist() == [10]


def test_strip_keeps_a_tail_its_covering_version_does_not_rebuild(world):
    """A tier on other hosts cannot refuse an event stamped as arriving before a request
    that did not see it; the covering version then holds it as seen, and the record's
    tail is the only copy of what online served: strip keeps it, and says so."""
    store, tier = world
    tier.append(events((1, 5, 6, 1), (2, 5, 6, 4)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 2), (2, 12, 21, 5)))
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 25), (2, 25)))
    tier.served_before = -(2**63)  # as a tier that never learnt of the request
    tier.append(events((1, 13, 23, 3)))
    store = fold(store, tier, 40)
    with pytest.warns(UserWarning, match="kept the tails of 1 records that their covering versions do not rebuild "
                                         r"\(the first at row 0\)"):
        stripped, count = strip_tails(store, log)
    assert count == 1 and stripped.column("tail_version").to_pylist() == [0, store.version]
    assert stripped.slice(0, 1).equals(log.slice(0, 1))
    rebuilt = lateseq.materialize(store, stripped, PROJECTION)
    assert rebuilt.values["item_id"].tolist() == served.values["item_id"].tolist() == [10, 20, 40, 50]


def test_duplicate_delivery_kept_once(world):
    store, tier = world
    assert tier.append(events((1, 5, 6, 1), (1, 5, 7, 1))) == 1
    assert tier.append(events((1, 5, 8, 1))) == 0
    store = fold(store, tier, 20)
    assert store.num_events == 1


def test_event_time_far_from_arrival_both_ways(world):
    store, tier = world
    # event 1: stamped long before it arrived; event 2: stamped after it arrived (clock skew)
    tier.append(events((1, 1, 500, 1), (1, 900, 600, 2)))
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 400), (1, 700), (1, 1000)))
    assert served.lengths.tolist() == [0, 1, 2]  # arrival bounds the first, event time the second
    store = fold(store, tier, 2000).compact()
    stripped, _ = strip_tails(store, log)
    assert lateseq.materialize(store, stripped, PROJECTION).values["ts"].tolist() == served.values["ts"].tolist()


def test_retention_is_enforced(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1), (1, 50, 60, 2)))
    assert tier.expire(now=1000, folded_watermark=None) < 6  # nothing folded: nothing dropped
    store = fold(store, tier, 20)
    tier.expire(now=1000, folded_watermark=20)
    assert len(tier) == 1  # event 2 is not in the store yet: kept past retention
    with pytest.raises(SchemaError, match="retention"):
        InMemoryTier(SCHEMA, retention=0)


def test_online_refuses_unsafe_reads(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    reader = OnlineReader(store, tier, PROJECTION)
    with pytest.raises(PointerError, match="before the watermark 20 of version 1"):
        reader.serve(requests((1, 10)))  # version 1 holds arrivals up to 20 > request 10
    tier.expired_before = 30  # the tier lost events the store does not hold
    with pytest.raises(StoreError, match="fold more often"):
        reader.serve(requests((1, 40)))


def test_a_fold_and_expire_while_a_request_reads_the_tier_is_never_served_short(world):
    """Another thread folded and expired between serve's check of the tier and its read
    of the tail: the request was served (and logged) without the dropped events (s42A).
    It is served again through the version that fold made (s61I: it was refused); where
    no version holds what the tier dropped, it is refused."""
    store, _ = world

    class Interrupted(InMemoryTier):
        def tail(self, users, since, until):
            folded = fold(store, self, 25)  # the folding job runs here, once
            self.tail = super().tail
            self.expire(now=100, folded_watermark=folded.watermark)
            return super().tail(users, since, until)

    tier = Interrupted(SCHEMA, retention=1, store=store)
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 2), (1, 13, 22, 3)))
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 30)))
    assert served.lengths.tolist() == [3] and log.column("uih_version").to_pylist() == [store.version + 1]
    assert not lateseq.materialize(lateseq.open(store.path), log, PROJECTION).rows_differ(served).any()
    tier.append(events((1, 40, 41, 4)))
    tier.folded(60)  # told of a fold no version holds: it drops what the store lacks
    tier.expire(now=100, folded_watermark=60)
    with pytest.raises(StoreError, match="fold more often"):
        OnlineReader(lateseq.open(store.path), tier, PROJECTION).serve(requests((1, 50)))


def test_a_tier_of_other_events_or_of_another_store_is_refused(world, tmp_path):
    """A tier of another schema was taken, and the first request failed with a bare
    KeyError; one bound to another store was folded into this one (s42A)."""
    store, _ = world
    other = lateseq.Schema({**{k: v for k, v in SCHEMA.columns.items() if k != "arrival_ts"}, "arrived": "int64"},
                           arrival_col="arrived", event_id_col=SCHEMA.event_id_col)
    stranger = InMemoryTier(other, retention=100)
    with pytest.raises(SchemaError, match="the tier's schema is not the store's: its columns"):
        OnlineReader(store, stranger, PROJECTION)
    with pytest.raises(SchemaError, match="the tier's schema is not the store's"):
        fold(store, stranger, 20)
    elsewhere = lateseq.create(tmp_path / "elsewhere", SCHEMA)
    bound = InMemoryTier(SCHEMA, retention=100, store=elsewhere)
    bound.append(events((1, 5, 6, 1)))
    with pytest.raises(SchemaError, match="made for the store at .*elsewhere"):
        fold(store, bound, 20)
    assert store.latest().version == 0 and bound.folded_before < 20  # nothing folded, nothing marked
    assert fold(elsewhere, bound, 20).version == 1


def test_pointers_are_refused_before_their_versions_watermark(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1), (1, 8, 40, 2)))  # event 2 arrives at 40
    store = fold(store, tier, 100)
    with pytest.raises(PointerError, match="before the watermark 100"):
        lateseq.log_examples(store, requests((1, 20)))  # would see event 2, which arrived after the request
    assert lateseq.log_examples(store, requests((1, 100))).column("uih_length").to_pylist() == [2]
    with pytest.raises(PointerError, match="before the watermark 100 .* the newest: OnlineReader serves") as err:
        OnlineReader(store, tier, PROJECTION).serve(requests((1, 20)))
    assert "serve it with lateseq.twotier.OnlineReader" not in str(err.value)  # it said so to the OnlineReader


def test_online_serves_transforms_as_training_rebuilds_them_and_refuses_selections(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1), (1, 8, 9, 2)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 4)))
    aged = lateseq.Projection(10, ("item_id", "ts"), transforms={"ts": "age"})
    log, served = OnlineReader(store, tier, aged).serve(requests((1, 25)))
    assert served.values["ts"].tolist() == [20, 17, 13] and served.values["item_id"].tolist() == [10, 20, 40]
    later = fold(store, tier, 40)
    for rebuilt in (lateseq.materialize(store, log, aged),  # streaming, from the inline tail
                    lateseq.materialize(later, strip_tails(later, log)[0], aged)):  # batch, tail stripped
        assert rebuilt.values["ts"].tolist() == served.values["ts"].tolist()
    for selecting in (lateseq.Projection(10, ("item_id",), window=15),
                      lateseq.Projection(10, ("item_id",), where=lateseq.Filter("event_id", isin=[1]))):
        with pytest.raises(SchemaError, match="window or filter"):
            OnlineReader(store, tier, selecting)  # training could not rebuild what it would serve


# ---------------------------------------------------------------- the audit's causes


def test_audit_all_match(world):
    store, log, _ = serve_one_scenario(*world)
    report = audit(store, log)
    assert (report.checked, report.matched, report.mismatches) == (3, 3, {})


def test_audit_corrupt_tail(world):
    store, log, _ = serve_one_scenario(*world)
    index = log.schema.get_field_index("tail_item_id")
    bad = log.set_column(index, "tail_item_id", pa.array([[40, 51], [], []], pa.list_(pa.int64())))
    assert audit(store, bad).mismatches == {0: "corrupt data"}


def test_a_damaged_decoded_copy_is_repaired_before_audit_reads_it(world):
    store, log, _ = serve_one_scenario(*world)
    path = store.cache_dir / f"{store.latest().segment_infos[0].name}.arrow"  # the decoded, mapped file
    whole = path.read_bytes()
    data = bytearray(whole)
    ts_offset = data.find((5 - 1).to_bytes(1, "little") + (8 - 1).to_bytes(1, "little"))  # user 1's ts
    data[ts_offset] ^= 0x7F
    path.write_bytes(bytes(data))
    report = audit(lateseq.open(store.path), log)
    assert report.checked == 3 and report.mismatches == {}  # the damaged copy was never read
    assert path.read_bytes() == whole  # decoded again from the durable files


def test_audit_tail_stripped_too_early(world):
    store, log, _ = serve_one_scenario(*world)
    stripped, _ = strip_tails(store, log)
    index = stripped.schema.get_field_index("tail_version")
    early = stripped.set_column(index, "tail_version", pa.array([1, 1, 1], pa.uint32()))
    assert audit(store, early).mismatches == {0: "tail stripped too early"}


def test_cleanup_keeps_rebuilds_exact(world):
    store, log, served = serve_one_scenario(*world)
    stripped, _ = strip_tails(store, log)
    removed = store.latest().cleanup(before=store.latest().version, grace_s=0)
    assert 1 in removed
    assert audit(store.latest(), stripped).mismatches == {}
    again = lateseq.materialize(store.latest(), stripped, PROJECTION)
    assert again.values["item_id"].tolist() == served.values["item_id"].tolist()


def test_audit_version_no_longer_kept(world):
    store, log, _ = serve_one_scenario(*world)
    stripped, _ = strip_tails(store, log)
    latest = store.latest()
    latest.cleanup(before=latest.version, grace_s=0)
    # a rewrite (as a purge would do) drops user 1's oldest event after its version is gone
    segment = latest.segments()[0]
    ev = segment_events(segment, SCHEMA)
    keep = ~((ev.user == 1) & (ev.payload["event_id"] == 1))
    info = write_segment(latest.path / "segments", 0, ev.take(np.flatnonzero(keep)), latest.cache_dir)
    rewritten = latest._publish(latest.version + 1, "compact", [info], [info], latest.watermark)
    assert audit(rewritten, stripped).mismatches == {0: "version no longer kept"}
    # a stripped record counting fewer events than the store shows of it now was changed: a
    # rewrite never adds events (s47D: said of plain records only)
    index = stripped.schema.get_field_index("seq_length")
    fewer = stripped.set_column(index, stripped.schema.field(index), pa.array(
        [n - 1 if i == 0 else n for i, n in enumerate(stripped.column(index).to_pylist())], pa.uint32()))
    assert audit(latest, fewer).mismatches == {0: "unknown"}


def test_audit_late_event(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 8, 30, 2)))
    store = fold(store, tier, 40)
    # a pointer made against a version published after the request sees a late event
    pointers = lateseq.log_examples(store.checkout(1), requests((1, 25)))
    forged = pointers.set_column(2, "uih_version", pa.array([2], pa.uint32()))
    assert audit(store, forged).mismatches == {0: "late event"}
    # and once those versions are cleaned up: a retired version is no cause by itself, its
    # pointers still rebuild ("version no longer kept", named first, took every mismatch, s47B)
    tier.append(events((2, 50, 51, 3)))
    store = fold(store, tier, 60)
    assert store.cleanup(before=store.version, grace_s=0) == [1, 2]
    assert audit(store, pointers).mismatches == {}
    assert audit(store, forged).mismatches == {0: "late event"}


def test_audit_names_no_late_event_that_the_record_counted(tmp_path):
    """Events backfilled (arriving after the request) that a pointer logged later counted:
    a changed checksum was blamed on them as "late event" (s47C); late events explain a
    record only where leaving them out gives what it counted."""
    store = lateseq.create(tmp_path / "store", SCHEMA).commit(events((1, 10, 1000, 1), (1, 20, 1000, 2)))
    logged = lateseq.log_examples(store, requests((1, 30)))
    assert logged.column("uih_length").to_pylist() == [2]
    column = logged.schema.get_field_index("uih_checksum")
    changed = logged.set_column(column, "uih_checksum", pa.array([logged.column(column)[0].as_py() ^ 1], pa.uint32()))
    assert audit(store, logged).mismatches == {}
    assert audit(store, changed).mismatches == {0: "unknown"}


# ---------------------------------------------------------------- the whole scenario


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    late=st.sampled_from([0.0, 0.05, 0.3]),
    duplicates=st.sampled_from([0.0, 0.1]),
    ties=st.sampled_from([0.0, 0.5, 0.9]),
    out_of_order=st.sampled_from([0.0, 0.3]),
    compaction_hours=st.sampled_from([2.0, 6.0]),
)
def test_simulation_is_exact(tmp_path_factory, seed, late, duplicates, ties, out_of_order, compaction_hours):
    result = simulate(SimulationConfig(
        seed=seed, users=15, days=1.0, events_per_day=25, requests_per_day=6, late_share=late,
        duplicate_share=duplicates, tie_share=ties, out_of_order_share=out_of_order,
        compaction_hours=compaction_hours, max_len=8,
    ), workdir=tmp_path_factory.mktemp("sim"))
    assert result["examples"] > 0
    assert result["served_vs_truth_match_rate"] == 1.0
    assert result["streaming_match_rate"] == 1.0
    assert result["batch_match_rate"] == 1.0
    assert result["leaked_events"] == 0
    if late >= 0.3:
        assert result["naive_leaked_events"] > 0


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(0, 6), max_len=st.integers(1, 6))
def test_merge_newest_matches_reference(data, rows, max_len):
    from naive import merge_newest_reference

    from lateseq._kernels import merge_newest

    def run(rows_):
        sizes = [data.draw(st.integers(0, 5)) for _ in range(rows_)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        keys = [sorted(data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)),
                                          min_size=n, max_size=n))) for n in sizes]
        flat = [k for group in keys for k in group]
        ts = np.array([k[0] for k in flat], np.int64)
        tb = np.array([k[1] for k in flat], np.int64)
        return offsets, ts, tb

    head, tail = run(rows), run(rows)
    fast = merge_newest(*head, *tail, max_len)
    slow = merge_newest_reference(*head, *tail, max_len)
    assert fast[0].tolist() == slow[0].tolist()
    assert fast[1].tolist() == slow[1].tolist()


def test_redelivery_after_expiry_is_still_kept_once(tmp_path):
    store = lateseq.create(tmp_path / "store", SCHEMA)
    tier = InMemoryTier(SCHEMA, retention=10, store=store)
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.expire(now=100, folded_watermark=20)
    assert len(tier) == 0
    assert tier.append(events((1, 5, 150, 1), (1, 7, 150, 2))) == 1  # event 1 is in the store
    assert fold(store, tier, 200).num_events == 2


def test_commit_drops_events_already_stored(tmp_path):
    store = lateseq.create(tmp_path / "store", SCHEMA)
    store = store.commit(events((1, 5, 6, 1), (1, 5, 7, 1)))
    assert store.num_events == 1
    store = store.commit(events((1, 5, 9, 1), (2, 5, 9, 1)))
    assert store.num_events == 2  # user 1's event 1 is a redelivery; user 2's is new
    again = store.commit(events((1, 5, 9, 1)))
    assert (again.version, again.num_events) == (store.version + 1, 2)


def test_a_log_whose_tail_columns_changed_type_is_refused_naming_them(world):
    """Tails read back as text (a CSV round trip) raised pyarrow's "no kernel matching
    input types", not a LateseqError; as floats, a ChecksumMismatch blamed the data.
    Integers of another width still rebuild exactly."""
    store, log, served = serve_one_scenario(*world)

    def retyped(how):
        return pa.table({n: how(log.column(n)) if n == "tail_ts" else log.column(n) for n in log.column_names})

    for how, what in ((lambda c: pa.array([str(v) for v in c.to_pylist()]), "string"),
                      (lambda c: c.cast(pa.list_(pa.float64())), "list<item: double>")):
        with pytest.raises(lateseq.PointerError, match=rf"column 'tail_ts' has type {re.escape(what)}, expected "
                                                       r"list<int64>"):
            lateseq.materialize(store, retyped(how), PROJECTION)
    for width in (pa.int32(), pa.uint64()):
        batch = lateseq.materialize(store, retyped(lambda c, w=width: c.cast(pa.large_list(w))), PROJECTION)
        assert not batch.rows_differ(served).any()



def test_a_record_whose_tail_columns_hold_different_numbers_of_events_fails_its_check(world):
    """An edited tail whose columns disagree on a record's event count raised numpy's
    "could not broadcast" from the hashing kernel, through on_mismatch="flag" and audit
    alike (s47B), then refused the whole log (s47C): the record fails its check as any
    edit does, the others rebuild."""
    store, log, served = serve_one_scenario(*world)
    tails = [n for n in log.column_names if n.startswith("tail_") and n != "tail_version"]
    name = tails[-1]
    values = log.column(name).to_pylist()
    row = next(i for i, v in enumerate(values) if v)
    values[row] = values[row][:-1]
    edited = log.set_column(log.column_names.index(name), log.schema.field(name),
                            pa.array(values, log.schema.field(name).type))
    flagged = lateseq.materialize(store, edited, PROJECTION, on_mismatch="flag")
    assert np.flatnonzero(flagged.mismatched).tolist() == [row]
    assert not (flagged.rows_differ(served) & ~flagged.mismatched).any()
    with pytest.raises(lateseq.ChecksumMismatch) as raised:
        lateseq.materialize(store, edited, PROJECTION)
    assert raised.value.rows == [row]
    assert audit(store, edited).mismatches == {row: "corrupt data"}
    # a null inside one record's tail made every value of its column a float, every
    # record's hash wrong (s47D); a null list is an empty tail, strip_tails included
    values = log.column(name).to_pylist()
    values[row] = [None, *values[row][1:]]
    holed = log.set_column(log.column_names.index(name), log.schema.field(name),
                           pa.array(values, log.schema.field(name).type))
    flagged = lateseq.materialize(store, holed, PROJECTION, on_mismatch="flag")
    assert np.flatnonzero(flagged.mismatched).tolist() == [row]
    assert audit(store, holed).mismatches == {row: "corrupt data"}
    empty = next(i for i, v in enumerate(values) if not v)
    nulled = log.set_column(log.column_names.index(name), log.schema.field(name), pa.array(
        [None if i == empty else v for i, v in enumerate(log.column(name).to_pylist())], log.schema.field(name).type))
    assert not lateseq.materialize(store, nulled, PROJECTION).rows_differ(served).any()
    stripped, _ = strip_tails(store, nulled)
    assert not lateseq.materialize(store, stripped, PROJECTION).rows_differ(served).any()
    # user ids of a categorical whose dictionary holds a null no row uses (s47D: tails were
    # hashed with float ids, every record with a tail flagged)
    ids = log.column("user_id").to_pylist()
    coded = pa.DictionaryArray.from_arrays(pa.array([1 + sorted(set(ids)).index(u) for u in ids], pa.int32()),
                                           pa.array([None, *sorted(set(ids))], pa.int64()))
    by_category = log.set_column(log.column_names.index("user_id"), "user_id", coded)
    assert not lateseq.materialize(store, by_category, PROJECTION, on_mismatch="flag").mismatched.any()
    assert audit(store, by_category).mismatches == {}



def test_columns_audit_and_strip_do_not_read_are_left_alone(world):
    """A column Arrow cannot take (polars' and DuckDB's string_view) made audit and
    strip_tails raise "array_take has no kernel" (s47E); a null in a record's columns was
    read as a version (tail_version: a garbage one, through a RuntimeWarning)."""
    store, log, served = serve_one_scenario(*world)
    viewed = log.append_column("note", pa.array(["a"] * log.num_rows, pa.string_view()))
    assert audit(store, viewed).mismatches == {}
    stripped, count = strip_tails(store, viewed)
    assert count and stripped.column("note").equals(viewed.column("note"))
    assert not lateseq.materialize(store, stripped, PROJECTION).rows_differ(served).any()
    index = log.schema.get_field_index("tail_version")
    nulled = log.set_column(index, log.schema.field(index), pa.array([None] * log.num_rows, pa.uint32()))
    for call in (lambda: lateseq.materialize(store, nulled, PROJECTION), lambda: audit(store, nulled),
                 lambda: strip_tails(store, nulled)):
        with pytest.raises(lateseq.PointerError, match=r"two-tier record columns \['tail_version'\] have null"):
            call()
    twice = pa.Table.from_arrays([*log.columns, log.column("user_id")], names=[*log.column_names, "user_id"])
    for call in (lambda: audit(store, twice), lambda: strip_tails(store, twice)):  # named, not Arrow's KeyError
        with pytest.raises(lateseq.PointerError, match="example log has 2 columns named 'user_id'"):
            call()

def test_tails_of_every_payload_type_rebuild_exactly(tmp_path):
    schema = lateseq.Schema({"flag": "bool", "w": "float32", "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id")
    store = lateseq.create(tmp_path / "store", schema)
    tier = InMemoryTier(schema, retention=100, store=store)
    rows = pa.table({"user_id": [1, 1, 1], "ts": [5, 6, 7], "flag": [True, False, True],
                     "w": pa.array([-0.0, 1.5, 2.5], pa.float32()), "arrival_ts": [6, 7, 30],
                     "event_id": [1, 2, 3]})
    tier.append(rows.slice(0, 1))
    store = fold(store, tier, 7)
    tier.append(rows.slice(1, 2))
    projection = lateseq.Projection(5, ("flag", "w", "ts"))
    log, served = OnlineReader(store, tier, projection).serve(requests((1, 40)))
    assert served.values["flag"].tolist() == [True, False, True]
    assert np.signbit(served.values["w"][0])  # -0.0 survives the tail and the merge
    store = fold(store, tier, 50).compact()
    stripped, _ = strip_tails(store, log)
    for batch in (rebuild_streaming(store, log, projection), lateseq.materialize(store, stripped, projection)):
        assert batch.values["flag"].tolist() == [True, False, True]
        assert batch.values["w"].tobytes() == served.values["w"].tobytes()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tier_tail_matches_brute_force(data):
    arrivals = sorted(data.draw(st.lists(st.integers(-5, 30), max_size=25)))
    users = [data.draw(st.integers(0, 3)) for _ in arrivals]
    tier = InMemoryTier(SCHEMA, retention=100)
    if arrivals:
        tier.append(events(*[(u, a, a, i) for i, (u, a) in enumerate(zip(users, arrivals, strict=True))]))
    queries = data.draw(st.lists(st.tuples(st.integers(-1, 4), st.integers(-10, 35)), max_size=6))
    since = data.draw(st.one_of(st.none(), st.integers(-10, 35)))
    q_users = np.array([u for u, _ in queries], np.int64)
    q_until = np.array([t for _, t in queries], np.int64)
    owners, rows = tier.tail(q_users, since, q_until)
    got = list(zip(owners.tolist(), rows.column("event_id").to_pylist(), strict=True))
    expected = [(q, i) for q, (u, t) in enumerate(queries)
                for i, (eu, a) in enumerate(zip(users, arrivals, strict=True))
                if eu == u and (since is None or a >= since) and a < t]
    assert got == expected


def test_a_deletion_reaches_the_mutable_tier_too(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1), (2, 5, 7, 2)))
    store = fold(store, tier, 20)
    tier.append(events((1, 21, 22, 3), (2, 21, 23, 4)))  # not folded yet when user 1 asks to be forgotten
    store = store.delete([1])
    assert tier.delete([1]) == 2  # folded or not, the tier holds both until they expire
    store = fold(store, tier, 40)
    log = lateseq.log_examples(store, requests((1, 40), (2, 40)))
    assert log.column("uih_length").to_pylist() == [0, 2]
    with pytest.raises(SchemaError, match="users to delete"):
        tier.delete([1.5])


def test_a_user_back_after_a_deletion_keeps_its_new_records(world):
    """Records served before a user's deletion hold deleted events: ``strip_tails(
    drop_deleted=True)`` erases their tails and the audit says ``deleted``. Records served
    after it hold only the user's new events: their tails stay, and a damaged one is
    ``corrupt data``, not ``deleted`` (both went by the user id alone)."""
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 2)))
    before, _ = OnlineReader(store, tier, PROJECTION).serve(requests((1, 25)))
    store = store.delete([1])
    tier.delete([1])
    tier.append(events((1, 30, 31, 3)))  # back: new events only
    store = fold(store, tier, 40)
    tier.append(events((1, 42, 43, 4)))
    after, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 45)))
    assert served.values["item_id"].tolist() == [30, 40]
    log = pa.concat_tables([before, after])
    stripped, _ = strip_tails(store, log, drop_deleted=True)
    assert stripped.column("tail_item_id").to_pylist() == [[], [40]]
    assert audit(store, stripped).mismatches == {0: "deleted"}
    assert lateseq.materialize(store, stripped.slice(1), PROJECTION).values["item_id"].tolist() == [30, 40]
    damaged = after.set_column(after.schema.get_field_index("tail_item_id"), "tail_item_id",
                               pa.array([[41]], pa.list_(pa.int64())))
    assert audit(store, damaged).mismatches == {0: "corrupt data"}
    with pytest.raises(lateseq.ChecksumMismatch, match="1 of them are examples of users deleted"):
        lateseq.materialize(store, before, PROJECTION)
    plain = lateseq.log_examples(store, requests((1, 45)))
    plain = plain.set_column(4, "uih_checksum", pa.array([1], pa.uint32()))  # damaged after the deletion
    with pytest.raises(lateseq.ChecksumMismatch, match="lost or gained events"):
        lateseq.materialize(store, plain, PROJECTION)


def test_a_deleted_users_record_without_a_tail_is_stripped_without_a_warning(world):
    """A record of a deleted user whose tail was empty (every event it served was stored)
    was checked like the others, failed, and was warned of as "what online served differs
    from what the store holds" (a stranger's)."""
    store, tier = world
    tier.append(events((1, 5, 6, 1), (2, 7, 8, 2)))
    store = fold(store, tier, 20)
    log, _ = OnlineReader(store, tier, PROJECTION).serve(requests((1, 25), (2, 25)))
    assert pc.list_value_length(log.column("tail_item_id")).to_pylist() == [0, 0]
    store = store.delete([1])
    tier.delete([1])
    store = fold(store, tier, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stripped, count = strip_tails(store, log, drop_deleted=True)
    assert count == 2 and audit(store, stripped).mismatches == {0: "deleted"}


def test_a_user_deleted_while_only_in_the_tier_has_its_served_tails_erased(world):
    """A new user's events all in the tier, served inline, then deleted: the store held
    none of them, so its deletion published nothing and recorded nothing, and
    ``strip_tails(drop_deleted=True)`` kept the tail (a stranger's find)."""
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((7, 21, 22, 2)))
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((7, 30), (1, 30)))
    assert served.values["item_id"].tolist() == [20, 10]
    store = store.delete([7])
    assert store.deleted_users().tolist() == [7]
    assert tier.delete([7]) == 1
    store = fold(store, tier, 40)
    stripped, count = strip_tails(store, log, drop_deleted=True)
    assert count == 2 and stripped.column("tail_item_id").to_pylist() == [[], []]  # 7 erased, 1 stripped
    assert audit(store, stripped).mismatches == {0: "deleted"}


def test_expire_never_drops_what_no_fold_holds_yet(world):
    """``expire``'s folded watermark is capped by what the tier knows was folded: one ahead
    of the folds (the watermark about to be folded) dropped events no version held, the
    fold then committed without them, and their requests were served and rebuilt short."""
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 25, 30, 2)))
    tier.expire(now=200, folded_watermark=60)  # retention 100: 30 is old enough, and not folded
    store = fold(store, tier, 60)
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 70)))
    assert served.values["item_id"].tolist() == [10, 20]


def test_a_fold_over_events_the_tier_dropped_is_refused(world):
    """A tier (any implementation) that expired events past the store's watermark: the fold
    would publish a version without them; refused, nothing published."""
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 25, 30, 2)))
    tier._drop_before(40)
    tier.expired_before = 40
    with pytest.raises(StoreError, match="dropped events"):
        fold(store, tier, 60)
    assert lateseq.open(store.path).version == store.version


def test_a_column_whose_tail_would_be_a_record_field_is_refused_before_serving(tmp_path):
    """A payload column ``version`` has the tail column ``tail_version``, every record's own
    field: each serve failed on a missing column, after marking the tier as read. Refused
    when the reader was made, it was still after events had been folded: now when the tier
    is (s61C)."""
    schema = lateseq.Schema({"item_id": "int64", "version": "int64", "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id")
    with pytest.raises(SchemaError, match="column 'version' .* 'tail_version' is a field every record has"):
        InMemoryTier(schema, retention=100)


@pytest.mark.parametrize("shape", ["large lists", "list views", "record batch"])
def test_strip_takes_the_log_shapes_materialize_takes(world, shape):
    """Tails as large lists (polars, Arrow readers set to large types) raised Arrow's "Field
    type did not match data type"; as list views (DuckDB), materialize's PointerError and
    strip's "Expected list type"; a RecordBatch, Python's AttributeError."""
    store, log, served = serve_one_scenario(*world)
    plain = log
    if shape == "large lists":
        log = pa.table([c.cast(pa.large_list(f.type.value_type)) if pa.types.is_list(f.type) else c
                        for f, c in zip(log.schema, log.columns, strict=True)], names=log.column_names)
    elif shape == "list views":
        log = as_list_views(log)
        assert pa.types.is_list_view(log.schema.field("tail_item_id").type)
        assert not lateseq.materialize(store, log, PROJECTION).rows_differ(served).any()
    else:
        log = log.to_batches()[0]
    stripped, count = strip_tails(store, log)
    kept = plain.schema if shape == "list views" else log.schema  # a view's tails come back as lists
    assert count == 3 and stripped.schema.field("tail_item_id").type == kept.field("tail_item_id").type
    assert lateseq.materialize(store, stripped, PROJECTION).values["item_id"].tolist() == \
        served.values["item_id"].tolist()


def test_strip_refuses_a_log_of_plain_pointers_naming_it(world):
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    with pytest.raises(SchemaError, match="holds plain pointers"):
        strip_tails(store, lateseq.log_examples(store, requests((1, 25))))


@pytest.mark.parametrize("retention, pattern", [(float("nan"), "positive number of seconds"),
                                                ("10", "positive number of seconds"), (True, "positive number"),
                                                (0.0001, "less than one tick")])
def test_a_retention_that_is_no_positive_duration_is_refused(retention, pattern):
    schema = lateseq.Schema({"item_id": "int64", "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id", time_unit="ms")
    with pytest.raises(SchemaError, match=pattern):
        InMemoryTier(schema, retention=retention)


def test_expire_takes_a_timedelta_retention_and_refuses_times_that_are_no_integers(world):
    import datetime

    store, tier = world
    assert InMemoryTier(SCHEMA, retention=datetime.timedelta(minutes=2))._retention_ticks == 120
    with pytest.raises(SchemaError, match="expire's now .* must be an integer, got str"):
        tier.expire("100", 0)
    with pytest.raises(SchemaError, match="folded_watermark must be an integer, got float"):
        tier.expire(100, 1.5)


def test_a_numpy_timedelta_retention_counts_its_own_unit(world):
    """An np.timedelta64 is an integer to numpy: in ns it was read as seconds (10 minutes
    became 19,000 years), in s or ms a bare TypeError (s61I)."""
    for given in (np.timedelta64(120, "s"), np.timedelta64(120_000, "ms"), np.timedelta64(120 * 10**9, "ns")):
        assert InMemoryTier(SCHEMA, retention=given)._retention_ticks == 120
    with pytest.raises(SchemaError, match="has no unit"):
        InMemoryTier(SCHEMA, retention=np.timedelta64(120))


def test_a_tier_made_without_its_store_learns_the_folded_watermark_from_a_reader(tmp_path):
    """A tier made without ``store=`` after another folded (a restarted server) took an
    event stamped before the store's watermark: never served, never folded, lost (s61I).
    Given to a reader or a fold, it learns the watermark, and refuses such an append."""
    schema = lateseq.Schema({"item_id": "int64", "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id")
    store = lateseq.create(tmp_path / "store", schema)
    first = InMemoryTier(schema, retention=100)
    first.append(pa.table({"user_id": [1], "ts": [1], "item_id": [100], "arrival_ts": [1], "event_id": [1]}))
    store = fold(store, first, 10)
    restarted = InMemoryTier(schema, retention=100)
    OnlineReader(store, restarted, lateseq.Projection(10, ("item_id",)))
    with pytest.raises(SchemaError, match="arrived before 10"):
        restarted.append(pa.table({"user_id": [1], "ts": [2], "item_id": [200], "arrival_ts": [5], "event_id": [2]}))
    assert len(restarted) == 0


def test_a_request_read_while_folds_and_expiry_pass_its_version_is_served_through_the_newest(tmp_path):
    """Two folds and an expiry between a request's read of the newest version and its read
    of the tier: it raised "fold more often than the tier's retention" though folds came
    three times as often (s61I). Served again through the newest version, it is exact."""
    schema = lateseq.Schema({"item_id": "int64", "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id")
    store = lateseq.create(tmp_path / "store", schema)
    tier = InMemoryTier(schema, retention=30, store=store)
    for k in range(1, 9):
        tier.append(pa.table({"user_id": [1], "ts": [10 * k], "item_id": [k], "arrival_ts": [10 * k],
                              "event_id": [k]}))
    store = fold(store, tier, 45)
    reader = OnlineReader(store, tier, lateseq.Projection(10, ("item_id",)))
    real, passed = tier.tail, []

    def passed_meanwhile(*args):
        if not passed:  # another thread, between serve's read of the newest version and its read of the tier
            passed.append(fold(fold(lateseq.open(store.path), tier, 60), tier, 75))
            tier.expire(100, 75)
        return real(*args)

    tier.tail = passed_meanwhile
    log, served = reader.serve(pa.table({"user_id": [1], "request_ts": [90]}))
    assert served.values["item_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    again = lateseq.materialize(lateseq.open(store.path), log, lateseq.Projection(10, ("item_id",)))
    assert again.values["item_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_audit_reports_records_of_versions_the_handle_cannot_read(world):
    """One record naming a version beyond the handle (tampered, or from a newer replica)
    is a mismatch with its cause; it made the whole audit raise PointerError."""
    store, log, _ = serve_one_scenario(*world)
    stripped, _ = strip_tails(store, log)
    tail_version = stripped.column("tail_version").to_numpy().copy()
    tail_version[1] = store.version + 7
    uih_version = stripped.column("uih_version").to_numpy().copy()
    uih_version[2] = store.version + 1
    bad = stripped.set_column(stripped.schema.get_field_index("tail_version"), "tail_version",
                              pa.array(tail_version, pa.uint32()))
    bad = bad.set_column(bad.schema.get_field_index("uih_version"), "uih_version", pa.array(uih_version, pa.uint32()))
    assert audit(store, bad).mismatches == {1: "version newer than this handle", 2: "version newer than this handle"}
    assert audit(store, stripped).mismatches == {}


def test_a_handle_from_before_a_deletion_does_not_blame_it(world):
    """A handle at a version before a user's deletion still reads every event of that
    user: a record failing there fails for another cause (it said ``deleted``)."""
    store, tier = world
    tier.append(events((1, 5, 6, 1), (2, 5, 7, 2)))
    store = fold(store, tier, 20)
    log = lateseq.log_examples(store, requests((1, 25), (2, 25)))
    damaged = log.set_column(4, "uih_checksum", pa.array([123, log.column("uih_checksum")[1].as_py()], pa.uint32()))
    store.delete([1])
    old = lateseq.open(store.path, store.version)
    assert audit(old, damaged).mismatches[0] != "deleted"
    assert audit(lateseq.open(store.path), damaged).mismatches[0] == "deleted"
    with pytest.raises(SchemaError, match="fold needs a watermark"):
        fold(store, tier, None)


def test_a_mismatch_in_a_log_of_stripped_and_inline_records_names_its_row(tmp_path):
    """Each kind of record is rebuilt apart: the error named the row among its kind (a
    good row of the log, which a caller dropping ``exc.rows`` dropped instead, s36E)."""
    store = lateseq.create(tmp_path / "store", SCHEMA)
    tier = InMemoryTier(SCHEMA, retention=3600, store=store)
    tier.append(events(*((u, 5, 6, u) for u in (1, 2, 3, 4))))
    store = fold(store, tier, 10)
    tier.append(events(*((u, 11, 11, 10 + u) for u in (1, 2, 3, 4))))
    online = OnlineReader(store, tier, PROJECTION)
    early, _ = online.serve(pa.table({"user_id": [1, 2], "request_ts": [15, 15]}))
    store = fold(store, tier, 20)
    late, _ = online.serve(pa.table({"user_id": [3, 4], "request_ts": [25, 25]}))
    early, _ = strip_tails(store, early)
    log = pa.concat_tables([late.slice(0, 1), early.slice(0, 1), late.slice(1, 1), early.slice(1, 1)])
    for row in (3, 2):  # a stripped record, then an inline one
        checksum = log.column("seq_checksum").to_numpy().copy()
        checksum[row] += 1
        bad = log.set_column(log.schema.get_field_index("seq_checksum"), "seq_checksum",
                             pa.array(checksum, pa.uint32()))
        assert lateseq.materialize(store, bad, PROJECTION, on_mismatch="flag").mismatched.nonzero()[0].tolist() == [row]
        with pytest.raises(lateseq.ChecksumMismatch, match=rf"\(first rows: \[{row}\]\)") as info:
            lateseq.materialize(store, bad, PROJECTION)
        assert info.value.rows == [row] and "of 2 rebuilt" not in str(info.value)  # the log's 4, not a kind's 2
    checksum = log.column("seq_checksum").to_numpy().copy()
    checksum[[2, 3]] += 1  # one of each kind: both named (s36R)
    bad = log.set_column(log.schema.get_field_index("seq_checksum"), "seq_checksum", pa.array(checksum, pa.uint32()))
    with pytest.raises(lateseq.ChecksumMismatch, match=r"first rows: \[3\]\).*; .*first rows: \[2\]\)") as info:
        lateseq.materialize(store, bad, PROJECTION)
    assert info.value.rows == [2, 3]


@pytest.mark.parametrize("bound", [True, False])
def test_a_redelivery_after_expiry_is_served_once_whether_the_tier_knows_the_store_or_not(tmp_path, bound):
    """A tier made without ``store=`` cannot tell a redelivery of an event it expired from
    a new one: serve read it from the store and again from the tail (s42's open item),
    and logged a history that no rebuild after the fold reproduces."""
    store = lateseq.create(tmp_path / "store", SCHEMA)
    tier = InMemoryTier(SCHEMA, retention=10, store=store if bound else None)
    tier.append(events((1, 5, 6, 1), (2, 4, 7, 3)))
    store = fold(store, tier, 20)
    tier.expire(now=100, folded_watermark=20)
    tier.append(events((1, 5, 150, 1), (1, 7, 150, 2), (2, 4, 151, 3)))  # events 1 and 3 are stored
    log, served = OnlineReader(store, tier, PROJECTION).serve(requests((1, 200), (1, 201), (2, 200)))
    assert served.to_arrow().column("item_id").to_pylist() == [[10, 20], [10, 20], [30]]
    assert log.column("seq_length").to_pylist() == [2, 2, 1]
    store = fold(store, tier, 300)
    for rebuilt in (rebuild_streaming(store, log, PROJECTION), rebuild_batch(store, log, PROJECTION)):
        assert not rebuilt.rows_differ(served).any()


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 2)), max_size=12),
       known=st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 2)), max_size=8))
def test_known_pairs_matches_a_set(rows, known):
    from lateseq._events import known_pairs

    def columns(pairs):
        return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))

    assert known_pairs(*columns(rows), *columns(known)).tolist() == [p in set(known) for p in rows]
