"""Materialization against the baseline that needs neither Fat Rows nor lateseq: the raw
events in one Parquet file, each batch's histories found by a point-in-time join in an
analytic engine at load time ("why not DuckDB / polars?").

    python benchmarks/join.py            # 200k users (realistic: 40M events, 43M examples)
    python benchmarks/join.py --small    # 20k users, as materialize.py --small
    python benchmarks/join.py --tiny     # a smoke run (seconds)
    options: --json PATH  --repeat R  --cpu K  --workdir DIR

The workload is ``benchmarks/workload.py``'s realistic one, read through its
late-compacted state: 5% of events arrive 1 h to 2 days late, 32 daily commits by
arrival, compacted once; each pointer names the version online read (the previous
midnight's), so visibility matters: a late event is invisible to the requests made
before it arrived. The baselines store the events once, as a skeptic would at their
strongest: one Parquet file (zstd, small row groups for pushdown) sorted by (user, ts),
the payload columns as lateseq stores them, each event's commit version, and ``seq``, its
place in lateseq's order within a user (ts, commit version, row in the commit).

For each batch of 1024 examples of the example log (the batches lateseq reads), each
example's newest N events with ``ts < request_ts`` and ``version <= uih_version``, oldest
first, as offsets and values of (item_id, action, ts):

- **DuckDB** (one thread, the file registered once as a view): the batch (an Arrow
  table) joined to the events on user_id and filtered, ``QUALIFY row_number() OVER
  (PARTITION BY example ORDER BY seq DESC) <= N``, ordered. (Within 2% of ``max_by(...,
  seq, N)`` lists, faster than prefiltering the scan on the batch's users and latest
  request: DuckDB pushes the join's own filter into the scan.)
- **polars** (one thread): the same lazily, the scan prefiltered on the batch's users and
  latest request, ``rank("ordinal", descending=True).over(example) <= N`` (1.7x faster than
  sort + ``group_by(...).tail(N)``).
- **lateseq**: its streaming loader, ``iter_batches``, as ``materialize.py`` times it.

Every example timed is first checked equal on all three, bit for bit (offsets, values,
dtypes). Then each is timed on one pinned core, warm, best of ``--repeat`` passes
interleaved (``materialize.best_of``). A join reads every event of the example's user,
so a pass over the whole log takes the engines hours: all three are timed on a uniform
random sample of requests (all their examples), and the output says how long a whole
pass would take at the rate measured.
"""

from __future__ import annotations

import os

os.environ["POLARS_MAX_THREADS"] = "1"  # read once, as polars loads

import argparse  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import materialize  # noqa: E402  (first: it sets numba's and BLAS's threads to one before numpy loads)
import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from materialize import Batches, Run, best_of, console, lateseq_batches, step  # noqa: E402
from rich.table import Table  # noqa: E402

import lateseq  # noqa: E402
from workload import (  # noqa: E402
    BATCH,
    COLUMNS,
    SCHEMA,
    FatRowMismatch,
    State,
    Workload,
    build_states,
    day_of,
    lateseq_reads,
    loader_reads,
    realistic,
    request_sample,
    same_jagged,
    store_files,
)

NS = (256, 4096)
STATE = "late-compacted"
ROW_GROUP = 2048  # events per row group: a few users each, so a batch's users prune the others
# join rows (events of the examples' users) the timed sample holds at most, per scale: about
# 10 s a pass of each engine on the 2-core VM at N=256
JOIN_ROWS = {"full": 2e9, "small": 2e8, "tiny": 1e7}
POINTERS = ["user_id", "request_ts", "uih_version"]
DTYPES = {name: np.dtype(SCHEMA.columns.get(name, "int64")) for name in COLUMNS}  # lateseq's: the schema's, ts int64

DUCKDB_QUERY = """
SELECT b.ex, e.item_id, e.action, e.ts
FROM batch b JOIN events e
  ON e.user_id = b.user_id AND e.ts < b.request_ts AND e.version <= b.uih_version
QUALIFY row_number() OVER (PARTITION BY b.ex ORDER BY e.seq DESC) <= $n
ORDER BY b.ex, e.seq
"""


# ---------------------------------------------------------------- the events file


def event_versions(work: Workload, state: State) -> np.ndarray:
    """Each event's commit version in ``state``: the commit of its arrival day (the store
    has one per day with arrivals, in day order: each commit's event count is checked)."""
    commits = [info for info in state.open().versions() if info.operation == "commit"]
    _, day = np.unique(day_of(work.arrival), return_inverse=True)
    added = np.diff([0, *(info.events for info in commits)])
    if not np.array_equal(added, np.bincount(day, minlength=len(commits))):
        raise SystemExit(f"{state.name}: its commits are not one per day of arrivals")
    return np.array([info.version for info in commits], np.uint32)[day]


