"""Several model tenants on one store (issue 10): lateseq against the Fat Row union.

    python benchmarks/tenants.py             # 200k users (realistic: 40M events, 43M examples)
    python benchmarks/tenants.py --small     # 20k users (minutes)
    python benchmarks/tenants.py --tiny      # a smoke run of every part (seconds; what the tests run)
    python benchmarks/tenants.py --scale 5000   # tiny, small, full or a number of users (--small's budgets)
    options: --json PATH  --plot PATH  --repeat R  --cpu K  --workdir DIR  --fat-budget-gb G  --tenants TOML

The workload is the store-states benchmark's realistic one (``workload.realistic``:
power-law users over 30 days, about an example per event), ingested as 30 daily commits
and compacted once; every example's pointer is at the latest version. The tenants are
``benchmarks/tenants.toml`` (``lateseq.load_tenants``): retrieval (item_id, ts; last 128),
early_ranking (item_id, action, ts; last 1024 in a 7-day window), late_ranking (every
column; last 8192), filtered (item_id, ts; last 1024 with action in {1, 3}) and its
unfiltered twin.

- **lateseq**: each tenant reads the example log (Parquet, batches of 1024) and
  materializes its own projection from the store (verified).
- **the Fat Row union**, as users build it for several models today: one dataset at the
  longest length any tenant needs (8192) with the union of their columns, one row per
  example, in its smallest form (zstd Parquet sorted by user, ``workload``'s smallest
  settings) and its fastest (an Arrow IPC file, memory-mapped). Each tenant reads only
  its columns (Parquet column pruning; IPC: only those columns' buffers) and projects
  them itself with numpy, vectorised: its window and filter on the read values, then its
  last N, giving values + offsets (copied out of the map for IPC).

Bytes read, by page: every example of a sample of whole users (as the log holds them),
read once cold (the files evicted, this process's maps of them included), then the
bytes of their pages in the page cache (mincore): lateseq's store and example log, the
IPC union file, each with the kernel's readahead and without (the fewer counts). A
lateseq handle checks each column against its digest, whole, on first use: that first
pass is shared by an epoch's examples, a second pass gives the histories' pages. Parquet:
the compressed column chunks of the columns read (metadata), a lower bound. Also
reported: the bytes lateseq's kernels copy (``Touched.copied + scanned``) against the
IPC columns' whole buffers.

An untimed pass first checks every tenant's Fat Row output (both forms) equal to
lateseq's, offsets and values bit for bit. Timing: one core (pinned), warm page cache,
CPU time of the process (``time.process_time``, so other processes on the machine do not
count), the best of ``--repeat`` interleaved passes. Where every example's Fat Rows at
8192 would exceed ``--fat-budget-gb`` (as an IPC file), both sides are timed on a uniform
sample of requests and Fat Row bytes (written, read, build time) are extrapolated, as in
``benchmarks/materialize.py``; the output says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import materialize  # noqa: E402  (first: it sets one thread per pool before numpy, numba and pyarrow load)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import lateseq  # noqa: E402
import report  # noqa: E402
from lateseq._gather import compare  # noqa: E402
from lateseq._pointers import pointers_from_log  # noqa: E402
from lateseq._select import Touched, reach, select  # noqa: E402
from materialize import Batches, Run, console, drain, drop_pages, resident_bytes, step  # noqa: E402
from workload import (  # noqa: E402
    BATCH,
    DAY,
    SCHEMA,
    FatRowFile,
    FatRowMismatch,
    Histories,
    Outputs,
    State,
    Workload,
    _ingest,
    _jagged,
    _log,
    _written,
    build_forms,
    day_of,
    derived_files,
    ipc_views,
    lateseq_reads,
    loader_reads,
    read_days,
    readable_days,
    realistic,
    record_batches,
    request_sample,
    same_jagged,
    smallest_settings,
    store_files,
    user_sample,
)

TENANTS_TOML = Path(__file__).resolve().parent / "tenants.toml"
UNION_FORMS = ("parquet-smallest", "arrow-ipc")  # the Fat Row union's smallest and fastest forms
ITEM_BYTES = {"item_id": 4, "action": 1, "dwell": 4, "ts": 8}  # a union event's bytes per column


@dataclasses.dataclass(frozen=True)
class Scale:
    users: int
    fat_budget: float  # bytes of the union's IPC Fat Rows above which both sides are timed on a sample
    max_timed: int  # examples timed at most


SCALES = {
    "full": Scale(users=200_000, fat_budget=4e9, max_timed=2_000_000),
    "small": Scale(users=20_000, fat_budget=2e9, max_timed=200_000),
    "tiny": Scale(users=100, fat_budget=20e6, max_timed=6_000),
}


# ---------------------------------------------------------------- a tenant reading the Fat Row union


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one tenant reads of the union and how it projects it: its columns, the filter
    column, the time column and request time for a window."""

    name: str
    projection: lateseq.Projection
    columns: tuple[str, ...]  # its output columns, in lateseq's order
    window: int | None  # in the store's time unit

    @property
    def reads(self) -> tuple[str, ...]:
        """Union columns it reads: its own, its filter's, and the time and request time for a window."""
        where = self.projection.where
        extra = ([where.column] if where is not None else []) + (["ts", "request_ts"] if self.window else [])
        return tuple(dict.fromkeys([*self.columns, *extra]))

    def project(self, offsets: np.ndarray, values: dict[str, np.ndarray], request_ts: np.ndarray | None,
                copy: bool, out: Outputs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The tenant's sequences from union rows (offsets from 0, the values it reads):
        with a filter, a compiled kernel walks each row back from its newest event and
        stops at N kept or the window's edge (numpy masks over whole rows cost 1.3-2.5x
        more), then one gather per column; without one, each row's part is one slice,
        copied as one (whole rows: one copy per column). ``copy``: the values are a view
        into a memory map. The values go into ``out``'s arrays, reused from batch to batch
        as lateseq's are."""
        where, n = self.projection.where, self.projection.max_len
        out.next_batch()
        if where is None and self.window is None and int(np.diff(offsets).max(initial=0)) <= n:
            if not copy:
                return offsets, {c: values[c] for c in self.columns}
            copied = {c: out.empty(c, len(values[c]), values[c].dtype) for c in self.columns}
            for c in self.columns:
                np.copyto(copied[c], values[c])
            return offsets, copied
        ts = values["ts"] if self.window is not None else _NONE
        lower = request_ts - self.window if self.window is not None else _NONE
        if where is None:  # each row's events are one slice: copied as one (an index gather cost 1.7-2x)
            starts, out_offsets = _row_slices(offsets, ts, lower, self.window is not None, n)
            return out_offsets, {c: _copy_slices(values[c], starts, out_offsets,
                                                 out.empty(c, int(out_offsets[-1]), values[c].dtype))
                                 for c in self.columns}
        column = values[where.column]
        lut = _byte_lut(where, column.dtype) if column.dtype.itemsize == 1 else _NO_LUT
        column = column.view(np.uint8) if column.dtype.itemsize == 1 else column
        take, out_offsets = _tenant_rows(offsets, column, lut, where.mode, where.kernel_values(), ts, lower,
                                         self.window is not None, n)
        return out_offsets, {c: np.take(values[c], take, out=out.empty(c, len(take), values[c].dtype))
                             for c in self.columns}


