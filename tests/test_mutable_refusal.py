"""The mutable tier refuses events that arrive below the watermark already folded into
the store: the next fold drains from that watermark, so they would be neither stored
nor served. A refused append changes nothing; an accepted one is never lost."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import TWO_TIER_SCHEMA

import lateseq
from lateseq import SchemaError
from lateseq.mutable import InMemoryTier
from lateseq.twotier import OnlineReader, fold

PROJECTION = lateseq.Projection(100, ("item_id", "ts", "arrival_ts"))


def events(*rows: tuple[int, int, int, int]) -> pa.Table:
    """Rows of (user, event time, arrival time, event id); item id = 10 * event id."""
    user, ts, arrival, eid = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"user_id": user, "ts": ts, "item_id": [10 * e for e in eid],
                     "arrival_ts": arrival, "event_id": eid})


def stored_ids(store: lateseq.Store) -> list[int]:
    users = pa.array(range(10), pa.int64()).to_numpy()
    return sorted(store.latest().event_ids(users)[1].tolist())


def state(tier: InMemoryTier) -> tuple:
    return tier.drain(None, 2**62).to_pydict(), tier.expired_before, tier.folded_before


@pytest.mark.parametrize("with_store", [True, False])
def test_an_append_below_the_folded_watermark_is_refused(tmp_path, dir_snapshot, with_store):
    store = lateseq.create(tmp_path / "store", TWO_TIER_SCHEMA)
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=100, store=store if with_store else None)
    tier.append(events((1, 5, 15, 1)))
    store = fold(store, tier, 20)
    store_before, tier_before = dir_snapshot(store.path), state(tier)
    with pytest.raises(SchemaError) as err:  # after the tier's last arrival (15), but already folded
        tier.append(events((1, 6, 18, 2)))
    assert "18" in str(err.value) and "20" in str(err.value)
    with pytest.raises(SchemaError, match="2 events arrived before 20 \\(the first at 17\\)"):
        tier.append(events((1, 6, 17, 3), (1, 7, 19, 4), (1, 8, 20, 5), (2, 1, 25, 6)))  # all or nothing
    assert state(tier) == tier_before and dir_snapshot(store.path) == store_before
    # arriving exactly at the watermark is the next fold's: accepted, stored, served
    assert tier.append(events((1, 8, 20, 5))) == 1
    served = OnlineReader(store, tier, PROJECTION).serve(pa.table({"user_id": [1], "request_ts": [21]}))[1]
    assert served.values["item_id"].tolist() == [10, 50]
    store = fold(store, tier, 30)
    assert stored_ids(store) == [1, 5]


def test_the_tier_learns_the_watermark_from_its_store(tmp_path, dir_snapshot):
    """Another writer folded (or committed with a watermark) without telling this tier."""
    store = lateseq.create(tmp_path / "store", TWO_TIER_SCHEMA)
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=100, store=store)
    tier.append(events((1, 5, 6, 1)))
    other = InMemoryTier(TWO_TIER_SCHEMA, retention=100)
    other.append(events((2, 5, 6, 2)))
    store = fold(store, other, 40)
    assert tier.folded_before < 40  # fold told the other tier, not this one
    before = state(tier)
    with pytest.raises(SchemaError, match="arrived before 40 \\(the first at 39\\)"):
        tier.append(events((1, 9, 39, 3)))
    assert state(tier)[0] == before[0]
    assert tier.append(events((1, 9, 41, 4))) == 1


def test_folded_never_goes_back(world):
    _, tier = world
    tier.folded(30)
    tier.folded(10)
    assert tier.folded_before == 30
    with pytest.raises(SchemaError, match="before 30"):
        tier.append(events((1, 1, 29, 1)))


def test_a_failed_fold_does_not_move_the_tier(world, monkeypatch):
    store, tier = world
    tier.append(events((1, 5, 6, 1)))

    def broken(*args, **kwargs):
        raise lateseq.StoreError("disk full")

    monkeypatch.setattr(lateseq.Store, "commit", broken)
    with pytest.raises(lateseq.StoreError):
        fold(store, tier, 20)
    monkeypatch.undo()
    assert tier.append(events((1, 7, 10, 2))) == 1  # nothing was folded: 10 is still on time
    store = fold(store, tier, 20)
    assert stored_ids(store) == [1, 2]


def test_an_append_while_a_fold_commits_is_folded_or_refused(world, monkeypatch):
    """A producer (another thread or host) appends after the fold drained the tier, before
    its version is published: accepted, it would be in neither that version nor the next."""
    store, tier = world
    tier.append(events((1, 5, 10, 1)))
    commit, refused = lateseq.Store.commit, []

    def commit_meanwhile(self, *args, **kwargs):
        with pytest.raises(SchemaError, match="arrived before 30") as err:
            tier.append(events((1, 15, 20, 2)))
        refused.append(err)
        assert tier.append(events((1, 16, 30, 3))) == 1  # at the watermark: the next fold's
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(lateseq.Store, "commit", commit_meanwhile)
    store = fold(store, tier, 30)
    monkeypatch.undo()
    assert refused and stored_ids(store) == [1]
    assert stored_ids(fold(store, tier, 100)) == [1, 3]


def test_a_fold_that_fails_after_publishing_keeps_refusing(world, monkeypatch):
    store, tier = world
    tier.append(events((1, 5, 10, 1)))
    commit = lateseq.Store.commit

    def published_then_failed(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(lateseq.Store, "commit", published_then_failed)
    with pytest.raises(KeyboardInterrupt):
        fold(store, tier, 30)
    monkeypatch.undo()
    assert store.latest().watermark == 30 and tier.folded_before == 30
    with pytest.raises(SchemaError, match="arrived before 30"):
        tier.append(events((1, 15, 20, 2)))


def test_a_fold_that_fails_beside_one_that_published_keeps_what_that_one_folded(world):
    """Fold B (to 50) marked, fold A (to 30) published, then B failed: its rollback took
    the tier back below 30, and a tier without its store accepted an append at 20 that
    no fold would drain (s34G)."""
    store, tier = world
    tier.append(events((1, 5, 10, 1)))
    tier.begin_fold(50)  # fold B, under way
    store = fold(store, tier, 30)  # fold A
    tier.end_fold(50, published=False)  # B failed
    with pytest.raises(SchemaError, match="arrived before 30"):
        tier.append(events((1, 6, 20, 2)))
    assert tier.append(events((1, 7, 40, 3))) == 1  # B's range is on time again
    assert stored_ids(fold(store, tier, 100)) == [1, 3]


def test_expire_keeps_what_a_fold_under_way_has_not_published(world, monkeypatch):
    """The fold's mark refuses appends before it, but expire counts only what a version
    holds: an expire during the commit dropped events that the failed commit left out (s34G)."""
    store, tier = world
    tier.append(events((1, 5, 10, 1)))

    def expire_then_fail(*args, **kwargs):
        tier.expire(now=10**6, folded_watermark=30)  # a watermark given ahead of the folds
        raise lateseq.StoreError("disk full")

    monkeypatch.setattr(lateseq.Store, "commit", expire_then_fail)
    with pytest.raises(lateseq.StoreError):
        fold(store, tier, 30)
    monkeypatch.undo()
    assert len(tier) == 1
    assert stored_ids(fold(store, tier, 30)) == [1]


def test_a_fold_from_another_thread_waits_for_an_append_it_would_miss(tmp_path, monkeypatch):
    """InMemoryTier checked an append, read the store's event ids, then stored it: a fold
    from another thread in between drained without it, and the append said 1 (s34G)."""
    store = lateseq.create(tmp_path / "store", TWO_TIER_SCHEMA)
    store = store.commit(events((9, 1, 1, 99)), watermark=2)
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=1000, store=store)
    event_ids, folds = lateseq.Store.event_ids, []

    def fold_meanwhile(self, users):
        monkeypatch.setattr(lateseq.Store, "event_ids", event_ids)
        folds.append(threading.Thread(target=lambda: folds.append(fold(store, tier, 30))))
        folds[0].start()
        folds[0].join(0.5)  # it waits for this append to be stored (it would finish at once without it)
        return event_ids(self, users)

    monkeypatch.setattr(lateseq.Store, "event_ids", fold_meanwhile)
    assert tier.append(events((1, 6, 20, 2))) == 1
    folds[0].join(30)
    assert stored_ids(folds[1]) == [2, 99]


@settings(max_examples=60)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(-5, 30), st.integers(1, 3)),  # arrival step, how many
    st.tuples(st.just("fold"), st.integers(1, 20), st.just(0)),  # watermark step
), max_size=25), st.booleans())
def test_every_accepted_event_is_stored_and_every_refusal_is_justified(tmp_path_factory, ops, with_store):
    """A model: appends are refused exactly when some arrival is below the highest
    folded watermark (or out of arrival order); every accepted event is in the store
    after a last fold past everything."""
    store = lateseq.create(tmp_path_factory.mktemp("s") / "store", TWO_TIER_SCHEMA)
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=10**6, store=store if with_store else None)
    clock, folded, last_arrival, accepted, next_id = 0, None, None, [], 1
    for op, step, count in ops:
        if op == "fold":
            watermark = (folded or 0) + step
            store = fold(store, tier, watermark)
            folded = watermark
            continue
        first = clock + step
        rows = [(1 + i % 2, i, first + i, next_id + i) for i in range(count)]
        next_id += count
        out_of_order = last_arrival is not None and first < last_arrival
        too_late = folded is not None and first < folded
        if out_of_order or too_late:
            with pytest.raises(SchemaError):
                tier.append(events(*rows))
            continue
        assert tier.append(events(*rows)) == count
        accepted += [r[3] for r in rows]
        clock = last_arrival = first + count - 1
    store = fold(store, tier, max(folded or 0, clock) + 1)
    assert stored_ids(store) == sorted(accepted)


def test_an_append_that_arrived_before_a_request_already_served_is_refused(world, dir_snapshot):
    """A request at 25 read the tier without an event; that event then stamped as having
    arrived at 23 would be in what the store says the request saw, and its record would
    never verify once its tail is stripped."""
    store, tier = world
    tier.append(events((1, 5, 6, 1)))
    store = fold(store, tier, 20)
    tier.append(events((1, 12, 21, 2)))
    OnlineReader(store, tier, PROJECTION).serve(pa.table({"user_id": [2, 1], "request_ts": [25, 24]}))
    before, files = state(tier), dir_snapshot(store.path)
    with pytest.raises(SchemaError, match=r"1 events arrived before 25 \(the first at 23\), when a request already"):
        tier.append(events((3, 13, 23, 3), (3, 14, 26, 4)))
    assert state(tier) == before and dir_snapshot(store.path) == files
    assert tier.append(events((3, 13, 25, 3))) == 1  # at the request's time: it did not read it, as the store says


def test_an_append_of_a_dataframe_or_a_dict_is_refused_by_name():
    """Read as a table first: a bare AttributeError of num_rows (s36E)."""
    tier = InMemoryTier(TWO_TIER_SCHEMA, retention=3600)
    frame = events((1, 5, 6, 1)).to_pandas()
    with pytest.raises(SchemaError, match=r"events are a pyarrow Table, not a DataFrame \(pa.Table.from_pandas"):
        tier.append(frame)
    with pytest.raises(SchemaError, match="events are a pyarrow Table, not a dict"):
        tier.append(frame.to_dict("list"))
    assert state(tier) == state(InMemoryTier(TWO_TIER_SCHEMA, retention=3600))
    assert tier.append(pa.Table.from_pandas(frame, preserve_index=False)) == 1


def test_a_request_or_a_watermark_in_a_finer_unit_is_refused_before_it_blocks_the_tier(tmp_path):
    """A request in ms to a store in s was served, and the tier then refused every event
    arriving before it, for every user, for good (s36E); a fold's watermark the same."""
    schema = lateseq.Schema(dict(TWO_TIER_SCHEMA.columns), arrival_col="arrival_ts", event_id_col="event_id",
                            time_unit="s")
    store = lateseq.create(tmp_path / "store", schema)
    tier = InMemoryTier(schema, retention=3600, store=store)
    now = 1_700_000_000
    tier.append(events((1, now, now + 1, 1)))
    online = OnlineReader(store, tier, PROJECTION)
    with pytest.raises(SchemaError, match=r"request_ts holds 1700000002000, after the year 3000 counted in the "
                                          r"store's unit \(seconds\).*a finer unit's"):
        online.serve(pa.table({"user_id": [1], "request_ts": [(now + 2) * 1000]}))
    with pytest.raises(SchemaError, match="fold's watermark 1700000005000 is after the year 3000"):
        fold(store, tier, (now + 5) * 1000)
    with pytest.raises(SchemaError, match="'arrival_ts' holds 1700000002000, after the year 3000"):  # s36G
        tier.append(events((2, now, (now + 2) * 1000, 3)))
    far = events((2, now, now + 2, 4)).set_column(1, "ts", pa.array([(now + 2) * 1000], pa.timestamp("s")))
    with pytest.raises(SchemaError, match="event time 1700000002000 is after the year 3000.*Every fold of it would "
                                          "be refused"):  # a timestamp, taken as is, then refused by each fold (s47C)
        tier.append(far)
    with pytest.raises(SchemaError, match="commit's watermark 1700000005000 is after the year 3000"):
        store.commit(pa.table({"user_id": pa.array([], pa.int64())}), watermark=(now + 5) * 1000)
    assert tier.append(events((2, now + 3, now + 3, 2))) == 1  # not blocked
    _, served = online.serve(pa.table({"user_id": [1, 2], "request_ts": [now + 4, now + 4]}))
    assert served.values["item_id"].tolist() == [10, 20]
    assert stored_ids(fold(store, tier, now + 5)) == [1, 2]