def write_events(work: Workload, version: np.ndarray, path: Path) -> int:
    """The events file; returns its bytes. Sorted by (user, ts, version, row), lateseq's
    order within a user (ts, commit, row in the commit: a day's commit takes its rows in
    table order); ``seq`` numbers that order, so one column breaks ties."""
    events = work.events
    order = np.lexsort((np.arange(events.num_rows), version, events.column("ts").to_numpy(),
                        events.column("user_id").to_numpy()))
    table = (events.take(pa.array(order)).append_column("version", pa.array(version[order]))
             .append_column("seq", pa.array(np.arange(events.num_rows, dtype=np.int64))))
    sorted_columns = ["user_id", "ts", "seq"]  # delta-encoded; the others dictionary-encoded where it pays
    pq.write_table(table, path, row_group_size=ROW_GROUP, compression="zstd",
                   use_dictionary=[c for c in table.column_names if c not in sorted_columns],
                   column_encoding=dict.fromkeys(sorted_columns, "DELTA_BINARY_PACKED"))
    return path.stat().st_size


# ---------------------------------------------------------------- the baselines


def pointer_batches(log: Path) -> Iterator[pa.RecordBatch]:
    """The example log's batches (the pointers the joins need), each example numbered."""
    for batch in pq.ParquetFile(log).iter_batches(BATCH, columns=POINTERS, use_threads=False):
        ex = pa.array(np.arange(batch.num_rows, dtype=np.int32))
        yield pa.RecordBatch.from_arrays([ex, *batch.columns], ["ex", *POINTERS])


def jagged(ex: np.ndarray, examples: int, values: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(offsets, values) of a join's rows ordered by example: each example's count from
    its number. ``astype(copy=False)``: each engine already returns lateseq's dtypes (the
    Parquet file stores them), so this only guards the check."""
    offsets = np.zeros(examples + 1, np.int64)
    np.cumsum(np.bincount(ex, minlength=examples), out=offsets[1:])
    return offsets, {name: values[name].astype(dtype, copy=False) for name, dtype in DTYPES.items()}


def duckdb_connection(events: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": 1})
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events}')")
    return con


def duckdb_batches(con: duckdb.DuckDBPyConnection, log: Path, n: int) -> Batches:
    for batch in pointer_batches(log):
        con.register("batch", batch)
        out = con.execute(DUCKDB_QUERY, {"n": n}).fetchnumpy()
        yield jagged(out["ex"], batch.num_rows, out)


def polars_batches(events: pl.LazyFrame, log: Path, n: int) -> Batches:
    for batch in pointer_batches(log):
        frame = pl.from_arrow(batch)
        scanned = events.filter(pl.col("user_id").is_in(frame["user_id"].unique().implode())
                                & (pl.col("ts") < frame["request_ts"].max()))
        out = (frame.lazy().join(scanned, on="user_id")
               .filter((pl.col("ts") < pl.col("request_ts")) & (pl.col("version") <= pl.col("uih_version")))
               .filter(pl.col("seq").rank("ordinal", descending=True).over("ex") <= n)
               .sort("ex", "seq").select("ex", *COLUMNS).collect())
        yield jagged(out["ex"].to_numpy(), batch.num_rows, {c: out[c].to_numpy() for c in COLUMNS})


# ---------------------------------------------------------------- checks and timing


def check(store: lateseq.Store, log: Path, n: int, sides: dict[str, Batches]) -> int:
    """Checks every batch of every side against lateseq's, bit for bit; returns the examples compared."""
    done = 0
    ours = lateseq_reads(store, log, lateseq.Projection(n, COLUMNS))
    for k, (mine, *theirs) in enumerate(zip(ours, *sides.values(), strict=True)):
        for name, (offsets, values) in zip(sides, theirs, strict=True):
            if not same_jagged(offsets, values, mine):
                raise FatRowMismatch(f"N={n}: lateseq and {name} differ in batch {k}")
        done += len(mine)
    return done


def measure(state: State, log: Path, events: Path, n: int, repeat: int,
            patience: float) -> tuple[int, dict[str, Run]]:
    """(examples checked equal, the best pass of each side) at N=``n``."""
    store = state.open()
    con = duckdb_connection(events)
    scan = pl.scan_parquet(events)
    checked = check(store, log, n, {"duckdb": duckdb_batches(con, log, n), "polars": polars_batches(scan, log, n)})
    console.print(f"[dim]N={n}: {checked:,} examples checked equal on all three[/dim]")
    return checked, best_of(repeat, {"lateseq": lambda: lateseq_batches(lambda: store, log, n),
                            "duckdb": lambda: duckdb_batches(con, log, n),
                            "polars": lambda: polars_batches(scan, log, n)}, patience=patience)


# ---------------------------------------------------------------- output