def _keep(where: lateseq.Filter | None, values: dict[str, np.ndarray]) -> np.ndarray | None:
    if where is None:
        return None
    column = values[where.column]
    if where.isin is not None:
        return np.isin(column, np.array(where.isin, column.dtype))
    bits = np.asarray(where.any_bits if where.any_bits is not None else where.all_bits, column.dtype)
    return (column & bits) != 0 if where.any_bits is not None else (column & bits) == bits


_NONE = np.zeros(0, np.int64)
_NO_LUT = np.zeros(0, np.uint8)


@numba.njit(cache=True, nogil=True)
def _row_slices(offsets, ts, lower, windowed, n):  # noqa: ANN001, ANN202
    """Each row's newest ``n`` events in the window (time >= ``lower``) without a filter:
    one slice, its edge found by binary search (a row's times ascend): (their starts,
    output offsets)."""
    rows = len(offsets) - 1
    starts = np.empty(rows, np.int64)
    out = np.zeros(rows + 1, np.int64)
    for r in range(rows):
        lo, hi = offsets[r], offsets[r + 1]
        if windowed:
            lo += np.searchsorted(ts[lo:hi], lower[r])
        starts[r] = max(lo, hi - n)
        out[r + 1] = out[r] + hi - starts[r]
    return starts, out


@numba.njit(cache=True, nogil=True)
def _copy_slices(src, starts, out_offsets, out):  # noqa: ANN001, ANN202
    for r in range(len(starts)):
        window = src[starts[r]:starts[r] + out_offsets[r + 1] - out_offsets[r]]
        target = out[out_offsets[r]:out_offsets[r + 1]]
        for k in range(window.shape[0]):
            target[k] = window[k]
    return out


@numba.njit(cache=True, nogil=True)
def _tenant_rows(offsets, column, lut, mode, wanted, ts, lower, windowed, n):  # noqa: ANN001, ANN202
    """Each row's newest ``n`` events that pass the filter and the window (time >=
    ``lower``), oldest first: (their positions, output offsets). The filter: a 1-byte
    column (as uint8) looks its value up in ``lut``; a wider one compares (``mode`` 0:
    isin ``wanted``, 1: any of the bits, 2: all of them). Every position is written and
    the kept ones advance, without a branch (2.3x faster than a branch per event and a
    loop over ``wanted``, a stranger's reader's lead: s21d)."""
    rows = len(offsets) - 1
    take = np.empty(min(offsets[-1], rows * n) + 1, np.int64)
    out = np.zeros(rows + 1, np.int64)
    k = 0
    for r in range(rows):
        lo, hi = offsets[r], offsets[r + 1]
        if windowed:
            lo += np.searchsorted(ts[lo:hi], lower[r])
        first = k
        i = hi - 1
        while i >= lo and k - first < n:
            take[k] = i
            if len(lut):
                k += lut[column[i]]
            elif mode == 0:
                for w in wanted:
                    if column[i] == w:
                        k += 1
                        break
            elif mode == 1:
                k += (column[i] & wanted[0]) != 0
            else:
                k += (column[i] & wanted[0]) == wanted[0]
            i -= 1
        a, b = first, k - 1
        while a < b:  # newest first -> oldest first, in place
            take[a], take[b] = take[b], take[a]
            a += 1
            b -= 1
        out[r + 1] = k
    return take[:k], out


