"""MovieLens-1M for the HSTU example: one stable order, a lateseq store with example logs,
and the same examples as Fat Rows built the usual way (pandas), independently.

Order: a user's ratings sorted by (second, row in ratings.dat). Public preprocessing
sorts by second with an unstable sort, so ratings sharing a second (most of ML-1M's)
come in an arbitrary order; file order is the one order anyone can reproduce.

Ties and pointers: a pointer keeps the events with ``ts < request_ts``, so with times
in seconds, "the ratings before this one" would lose the earlier ratings of the same
second. The store therefore keeps ``ts = second * 1000 + rank``, the rank of the rating
among its user's ratings of that second in stable order (a millisecond-like sub-second
key; ML-1M has at most 30 ratings of one user in one second), and each example's
``request_ts`` is its target rating's stored ``ts``: ``ts < request_ts`` is then exactly
"rated before the target in stable order". The model reads ``ts // 1000`` (seconds).

Split (leave one out by position): the last rating of each user is the test target, the
one before it the validation target; training sequences are the ratings before the
validation target, each position predicting the next.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from seqdata import write_fat_rows

import lateseq

TIE_SCALE = 1000  # stored ts = second * TIE_SCALE + rank within (user, second)


def stable_events(ratings: pa.Table) -> pa.Table:
    """Ratings sorted by (user, second, file row), with ``ts`` = second * 1000 + tie rank."""
    user = ratings.column("user_id").to_numpy()
    second = ratings.column("ts").to_numpy()
    order = np.lexsort((np.arange(len(user)), second, user))
    user, second = user[order], second[order]
    starts = np.ones(len(user), bool)
    starts[1:] = (user[1:] != user[:-1]) | (second[1:] != second[:-1])
    index = np.arange(len(user))
    rank = index - np.maximum.accumulate(np.where(starts, index, 0))
    if len(rank) and rank.max() >= TIE_SCALE:
        raise ValueError(f"a user has over {TIE_SCALE} ratings in one second: widen TIE_SCALE")
    return pa.table({"user_id": user, "ts": second * TIE_SCALE + rank,
                     "item_id": ratings.column("item_id").to_numpy()[order]})


def split_rows(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows (in ``stable_events`` order) of each user's validation and test targets."""
    user = events.column("user_id").to_numpy()
    last = np.flatnonzero(np.append(user[1:] != user[:-1], True))
    return last - 1, last


@dataclass(frozen=True)
class LateseqFiles:
    """A store of every rating and three example logs of pointers into it."""

    store: Path
    train: Path  # per user: request at the validation target (history = training sequence)
    val: Path  # per user: request at the validation target, with it as ``target``
    test: Path  # per user: request at the test target

    def bytes(self) -> dict[str, int]:
        """Durable store (without the per-host read cache), read cache, and each log."""
        files = [p for p in self.store.rglob("*") if p.is_file()]
        cache = self.store / "cache"
        return {"store": sum(p.stat().st_size for p in files if cache not in p.parents),
                "read_cache": sum(p.stat().st_size for p in files if cache in p.parents),
                **{name: getattr(self, name).stat().st_size for name in ("train", "val", "test")}}


def build_lateseq(ratings: pa.Table, workdir: Path) -> LateseqFiles:
    """Commits every rating (stable order, tie-ranked times) and logs one example per user
    and split point, each pointing at the ratings strictly before its target."""
    out = LateseqFiles(workdir / "store", workdir / "train.parquet", workdir / "val.parquet",
                       workdir / "test.parquet")
    shutil.rmtree(out.store, ignore_errors=True)
    events = stable_events(ratings)
    store = lateseq.create(out.store, lateseq.Schema.infer(events.schema, time_unit="ms"))
    store = store.commit(events)
    val, test = split_rows(events)
    user, ts, item = (events.column(c).to_numpy() for c in ("user_id", "ts", "item_id"))
    lateseq.log_examples(store, pa.table({"user_id": user[val], "request_ts": ts[val]}), out.train)
    for rows, path in ((val, out.val), (test, out.test)):
        lateseq.log_examples(store, pa.table({"user_id": user[rows], "request_ts": ts[rows],
                                              "target": item[rows]}), path)
    return out


@dataclass(frozen=True)
class FatRowFiles:
    train: Path  # newest max_len + 1 ratings before the validation target
    val: Path  # every rating before the validation target (the ranking excludes them all)
    test: Path

    def bytes(self) -> dict[str, int]:
        return {name: getattr(self, name).stat().st_size for name in ("train", "val", "test")}


def build_fat_rows(ratings: pa.Table, workdir: Path, max_len: int) -> FatRowFiles:
    """The same examples, histories copied into each row: pandas groupby user -> list
    columns, sliced per row (the usual way); seconds, not the store's tie-ranked times."""
    df = ratings.to_pandas().sort_values(["user_id", "ts"], kind="stable")  # ties: file order
    per_user = df.groupby("user_id", sort=True)[["item_id", "ts"]].agg(list)
    items, times = per_user["item_id"], per_user["ts"]
    users = per_user.index.to_numpy()
    out = FatRowFiles(workdir / f"fat-train-{max_len}.parquet", workdir / "fat-val.parquet",
                      workdir / "fat-test.parquet")
    write_fat_rows(pa.table({
        "user_id": users,
        "item_id": [s[:-2][-(max_len + 1):] for s in items],
        "ts": [s[:-2][-(max_len + 1):] for s in times],
    }), out.train)
    for back, path in ((2, out.val), (1, out.test)):
        write_fat_rows(pa.table({
            "user_id": users,
            "item_id": [s[:-back] for s in items],
            "ts": [s[:-back] for s in times],
            "target": [s[-back] for s in items],
            "target_ts": [s[-back] for s in times],
        }), path)
    return out


def item_ids(ratings: pa.Table) -> np.ndarray:
    """The ids that are items (ML-1M's ids have gaps): what negatives and rankings range over."""
    return np.unique(ratings.column("item_id").to_numpy())


def longest_history(ratings: pa.Table) -> int:
    """Most ratings of one user: the window that holds every history."""
    return int(pd.Series(ratings.column("user_id").to_numpy()).value_counts().max())


def subset_users(ratings: pa.Table, users: int) -> pa.Table:
    """The ratings of the ``users`` smallest user ids (file order kept): a quick run's data."""
    keep = np.unique(ratings.column("user_id").to_numpy())[:users]
    mask = np.isin(ratings.column("user_id").to_numpy(), keep)
    return ratings.filter(pa.array(mask))
