"""The HSTU example (examples/hstu_*.py): both data sources give bit-identical batches,
ties are ordered as documented, and the model's shortcuts (chunks, last row only) are exact.

Runs on 200 MovieLens-1M users with a tiny model: a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import lateseq  # noqa: E402
import lateseq.datasets  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from hstu_model import HSTU, HSTUConfig  # noqa: E402
from hstu_train import TrainConfig, chunks, evaluate, train_step  # noqa: E402
from ml1m_data import (  # noqa: E402
    TIE_SCALE,
    build_fat_rows,
    build_lateseq,
    item_ids,
    stable_events,
    subset_users,
)
from seqdata import FatRowSource, LateseqSource, SeqBatch  # noqa: E402

MAX_LEN = 30
BATCH = 32


@pytest.fixture(scope="module")
def ratings() -> pa.Table:
    try:
        table = lateseq.datasets.load_movielens_1m()
    except FileNotFoundError:
        pytest.skip("MovieLens-1M is not installed (make setup installs it)")
    return subset_users(table, 200)


@pytest.fixture(scope="module")
def built(ratings, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hstu")
    return build_lateseq(ratings, workdir), build_fat_rows(ratings, workdir, MAX_LEN)


def _sources(built, seed: int = 0):
    ls, fr = built
    store = lateseq.open(ls.store)
    return {
        "lateseq": (LateseqSource(store, ls.train, MAX_LEN + 1, MAX_LEN + 1, BATCH, shuffle=True, seed=seed,
                                  time_scale=TIE_SCALE),
                    LateseqSource(store, ls.test, 10**6, MAX_LEN, BATCH, shuffle=False, time_scale=TIE_SCALE,
                                  seen=True)),
        "fatrow": (FatRowSource(fr.train, MAX_LEN + 1, BATCH, shuffle=True, seed=seed),
                   FatRowSource(fr.test, MAX_LEN, BATCH, shuffle=False, seen=True)),
    }


def test_sources_give_bit_identical_batches(built):
    sums = {name: [[b.checksum() for b in train.epoch(e)] for e in range(2)] + [[b.checksum() for b in test.epoch(0)]]
            for name, (train, test) in _sources(built).items()}
    assert sums["lateseq"] == sums["fatrow"]
    assert sums["lateseq"][0] != sums["lateseq"][1]  # shuffled anew each epoch
    assert len(sums["lateseq"][0]) == -(-200 // BATCH)


def test_checksums_see_a_different_tie_order(ratings, built, tmp_path):
    """Fat Rows whose same-second ratings are in another order must not pass as equal."""
    shuffled = ratings.take(pa.array(np.random.default_rng(0).permutation(ratings.num_rows)))
    other = build_fat_rows(shuffled, tmp_path, MAX_LEN)
    lateseq_train = _sources(built)["lateseq"][0]
    ours = [b.checksum() for b in lateseq_train.epoch(0)]
    theirs = [b.checksum() for b in FatRowSource(other.train, MAX_LEN + 1, BATCH, shuffle=True).epoch(0)]
    assert ours != theirs


def test_training_from_both_sources_is_identical(ratings, built):
    """A few steps from each source with one seed: the same finite losses and metrics."""
    items = item_ids(ratings)
    pool = torch.from_numpy(items)
    not_items = torch.ones(int(items.max()) + 1, dtype=torch.bool)
    not_items[pool] = False
    cfg = TrainConfig(negatives=16)
    results = {}
    for name, (train, test) in _sources(built, seed=1).items():
        torch.manual_seed(0)
        model = HSTU(HSTUConfig(num_items=int(items.max()), max_len=MAX_LEN, dim=16))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        losses = [train_step(model, b, opt, pool, gen, cfg) for b in train.epoch(0)]
        metrics, _ = evaluate(model, test.epoch(0), not_items, cfg.attention_budget, torch.device("cpu"))
        results[name] = (losses, metrics)
    losses, metrics = results["lateseq"]
    assert all(np.isfinite(losses)) and len(losses) == -(-200 // BATCH)
    assert 0 <= metrics["hr@10"] <= metrics["hr@50"] <= 1
    assert results["lateseq"] == results["fatrow"]


def test_tied_ratings_see_exactly_the_ratings_before_them(ratings, tmp_path):
    """Every rating of users with same-second ratings, as a request: its lateseq history is
    the user's ratings before it in (second, file row) order, from a pandas oracle."""
    df = ratings.to_pandas()
    df["row"] = np.arange(len(df))
    users = df[df.duplicated(["user_id", "ts"], keep=False)]["user_id"].drop_duplicates().to_numpy()[:5]
    assert len(users) == 5
    events = stable_events(ratings.filter(pa.array(np.isin(ratings.column("user_id").to_numpy(), users))))
    store = lateseq.create(tmp_path / "store", lateseq.Schema.infer(events.schema, time_unit="ms"))
    store = store.commit(events)
    expected, targets = [], []
    for user in sorted(users):
        seq = df[df["user_id"] == user].sort_values(["ts", "row"])["item_id"].tolist()  # file order in a second
        expected += [seq[:k] for k in range(len(seq))]
        targets += seq

    def histories(request_ts: pa.Array) -> list[list[int]]:
        log = lateseq.log_examples(store, pa.table({"user_id": events.column("user_id"), "request_ts": request_ts}))
        got = lateseq.materialize(store, log, lateseq.Projection(10**6, ("item_id",)))
        v, o = got.values["item_id"], got.offsets
        return [v[o[i]:o[i + 1]].tolist() for i in range(len(o) - 1)]

    assert events.column("item_id").to_pylist() == targets
    assert histories(events.column("ts")) == expected
    # pointers at the whole second would lose the earlier ratings of that second
    seconds = pa.array(events.column("ts").to_numpy() // TIE_SCALE * TIE_SCALE)
    wrong = histories(seconds)
    assert wrong != expected and all(w == e[:len(w)] for w, e in zip(wrong, expected))


def test_stable_events_rank_ties_in_file_order():
    table = pa.table({"user_id": [1, 2, 1, 1, 2], "ts": [7, 5, 7, 3, 5], "item_id": [10, 20, 11, 12, 21]})
    out = stable_events(table)
    assert out.column("user_id").to_pylist() == [1, 1, 1, 2, 2]
    assert out.column("ts").to_pylist() == [3000, 7000, 7001, 5000, 5001]
    assert out.column("item_id").to_pylist() == [12, 10, 11, 20, 21]
    expected = pd.DataFrame(table.to_pydict()).sort_values(["user_id", "ts"], kind="stable")
    assert out.column("item_id").to_pylist() == expected["item_id"].tolist()


def _random_batch(rng: np.random.Generator, rows: int, width: int, items: int) -> SeqBatch:
    lengths = torch.from_numpy(rng.integers(2, width + 1, rows))
    ids = torch.from_numpy(rng.integers(1, items + 1, (rows, width)))
    ts = torch.from_numpy(np.cumsum(rng.integers(0, 5000, (rows, width)), axis=1))
    keep = torch.arange(width)[None, :] < lengths[:, None]
    return SeqBatch(ids * keep, ts * keep, lengths)


def test_chunked_step_equals_one_big_step():
    """Splitting a batch into length chunks changes nothing but speed (no dropout here)."""
    rng = np.random.default_rng(0)
    batch = _random_batch(rng, 24, 40, 50)
    params = []
    for budget, spread in ((10**9, float("inf")), (40**2 * 3, 1.5)):
        assert (len(list(chunks(batch.lengths - 1, budget, spread))) == 1) == (budget == 10**9)
        torch.manual_seed(0)
        model = HSTU(HSTUConfig(num_items=50, max_len=40, dim=8, dropout=0.0))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        train_step(model, batch, opt, torch.arange(1, 51), torch.Generator().manual_seed(0),
                   TrainConfig(negatives=8, attention_budget=budget, length_spread=spread))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-5)


def test_last_row_shortcut_matches_full_output():
    rng = np.random.default_rng(1)
    batch = _random_batch(rng, 6, 20, 30)
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(num_items=30, max_len=20, dim=8, layers=2)).eval()
    query_ts = batch.ts + 7
    full = model(batch.ids, batch.ts, batch.lengths, query_ts)
    last = model(batch.ids, batch.ts, batch.lengths, query_ts, last_only=True)
    assert torch.allclose(full[torch.arange(6), batch.lengths - 1], last, atol=1e-6)
    # and an output never depends on later events
    later = batch.ids.clone()
    later[:, -1] = 1
    assert torch.allclose(model(later, batch.ts, batch.lengths, query_ts, last_only=True)[batch.lengths < 20],
                          last[batch.lengths < 20], atol=1e-6)


def test_a_plot_without_matplotlib_is_refused_before_training(monkeypatch, capsys):
    """It trained for the hour, wrote its JSON, then failed on the import (s61H)."""
    import importlib.util

    import hstu_ml1m
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit):
        hstu_ml1m.main(["--plot", "x.png", "--epochs", "1"])
    assert "--plot needs matplotlib" in capsys.readouterr().err