@functools.cache
def _byte_lut(where: lateseq.Filter, dtype: np.dtype) -> np.ndarray:
    """Whether each of a 1-byte column's 256 values (its bytes as uint8) passes ``where``."""
    values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.int64)
    wanted = where.kernel_values()
    keep = (np.isin(values, wanted) if where.mode == 0 else
            (values & wanted[0]) != 0 if where.mode == 1 else (values & wanted[0]) == wanted[0])
    return keep.astype(np.uint8)


def fat_row_tenant(file: FatRowFile, plan: Plan, random_access: bool = False, views: list | None = None) -> Batches:
    """A tenant's loader over the union: only its columns read, projected batch by batch;
    the memory-mapped form through numpy views of its columns (no Arrow work per batch),
    as the materialize benchmark reads it: ``views`` made once by ``union_views`` and
    kept, as a loader keeps its map (``random_access``: a map without readahead)."""
    windowed = "request_ts" in plan.reads
    out = Outputs()
    if file.form == "arrow-ipc":
        for offsets, values, flat in views if views is not None else union_views(file, plan, random_access):
            first = int(offsets[0])
            yield plan.project(offsets.astype(np.int64) - first,
                               {c: v[first:int(offsets[-1])] for c, v in values.items()}, flat.get("request_ts"),
                               copy=True, out=out)
    else:
        for batch in record_batches(file, plan.reads):
            offsets, values = _jagged(batch, tuple(c for c in plan.reads if c != "request_ts"))
            yield plan.project(offsets, values, batch.column("request_ts").to_numpy() if windowed else None,
                               copy=False, out=out)


def union_views(file: FatRowFile, plan: Plan, random_access: bool = False) -> list:
    """The memory-mapped union's record batches as numpy views of the columns ``plan`` reads."""
    lists = tuple(c for c in plan.reads if c != "request_ts")
    flat = ("request_ts",) if "request_ts" in plan.reads else ()
    return ipc_views(file.path, lists, flat=flat, random_access=random_access)


def fat_row_read_bytes(file: FatRowFile, columns: tuple[str, ...]) -> int:
    """Bytes a reader of ``columns`` reads from the file: the buffers of those columns in
    every record batch (IPC), or their compressed column chunks (Parquet)."""
    if file.form == "arrow-ipc":
        return sum(buf.size for batch in record_batches(file, columns) for c in columns
                   for buf in batch.column(c).buffers() if buf is not None)
    return parquet_read_bytes(file.path, columns)


def parquet_read_bytes(path: Path, columns: tuple[str, ...]) -> int:
    """The compressed column chunks of ``columns`` in a Parquet file (from its metadata)."""
    meta = pq.ParquetFile(path).metadata
    return sum(chunk.total_compressed_size for g in range(meta.num_row_groups)
               for chunk in (meta.row_group(g).column(k) for k in range(meta.num_columns))
               if chunk.path_in_schema.split(".")[0] in columns)


# ---------------------------------------------------------------- lateseq's side


def lateseq_tenant(store: lateseq.Store, log: Path, projection: lateseq.Projection) -> Batches:
    """A tenant's loader (``workload.lateseq_reads``), its projection materialized, as (offsets, values)."""
    for batch in lateseq_reads(store, log, projection):
        yield batch.offsets, batch.values


def lateseq_one_pass(store: lateseq.Store, log: Path, tenants: dict[str, lateseq.Projection]) -> Batches:
    """Every tenant from one read of each history (``materialize_tenants``): a batch per tenant."""
    for pointers in pq.ParquetFile(log).iter_batches(BATCH, columns=lateseq.POINTER_FIELDS.names, use_threads=False):
        for batch in lateseq.materialize_tenants(store, pointers, tenants).values():
            yield batch.offsets, batch.values


def cold_pages(files: list[Path], passes: list[Callable[[], Batches]]) -> list[dict]:
    """Bytes each pass brings into the page cache, cold: ``files`` evicted before it (pages
    this process maps included), then their pages resident after it (mincore): what a
    reader really reads, whole pages and the kernel's readahead included, where
    ``Touched`` counts the bytes the kernels copy."""
    out = []
    for make in passes:
        gc.collect()  # close the maps of finished passes
        drop_pages(files)
        left = resident_bytes(files)
        run = drain(make())
        out.append({"bytes": resident_bytes(files) - left, "examples": run.examples,
                    "resident_after_evict": left / max(sum(p.stat().st_size for p in files), 1)})
    return out


