"""What partitions cost a read: the same events and examples in stores of 1 to 1024
user-hash partitions, compacted, read in batches of 1024 random examples (each batch
touches up to 1024 partitions), N=256, one core, warm, best of 7 passes interleaved.

    python benchmarks/partitions.py [--users 20000] [--events 2000000] [--json PATH]

A batch over several partitions is located in one view of them all (``Store._joined``);
a view of compacted partitions has one range of rows per user, so it is read as one
segment is (one window per pointer, ``_locate._locate_sole``). What grows with the
partitions a batch touches: the copy's runs over many segment maps. Every store's output
is checked equal to the one-partition store's first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import materialize  # noqa: I001  (first: it sets one thread per process before numpy and numba load)

import argparse
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

import lateseq
from materialize import load_average, machine, pin_one_core

PARTITIONS = (1, 16, 256, 1024)
BATCH = 1024
N = 256


def measure(root: Path, users: int, events: int, requests: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    table = pa.table({"user_id": rng.integers(0, users, events), "ts": rng.integers(0, 10**9, events),
                      "item_id": rng.integers(0, 10**6, events), "action": rng.integers(0, 4, events).astype(np.int8)})
    asked = pa.table({"user_id": rng.integers(0, users, requests), "request_ts": rng.integers(0, 10**9, requests)})
    projection = lateseq.Projection(N, ("item_id", "action", "ts"))
    layouts, reference = {}, None
    for partitions in PARTITIONS:
        schema = lateseq.Schema({"item_id": "int64", "action": "int8"}, partitions=partitions)
        store = lateseq.create(root / f"p{partitions}", schema).commit(table)
        log = lateseq.log_examples(store, asked)
        batches = [log.slice(i, BATCH) for i in range(0, log.num_rows, BATCH)]
        first = lateseq.materialize(store, log, projection)  # checked: the same output in every layout
        if reference is None:
            reference = first
        elif not (np.array_equal(first.offsets, reference.offsets)
                  and all(np.array_equal(first.values[k], reference.values[k]) for k in first.values)):
            raise SystemExit(f"{partitions} partitions read other sequences than one partition")
        layouts[partitions] = (store, batches)
    best = dict.fromkeys(PARTITIONS, np.inf)
    for _ in range(repeat):  # passes interleaved: a slow moment of this VM falls on every layout alike
        for partitions, (store, batches) in layouts.items():
            start = time.perf_counter()
            for batch in batches:
                lateseq.materialize(store, batch, projection)
            best[partitions] = min(best[partitions], time.perf_counter() - start)
    out = {}
    for partitions, (store, batches) in layouts.items():
        touched = np.mean([len(np.unique(lateseq._events.partition_of(b.column("user_id").to_numpy(), partitions)))
                           for b in batches])
        out[str(partitions)] = {"ex_s": requests / best[partitions], "partitions_per_batch": float(touched),
                                "segments": len(store.segment_infos),
                                "vs_one_partition": best[PARTITIONS[0]] / best[partitions]}
        print(f"{partitions:>5} partitions: {requests / best[partitions]:>12,.0f} ex/s "
              f"({touched:.0f} partitions per batch)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cpu = pin_one_core(None)
    info, load_start = machine(), load_average()
    root = Path(tempfile.mkdtemp(prefix="lateseq-partitions-"))
    try:
        results = measure(root, args.users, args.events, args.requests, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"benchmark": "partitions", "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "benchmarks/partitions.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": {**info, "cpu_pinned": cpu, "load_average_start": load_start, "load_average_end": load_average()},
              "settings": {"users": args.users, "events": args.events, "requests": args.requests, "batch": BATCH,
                           "n": N, "repeat": args.repeat}, "partitions": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
