"""Loader throughput: lateseq.torch's ExampleDataset against the same loader over Fat
Rows, data affinity and prefetch on a cold page cache, and Ray Data actors.

    python benchmarks/loader.py            # 200k users (realistic: 40M events, 43M examples)
    python benchmarks/loader.py --small    # 20k users (minutes)
    python benchmarks/loader.py --tiny     # a smoke run of every part (under a minute; what the tests run)
    options: --json PATH  --repeat R  --workdir DIR

The workload is ``benchmarks/workload.py``'s realistic one (power-law users, an example
per event), in a compacted store with every pointer at the latest version. Timed on a
uniform sample of requests (all their examples), batches of 1024, projection (item_id,
action, ts), histories of at most N events:

- **loader**: examples/s through ``torch.utils.data.DataLoader(batch_size=None)`` with 0, 1
  and 2 worker processes (fork), warm page cache, best of ``--repeat``: lateseq's
  ExampleDataset (reads the example log's Parquet row groups, materializes, verifies
  every checksum) against a Fat Row IterableDataset of the same shape (each worker reads
  its own record batches or row groups, 1024 examples at a time, into the same Batch of
  tensors) over a memory-mapped Arrow IPC file and zstd Parquet (the smallest form,
  sorted by user). The Fat Rows are checked equal to lateseq's rebuild first, bit for bit.
- **cold**: one process (no workers), shuffled, over its own sample of examples as dense
  in users as one shuffle window of the whole log (262,144 rows); data affinity and
  prefetch each on and off; bytes this process read from disk (/proc/self/io) and
  examples/s. The store handle is opened and its columns verified first (a fresh handle
  digests every column it reads once, reading it whole), as in a long-running loader;
  then its pages are dropped, maps included. *epoch*: dropped once before the pass (a
  store that fits in the page cache, read cold once), with the kernel's readahead, as
  ``readahead="auto"`` has it for such a store. *batch*: dropped before each of the first
  24 batches (a store far bigger than the page cache: nothing one batch read is still
  cached for the next; prefetch off, since dropping would discard what it fetched), with
  readahead off (``MADV_RANDOM``), as "auto" has it for a store bigger than half the
  memory: bytes read are the pages the loader needs, each read on its fault. The loader
  rebuilds one batch a read there (it rebuilds several small ones in one read otherwise,
  and 3 of every 4 batches at N=256 would have been made before the drop that precedes them).
  *epoch-no-readahead*, *batch-readahead*: the same with the other setting.
- **pipeline**: prefetch with a trainer. One process, warm, the cold sample shuffled; after
  each batch the consumer sleeps for as long as making a batch takes alone (a GPU step
  waits without the GIL; equal times are where a pipeline gains most, up to 2x);
  examples/s and the share of time the trainer waited for batches, prefetch off and on.
- **rebatch**: two workers making batches of 1024, against base batches of 256 that
  ``lateseq.torch.rebatch`` joins to 1024 in the trainer; warm, ex/s as the trainer gets
  them, the two taking turns (best of at least 5 each).
- **co-partitioning**: a store of the same events in 8 user-hash partitions, the cold
  sample's example log written plain and co-partitioned (``lateseq.copartition_log``); 2
  and 4 ranks, each standing for a host: its page cache dropped, it reads its share
  (``ExampleDataset(rank=, world_size=, copartition=...)``, shuffled); bytes it read from
  disk and examples/s, per host, on and off.
- **ray**: examples/s through ``lateseq.ray.materialized(...).iter_torch_batches(collate_fn=
  lateseq.ray.Collate())`` with 1 and 2 actors, against the in-process loader (0 workers);
  from the call to the last batch, and from the first batch on (actors started).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import materialize  # noqa: I001  (first: it sets one thread per process before numpy and numba load)

import argparse
import contextlib
import gc
import json
import os
import resource
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import lateseq
import lateseq._loader
from lateseq._sampling import WINDOW_ROWS
from lateseq.torch import Batch, ExampleDataset, LoaderMetrics, _Slots, rebatch
from materialize import disk_read_bytes, drop_pages, load_average, machine, resident_bytes
from workload import (
    BATCH,
    COLUMNS,
    SCHEMA,
    FatRowFile,
    FatRowMismatch,
    Histories,
    _jagged,
    build_forms,
    copied_out,
    ipc_views,
    loader_reads,
    check_equal,
    read_days,
    readable_days,
    realistic,
    request_sample,
    smallest_settings,
)

NS = (256, 4096)
WORKERS = (0, 1, 2)
FORMS = ("arrow-ipc", "parquet-smallest")
EVENT_BYTES = materialize.EVENT_BYTES
BASE_BATCH = 256  # re-batching: what workers make, joined to BATCH in the trainer
LOG_ROW_GROUP = 16_384  # example-log rows per Parquet row group: workers share them out
COLD_BATCHES = 24  # batches timed with the store dropped before each
HOSTS = (2, 4)  # co-partitioning: ranks, each standing for a host of its own
PARTITIONS = 8  # co-partitioning: the user-hash partitions of its store


@dataclass(frozen=True)
class Scale:
    users: int
    fat_budget: float  # bytes of N=4096 Fat Rows (in memory) above which examples are sampled
    max_timed: int
    cold_rows: int  # examples the cold passes read: one shuffle window's worth, as dense in users as the log's


SCALES = {
    "full": Scale(users=200_000, fat_budget=4e9, max_timed=2_000_000, cold_rows=WINDOW_ROWS),
    "small": Scale(users=20_000, fat_budget=2.5e9, max_timed=200_000, cold_rows=WINDOW_ROWS),
    "tiny": Scale(users=100, fat_budget=20e6, max_timed=6_000, cold_rows=6_000),
}


# ---------------------------------------------------------------- the two loaders


class FatRowDataset(IterableDataset):
    """The Fat Row side: each (worker) shard reads its own record batches (IPC) or row
    groups (Parquet) of a Fat Row file, 1024 examples at a time, into a lateseq Batch."""

    def __init__(self, file: FatRowFile):
        super().__init__()
        self.file = file
        self.slots = _Slots()  # batches reach the trainer in reused shared memory, as lateseq's do

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        columns = self.file.columns
        if self.file.form == "arrow-ipc":  # mapped once per pass, each batch's columns viewed once (workload)
            mapped = ipc_views(self.file.path, columns, flat=("label",))
            for i in range(worker, len(mapped), workers):
                offsets, values, flat = mapped[i]
                yield self._batch(*copied_out(offsets, values), flat["label"].copy())
        else:
            source = pq.ParquetFile(self.file.path)
            groups = list(range(worker, source.metadata.num_row_groups, workers))
            if groups:
                for batch in source.iter_batches(BATCH, row_groups=groups, columns=["label", *columns],
                                                  use_threads=False):
                    yield self._batch(*_jagged(batch, columns), batch.column("label").to_numpy())

    def _batch(self, offsets: np.ndarray, values: dict[str, np.ndarray], label: np.ndarray) -> Batch:
        return self.slots.batch(np.zeros(len(label), np.int64), {"label": label}, offsets, np.diff(offsets), values)


@dataclass
class Pass:
    examples: int = 0
    batches: int = 0
    out_bytes: int = 0  # offsets and values of the batches
    seconds: float = float("inf")
    first_batch_s: float = 0.0  # until the first batch came out (workers or actors started)
    disk_read_bytes: int | None = None
    resident_after_drop: float | None = None  # share of the dropped store bytes still cached

    @property
    def ex_s(self) -> float:
        return self.examples / self.seconds

    def figures(self) -> dict:
        after = self.seconds - self.first_batch_s
        return {"ex_s": self.ex_s, "examples": self.examples, "seconds": self.seconds,
                "batch_bytes": self.out_bytes / max(self.batches, 1),
                "first_batch_s": self.first_batch_s,
                "ex_s_after_first_batch": (self.examples - BATCH) / after if after > 0 and self.examples > BATCH
                else None,
                "disk_read_bytes": self.disk_read_bytes, "resident_after_drop": self.resident_after_drop}


def drain(batches: Iterable[Batch], before_each: Callable[[], None] | None = None,
          limit: int | None = None) -> Pass:
    """Times draining a loader, or its first ``limit`` batches (``before_each`` batch is
    run untimed)."""
    run = Pass(seconds=0.0)
    it = iter(batches)
    for count in range(limit or sys.maxsize):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        batch = next(it, None)
        run.seconds += time.perf_counter() - start
        if batch is None:
            break
        run.examples += len(batch)
        run.batches += 1
        run.out_bytes += batch.offsets.nbytes + sum(v.nbytes for v in batch.values.values())
        if count == 0:
            run.first_batch_s = run.seconds
    return run


@contextlib.contextmanager
def one_batch_a_read(on: bool) -> Iterator[None]:
    """The loader rebuilds each batch in a read of its own while ``on``."""
    saved = lateseq._loader.READ_BYTES
    lateseq._loader.READ_BYTES = 1 if on else saved
    try:
        yield
    finally:
        lateseq._loader.READ_BYTES = saved


def best(repeat: int, make: Callable[[], Pass]) -> Pass:
    return min((make() for _ in range(repeat)), key=lambda run: run.seconds)


# ---------------------------------------------------------------- the page cache


def verify_now(store: lateseq.Store) -> None:
    """Checks every column of the store's segments now (a handle does once, reading each
    whole, on its first use), so that the cold passes read histories, not the checks."""
    for segment in store.segments():
        for name in segment.info.decoded:
            segment.stored(name)


def read_ahead_kb(path: Path) -> int | None:
    """The kernel's readahead for the block device holding ``path`` (None: unknown)."""
    device = os.stat(path).st_dev
    queue = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    for where in (queue / "queue", queue / ".." / "queue"):  # a disk, or a partition of one
        try:
            return int((where / "read_ahead_kb").read_text())
        except (OSError, ValueError):
            continue
    return None