def pages_read(state: State, files: list[Path], log: Path, examples: int, ipc: FatRowFile, plan: Plan) -> dict:
    """A tenant's pages read per example, cold, on ``log`` (every example of some users),
    lateseq and the memory-mapped union, each with the kernel's readahead and without.
    lateseq: a new handle's first pass checks each column it reads against its digest,
    whole, once per handle (per loader worker), which an epoch of all ``examples`` shares;
    its second pass (pages dropped again) reads only the histories."""
    out: dict = {"evicted": []}
    for readahead in ("auto", False):
        handle = functools.cache(lambda readahead=readahead: lateseq.open(state.path, state.version,
                                                                          readahead=readahead))
        first, again = cold_pages(files, [lambda: lateseq_tenant(handle(), log, plan.projection)] * 2)
        out[f"lateseq_readahead_{readahead}"] = {"first_pass": first["bytes"], "verified_pass": again["bytes"],
                                                 "per_example": first["bytes"] / examples
                                                 + again["bytes"] / again["examples"]}
        out["evicted"] += [first, again]
    for random_access in (False, True):
        (run,) = cold_pages([ipc.path], [lambda r=random_access: fat_row_tenant(ipc, plan, random_access=r)])
        out[f"arrow-ipc_random_access_{random_access}"] = {"bytes": run["bytes"],
                                                            "per_example": run["bytes"] / run["examples"]}
        out["evicted"].append(run)
    return out


def touched(store: lateseq.Store, log: pa.Table, tenants: dict[str, lateseq.Projection]) -> dict[str, Touched]:
    """Bytes each tenant's kernels read from the store's columns over ``log`` (what
    ``materialize_tenants`` does, keeping ``select``'s accounting)."""
    total = {name: Touched() for name in tenants}
    for lo in range(0, log.num_rows, BATCH):
        pointers = pointers_from_log(log.slice(lo, BATCH), store.schema)
        depth = reach(tenants.values())
        located = store.locate(pointers.user_id, pointers.request_ts, pointers.visibility, depth)
        mismatched = compare(pointers, located, True, "raise")
        for name, (_, t) in select(store, pointers, located, tenants, mismatched, depth).items():
            total[name].copied += t.copied
            total[name].scanned += t.scanned
    return total


# ---------------------------------------------------------------- timing


def best_cpu(repeat: int, sides: dict[str, Callable[[], Batches]]) -> dict[str, Run]:
    """Each side's pass with the least CPU time of ``repeat`` (passes interleaved)."""
    best: dict[str, Run] = {}
    for k in range(repeat):
        for name, make in sides.items():
            run = drain(make())
            run.passes = k + 1
            if name not in best or run.cpu_seconds < best[name].cpu_seconds:
                best[name] = run
            best[name].passes = k + 1
    return best


def figures(run: Run, memcpy: float, examples: int | None = None) -> dict:
    """ex/s and GB/s on CPU time; ``examples`` overrides the count (a one-pass run of several tenants)."""
    cpu = max(run.cpu_seconds, 1e-9)
    ex_s = (run.examples if examples is None else examples) / cpu
    return {"ex_s": ex_s, "gb_s": run.out_bytes / cpu / 1e9, "memcpy_fraction": run.out_bytes / cpu / 1e9 / memcpy,
            "events_per_example": run.events / max(run.examples, 1), "cpu_s": run.cpu_seconds,
            "wall_s": run.seconds, "cpu_share": run.cpu_seconds / max(run.seconds, 1e-9), "passes": run.passes}


def cpu_timed(action: Callable[[], object]) -> tuple[object, float]:
    start = time.process_time()
    out = action()
    return out, time.process_time() - start


# ---------------------------------------------------------------- the run


def plans_of(tenants: dict[str, lateseq.Projection]) -> dict[str, Plan]:
    return {name: Plan(name, p, tuple(p.resolve(SCHEMA)), p.window_in(SCHEMA)) for name, p in tenants.items()}


def union_of(plans: dict[str, Plan]) -> tuple[tuple[str, ...], int]:
    """The union's list columns (every column any tenant reads, in the schema's order) and length."""
    wanted = {c for plan in plans.values() for c in plan.reads if c != "request_ts"}
    return tuple(c for c in [*SCHEMA.columns, SCHEMA.time_col] if c in wanted), max(
        p.projection.max_len for p in plans.values())


def twins(plans: dict[str, Plan]) -> dict[str, str]:
    """Each filtered tenant's unfiltered twin (the same projection without ``where``), where the config has one."""
    out = {}
    for name, plan in plans.items():
        if plan.projection.where is not None:
            twin = dataclasses.replace(plan.projection, where=None)
            out.update((name, other) for other, p in plans.items() if p.projection == twin)
    return out


def describe_projection(p: lateseq.Projection) -> dict:
    where = None if p.where is None else {k: v for k, v in dataclasses.asdict(p.where).items() if v is not None}
    return {"columns": list(p.resolve(SCHEMA)), "max_len": p.max_len, "window": p.window_in(SCHEMA), "where": where}


