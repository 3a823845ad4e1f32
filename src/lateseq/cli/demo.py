"""`lateseq demo`: versioned ingestion, pointer logging and exact replay, checked end to end.

The demo plays production forward in time on real (MovieLens-1M) or synthetic events:

1. Events arrive in periods (a calendar month, week or day of event time). Before a
   period's events are committed, every request of that period is logged with a
   pointer against the version online could read then (the last published one), so
   ingestion and logging interleave as they would online. The store is compacted
   along the way and once at the end.
2. The same examples are built as Fat Rows (``fatrow.fat_rows``) straight from the
   event table, each event tagged with the commit it went in: an independent oracle.
3. Every example is materialized for two tenants through the loader, verified against
   its pointer's checksum, and compared bit for bit (values and offsets) with the Fat
   Rows, while both readers are timed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lateseq import (
    POINTER_FIELDS,
    JaggedBatch,
    Projection,
    Schema,
    Store,
    datasets,
    iter_batches,
    log_examples,
)
from lateseq._format import decoded_file
from lateseq._pointers import write_log
from lateseq.cli import fatrow, human_bytes
from lateseq.mutable import InMemoryTier
from lateseq.twotier import (
    OnlineReader,
    fold,
    rebuild_batch,
    rebuild_streaming,
    strip_tails,
)

CADENCES = ("month", "week", "day")
_DATETIME_UNIT = {"month": "M", "week": "W", "day": "D"}
# with daily or weekly commits, compact about once a month of data, as production does
_COMPACT_EVERY = {"month": 0, "week": 4, "day": 30}
BATCH_SIZE = 1024
SYNTHETIC_USERS = 200_000  # the synthetic dataset's size unless told
_DAY = 86400


@dataclass(frozen=True)
class Tenant:
    name: str
    projection: Projection


@dataclass
class _Inputs:
    events: pa.Table
    requests: pa.Table
    event_period: np.ndarray  # the commit period of each event ...
    request_period: np.ndarray  # ... and of each request (logged before its period's commit)
    tenants: list[Tenant]
    plan: str
    compact_every: int = 0  # compact after every this many commits (0: only at the end)
    notes: list[str] = field(default_factory=list)


def run_demo(
    dataset: str = "movielens",
    users: int = SYNTHETIC_USERS,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    cadence: str | None = None,
    examples: int | None = None,
    fat_sample: int | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the demo and returns its summary (``summary["mismatches"]`` must be 0).

    ``dataset`` is ``"movielens"`` (MovieLens-1M, one commit per ``cadence`` period of
    event time: ``"month"``, ``"week"`` or ``"day"``; by default the coarsest that leaves
    most requests a non-empty history, else ``"day"``) or ``"synthetic"`` (``users``
    users, ``examples`` requests, 10 per user by default, in ten commits by event
    time). ``progress`` shows progress bars on ``console``. ``fat_sample`` caps how many examples are built
    as Fat Rows and compared (all of them by default for MovieLens, 200k for synthetic).
    Files go to ``workdir`` (kept) or a temporary directory (removed).
    """
    console = console or Console(stderr=True)
    if dataset not in ("movielens", "synthetic"):
        raise ValueError(f"dataset must be 'movielens' or 'synthetic', not {dataset!r}")
    if cadence is not None and cadence not in CADENCES:
        raise ValueError(f"cadence must be one of {', '.join(CADENCES)}, not {cadence!r}")
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="lateseq-demo-") if temporary else workdir)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("store", "online-store", "examples.parquet", "fatrows.parquet", "fat-examples.parquet"):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    started = time.perf_counter()
    try:
        summary = _run(dataset, users, root, seed, cadence, examples, fat_sample, console, progress)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    summary["workdir"] = None if temporary else str(root)
    summary["seconds"] = time.perf_counter() - started
    return summary


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False,
    )


# ---------------------------------------------------------------- inputs