def cold_pass(files: list[Path], loader: Iterable[Batch], mode: str) -> Pass:
    """A pass of ``loader`` with the store dropped from the page cache once ("epoch")
    or before each of ``COLD_BATCHES`` batches ("batch")."""
    drop_pages(files)
    resident = resident_bytes(files) / max(sum(p.stat().st_size for p in files), 1)
    before = disk_read_bytes()
    per_batch = mode.startswith("batch")
    run = drain(loader, (lambda: drop_pages(files)) if per_batch else None,
                COLD_BATCHES if per_batch else None)
    run.disk_read_bytes = None if before is None else disk_read_bytes() - before
    run.resident_after_drop = resident
    return run


# ---------------------------------------------------------------- the benchmark


def build(scale: Scale, root: Path, steps: dict[str, float]) -> dict:
    """The workload, its compacted store, the timed sample's example log, and Fat Rows."""
    t = time.perf_counter()
    work = realistic(scale.users)
    store = lateseq.create(root / "store", SCHEMA).commit(work.events).compact()
    log = lateseq.log_examples(store, work.requests)
    steps["workload and store"] = round(time.perf_counter() - t, 1)
    lengths = log.column("uih_length").to_numpy().astype(np.int64)
    rows = request_sample(work.requests, np.minimum(lengths, max(NS)) * EVENT_BYTES + 8.0, scale.fat_budget,
                          scale.max_timed)
    path = root / "examples.parquet"
    pq.write_table(log.take(pa.array(rows)), path, row_group_size=LOG_ROW_GROUP)
    cold_rows = request_sample(work.requests, np.ones(len(lengths)), np.inf, scale.cold_rows, seed=1)
    cold_path = root / "cold-examples.parquet"
    pq.write_table(log.take(pa.array(cold_rows)), cold_path, row_group_size=LOG_ROW_GROUP)
    t = time.perf_counter()
    histories = Histories(work.events, readable_days(work, "all"))
    read_day = read_days("all", work.requests)
    fat = {}
    for n in NS:
        settings, _ = smallest_settings(histories, work.requests, read_day, rows, n)
        fat[n] = build_forms(histories, work.requests, read_day, rows, n, root / "fat", f"n{n}", settings, FORMS)
        for form in FORMS:  # each form checked equal to lateseq's rebuild, batch by batch
            check_equal([fat[n][form]], store, log, n, f"N={n} {form}")
    steps["Fat Rows, built and checked"] = round(time.perf_counter() - t, 1)
    files = [store.cache_dir / f"{info.name}.arrow" for info in store.segment_infos]
    return {"work": work, "store": store, "rows": rows, "path": path, "cold_rows": cold_rows,
            "cold_path": cold_path, "fat": fat, "files": files}