def measure(args: argparse.Namespace, scale: Scale, memcpy: float, root: Path, steps: dict[str, float]) -> dict:
    tenants = lateseq.load_tenants(args.tenants, SCHEMA)
    plans = plans_of(tenants)
    columns, union_len = union_of(plans)
    out: dict = {"tenants_config": {name: describe_projection(p) for name, p in tenants.items()},
                 "union": {"columns": list(columns), "max_len": union_len}}
    with step("generate the realistic workload", steps):
        work = realistic(scale.users)
    out["workload"] = work.describe()
    requests = work.requests

    # lateseq: 30 daily commits, a compaction, every example's pointer (at the latest version)
    build: dict = {"lateseq": {}, "fat_rows": {}}
    with step("lateseq: daily commits, compaction, example log", steps):
        ts = work.events.column("ts").to_numpy()
        (daily, days), build["lateseq"]["ingest_cpu_s"] = cpu_timed(
            lambda: _ingest(root / "store", work.events, day_of(ts)))
        store, build["lateseq"]["compact_cpu_s"] = cpu_timed(daily.compact)
        log, build["lateseq"]["log_cpu_s"] = cpu_timed(lambda: _log(store, requests, root / "logs" / "latest.arrow"))
        build["lateseq"]["cpu_s"] = sum(build["lateseq"].values())
        build["lateseq"]["commits"] = len(days)
    state = State("compacted-latest", "", store.path, store.version, log, "all", *_written(store), len(days))
    del daily, store  # handles map what they read: the cold passes below evict only what no handle maps
    log_path = root / "examples.parquet"
    pq.write_table(log, log_path)
    durable, cache = store_files(state)
    ours = {"durable_store": sum(p.stat().st_size for p in durable), "example_log": log_path.stat().st_size,
            "written_segments": state.written, "read_cache": sum(p.stat().st_size for p in cache)}
    ours["total"] = ours["durable_store"] + ours["example_log"]
    ours["written_with_compaction"] = ours["written_segments"] + ours["example_log"]
    # and the decoded copies the writing host put in its read cache at each commit and compaction (s48D)
    ours["written_with_read_cache"] = ours["written_with_compaction"] + state.written_cache
    log_path.unlink()

    # the Fat Row union: which examples are timed, which the smallest form's bytes come from
    lengths = np.minimum(log.column("uih_length").to_numpy().astype(np.int64), union_len)
    cost = lengths * sum(ITEM_BYTES[c] for c in columns) + 17.0  # the example's union Fat Row in memory
    timed = request_sample(requests, cost, scale.fat_budget, scale.max_timed)
    sized = user_sample(requests, cost, scale.fat_budget, requests.num_rows)
    sampled = len(timed) < requests.num_rows
    out["sample"] = {"examples": requests.num_rows, "timed_examples": len(timed), "sized_examples": len(sized),
                     "sized_users": len(np.unique(requests.column("user_id").to_numpy()[sized])),
                     "sampled": sampled}
    with step(f"Fat Row union at N={union_len} ({', '.join(columns)}): build", steps):
        forms, whole_users, union_build = build_union(work, columns, union_len, timed, sized, root / "fat")
    sized_file = whole_users["parquet-smallest"]
    settings, candidates = sized_file.settings, sized_file.candidates
    oracle_s, ipc_s, smallest_s = (union_build[k] for k in ("oracle", "arrow-ipc", "parquet-smallest"))
    events_all = int(lengths.sum())
    out["union"]["events_per_example"] = forms["arrow-ipc"].events / len(timed)
    scale_ipc = events_all / max(forms["arrow-ipc"].events, 1)  # IPC costs the same per event
    scale_smallest = requests.num_rows / len(sized)  # sorted rows cost about the same each (see materialize.py)
    fat_bytes = {"arrow-ipc": forms["arrow-ipc"].bytes * scale_ipc, "parquet-smallest": sized_file.bytes * scale_smallest}
    out["bytes"] = {"lateseq": ours, "fat_rows": {form: {
        "bytes": fat_bytes[form], "extrapolated": sampled, "sample_file_bytes": file.bytes,
        "settings": settings if form == "parquet-smallest" else "",
        "candidates": candidates if form == "parquet-smallest" else {}} for form, file in forms.items()}}
    out["bytes_written_ratio_by_form"] = {form: fat_bytes[form] / ours["total"] for form in UNION_FORMS}
    out["bytes_written_ratio"] = out["bytes_written_ratio_by_form"]["parquet-smallest"]
    out["bytes_written_ratio_with_compaction"] = fat_bytes["parquet-smallest"] / ours["written_with_compaction"]
    out["bytes_written_ratio_with_read_cache"] = fat_bytes["parquet-smallest"] / ours["written_with_read_cache"]
    build["fat_rows"] = {"oracle_cpu_s": oracle_s, "arrow-ipc": oracle_s + ipc_s * scale_ipc,
                         "parquet-smallest": oracle_s + smallest_s * scale_smallest}
    build["ratio"] = {form: build["fat_rows"][form] / build["lateseq"]["cpu_s"] for form in UNION_FORMS}
    out["build"] = build

    # the timed example log (pointer columns + label), in log order, as lateseq's loaders read it
    timed_log, timed_table = root / "timed-examples.parquet", log.take(pa.array(timed))
    pq.write_table(timed_table, timed_log)
    handle = state.open()
    with step("lateseq: filtered copies, built by the first read of each filtered tenant", steps):
        first = timed_table.slice(0, BATCH)
        for plan in plans.values():  # the kernels compiled (or loaded) first: not a copy's cost
            lateseq.materialize(handle, first, dataclasses.replace(plan.projection, where=None))
        for name, plan in plans.items():
            if plan.projection.where is not None:
                _, build["lateseq"][f"filtered_copy_s:{name}"] = cpu_timed(
                    lambda p=plan.projection: lateseq.materialize(handle, first, p))
        ours["read_cache_filtered"] = sum(p.stat().st_size for p in derived_files(handle))
    with step("untimed: every tenant's Fat Row output checked equal to lateseq's (both forms)", steps):
        checked = {name: {form: check_tenant(file, plan, handle, log) for form, file in forms.items()}
                   for name, plan in plans.items()}
        read = touched(handle, timed_table, tenants)
        out["selection"] = selection_shares(work, handle, timed_table, plans)
    log_bytes = parquet_read_bytes(timed_log, tuple(lateseq.POINTER_FIELDS.names))  # a loader's read of it

    with step(f"time {len(plans)} tenants x (lateseq, {', '.join(UNION_FORMS)}), best of {args.repeat}", steps):
        sides: dict[str, Callable[[], Batches]] = {}
        for name, plan in plans.items():
            sides[f"{name}/lateseq"] = lambda p=plan.projection: lateseq_tenant(handle, timed_log, p)
            for form, file in forms.items():
                views = union_views(file, plan) if file.form == "arrow-ipc" else None  # made once, as lateseq's map
                sides[f"{name}/{form}"] = lambda file=file, plan=plan, views=views: fat_row_tenant(file, plan,
                                                                                                  views=views)
        sides["one-pass/lateseq"] = lambda: lateseq_one_pass(handle, timed_log, tenants)
        best = best_cpu(args.repeat, sides)
    del sides, handle, views  # their maps hold pages the cold passes below must evict

    with step(f"cold: the pages each tenant reads (every example of {out['sample']['sized_users']} users)", steps):
        sized_log = root / "sized-examples.parquet"
        pq.write_table(log.take(pa.array(sized)), sized_log)
        ours_files = [*durable, *cache, *derived_files(state.open()), sized_log]
        cold = {name: pages_read(state, ours_files, sized_log, requests.num_rows, whole_users["arrow-ipc"], plan)
                for name, plan in plans.items()}
    passes = [run for pages in cold.values() for run in pages.pop("evicted")]
    if {run["examples"] for run in passes} != {len(sized)}:
        raise SystemExit(f"the cold passes served {sorted({run['examples'] for run in passes})} examples, "
                         f"not {len(sized)}")
    out["paged"] = {"examples": len(sized), "users": out["sample"]["sized_users"],
                    "max_resident_after_evict": max(run["resident_after_evict"] for run in passes)}

    out["tenants"] = {}
    for name, plan in plans.items():
        runs = {side: best[f"{name}/{side}"] for side in ("lateseq", *UNION_FORMS)}
        if len({(r.examples, r.events) for r in runs.values()}) != 1:
            raise SystemExit(f"{name}: the sides produced different examples/events: "
                             f"{ {k: (r.examples, r.events) for k, r in runs.items()} }")
        mine = figures(runs["lateseq"], memcpy)
        read_ours = {"copied": read[name].copied, "scanned": read[name].scanned, "example_log": log_bytes}
        read_ours["total"] = sum(read_ours.values())
        fat_side = {}
        for form, file in forms.items():
            sample_read = fat_row_read_bytes(sized_file if form == "parquet-smallest" else file, plan.reads)
            per_example = sample_read / len(sized_file.rows if form == "parquet-smallest" else file.rows)
            fat_side[form] = {**figures(runs[form], memcpy), "read_bytes": per_example * len(timed),
                              "read_bytes_per_example": per_example, "columns_read": list(plan.reads)}
        pages = cold[name]
        paged = {"lateseq": min(v["per_example"] for k, v in pages.items() if k.startswith("lateseq")),
                 "arrow-ipc": min(v["per_example"] for k, v in pages.items() if k.startswith("arrow-ipc")),
                 "parquet-smallest": fat_side["parquet-smallest"]["read_bytes_per_example"]}
        out["tenants"][name] = {
            "projection": describe_projection(plan.projection),
            "lateseq": {**mine, "read_bytes": read_ours["total"], "read": read_ours,
                        "read_bytes_per_example": read_ours["total"] / len(timed)},
            "fat_rows": fat_side,
            "pages_read_per_example": paged, "pages_read": pages,
            "read_bytes_ratio": paged["lateseq"] / paged["parquet-smallest"],
            "read_bytes_ratio_by_form": {f: paged["lateseq"] / paged[f] for f in UNION_FORMS},
            "copied_bytes_ratio_by_form": {f: read_ours["total"] / fat_side[f]["read_bytes"] for f in UNION_FORMS},
            "speedup": {f: mine["ex_s"] / fat_side[f]["ex_s"] for f in UNION_FORMS},
            "memcpy_fraction": mine["memcpy_fraction"],
            "checked": checked[name],
        }
    separate = sum(out["tenants"][n]["lateseq"]["cpu_s"] for n in plans)
    one = best["one-pass/lateseq"]
    out["one_pass"] = {**figures(one, memcpy, examples=len(timed)), "tenants": len(plans),
                       "separate_cpu_s": separate, "vs_separate": separate / max(one.cpu_seconds, 1e-9)}
    t = out["tenants"]
    out["twins"] = {name: {"twin": twin, "time_ratio": t[twin]["lateseq"]["ex_s"] / t[name]["lateseq"]["ex_s"],
                           "fat_row_time_ratio": {f: t[twin]["fat_rows"][f]["ex_s"] / t[name]["fat_rows"][f]["ex_s"]
                                                  for f in UNION_FORMS}}
                    for name, twin in twins(plans).items()}
    return out