def _periods(ts: np.ndarray, cadence: str) -> np.ndarray:
    unit = _DATETIME_UNIT[cadence]
    return ts.astype("datetime64[s]").astype(f"datetime64[{unit}]").astype(np.int64)


def _visible_by_cadence(user: np.ndarray, ts: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per cadence, how many of its user's events each request (event ``rows``) could see:
    those in earlier periods, as only they are in a published version."""
    out = {}
    for cadence in CADENCES:
        keys = np.sort(user.astype(np.int64) << 32 | _periods(ts, cadence))
        first = np.searchsorted(keys, user[rows].astype(np.int64) << 32)
        cut = np.searchsorted(keys, user[rows].astype(np.int64) << 32 | _periods(ts[rows], cadence))
        out[cadence] = cut - first
    return out


def _choose_cadence(visible: dict[str, np.ndarray]) -> str:
    """The coarsest cadence that leaves most requests a non-empty history, else the finest."""
    for cadence in CADENCES:
        if (visible[cadence] == 0).mean() < 0.5:
            return cadence
    return CADENCES[-1]


def _movielens(cadence: str | None) -> _Inputs:
    """Events, requests (every rating after a user's first), the periods of both."""
    events = datasets.load_movielens_1m()
    user = events.column("user_id").to_numpy()
    ts = events.column("ts").to_numpy()
    order = np.lexsort((np.arange(len(ts)), ts, user))  # each user's ratings in time order
    first = np.ones(len(order), bool)
    first[1:] = user[order][1:] != user[order][:-1]
    rows = np.sort(order[~first])
    rows = rows[np.argsort(ts[rows], kind="stable")]  # an example log is written in time order
    requests = pa.table({
        "user_id": user[rows],
        "request_ts": ts[rows],
        "label": events.column("rating").take(rows),
        "target_item": events.column("item_id").take(rows),
    })
    visible = _visible_by_cadence(user, ts, rows)
    chosen = cadence or _choose_cadence(visible)
    notes = ["history visible at request by commit cadence: " + "; ".join(
        f"{c}: mean {v.mean():.1f}, {(v == 0).mean():.0%} empty" for c, v in visible.items())]
    if cadence is None:
        notes.append(f"chose one commit per {chosen}" + (
            " (ML-1M users rate in bursts: most requests come before any version holds the "
            "user's earlier ratings, whatever the cadence; online's mutable tail would close that gap)"
            if (visible[chosen] == 0).mean() >= 0.5 else ""))
    event_period = _periods(ts, chosen)
    tenants = [
        Tenant("a: last 200 item_id+rating+ts", Projection(200, ("item_id", "rating", "ts"))),
        Tenant("b: last 50 item_id", Projection(50, ("item_id",))),
    ]
    return _Inputs(events, requests, event_period, event_period[rows], tenants,
                   f"one per calendar {chosen}", _COMPACT_EVERY[chosen], notes)


def _synthetic(users: int, examples: int, seed: int, commits: int = 10) -> _Inputs:
    events = datasets.synthetic_events(users, seed=seed)
    requests = datasets.synthetic_requests(events, examples, seed=seed)
    ts = events.column("ts").to_numpy()
    t0, t1 = int(ts.min()), int(ts.max()) + 1
    width = -(-(t1 - t0) // commits)
    event_period = (ts - t0) // width
    request_period = (requests.column("request_ts").to_numpy() - t0) // width
    tenants = [
        Tenant("a: last 200 item_id+action+ts", Projection(200, ("item_id", "action", "ts"))),
        Tenant("b: last 50 item_id", Projection(50, ("item_id",))),
    ]
    return _Inputs(events, requests, event_period, request_period, tenants,
                   f"event time split in {commits} equal spans")


# ---------------------------------------------------------------- the demo


def _run(dataset: str, users: int, root: Path, seed: int, cadence: str | None,
         examples: int | None, fat_sample: int | None, console: Console, show: bool) -> dict[str, Any]:
    t = time.perf_counter()
    if dataset == "movielens":
        inputs = _movielens(cadence)
        fat_sample = inputs.requests.num_rows if fat_sample is None else fat_sample
    else:
        examples = 10 * users if examples is None else examples
        inputs = _synthetic(users, examples, seed)
        fat_sample = min(200_000, inputs.requests.num_rows) if fat_sample is None else fat_sample
    events, requests, tenants = inputs.events, inputs.requests, inputs.tenants
    console.print(f"[bold]lateseq demo[/] on {dataset}: {events.num_rows:,} events, "
                  f"{requests.num_rows:,} examples; loaded in {time.perf_counter() - t:.1f}s")
    for note in inputs.notes:
        console.print(note)

    store, commit, commits, log = _ingest_and_log(root, inputs, console, show)
    examples_path = root / "examples.parquet"
    write_log(log, examples_path)
    lengths = log.column("uih_length").to_numpy().astype(np.int64)

    # the oracle: Fat Rows from the raw events, at the longest length any tenant needs
    sampled = fat_sample < log.num_rows
    if sampled:
        rng = np.random.default_rng([seed, 7])
        keep = np.sort(rng.choice(log.num_rows, fat_sample, replace=False))
        compared_log = log.take(keep)
        compared_path = root / "fat-examples.parquet"
        write_log(compared_log, compared_path)
    else:
        compared_log, compared_path = log, examples_path
    fat_columns = list(dict.fromkeys(c for tenant in tenants for c in tenant.projection.columns))
    fat_len = max(tenant.projection.max_len for tenant in tenants)
    fat_path = root / "fatrows.parquet"
    t = time.perf_counter()
    with _progress(console, show) as bar:
        task = bar.add_task(f"Fat Rows (N={fat_len})", total=compared_log.num_rows)
        oracle_events = events.append_column("commit", pa.array(commit))
        extra = [c for c in compared_log.column_names if c not in POINTER_FIELDS.names]
        oracle_requests = compared_log.select(["user_id", "request_ts", "uih_version", *extra]) \
            .rename_columns(["user_id", "request_ts", "version", *extra])

        def chunks(oracle_events: pa.Table) -> Iterator[pa.Table]:
            for chunk in fatrow.iter_fat_rows(oracle_events, oracle_requests, fat_columns, fat_len):
                yield chunk
                bar.advance(task, chunk.num_rows)

        fat_bytes = fatrow.write_fat_rows(chunks(oracle_events), fat_path)
    fat_build_s = time.perf_counter() - t
    del oracle_events

    results = []
    for tenant in tenants:
        results.append(_compare(store, compared_path, fat_path, tenant, compared_log.num_rows, console, show))

    store_bytes = _du(root / "store" / "segments")
    cache_bytes = sum(decoded_file(store.cache_dir, i.name).stat().st_size for i in store.segment_infos)
    latest_bytes = store.versions()[-1].bytes
    log_bytes = os.path.getsize(examples_path)
    fat_total = fat_bytes * log.num_rows / compared_log.num_rows  # extrapolated when sampled
    summary: dict[str, Any] = {
        "dataset": dataset,
        "plan": inputs.plan,
        "events": events.num_rows,
        "users": len(np.unique(events.column("user_id").to_numpy())),
        "examples": log.num_rows,
        "versions": store.version,
        "commits": commits,
        "mean_history": float(lengths.mean()) if len(lengths) else 0.0,
        "mean_history_capped": float(np.minimum(lengths, fat_len).mean()) if len(lengths) else 0.0,
        "empty_history_share": float((lengths == 0).mean()) if len(lengths) else 0.0,
        "store_bytes": store_bytes,
        "store_latest_bytes": latest_bytes,
        "read_cache_bytes": cache_bytes,
        "example_log_bytes": log_bytes,
        "fat_row_bytes": fat_total,
        "fat_row_bytes_measured": fat_bytes,
        "storage_ratio": fat_total / (latest_bytes + log_bytes),
        "compared": compared_log.num_rows,
        "sampled": sampled,
        "fat_build_s": fat_build_s,
        "tenants": results,
        "mismatches": sum(r["mismatches"] for r in results),
        "checksum_mismatches": sum(r["checksum_mismatches"] for r in results),
    }
    if dataset == "movielens":
        online = _online_replay(events, requests, root, console, show)
        summary["online"] = online
        summary["mismatches"] += sum(online[f"{k}_mismatches"] for k in ("served_vs_fat", "streaming", "batch"))
    _report(summary, console)
    return summary


def _online_replay(events: pa.Table, requests: pa.Table, root: Path, console: Console,
                   show: bool) -> dict[str, Any]:
    """The same requests served the two-tier way (``twotier.OnlineReader``): each sees its
    user's whole past, daily versions plus the mutable tier's events since the last one.

    MovieLens has no ingestion times, so events arrive at their own timestamp. What was
    served, each day's records rebuilt in streaming mode after that day's fold and
    compaction, and every record rebuilt in batch mode at the end (tails stripped) are
    all compared with Fat Rows of every event before the request (the oracle).
    """
    ts = events.column("ts").to_numpy()
    order = np.argsort(ts, kind="stable")  # arrival order; equal times keep file order
    events = events.take(order)
    events = events.append_column("arrival_ts", events.column("ts")).append_column(
        "event_id", pa.array(order.astype(np.int64)))
    schema = Schema({"item_id": "int64", "rating": "int8", "arrival_ts": "int64", "event_id": "int64"},
                    arrival_col="arrival_ts", event_id_col="event_id")
    store = Store.create(root / "online-store", schema)
    tier = InMemoryTier(schema, retention=2 * _DAY)
    projection = Projection(50, ("item_id", "rating", "ts"))
    columns = list(projection.columns)
    fat = fatrow.fat_rows(events.select(["user_id", "ts", "item_id", "rating"]),
                          requests.select(["user_id", "request_ts"]), columns, projection.max_len)
    fat_offsets, fat_values = fatrow.jagged_columns(fat, columns)

    def differing(batch: JaggedBatch, lo: int, hi: int) -> int:
        """Rows of ``batch`` (requests lo..hi) that differ from the Fat Rows, or were flagged."""
        a, b = fat_offsets[lo], fat_offsets[hi]
        values = {c: fat_values[c][a:b] for c in columns}
        return _differing_rows(batch.offsets, batch.values, fat_offsets[lo:hi + 1] - a, values) + int(
            batch.mismatched.sum())

    reader = OnlineReader(store, tier, projection)
    event_day = events.column("ts").to_numpy() // _DAY
    request_day = requests.column("request_ts").to_numpy() // _DAY
    days = np.union1d(event_day, request_day)
    logs, served_mismatches, streaming_mismatches, inline_bytes = [], 0, 0, 0
    with _progress(console, show) as bar:
        task = bar.add_task("two-tier: serve, fold, rebuild", total=len(days))
        for k, day in enumerate(days):
            lo, hi = np.searchsorted(event_day, [day, day + 1])
            tier.append(events.slice(lo, hi - lo))  # the tier bounds each request by arrival
            lo, hi = np.searchsorted(request_day, [day, day + 1])
            if hi > lo:
                log, served = reader.serve(requests.slice(lo, hi - lo))
                served_mismatches += differing(served, lo, hi)
            watermark = int(day + 1) * _DAY
            store = fold(store, tier, watermark)
            if (k + 1) % _COMPACT_EVERY["day"] == 0:
                store = store.compact()
            tier.expire(watermark, watermark)
            if hi > lo:  # streaming training reads today's records from the new version ...
                streaming_mismatches += differing(rebuild_streaming(store, log, projection, "flag"), lo, hi)
                inline_bytes += log.nbytes
                logs.append(strip_tails(store, log)[0])  # ... which covers them: keep pointers only
            bar.advance(task)
        store = store.compact()
    stripped = pa.concat_tables(logs)
    batch_mismatches = 0
    for lo in range(0, stripped.num_rows, 1 << 16):
        hi = min(lo + (1 << 16), stripped.num_rows)
        batch_mismatches += differing(rebuild_batch(store, stripped.slice(lo, hi - lo), projection, "flag"), lo, hi)
    paths = {name: root / f"online-{name}.parquet" for name in ("stripped", "fatrows")}
    write_log(stripped, paths["stripped"])
    fatrow.write_fat_rows(fat, paths["fatrows"])
    lengths = stripped.column("seq_length").to_numpy().astype(np.int64)
    return {
        "examples": stripped.num_rows,
        "versions": store.version,
        "max_len": projection.max_len,
        "mean_history": float(lengths.mean()),
        "empty_history_share": float((lengths == 0).mean()),
        "served_vs_fat_mismatches": served_mismatches,
        "streaming_mismatches": streaming_mismatches,
        "batch_mismatches": batch_mismatches,
        "store_bytes": store.versions()[-1].bytes,
        "log_inline_bytes": inline_bytes,
        "log_stripped_bytes": paths["stripped"].stat().st_size,
        "fat_row_bytes": paths["fatrows"].stat().st_size,
    }


def _ingest_and_log(root: Path, inputs: _Inputs, console: Console,
                    show: bool) -> tuple[Store, np.ndarray, int, pa.Table]:
    """Commits one version per period; logs each period's requests just before its commit.

    Returns the compacted store, the version each event went in, the number of commits
    and the example log.
    """
    events, requests, compact_every = inputs.events, inputs.requests, inputs.compact_every
    store = Store.create(root / "store", Schema.infer(events.schema))
    periods, event_index = np.unique(inputs.event_period, return_inverse=True)
    request_index = np.searchsorted(periods, inputs.request_period)
    event_order = np.argsort(event_index, kind="stable")  # file order within a period
    event_bounds = np.searchsorted(event_index[event_order], np.arange(len(periods) + 1))
    request_order = np.argsort(request_index, kind="stable")
    request_bounds = np.searchsorted(request_index[request_order], np.arange(len(periods) + 1))
    commit = np.zeros(events.num_rows, np.int64)
    logs = []
    with _progress(console, show) as bar:
        task = bar.add_task("ingest + log pointers", total=len(periods))
        for i in range(len(periods)):
            # online serves this period's requests from the last published version ...
            rows = request_order[request_bounds[i]:request_bounds[i + 1]]
            if len(rows):
                logs.append(log_examples(store, requests.take(rows)))
            # ... and then the period's events are published
            rows = event_order[event_bounds[i]:event_bounds[i + 1]]
            store = store.commit(events.take(rows))
            commit[rows] = store.version
            if compact_every and (i + 1) % compact_every == 0:
                store = store.compact()
            bar.advance(task)
        late = request_order[request_bounds[-1]:]  # requests after the last period's events
        if len(late):
            logs.append(log_examples(store, requests.take(late)))
        store = store.compact()
    log = pa.concat_tables(logs) if logs else log_examples(store, requests.slice(0, 0))
    return store, commit, len(periods), log


def _compare(store: Store, examples_path: Path, fat_path: Path, tenant: Tenant, total: int,
             console: Console, show: bool) -> dict[str, Any]:
    """Materializes every example, compares it with the Fat Rows, and times both readers."""
    projection = tenant.projection
    columns = list(projection.columns)
    loader = iter_batches(store, examples_path, projection, BATCH_SIZE, columns=[], on_mismatch="flag")
    fat = _Cursor(fatrow.read_fat_rows_batches(fat_path, columns, BATCH_SIZE), projection.max_len)
    # warm up both readers before timing: JIT cache load and file opening on a first batch,
    # and the store's pages mapped (the Fat Row file was just written: it is in page cache)
    store.prefault([*columns, store.schema.time_col])
    for _ in zip(iter_batches(store, examples_path, projection, BATCH_SIZE, columns=[], on_mismatch="flag"),
                 fatrow.read_fat_rows_batches(fat_path, columns, BATCH_SIZE), strict=False):
        break
    mismatches = checksum_mismatches = rows = 0
    lateseq_s = fat_s = 0.0
    with _progress(console, show) as bar:
        task = bar.add_task(f"materialize + compare {tenant.name.split(':')[0]}", total=total)
        while True:
            t = time.perf_counter()
            item = next(loader, None)
            lateseq_s += time.perf_counter() - t
            if item is None:
                break
            batch, seqs = item
            n = batch.num_rows
            t = time.perf_counter()
            offsets, values = fat.take(n)
            fat_s += time.perf_counter() - t
            checksum_mismatches += int(seqs.mismatched.sum())
            mismatches += _differing_rows(seqs.offsets, seqs.values, offsets, values)
            rows += n
            bar.advance(task, n)
    if fat.take(1)[0].size > 1:
        raise RuntimeError("the Fat Row file has more rows than the example log")
    return {
        "tenant": tenant.name,
        "max_len": projection.max_len,
        "columns": columns,
        "rows": rows,
        "lateseq_s": lateseq_s,
        "fat_s": fat_s,
        "lateseq_eps": rows / lateseq_s if lateseq_s else float("inf"),
        "fat_eps": rows / fat_s if fat_s else float("inf"),
        "mismatches": mismatches,
        "checksum_mismatches": checksum_mismatches,
    }


class _Cursor:
    """Fat Row batches re-cut to any row count, each row trimmed to its newest ``max_len``."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, dict[str, np.ndarray]]], max_len: int):
        self.batches = batches
        self.max_len = max_len
        self.pending: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self.rows = 0

    def take(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        while self.rows < n:
            item = next(self.batches, None)
            if item is None:
                break
            self.pending.append(_trim(*item, self.max_len))
            self.rows += len(item[0]) - 1
        if not self.pending:
            return np.zeros(1, np.int64), {}
        offsets, values = _concat(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = min(n, len(offsets) - 1)
        head = offsets[: n + 1], {k: v[: offsets[n]] for k, v in values.items()}
        rest = offsets[n:] - offsets[n], {k: v[offsets[n]:] for k, v in values.items()}
        self.pending = [rest] if len(rest[0]) > 1 else []
        self.rows = len(rest[0]) - 1
        return head


def _trim(offsets: np.ndarray, values: dict[str, np.ndarray],
          max_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Keeps each row's newest ``max_len`` events (what a shorter tenant must do with Fat Rows)."""
    lengths = np.diff(offsets)
    if lengths.max(initial=0) <= max_len:
        return offsets, values
    keep = np.minimum(lengths, max_len)
    new_offsets = np.zeros(len(offsets), np.int64)
    np.cumsum(keep, out=new_offsets[1:])
    src = np.arange(new_offsets[-1]) + np.repeat(offsets[1:] - keep - new_offsets[:-1], keep)
    return new_offsets, {k: v[src] for k, v in values.items()}


def _concat(parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    shifts = np.cumsum([0] + [p[0][-1] for p in parts[:-1]])
    offsets = np.concatenate([parts[0][0][:1]] + [p[0][1:] + s for p, s in zip(parts, shifts, strict=True)])
    values = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return offsets, values


def _differing_rows(offsets: np.ndarray, values: dict[str, np.ndarray], fat_offsets: np.ndarray,
                    fat_values: dict[str, np.ndarray]) -> int:
    """How many rows differ in length or in any value's bits (dtype included)."""
    n = len(offsets) - 1
    if len(fat_offsets) != len(offsets):
        return n  # the Fat Rows ran out: every row here is unmatched
    unflagged = np.zeros(n, bool)
    mine, fat = JaggedBatch(offsets, values, unflagged), JaggedBatch(fat_offsets, fat_values, unflagged)
    return int(mine.rows_differ(fat).sum())


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------- the report


def _report(s: dict[str, Any], console: Console) -> None:
    out = Console() if console.stderr else console
    table = Table(title=f"lateseq demo: {s['dataset']}", show_lines=False)
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_column("", justify="left", style="dim")
    table.add_row("events", f"{s['events']:,}", "")
    table.add_row("users", f"{s['users']:,}", "")
    table.add_row("examples", f"{s['examples']:,}", "one pointer each, logged before the period's commit")
    table.add_row("versions", f"{s['versions']:,}", f"{s['commits']:,} commits ({s['plan']}), "
                  f"{s['versions'] - s['commits']:,} compaction" + ("s" if s['versions'] - s['commits'] != 1 else ""))
    table.add_row("mean history at request", f"{s['mean_history']:.1f}",
                  f"{s['empty_history_share']:.0%} empty; {s['mean_history_capped']:.1f} capped at N=200")
    table.add_section()
    table.add_row("store, latest version", human_bytes(s["store_latest_bytes"]), "events once, packed (durable)")
    table.add_row("store, all versions", human_bytes(s["store_bytes"]), "before any cleanup of old segments")
    table.add_row("read cache, latest version", human_bytes(s["read_cache_bytes"]),
                  "decoded, memory-mapped; per host, rebuilt when missing")
    table.add_row("example log (pointers)", human_bytes(s["example_log_bytes"]), "28-byte pointer + request columns")
    fat_note = "union of both tenants, N=200"
    if s["sampled"]:
        fat_note += f"; extrapolated from {s['compared']:,} sampled examples"
    table.add_row("Fat Rows", human_bytes(s["fat_row_bytes"]), fat_note)
    table.add_row("Fat Rows / (store + log)", f"{s['storage_ratio']:.2f}x", "latest version")
    for r in s["tenants"]:
        table.add_section()
        table.add_row(f"tenant {r['tenant']}", "", "")
        table.add_row("  materialized, ex/s", f"{r['lateseq_eps']:,.0f}",
                      "pointer read + locate + copy + checksum verify; store pages mapped")
        table.add_row("  Fat Rows read, ex/s", f"{r['fat_eps']:,.0f}", "Parquet scan of the union file"
                      + (", trimmed to N" if r["max_len"] < 200 else ""))
        table.add_row("  ratio", f"{r['lateseq_eps'] / r['fat_eps']:.2f}x" if r["fat_eps"] else "-", "")
    table.add_section()
    compared = f"{s['compared']:,} examples" + (" (random sample)" if s["sampled"] else " (all)")
    table.add_row("mismatches", f"{s['mismatches']:,}",
                  f"bit-identical vs Fat Rows over {compared}, both tenants")
    table.add_row("checksum mismatches", f"{s['checksum_mismatches']:,}", "vs each pointer's length + checksum")
    online = s.get("online")
    if online:
        table.add_section()
        table.add_row("two-tier online replay", "", "OnlineReader: daily versions + mutable tier")
        table.add_row("  mean history at request", f"{online['mean_history']:.1f}",
                      f"{online['empty_history_share']:.0%} empty: the tier serves what versions lack")
        table.add_row(f"  served (last {online['max_len']}) vs Fat Rows", f"{online['served_vs_fat_mismatches']:,}",
                      f"mismatches over {online['examples']:,} examples (all events before each request)")
        table.add_row("  streaming rebuild", f"{online['streaming_mismatches']:,}",
                      "mismatches: after the day's fold + compaction, tails inline")
        table.add_row("  batch rebuild", f"{online['batch_mismatches']:,}",
                      "mismatches: at the end, tails stripped")
        table.add_row("  store + log (stripped)", human_bytes(online["store_bytes"] + online["log_stripped_bytes"]),
                      f"log with tails inline: {human_bytes(online['log_inline_bytes'])} in memory (Arrow)")
        table.add_row(f"  Fat Rows (N={online['max_len']})", human_bytes(online["fat_row_bytes"]),
                      f"{online['fat_row_bytes'] / (online['store_bytes'] + online['log_stripped_bytes']):.1f}x "
                      "store + stripped log")
    out.print(table)