def measure_loaders(built: dict, repeat: int) -> dict:
    out = {}
    for n in NS:
        projection = lateseq.Projection(n, COLUMNS)
        sides: dict[str, Callable[[], IterableDataset]] = {
            "lateseq": lambda p=projection: ExampleDataset(built["store"], built["path"], p, batch_size=BATCH)}
        for form in FORMS:
            sides[f"fat:{form}"] = lambda file=built["fat"][n][form]: FatRowDataset(file)
        at = out[str(n)] = {}
        for name, make in sides.items():
            at[name] = {str(w): best(repeat, lambda make=make, w=w: drain(DataLoader(
                make(), batch_size=None, num_workers=w))).figures() for w in WORKERS}
        for w in map(str, WORKERS):
            at["lateseq"][w]["vs"] = {form: at["lateseq"][w]["ex_s"] / at[f"fat:{form}"][w]["ex_s"] for form in FORMS}
        for name in sides:
            for w in map(str, WORKERS):
                at[name][w]["vs_0_workers"] = at[name][w]["ex_s"] / at[name]["0"]["ex_s"]
    return out


_ALL = [(a, p) for a in (False, True) for p in (False, True)]  # (affinity, prefetch)
_NO_PREFETCH = [(False, False), (True, False)]  # dropping pages before each batch would discard what it fetched
# mode: (configs, the store's readahead). "epoch" stands for a store that stays in the
# page cache, "batch" for one far bigger than memory: each first with the readahead that
# lateseq's "auto" picks for such a store, then with the other
MODES = {"epoch": (_ALL, True), "epoch-no-readahead": (_ALL, False), "batch": (_NO_PREFETCH, False),
         "batch-readahead": (_NO_PREFETCH, True)}