def build_union(work: Workload, columns: tuple[str, ...], union_len: int, timed: np.ndarray, sized: np.ndarray,
                folder: Path) -> tuple[dict[str, FatRowFile], dict[str, FatRowFile], dict[str, float]]:
    """The Fat Row union of the ``timed`` examples and of the ``sized`` ones (whole users),
    each in both forms (the same files when they are the same examples), and the CPU
    seconds of each build: the oracle's index of every history, the IPC file of ``timed``,
    the smallest form of ``sized`` (its settings chosen first, untimed)."""
    requests = work.requests
    histories, oracle_s = cpu_timed(lambda: Histories(work.events, readable_days(work, "all"), columns))
    read_day = read_days("all", requests)
    settings, candidates = smallest_settings(histories, requests, read_day, sized, union_len)

    def make(rows: np.ndarray, tag: str, form: str) -> FatRowFile:
        return build_forms(histories, requests, read_day, rows, union_len, folder, tag, settings, forms=(form,))[form]

    ipc, ipc_s = cpu_timed(lambda: make(timed, "timed", "arrow-ipc"))
    sized_file, smallest_s = cpu_timed(lambda: make(sized, "sized", "parquet-smallest"))
    sized_file.candidates = candidates
    same = np.array_equal(timed, sized)
    forms = {"parquet-smallest": sized_file if same else make(timed, "timed", "parquet-smallest"), "arrow-ipc": ipc}
    whole_users = {"parquet-smallest": sized_file, "arrow-ipc": ipc if same else make(sized, "sized", "arrow-ipc")}
    return forms, whole_users, {"oracle": oracle_s, "arrow-ipc": ipc_s, "parquet-smallest": smallest_s}