def print_table(results: dict) -> None:
    sample = results["sample"]
    table = Table(title=f"examples/s, warm, one core ({sample['timed_examples']:,} of {sample['examples']:,} examples: "
                        "uniform random requests)", title_justify="left")
    for header in ("N", "lateseq", "DuckDB", "polars", "lateseq / DuckDB", "lateseq / polars",
                   "whole log: DuckDB", "whole log: polars"):
        table.add_column(header, justify="right")
    for n, at in results["n"].items():
        ours = at["lateseq"]["ex_s"]
        table.add_row(n, f"{ours:,.0f}", *(f"{at[e]['ex_s']:,.0f}" for e in ("duckdb", "polars")),
                      *(f"{ours / at[e]['ex_s']:,.0f}x" for e in ("duckdb", "polars")),
                      *(f"{at[e]['whole_log_s'] / 3600:.2g} h" for e in ("duckdb", "polars")))
    console.print(table)
    b = results["bytes"]
    console.print(f"bytes on disk: events Parquet {b['events_parquet'] / 1e6:,.1f} MB + example log "
                  f"{b['example_log'] / 1e6:,.1f} MB = {(b['events_parquet'] + b['example_log']) / 1e6:,.1f} MB; "
                  f"lateseq's durable store {b['lateseq_durable'] / 1e6:,.1f} MB + the same log = "
                  f"{(b['lateseq_durable'] + b['example_log']) / 1e6:,.1f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="20k users (minutes)")
    size.add_argument("--tiny", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per side, the best counts (default 3)")
    parser.add_argument("--patience", type=float, default=60.0,
                        help="a side whose passes took this many seconds in all makes no more (default 60)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--workdir", type=Path,
                        help="parent of the build folder (removed after; default: the system's)")
    args = parser.parse_args(argv)
    scale_name = "small" if args.small else "tiny" if args.tiny else "full"
    scale = materialize.SCALES[scale_name]

    started = time.perf_counter()
    cpu = materialize.pin_one_core(args.cpu)
    info = {**materialize.machine(), "load_average_start": materialize.load_average()}
    console.print(f"[bold]machine[/bold]: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; pinned to CPU "
                  f"{cpu}; duckdb {duckdb.__version__}, polars {pl.__version__} ({pl.thread_pool_size()} thread), "
                  f"lateseq {info['lateseq']} at {info['git']}; load average {info['load_average_start']}")
    steps: dict[str, float] = {}
    results: dict = {
        "benchmark": "join",
        "command": shlex.join(["python", "benchmarks/join.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "scale": scale_name, "state": STATE,
        "settings": {"batch": BATCH, **loader_reads(), "columns": list(COLUMNS), "n": list(NS), "repeat": args.repeat,
                     "patience_s": args.patience, "row_group": ROW_GROUP, "duckdb_query": DUCKDB_QUERY.strip(),
                     "duckdb_threads": 1, "polars_threads": pl.thread_pool_size(), "verify": True},
        "n": {},
    }
    root = Path(tempfile.mkdtemp(prefix="lateseq-join-", dir=args.workdir))
    try:
        with step("realistic workload and its store states", steps):
            work = realistic(scale.realistic_users)
            state = next(s for s in build_states(work, root / "stores", progress=lambda text: None) if s.name == STATE)
        with step("events file", steps):
            events = root / "events.parquet"
            events_bytes = write_events(work, event_versions(work, state), events)
        whole_log = root / "examples.parquet"
        pq.write_table(state.log, whole_log)
        durable, _ = store_files(state)
        results["workload"] = work.describe()
        results["bytes"] = {"events_parquet": events_bytes, "lateseq_durable": sum(p.stat().st_size for p in durable),
                            "example_log": whole_log.stat().st_size}
        user_events = np.bincount(work.events.column("user_id").to_numpy())
        join_rows = user_events[state.log.column("user_id").to_numpy()].astype(np.float64)
        rows = request_sample(work.requests, join_rows, JOIN_ROWS[scale_name], scale.max_timed)
        log = root / "timed-examples.parquet"
        pq.write_table(state.log.take(pa.array(rows)), log)
        results["sample"] = {"examples": state.log.num_rows, "timed_examples": len(rows),
                             "join_rows_per_example": round(float(join_rows[rows].mean()), 1)}
        for n in NS:
            with step(f"N={n}: check, then time", steps):
                checked, runs = measure(state, log, events, n, args.repeat, args.patience)
            if len({(run.examples, run.events) for run in runs.values()}) != 1:
                raise SystemExit(f"N={n}: the sides produced different examples/events")
            results["n"][str(n)] = {name: {"ex_s": run.ex_s, "seconds": run.seconds, "passes": run.passes,
                                           "cpu_share": run.cpu_seconds / run.seconds,
                                           "events_per_example": run.events / run.examples, "checked": checked,
                                           "whole_log_s": state.log.num_rows / run.ex_s}
                                    for name, run in runs.items()}
    except FatRowMismatch as exc:
        raise SystemExit(f"lateseq and a join disagree: {exc}") from exc
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["machine"] = {**info, "pinned_cpu": cpu, "duckdb": duckdb.__version__, "polars": pl.__version__,
                          "load_average_end": materialize.load_average()}
    results["steps_s"] = steps
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    console.print(f"load average at the end: {results['machine']['load_average_end']}; "
                  f"{results['seconds']:.0f} s in all")
    materialize.save(results, args.json, None)


if __name__ == "__main__":
    main()