def measure_cold(built: dict, repeat: int) -> dict:
    drop_pages(built["files"])  # the build's handle lets go of its pages: they are evicted
    out = {}
    for n in NS:
        projection = lateseq.Projection(n, COLUMNS)
        at = out[str(n)] = {}
        for mode, (configs, readahead) in MODES.items():
            # the one handle in this process while it runs: every map of the store is its
            store = lateseq.open(built["store"].path, readahead=readahead)
            lateseq.materialize(store, pq.read_table(built["cold_path"]).slice(0, 16), projection)
            verify_now(store)
            at[mode] = {}
            for affinity, prefetch in configs:
                def run(affinity=affinity, prefetch=prefetch, projection=projection, mode=mode, store=store) -> Pass:
                    loader = ExampleDataset(store, built["cold_path"], projection, batch_size=BATCH, shuffle=True,
                                            seed=1, affinity=affinity, prefetch=prefetch)
                    with one_batch_a_read(mode.startswith("batch")):
                        return cold_pass(built["files"], loader, mode)
                at[mode][_config(affinity, prefetch)] = best(1 if mode.startswith("batch") else repeat,
                                                             run).figures()
            del store, run
            gc.collect()  # its maps go: the next mode's handle maps the files anew
            base = at[mode][_config(False, False)]
            for entry in at[mode].values():
                entry["vs_off"] = entry["ex_s"] / base["ex_s"]
                entry["read_vs_off"] = (entry["disk_read_bytes"] / base["disk_read_bytes"]
                                        if entry["disk_read_bytes"] is not None and base["disk_read_bytes"] else None)
    return out