def check_tenant(file: FatRowFile, plan: Plan, store: lateseq.Store, log: pa.Table) -> int:
    """Checks a tenant's projection of the union file equal to lateseq's as it is timed
    (``iter_batches``), offsets and values bit for bit, batch by batch; raises
    FatRowMismatch. Returns the examples compared."""
    done = 0
    ours_batches = lateseq_reads(store, log.take(pa.array(file.rows)), plan.projection)
    for k, ((offsets, values), ours) in enumerate(zip(fat_row_tenant(file, plan), ours_batches, strict=True)):
        done += len(ours)
        if set(values) != set(ours.values) or not same_jagged(offsets, values, ours):
            raise FatRowMismatch(f"tenant {plan.name}: lateseq and the Fat Row union ({file.form}) differ in batch {k}")
    if done != len(file.rows):
        raise FatRowMismatch(f"tenant {plan.name}: the union file holds {done} examples, not {len(file.rows)}")
    return done


def selection_shares(work: Workload, store: lateseq.Store, log: pa.Table, plans: dict[str, Plan]) -> dict:
    """How much each tenant's window and filter select: events kept with and without them."""
    out = {}
    for name, plan in plans.items():
        p = plan.projection
        if p.where is not None:
            column = work.events.column(p.where.column).to_numpy()
            out[name] = {"filter_share_of_events": float(_keep(p.where, {p.where.column: column}).mean())}
        if p.window is not None:
            span = float(np.ptp(work.events.column("ts").to_numpy()))
            kept, without = (sum(int(lateseq.materialize(store, log.slice(lo, BATCH), q).offsets[-1])
                                 for lo in range(0, log.num_rows, BATCH))
                             for q in (p, dataclasses.replace(p, window=None)))
            out[name] = {"window_s": plan.window, "workload_span_days": round(span / DAY, 1),
                         "events_kept": kept, "events_without_window": without,
                         "window_drops_share": 1 - kept / max(without, 1)}
    return out


# ---------------------------------------------------------------- targets


