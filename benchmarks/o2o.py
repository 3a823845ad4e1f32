"""What the two-tier protocol costs: rebuild speed and example-log bytes, with the
online tail inline (streaming mode) and stripped (batch mode), on synthetic data.

    python benchmarks/o2o.py [--users 20000] [--requests 200000] [--max-len 256] [--json PATH]

One core (the process is pinned to one CPU, numba and Arrow to one thread), warm page
cache, best of 3 passes per log form.

The store holds every event that arrived before the last week in one version, then a
version per day (watermark = midnight) for the last week. Requests fall in that week;
each reads the newest version published before it plus the tail of events that
arrived since that version's watermark, exactly as ``OnlineReader`` serves them (built
here in bulk, vectorised, since serving millions one call at a time would take hours).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

for _name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import lateseq  # noqa: E402
from lateseq.datasets import synthetic_events  # noqa: E402
from lateseq.twotier import attach_tails, rebuild_batch, rebuild_streaming, strip_tails  # noqa: E402
from materialize import pin_one_core  # noqa: E402

DAY = 86400


def build(workdir: Path, users: int, requests: int, seed: int):
    events = synthetic_events(users, seed=seed)
    rng = np.random.default_rng(seed)
    ts = events.column("ts").to_numpy()
    lag = rng.exponential(60, len(ts)).astype(np.int64)
    late = rng.random(len(ts)) < 0.05
    lag[late] = rng.integers(3600, 2 * DAY, late.sum())
    arrival = ts + lag
    events = events.append_column("arrival_ts", pa.array(arrival)).append_column(
        "event_id", pa.array(np.arange(len(ts), dtype=np.int64)))
    end = int(ts.max()) + 1
    marks = [end - 7 * DAY + d * DAY for d in range(8)]
    schema = lateseq.Schema({"item_id": "int64", "action": "int8", "dwell": "float32",
                             "arrival_ts": "int64", "event_id": "int64"},
                            arrival_col="arrival_ts", event_id_col="event_id")
    store = lateseq.create(workdir / "store", schema)
    since = np.iinfo(np.int64).min
    for mark in marks:
        window = (arrival >= since) & (arrival < mark)
        store = store.commit(events.filter(pa.array(window)), watermark=mark)
        since = mark
    store = store.compact()

    # requests at distinct events of the last week (drawn with replacement, repeated
    # requests would make the log compress unrealistically well)
    in_week = np.flatnonzero((ts >= marks[0]) & (ts < marks[-1]))
    chosen = np.sort(rng.choice(in_week, min(requests, len(in_week)), replace=False))
    chosen = chosen[np.argsort(ts[chosen], kind="stable")]
    reqs = pa.table({"user_id": events.column("user_id").to_numpy()[chosen], "request_ts": ts[chosen],
                     "label": (events.column("action").to_numpy()[chosen] > 0).astype(np.int8)})
    t = reqs.column("request_ts").to_numpy()
    version = np.searchsorted(np.array(marks), t, "right")  # version k has watermark marks[k-1]
    logs = []
    for k in np.unique(version):
        part = reqs.filter(pa.array(version == k))
        log = lateseq.log_examples(store.checkout(int(k)), part)
        logs.append(log)
    log = pa.concat_tables(logs)
    tail, owners = _tails(events, log, np.array(marks)[log.column("uih_version").to_numpy() - 1])
    return store, attach_tails(log, store, tail, owners)


def _tails(events: pa.Table, log: pa.Table, since: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Each request's events that arrived in [its version's watermark, request) with ts < request."""
    user = events.column("user_id").to_numpy()
    arrival = events.column("arrival_ts").to_numpy()
    order = np.lexsort((np.arange(len(user)), arrival, user))
    key = user[order] * (1 << 34) + (arrival[order] - arrival.min())
    r_user = log.column("user_id").to_numpy()
    t = log.column("request_ts").to_numpy()
    base = arrival.min()
    lo = np.searchsorted(key, r_user * (1 << 34) + (since - base), "left")
    hi = np.searchsorted(key, r_user * (1 << 34) + (t - base), "left")
    sizes = hi - lo
    rows = order[np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())]
    owners = np.repeat(np.arange(len(t)), sizes)
    keep = events.column("ts").to_numpy()[rows] < t[owners]
    return events.take(pa.array(rows[keep])), owners[keep]


def timed(fn, store, path: Path, projection) -> float:
    source = pq.ParquetFile(path)
    examples = 0
    start = time.perf_counter()
    for batch in source.iter_batches(1024, use_threads=False):  # one core: the pool only adds work
        examples += len(fn(store, batch, projection))
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=200000, help="at most one per event of the week")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpu = pin_one_core(None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        store, log = build(tmp, args.users, args.requests, args.seed)
        stripped, n = strip_tails(store, log)
        paths = {"inline": tmp / "inline.parquet", "stripped": tmp / "stripped.parquet"}
        pq.write_table(log, paths["inline"])
        pq.write_table(stripped, paths["stripped"])
        print(f"built {log.num_rows} examples over {store.num_events} events in "
              f"{time.perf_counter() - t0:.1f}s; tails stripped: {n}")
        projection = lateseq.Projection(args.max_len, ("item_id", "action", "ts"))
        for path, fn in ((paths["inline"], rebuild_streaming), (paths["stripped"], rebuild_batch)):
            timed(fn, store, path, projection)  # warm the page cache and the kernels
        inline = max(timed(rebuild_streaming, store, paths["inline"], projection) for _ in range(3))
        batch = max(timed(rebuild_batch, store, paths["stripped"], projection) for _ in range(3))
        tail_events = int(np.sum(log.column("seq_length").to_numpy().astype(np.int64)
                                 - log.column("uih_length").to_numpy()))
        result = {
            "examples": log.num_rows,
            "mean_tail_events": tail_events / log.num_rows,
            "inline_ex_s": inline,
            "stripped_ex_s": batch,
            "log_bytes_per_example_inline": paths["inline"].stat().st_size / log.num_rows,
            "log_bytes_per_example_stripped": paths["stripped"].stat().st_size / log.num_rows,
        }
    print(f"max_len={args.max_len}, projection item_id+action+ts, one core (CPU {cpu}), batches of 1024, best of 3")
    print(f"  streaming (tail inline):  {inline:>10,.0f} ex/s   "
          f"{result['log_bytes_per_example_inline']:7.1f} log bytes/example")
    print(f"  batch (tail stripped):    {batch:>10,.0f} ex/s   "
          f"{result['log_bytes_per_example_stripped']:7.1f} log bytes/example")
    print(f"  mean tail: {result['mean_tail_events']:.1f} events per example")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