def measure_pipeline(built: dict, repeat: int) -> dict:
    """Prefetch with a trainer: after each batch the consumer takes a step as long as
    lateseq takes to make a batch (a sleep: a GPU step waits without the GIL), warm,
    one process; the trainer's wait (``LoaderMetrics.watch``) with prefetch off and on."""
    out = {}
    for n in NS:
        projection = lateseq.Projection(n, COLUMNS)

        def loader(prefetch: bool, projection=projection) -> ExampleDataset:
            return ExampleDataset(built["store"], built["cold_path"], projection, batch_size=BATCH, shuffle=True,
                                  seed=1, prefetch=prefetch)

        made = best(repeat, lambda: drain(loader(False)))
        step = made.seconds / -(-made.examples // BATCH)
        at = out[str(n)] = {"step_s": step, "making_ex_s": made.ex_s}
        for prefetch in (False, True):
            def run(prefetch=prefetch) -> tuple[float, LoaderMetrics]:
                metrics = LoaderMetrics()
                start = time.perf_counter()
                for _ in metrics.watch(loader(prefetch)):
                    time.sleep(step)
                return time.perf_counter() - start, metrics
            seconds, metrics = min((run() for _ in range(repeat)), key=lambda r: r[0])
            at["on" if prefetch else "off"] = {"ex_s": metrics.examples / seconds, "seconds": seconds,
                                               "waited_share": metrics.waited_s / seconds}
        at["on_vs_off"] = at["on"]["ex_s"] / at["off"]["ex_s"]
    return out


def measure_rebatch(built: dict, repeat: int) -> dict:
    """Re-batching: two workers make batches of ``BATCH`` examples, or base batches of
    ``BASE_BATCH`` that ``rebatch`` joins in the trainer to ``BATCH``; warm, examples/s as
    the trainer gets them. The two sides take turns, best of at least 5 each: worker
    start-up moves a pass by 1.2-1.7x here, which a best of 2 taken apart did not hide."""
    out = {}
    for n in NS:
        projection = lateseq.Projection(n, COLUMNS)

        def batches(size: int, projection=projection) -> Iterable[Batch]:
            loader = DataLoader(ExampleDataset(built["store"], built["path"], projection, batch_size=size),
                                batch_size=None, num_workers=2)
            return loader if size == BATCH else rebatch(loader, BATCH)

        passes: dict[str, list[Pass]] = {"whole": [], "rebatched": []}
        for _ in range(max(repeat, 5)):
            for name, size in (("whole", BATCH), ("rebatched", BASE_BATCH)):
                passes[name].append(drain(batches(size)))
        at = out[str(n)] = {name: min(runs, key=lambda run: run.seconds).figures() for name, runs in passes.items()}
        at["rebatched_vs_whole"] = at["rebatched"]["ex_s"] / at["whole"]["ex_s"]
    return out


def measure_copartition(built: dict, root: Path) -> list[dict]:
    """Co-partitioning, cold, for each number of ``HOSTS``: each rank (a host of its own,
    its page cache dropped before its pass) reads its share of the cold sample's examples,
    from a store of ``PARTITIONS`` user-hash partitions, with the example log co-partitioned
    (``copartition_log``, ``ExampleDataset(copartition=True)``: a rank reads its own
    partitions' segments) and not (a shuffled share of every partition's users)."""
    schema = lateseq.Schema(dict(SCHEMA.columns), partitions=PARTITIONS)
    store = lateseq.create(root / "partitioned", schema).commit(built["work"].events).compact()
    log = lateseq.log_examples(store, built["work"].requests.take(pa.array(built["cold_rows"])))
    paths = {False: root / "cold-plain.parquet", True: root / "cold-copartitioned.parquet"}
    group = min(LOG_ROW_GROUP, max(1, log.num_rows // (2 * PARTITIONS)))  # row groups enough for every rank
    pq.write_table(log, paths[False], row_group_size=group)
    lateseq.copartition_log(store, log, paths[True], row_group_rows=group)
    files = [store.cache_dir / f"{info.name}.arrow" for info in store.segment_infos]
    results = []
    for hosts in HOSTS:
        out = {}
        for n in NS:
            projection = lateseq.Projection(n, COLUMNS)
            lateseq.materialize(store, log.slice(0, 16), projection)
            verify_now(store)
            at = out[str(n)] = {}
            for copartition in (False, True):
                ranks = [cold_pass(files, ExampleDataset(
                    store, paths[copartition], projection, batch_size=BATCH, shuffle=True, seed=1, rank=rank,
                    world_size=hosts, copartition=copartition, block_rows=group), "epoch").figures()
                    for rank in range(hosts)]
                at["on" if copartition else "off"] = {
                    "ranks": ranks, "examples": sum(r["examples"] for r in ranks),
                    "disk_read_bytes_per_host": float(np.mean([r["disk_read_bytes"] or 0 for r in ranks])),
                    "ex_s_per_host": float(np.mean([r["ex_s"] for r in ranks]))}
            on, off = at["on"], at["off"]
            if not on["examples"] == off["examples"] == len(built["cold_rows"]):
                raise SystemExit(f"co-partitioning, {hosts} hosts: {on['examples']} examples on, {off['examples']} off")
            at["read_vs_off"] = on["disk_read_bytes_per_host"] / max(off["disk_read_bytes_per_host"], 1)
            at["ex_s_vs_off"] = on["ex_s_per_host"] / off["ex_s_per_host"]
        results.append({"hosts": hosts, "partitions": PARTITIONS,
                        "store_bytes": sum(f.stat().st_size for f in files), "n": out})
    return results


def _config(affinity: bool, prefetch: bool) -> str:
    return f"affinity {'on' if affinity else 'off'}, prefetch {'on' if prefetch else 'off'}"


def measure_ray(built: dict, loaders: dict) -> dict | str:
    """Ray Data actors against the in-process loader; a sentence when Ray is not installed."""
    try:
        import ray

        import lateseq.ray
    except ImportError as exc:
        return f"not measured: {exc}"
    import logging
    import warnings

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no log lines per dataset run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own DataContext defaults
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    out = {}
    try:
        for n in NS:
            at = out[str(n)] = {"in-process": loaders[str(n)]["lateseq"]["0"]["ex_s"]}
            for actors in (1, 2):
                start = time.perf_counter()
                ds = lateseq.ray.materialized(built["store"], built["path"], lateseq.Projection(n, COLUMNS),
                                              actors=actors, batch_size=BATCH)
                rows, first = [], None
                for batch in ds.iter_torch_batches(batch_size=BATCH, collate_fn=lateseq.ray.Collate()):
                    first = first or time.perf_counter()
                    rows.append(batch.rows.numpy())
                end = time.perf_counter()
                rows = np.sort(np.concatenate(rows))
                if not np.array_equal(rows, np.arange(len(built["rows"]))):
                    raise SystemExit(f"Ray with {actors} actors did not give every example exactly once")
                steady = len(rows) - BATCH
                at[str(actors)] = {
                    "ex_s": len(rows) / (end - start), "seconds": end - start, "first_batch_s": first - start,
                    "ex_s_after_first_batch": steady / (end - first) if steady > 0 and end > first else None,
                    "vs_in_process": len(rows) / (end - start) / at["in-process"]}
    finally:
        ray.shutdown()
    return out


def targets(results: dict) -> list[dict]:
    """The issue's affinity targets where affinity can save reads: a store far bigger than
    the page cache (dropped before every batch). Each side at its faster readahead setting:
    affinity on as lateseq's "auto" reads such a store (readahead off), against affinity
    off at whichever setting ran it faster (readahead on, here: it reads whole stretches
    ahead, most of them wasted, but in fewer requests). The same-setting pairs are in the
    tables: affinity gains little where readahead reads whole stretches anyway. A store
    that fits in the page cache is read once an epoch whatever the order: nothing to save.
    Co-partitioning is checked for what it promises: a host reads only its partitions
    (at most 1.05 / hosts of what it reads from a plain log; 50% less at 2 hosts is all
    there is to save)."""
    out = []
    for n, at in results["cold"].items():
        on = at["batch"][_config(True, False)]
        off = max((at[mode][_config(False, False)] for mode in ("batch", "batch-readahead")), key=lambda e: e["ex_s"])
        if on["disk_read_bytes"] is not None and off["disk_read_bytes"]:
            less = 1 - on["disk_read_bytes"] / off["disk_read_bytes"]
            out.append({"target": "affinity (store bigger than the page cache, each side at its faster readahead): "
                                  "disk bytes read, less than off by", "n": int(n), "threshold": 0.6,
                        "value": round(less, 3), "met": bool(less >= 0.6)})
        speedup = on["ex_s"] / off["ex_s"]
        out.append({"target": "affinity (store bigger than the page cache, each side at its faster readahead): "
                              "ex/s vs off", "n": int(n), "threshold": 1.3, "value": round(speedup, 3),
                    "met": bool(speedup >= 1.3)})
    for cop in results["copartition"]:
        hosts = cop["hosts"]
        for n, at in cop["n"].items():
            share = at["read_vs_off"] * hosts
            out.append({"target": f"co-partitioning ({hosts} hosts): disk bytes read per host vs 1/hosts of off",
                        "n": int(n), "threshold": 1.05, "direction": "<=", "value": round(share, 3),
                        "met": bool(share <= 1.05)})
    return out


# ---------------------------------------------------------------- output


def _table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    return [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _n(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.1f} MB"


def markdown(results: dict) -> str:
    """Every table of a run, as Markdown."""
    m = results["machine"]
    lines = [f"Made by `{results['command']}` on {results['date']}: {m['cpu']}, {m['cores']} cores, "
             f"load average {m['load_average_start']} at the start and {m['load_average_end']} at the end; lateseq "
             f"{m['lateseq']} at {m['git']}; {results['seconds']:.0f} s in all. {results['timed_examples']:,} "
             f"examples timed ({results['sample']}), batches of {BATCH}.", ""]
    rows = []
    for n, at in results["loader"].items():
        for w in map(str, WORKERS):
            ours, fat = at["lateseq"][w], [at[f"fat:{f}"][w] for f in FORMS]
            rows.append([n, w, *(f"{e['ex_s']:,.0f}" for e in [ours, *fat]), *(f"{ours['vs'][f]:.2f}×" for f in FORMS),
                         *(_n(e["ex_s_after_first_batch"]) for e in [ours, *fat])])
    lines += _table("loader ex/s, warm (DataLoader workers; best of passes)",
                    ["N", "workers", "lateseq", "Fat Row IPC mmap", "Fat Row PQ zstd", "÷ IPC", "÷ PQ",
                     "after 1st batch: lateseq", "IPC", "PQ"], rows)
    if m.get("page_fault_us"):
        per_n = "; ".join(
            f"N={n}: {e['batch_bytes'] / 1e6:.1f} MB a batch, "
            f"{2 * e['batch_bytes'] / 4096 * m['page_fault_us'] / 1e3:.1f} ms of faults against the "
            f"{1e3 * BATCH / (e['ex_s_after_first_batch'] or e['ex_s']):.1f} ms a batch took after the first, 1 worker"
            for n, at in results["loader"].items() for e in [at["lateseq"]["1"]])
        lines += [(
            "- with workers, batches reach the trainer through shared-memory buffers each worker allocates once and "
            "reuses once the trainer has let go of a batch (every loader here, the Fat Row ones too). Fresh shared "
            "memory per batch, the DataLoader's default, would fault each 4 KiB page in the worker and again in the "
            f"trainer, at {m['page_fault_us']:.1f} µs a fault on this machine (a new map written page by page): "
            f"{per_n}"), ""]
    for mode, title in (("epoch", "cold, store dropped from the page cache once per pass (a store that stays in "
                                  "it: readahead on, as lateseq's auto sets it)"),
                        ("epoch-no-readahead", "the same with readahead off (readahead=False: each fault reads "
                                               "its page)"),
                        ("batch", f"cold, store dropped before each of {COLD_BATCHES} batches, a batch a read (a "
                                  "store far bigger than RAM: readahead off, as lateseq's auto sets it)"),
                        ("batch-readahead", "the same with the kernel's readahead (readahead=True; "
                                            f"read_ahead_kb {results['settings'].get('read_ahead_kb')})")):
        rows = [[n, config, f"{e['ex_s']:,.0f}", _mb(e["disk_read_bytes"]), f"{e['vs_off']:.2f}×",
                 "–" if e["read_vs_off"] is None else f"{e['read_vs_off']:.2f}×"]
                for n, at in results["cold"].items() for config, e in at[mode].items()]
        lines += _table(f"{title}; one process, shuffled, {results['cold_examples']:,} examples",
                        ["N", "config", "ex/s", "read from disk", "ex/s vs all off", "read vs all off"], rows)
    rows = [[n, f"{at['step_s'] * 1e3:.2f} ms", f"{at['making_ex_s']:,.0f}",
             *(x for side in ("off", "on") for x in (f"{at[side]['ex_s']:,.0f}", f"{at[side]['waited_share']:.0%}")),
             f"{at['on_vs_off']:.2f}×"] for n, at in results["pipeline"].items()]
    lines += _table("prefetch with a trainer: a step per batch as long as making one (a sleep, as a GPU step "
                    f"holds no GIL), warm, one process, {results['cold_examples']:,} examples",
                    ["N", "step per batch", "making alone ex/s", "prefetch off ex/s", "trainer waited",
                     "prefetch on ex/s", "trainer waited", "on ÷ off"], rows)
    rows = [[n, f"{at['whole']['ex_s']:,.0f}", f"{at['rebatched']['ex_s']:,.0f}", f"{at['rebatched_vs_whole']:.2f}×"]
            for n, at in results["rebatch"].items()]
    lines += _table(f"re-batching: 2 workers, batches of {BATCH} against base batches of {BASE_BATCH} joined by "
                    "rebatch in the trainer (warm, ex/s as the trainer gets them)",
                    ["N", f"workers make {BATCH}", f"workers make {BASE_BATCH}, rebatch", "÷"], rows)
    cops = results["copartition"]
    rows = [[str(cop["hosts"]), n, config, f"{e['examples']:,}", _mb(int(e["disk_read_bytes_per_host"])),
             f"{e['ex_s_per_host']:,.0f}",
             *(("", "") if config == "off" else (f"{at['read_vs_off']:.2f}×", f"{at['ex_s_vs_off']:.2f}×"))]
            for cop in cops for n, at in cop["n"].items() for config, e in (("off", at["off"]), ("on", at["on"]))]
    lines += _table(f"co-partitioning, cold: ranks (hosts) each reading their share from a store of "
                    f"{cops[0]['partitions']} partitions ({_mb(cops[0]['store_bytes'])} decoded), each rank's page "
                    "cache dropped first", ["hosts", "N", "co-partitioned", "examples (all ranks)",
                                            "read from disk per host", "ex/s per host", "read vs off",
                                            "ex/s vs off"], rows)
    if isinstance(results["ray"], str):
        lines += [f"**Ray Data**: {results['ray']}", ""]
    else:
        rows = [[n, k, f"{e['ex_s']:,.0f}", f"{e['first_batch_s']:.1f} s",
                 "–" if e["ex_s_after_first_batch"] is None else f"{e['ex_s_after_first_batch']:,.0f}",
                 f"{at['in-process']:,.0f}", f"{e['vs_in_process']:.2f}×"]
                for n, at in results["ray"].items() for k, e in at.items() if k != "in-process"]
        lines += _table("Ray Data actors → iter_torch_batches(collate_fn=Collate())",
                        ["N", "actors", "ex/s (call to last batch)", "first batch after", "ex/s after first batch",
                         "in-process ex/s (0 workers)", "÷ in-process"], rows)
    rows = [[t["target"], str(t["n"]), f"{t['value']}", f"{t.get('direction', '>=')} {t['threshold']}",
             "met" if t["met"] else "MISSED"]
            for t in results["targets"]]
    lines += _table("targets", ["target", "N", "value", "threshold", ""], rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="20k users (minutes)")
    size.add_argument("--tiny", action="store_true", help="a smoke run of every part (under a minute)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--repeat", type=int, help="passes per measurement, the best counts (default 2; 1 with --tiny)")
    parser.add_argument("--workdir", type=Path, help="parent of the build folder (removed after)")
    args = parser.parse_args(argv)
    scale_name = "small" if args.small else "tiny" if args.tiny else "full"
    scale = SCALES[scale_name]
    repeat = args.repeat or (1 if args.tiny else 2)
    pa.set_cpu_count(1)  # one thread per process: workers, not threads, scale the loaders
    pa.set_io_thread_count(1)
    started = time.perf_counter()
    info = machine()
    load_start = load_average()
    print(f"machine: {info['cpu']}, {info['cores']} cores; load average {load_start}", flush=True)
    results: dict = {
        "benchmark": "loader",
        "command": shlex.join(["python", "benchmarks/loader.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "scale": scale_name, "scale_settings": asdict(scale),
        "settings": {"batch": BATCH, **loader_reads(), "repeat": repeat, "columns": list(COLUMNS), "n": list(NS),
                     "workers": list(WORKERS), "log_row_group": LOG_ROW_GROUP, "verify": True},
    }
    steps: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="lateseq-loader-", dir=args.workdir))
    results["settings"]["read_ahead_kb"] = read_ahead_kb(workdir)
    try:
        built = build(scale, workdir, steps)
        work = built["work"]
        results["workload"] = work.describe()
        results["timed_examples"] = len(built["rows"])
        results["cold_examples"] = len(built["cold_rows"])
        results["sample"] = ("every example" if len(built["rows"]) == work.requests.num_rows else
                             f"a uniform sample of requests of {work.requests.num_rows:,} examples")
        for name, measure in (("loader", lambda: measure_loaders(built, repeat)),
                              ("cold", lambda: measure_cold(built, repeat)),
                              ("pipeline", lambda: measure_pipeline(built, repeat)),
                              ("rebatch", lambda: measure_rebatch(built, repeat)),
                              ("copartition", lambda: measure_copartition(built, workdir)),
                              ("ray", lambda: measure_ray(built, results["loader"]))):
            print(f"{name} ...", flush=True)
            t = time.perf_counter()
            results[name] = measure()
            steps[name] = round(time.perf_counter() - t, 1)
    except FatRowMismatch as exc:
        raise SystemExit(f"lateseq and the Fat Rows disagree: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["targets"] = targets(results)
    results["machine"] = {**info, "load_average_start": load_start, "load_average_end": load_average(),
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)}
    results["steps_s"] = steps
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