def targets(results: dict) -> list[dict]:
    """The issue's targets, met or not (never a failure)."""
    out = []

    def add(target: str, tenant: str, value: float, threshold: float, at_most: bool) -> None:
        out.append({"target": target, "tenant": tenant, "value": value, "threshold": threshold,
                    "direction": "<=" if at_most else ">=",
                    "met": bool(value <= threshold if at_most else value >= threshold)})

    # written: every segment commits and compactions wrote, and the example log; kept: what stays on disk
    add("bytes written (commits, compactions, example log): lateseq / smallest Fat Row union", "all",
        1 / results["bytes_written_ratio_with_compaction"], 0.1, True)
    if "bytes_written_ratio_with_read_cache" in results:  # (runs before s48D lack it)
        add("bytes written with the writer's read cache: lateseq / smallest Fat Row union", "all",
            1 / results["bytes_written_ratio_with_read_cache"], 0.1, True)
    add("bytes kept (store, example log): lateseq / smallest Fat Row union", "all", 1 / results["bytes_written_ratio"],
        0.1, True)
    tenants = results["tenants"]
    for form, text in (("parquet-smallest", "smallest"), ("arrow-ipc", "memory-mapped")):
        for name, t in tenants.items():
            add(f"bytes read (pages, cold): lateseq / {text} Fat Row union", name, t["read_bytes_ratio_by_form"][form],
                1 / 3, True)
    for name, t in tenants.items():
        add("ex/s: lateseq / smallest Fat Row union (zstd Parquet)", name, t["speedup"]["parquet-smallest"], 2.0, False)
    longest = max(tenants, key=lambda n: tenants[n]["projection"]["max_len"])
    add("ex/s: lateseq / memory-mapped Fat Row union (longest tenant)", longest,
        tenants[longest]["speedup"]["arrow-ipc"], 1.0, False)
    for name, pair in results["twins"].items():
        add(f"time: filtered / unfiltered twin ({pair['twin']}), lateseq", name, pair["time_ratio"], 1.5, True)
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="20k users (minutes)")
    size.add_argument("--tiny", action="store_true", help="a smoke run of every part (seconds)")
    size.add_argument("--scale", metavar="S", help="tiny, small, full, or a number of users (with --small's budgets)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    parser.add_argument("--tenants", type=Path, default=TENANTS_TOML, help="the tenant config (TOML)")
    parser.add_argument("--repeat", type=int, help="timed passes per side, the least CPU time counts (default 3; "
                                                   "1 with --tiny)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--workdir", type=Path, help="parent of the build folder (removed after; default: the system's)")
    parser.add_argument("--fat-budget-gb", type=float,
                        help="time on a sample where every example's union Fat Rows (IPC) would exceed this")
    args = parser.parse_args(argv)
    scale_name = "tiny" if args.tiny else "small" if args.small else args.scale or "full"
    if scale_name in SCALES:
        scale = SCALES[scale_name]
    elif scale_name.isdigit() and int(scale_name) > 0:
        scale = dataclasses.replace(SCALES["small"], users=int(scale_name))
    else:
        parser.error(f"--scale: expected tiny, small, full or a number of users, got {scale_name!r}")
    args.tiny = scale_name == "tiny"
    if args.fat_budget_gb is not None:
        scale = dataclasses.replace(scale, fat_budget=args.fat_budget_gb * 1e9)
    if args.repeat is None:
        args.repeat = 1 if args.tiny else 3

    started = time.perf_counter()
    cpu = materialize.pin_one_core(args.cpu)
    info = materialize.machine()
    load_start = materialize.load_average()
    console.print(f"[bold]machine[/bold]: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; pinned to "
                  f"CPU {cpu}; lateseq {info['lateseq']} at {info['git']}")
    memcpy = materialize.memcpy_gb_s(64 if args.tiny else 512)
    console.print(f"single-core memcpy {memcpy:.1f} GB/s; load average {load_start} (other processes share the cores)")
    steps: dict[str, float] = {}
    results: dict = {
        "benchmark": "tenants",
        "command": shlex.join(["python", "benchmarks/tenants.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale_name, "scale_settings": dataclasses.asdict(scale),
        "settings": {"batch": BATCH, **loader_reads(), "repeat": args.repeat, "timer": "process_time",
                     "pinned_cpu": cpu,
                     "verify": True, "tenants": str(args.tenants.resolve().relative_to(report.ROOT)
                                                    if args.tenants.resolve().is_relative_to(report.ROOT)
                                                    else args.tenants)},
    }
    workdir = Path(tempfile.mkdtemp(prefix="lateseq-tenants-", dir=args.workdir))
    try:
        results.update(measure(args, scale, memcpy, workdir, steps))
    except FatRowMismatch as exc:
        raise SystemExit(f"lateseq and the Fat Row union disagree: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = {**info, "pinned_cpu": cpu, "memcpy_gb_s": round(memcpy, 2),
                          "load_average_start": load_start, "load_average_end": materialize.load_average(),
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)}
    results["targets"] = targets(results)
    results["steps_s"] = steps
    results["seconds"] = round(time.perf_counter() - started, 1)
    materialize.print_tables(results)
    console.print(f"load average at the end: {results['machine']['load_average_end']}; "
                  f"{results['seconds']:.0f} s in all")
    materialize.save(results, args.json, args.plot)


if __name__ == "__main__":
    main()
