"""An end-to-end O2O scenario: online serving, folding, late and duplicate events,
then streaming and batch rebuilds checked against what was served, next to the
naive point-in-time join by event time."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lateseq import JaggedBatch, Projection, Schema, SchemaError, Store
from lateseq._format import TIME
from lateseq._pointers import write_log
from lateseq.mutable import InMemoryTier
from lateseq.twotier import (
    OnlineReader,
    fold,
    rebuild_batch,
    rebuild_streaming,
    strip_tails,
)

HOUR = 3600
DAY = 24 * HOUR
COLUMNS = ("item_id", "ts", "arrival_ts", "event_id")

# The largest scenario the command line runs, where memory would run out: measured, the
# simulation holds about 0.6 KB per event, its brute-force checks about 18 KB per request
# (a pandas slice each), and each fold about 0.4 MB (its version); each bound is 3-4 GB.
MAX_EVENTS = 5_000_000  # users x days x events per day
MAX_REQUESTS = 200_000  # users x days x requests per day
MAX_FOLDS = 10_000  # (days + 3) x 24 / compaction hours: late events arrive up to 2 days after
MAX_LAG_S = 3_600  # the mean ordinary lag; longer delays are the late share's (1 hour to 2 days)


@dataclass(frozen=True)
class SimulationConfig:
    seed: int = 0
    users: int = 300
    days: float = 4.0
    events_per_day: float = 30.0       # per user
    requests_per_day: float = 4.0      # per user
    lag_s: float = 30.0                # mean ingestion lag of an ordinary event
    late_share: float = 0.05           # events arriving 1 hour to 2 days after their time
    out_of_order_share: float = 0.10   # events stamped up to 15 minutes before their neighbours
    duplicate_share: float = 0.03      # events delivered a second time, up to an hour later
    tie_share: float = 0.30            # events sharing their predecessor's second
    compaction_hours: float = 6.0      # fold (and compact) period
    max_len: int = 50


def _generate(cfg: SimulationConfig, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    duration = int(cfg.days * DAY)
    counts = rng.poisson(cfg.events_per_day * cfg.days, cfg.users)
    user = np.repeat(np.arange(cfg.users, dtype=np.int64), counts)
    ts = np.sort(rng.integers(0, duration, len(user))) if len(user) else np.empty(0, np.int64)
    ts = ts[np.lexsort((ts, user))] if len(user) else ts
    tie = (rng.random(len(ts)) < cfg.tie_share) & np.r_[False, user[1:] == user[:-1]]
    for i in np.flatnonzero(tie):  # chains of ties: copy the (possibly tied) predecessor
        ts[i] = ts[i - 1]
    ts = ts - np.where(rng.random(len(ts)) < cfg.out_of_order_share, rng.integers(0, 900, len(ts)), 0)
    lag = rng.exponential(cfg.lag_s, len(ts)).astype(np.int64)
    late = rng.random(len(ts)) < cfg.late_share
    lag[late] = rng.integers(HOUR, 2 * DAY, late.sum())
    events = pa.table({
        "user_id": user, "ts": ts,
        "item_id": rng.zipf(1.3, len(ts)).astype(np.int64) % 5000,
        "arrival_ts": ts + lag, "event_id": np.arange(len(ts), dtype=np.int64),
    })
    dup = np.flatnonzero(rng.random(len(ts)) < cfg.duplicate_share)
    redelivered = events.take(pa.array(dup)).set_column(
        3, "arrival_ts", pa.array(ts[dup] + lag[dup] + rng.integers(1, HOUR, len(dup))))
    deliveries = pa.concat_tables([events, redelivered])
    order = np.argsort(deliveries.column("arrival_ts").to_numpy(), kind="stable")
    deliveries = deliveries.take(pa.array(order))
    n_req = rng.poisson(cfg.requests_per_day * cfg.days * cfg.users)
    req_t = np.sort(rng.integers(1, duration, n_req))
    requests = pa.table({"user_id": rng.integers(0, cfg.users, n_req).astype(np.int64), "request_ts": req_t})
    return deliveries, requests


def _truth(deliveries: pa.Table, requests: pa.Table, max_len: int) -> JaggedBatch:
    """Brute force, independent of the store: the first delivery of each event that
    arrived before the request, with event time before it, newest ``max_len``."""
    d = deliveries.to_pandas()
    d["order"] = np.arange(len(d))
    d = d.drop_duplicates(["user_id", "event_id"], keep="first")
    d = d.sort_values(["user_id", "ts", "arrival_ts", "order"], kind="stable")
    by_user = {u: g for u, g in d.groupby("user_id")}
    rows, lengths = [], []
    for u, t in zip(requests.column("user_id").to_pylist(), requests.column("request_ts").to_pylist(), strict=True):
        g = by_user.get(u)
        seq = g[(g.arrival_ts < t) & (g.ts < t)].tail(max_len) if g is not None else d.iloc[:0]
        rows.append(seq)
        lengths.append(len(seq))
    return _jagged(rows, lengths)


def _naive(store: Store, requests: pa.Table, max_len: int) -> JaggedBatch:
    """The feature-store point-in-time join: every stored event with ts < request_ts."""
    events = pa.concat_tables(
        pa.table({"user_id": np.repeat(s.user_ids, np.diff(np.append(s.starts, s.info.rows))),
                  **{c: s.decoded(TIME if c == "ts" else c) for c in COLUMNS}})
        for s in store.segments()
    ).to_pandas()
    events = events.sort_values(["user_id", "ts", "arrival_ts", "event_id"], kind="stable")
    by_user = {u: g for u, g in events.groupby("user_id")}
    rows, lengths = [], []
    for u, t in zip(requests.column("user_id").to_pylist(), requests.column("request_ts").to_pylist(), strict=True):
        g = by_user.get(u)
        seq = g[g.ts < t].tail(max_len) if g is not None else events.iloc[:0]
        rows.append(seq)
        lengths.append(len(seq))
    return _jagged(rows, lengths)


def _jagged(rows: list, lengths: list[int]) -> JaggedBatch:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = {c: np.concatenate([r[c].to_numpy(np.int64) for r in rows]) if rows else np.empty(0, np.int64)
              for c in COLUMNS}
    return JaggedBatch(offsets, values, np.zeros(len(lengths), bool))


def _leaks(batch: JaggedBatch, request_ts: np.ndarray) -> int:
    return int((batch.values["arrival_ts"] >= np.repeat(request_ts, batch.lengths)).sum())


def simulate(cfg: SimulationConfig, workdir: str | Path | None = None,
             progress: Callable[[str, float], None] | None = None) -> dict:
    """Runs the scenario; returns the figures the CLI prints and writes as JSON."""
    try:
        import pandas  # noqa: F401 - the brute-force oracles below are written in pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the simulation's brute-force checks need pandas: pip install 'lateseq[demo]'") from exc
    rng = np.random.default_rng(cfg.seed)
    deliveries, requests = _generate(cfg, rng)
    if deliveries.num_rows == 0:
        raise SchemaError("the scenario makes no events: raise users, days or events per day")
    if requests.num_rows == 0:
        raise SchemaError("the scenario makes no requests: raise users, days or requests per day")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        schema = Schema({"item_id": "int64", "arrival_ts": "int64", "event_id": "int64"},
                        arrival_col="arrival_ts", event_id_col="event_id")
        store = Store.create(Path(tmp) / "store", schema)
        period = int(cfg.compaction_hours * HOUR)
        tier = InMemoryTier(schema, retention=2 * period, store=store)
        projection = Projection(cfg.max_len, COLUMNS)
        reader = OnlineReader(store, tier, projection)
        arrival = deliveries.column("arrival_ts").to_numpy()
        req_t = requests.column("request_ts").to_numpy()
        end = int(max(arrival.max(initial=0), req_t.max(initial=0))) + 1
        logs, served, streaming = [], [], []
        appended = 0
        boundary = period
        r = 0
        while r < len(req_t) or appended < len(arrival):
            # serve every request before the next fold, appending arrivals as time passes
            stop = np.searchsorted(req_t, boundary, "left")
            epoch_logs = []
            while r < stop:
                upto = np.searchsorted(arrival, req_t[r], "left")
                same_time = np.searchsorted(req_t, arrival[upto], "left") if upto < len(arrival) else stop
                group_end = max(r + 1, min(stop, same_time))
                tier.append(deliveries.slice(appended, upto - appended))
                appended = max(appended, upto)
                log, seq = reader.serve(requests.slice(r, group_end - r))
                epoch_logs.append(log)
                served.append(seq)
                r = group_end
            # streaming training consumes this epoch's records before the next fold
            store = store.latest()
            for log in epoch_logs:
                streaming.append(rebuild_streaming(store, log, projection, on_mismatch="flag"))
            logs += epoch_logs
            upto = np.searchsorted(arrival, boundary, "left")
            tier.append(deliveries.slice(appended, upto - appended))
            appended = max(appended, upto)
            store = fold(store, tier, boundary).compact()
            tier.expire(boundary, boundary)
            if progress:
                progress("simulating", min(1.0, boundary / end))
            boundary += period

        log = pa.concat_tables(logs) if logs else None
        served_all = JaggedBatch.concat(served)
        streaming_all = JaggedBatch.concat(streaming)
        truth = _truth(deliveries, requests, cfg.max_len)
        stripped, n_stripped = strip_tails(store, log)
        paths = {name: Path(tmp) / f"{name}.parquet" for name in ("inline", "stripped")}
        write_log(log, paths["inline"])
        write_log(stripped, paths["stripped"])
        batch = rebuild_batch(store.latest(), pq.read_table(paths["stripped"]), projection, on_mismatch="flag")
        naive = _naive(store.latest(), requests, cfg.max_len)
        n = len(req_t)
        result = {
            "examples": n,
            "events": int(len(set(zip(deliveries.column("user_id").to_pylist(),
                                      deliveries.column("event_id").to_pylist(), strict=True)))),
            "deliveries": deliveries.num_rows,
            "versions": store.latest().version,
            "served_vs_truth_match_rate": _rate(~served_all.rows_differ(truth)),
            "streaming_match_rate": _rate(~streaming_all.rows_differ(served_all) & ~streaming_all.mismatched),
            "batch_match_rate": _rate(~batch.rows_differ(served_all) & ~batch.mismatched),
            "leaked_events": _leaks(streaming_all, req_t) + _leaks(batch, req_t),
            "streaming_leaked_events": _leaks(streaming_all, req_t),
            "batch_leaked_events": _leaks(batch, req_t),
            "naive_match_rate": _rate(~naive.rows_differ(served_all)),
            "naive_leaked_events": _leaks(naive, req_t),
            "tails_stripped": n_stripped,
            "log_bytes_per_example_inline": paths["inline"].stat().st_size / max(n, 1),
            "log_bytes_per_example_stripped": paths["stripped"].stat().st_size / max(n, 1),
            "config": asdict(cfg),
        }
    return result


def _rate(matches: np.ndarray) -> float:
    return float(matches.mean()) if len(matches) else 1.0
