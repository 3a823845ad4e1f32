"""What partitions cost a read: the same events and examples in stores of 1 to 1024
user-hash partitions, compacted, read in batches of 1024 random examples (each batch
touches up to 1024 partitions), N=256, one core, warm, best of 3 passes.

    python benchmarks/partitions.py [--users 20000] [--events 2000000] [--json PATH]

A batch over several partitions is located in one view of them all (``Store._joined``):
its cost grows with the partitions it touches only by a stat per segment file (the
check that a decoded copy was not replaced) and the multi-segment kernel's work, not
by a kernel call per partition. Every store's output is checked equal to the
one-partition store's first.
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
    out, reference = {}, None
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
        touched = np.mean([len(np.unique(lateseq._events.partition_of(b.column("user_id").to_numpy(), partitions)))
                           for b in batches])
        best = np.inf
        for _ in range(repeat):
            start = time.perf_counter()
            for batch in batches:
                lateseq.materialize(store, batch, projection)
            best = min(best, time.perf_counter() - start)
        out[str(partitions)] = {"ex_s": log.num_rows / best, "partitions_per_batch": float(touched),
                                "segments": len(store.segment_infos)}
        print(f"{partitions:>5} partitions: {log.num_rows / best:>12,.0f} ex/s "
              f"({touched:.0f} partitions per batch)", flush=True)
    for entry in out.values():
        entry["vs_one_partition"] = entry["ex_s"] / out["1"]["ex_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
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
