"""Materialization throughput and storage: lateseq versus the Fat Row baseline.

    python benchmarks/materialize.py            # BRIEF section 3 scale: 200k users, ~50M events, 2M pointers
    python benchmarks/materialize.py --small    # 20k users, ~5M events, 200k pointers (about a minute)
    python benchmarks/materialize.py --json out.json

One core (the process is pinned to one CPU; numba, Arrow and BLAS run one thread),
warm page cache (one untimed pass over every file first), batches of 1024 examples,
projection (item_id, action, ts), N = 256 and N = 4096.

- Fat Row: examples store their history as Parquet list columns (pyarrow defaults,
  snappy, 64k-row groups); read with ``ParquetFile.iter_batches`` into values + offsets.
- lateseq: the events live once in a store (committed in time slices, then compacted);
  the example log holds 28-byte pointers; each batch of pointers read from the log's
  Parquet is materialized with verification on (the default).

Where the Fat Row file for all pointers would be too big (N = 4096 at full scale), it is
built for a random sample of the pointers; both sides are timed on that same sample and
the Fat Row bytes are extrapolated linearly to every pointer. The output says so.
"""

from __future__ import annotations

import os

# one core: set before numpy, numba or pyarrow start their thread pools
for _name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import lateseq  # noqa: E402
from lateseq import (  # noqa: E402
    POINTER_FIELDS,
    Pointers,
    datasets,  # noqa: E402
)
from lateseq._format import decoded_file  # noqa: E402
from lateseq.cli.fatrow import iter_fat_rows, read_fat_rows_batches, write_fat_rows  # noqa: E402

COLUMNS = ("item_id", "action", "ts")
SCHEMA = lateseq.Schema({"item_id": "int64", "action": "int8", "dwell": "float32"})
BATCH = 1024
console = Console(highlight=False, width=132)


@dataclass
class Scale:
    users: int
    pointers: int
    fat_sample: dict[int, int]  # N -> pointers in the Fat Row file (all when >= pointers)
    commits: int


SCALES = {
    "full": Scale(users=200_000, pointers=2_000_000, fat_sample={256: 2_000_000, 4096: 200_000}, commits=4),
    "small": Scale(users=20_000, pointers=200_000, fat_sample={256: 200_000, 4096: 50_000}, commits=4),
}


@dataclass
class Run:
    examples: int
    seconds: float
    out_bytes: int
    events: int

    @property
    def ex_s(self) -> float:
        return self.examples / self.seconds

    @property
    def gb_s(self) -> float:
        return self.out_bytes / self.seconds / 1e9


@contextmanager
def step(name: str, steps: dict[str, float]):
    """Times one named step into ``steps``, printing as it starts and ends."""
    console.print(f"[dim]{name} ...[/dim]")
    start = time.perf_counter()
    yield
    steps[name] = time.perf_counter() - start
    console.print(f"[dim]{name}: {steps[name]:.1f} s[/dim]")


# ---------------------------------------------------------------- machine


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(memory / 1e9, 1),
        "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__,
        "numba": numba.__version__, "lateseq": lateseq.__version__,
    }


def pin_one_core(cpu: int | None) -> int | None:
    """Pins this process to one CPU (the last one allowed by default); Arrow to one thread."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = sorted(os.sched_getaffinity(0))[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def memcpy_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Single-core copy bandwidth (bytes copied per second), best of ``repeats``."""
    src = np.ones(megabytes * (1 << 20) // 8, np.int64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return src.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- building


def commit_in_slices(store: lateseq.Store, events: pa.Table, commits: int) -> lateseq.Store:
    """Commits events in ``commits`` time slices (a tie never spans two), then compacts."""
    ts = events.column("ts").to_numpy()
    bounds = np.quantile(ts, np.linspace(0, 1, commits + 1)[1:-1]).astype(np.int64)
    slice_of = np.searchsorted(bounds, ts, side="right")
    for k in range(commits):
        store = store.commit(events.filter(pa.array(slice_of == k)))
    return store.compact()


def build_fat_rows(events: pa.Table, requests: pa.Table, max_len: int, path: Path) -> int:
    return write_fat_rows(iter_fat_rows(events, requests, list(COLUMNS), max_len), path)


# ---------------------------------------------------------------- timing


def fat_batches(path: Path):
    return read_fat_rows_batches(path, list(COLUMNS), BATCH)


def lateseq_batches(store: lateseq.Store, log: Path, max_len: int, verify: bool = True):
    projection = lateseq.Projection(max_len, COLUMNS)
    for batch in pq.ParquetFile(log).iter_batches(BATCH, columns=POINTER_FIELDS.names):
        jagged = lateseq.materialize(store, batch, projection, verify=verify)
        yield jagged.offsets, jagged.values


def timed(batches) -> Run:
    """Drains an iterator of (offsets, values) batches, counting what it produced."""
    start = time.perf_counter()
    examples = out = events = 0
    for offsets, values in batches:
        examples += len(offsets) - 1
        events += int(offsets[-1])
        out += offsets.nbytes + sum(v.nbytes for v in values.values())
    return Run(examples, time.perf_counter() - start, out, events)


def best_of(repeats: int, make_batches) -> Run:
    return min((timed(make_batches()) for _ in range(repeats)), key=lambda run: run.seconds)


def warm_and_compare(store: lateseq.Store, log: Path, fat: Path, max_len: int) -> None:
    """The untimed warm-up pass: reads both sides whole and checks they agree batch by batch."""
    pairs = zip(fat_batches(fat), lateseq_batches(store, log, max_len), strict=True)
    for k, ((fat_offsets, fat_values), (offsets, values)) in enumerate(pairs):
        same = np.array_equal(fat_offsets, offsets) and all(
            np.array_equal(fat_values[name], values[name]) for name in COLUMNS)
        if not same:
            raise SystemExit(f"N={max_len}: lateseq and Fat Row disagree in batch {k}")


def breakdown(store: lateseq.Store, log: Path, max_len: int) -> dict[str, float]:
    """Seconds spent by the parts of the lateseq loop, each timed on its own."""
    projection = lateseq.Projection(max_len, COLUMNS)
    batches = list(pq.ParquetFile(log).iter_batches(BATCH, columns=POINTER_FIELDS.names))
    pointers = [Pointers.from_arrow(b) for b in batches]

    def loop(fn, items) -> float:
        start = time.perf_counter()
        for item in items:
            fn(item)
        return time.perf_counter() - start

    return {
        "read pointer batches (Parquet)": loop(lambda b: None, pq.ParquetFile(log).iter_batches(
            BATCH, columns=POINTER_FIELDS.names)),
        "Pointers.from_arrow": loop(Pointers.from_arrow, batches),
        "store.locate": loop(lambda p: store.locate(p.user_id, p.request_ts, p.visibility, max_len), pointers),
        "materialize, verify off (locate + copy)": loop(
            lambda p: lateseq.materialize(store, p, projection, verify=False), pointers),
        "materialize, verify on (the default)": loop(lambda p: lateseq.materialize(store, p, projection), pointers),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="20k users, 200k pointers (about a minute)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path,
                        help="parent of the temporary build folder (removed after; default: the system's)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per side; the best counts")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing the lateseq loop's parts")
    args = parser.parse_args()
    scale = SCALES["small" if args.small else "full"]

    cpu = pin_one_core(args.cpu)
    info = machine()
    console.print(f"[bold]machine[/bold]: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; "
                  f"pinned to CPU {cpu}; python {info['python']}, numpy {info['numpy']}, "
                  f"pyarrow {info['pyarrow']}, numba {info['numba']}, lateseq {info['lateseq']}")
    memcpy = memcpy_gb_s()
    console.print(f"single-core memcpy: {memcpy:.1f} GB/s; load average {_load()} (other processes share the cores)")

    workdir = Path(tempfile.mkdtemp(prefix="lateseq-bench-", dir=args.workdir))
    steps: dict[str, float] = {}
    try:
        results = run(scale, workdir, steps, memcpy, args.repeat, breakdowns=not args.no_breakdown)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(f"load average at the end: {_load()}")
    results["machine"] = {**info, "pinned_cpu": cpu, "memcpy_gb_s": round(memcpy, 2), "load_average_end": _load()}
    results["steps_s"] = {k: round(v, 2) for k, v in steps.items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {args.json}")


def run(scale: Scale, workdir: Path, steps: dict[str, float], memcpy: float, repeat: int,
        breakdowns: bool) -> dict:
    with step("generate events", steps):
        events = datasets.synthetic_events(scale.users)
        lengths = np.bincount(events.column("user_id").to_numpy(), minlength=scale.users)
    p50, p99 = np.percentile(lengths, [50, 99])
    console.print(f"events: {events.num_rows:,} for {scale.users:,} users; length mean {lengths.mean():.0f}, "
                  f"p50 {p50:.0f}, p99 {p99:.0f}, max {lengths.max():,}, "
                  f"{int((lengths >= 10_000).sum())} users with 10k+")
    with step("generate requests", steps):
        requests = datasets.synthetic_requests(events, scale.pointers)

    store_dir, log = workdir / "store", workdir / "examples.parquet"
    with step(f"lateseq: {scale.commits} commits + compact", steps):
        store = commit_in_slices(lateseq.create(store_dir, SCHEMA), events, scale.commits)
    with step("lateseq: log_examples", steps):
        examples = lateseq.log_examples(store, requests, log)

    fat: dict[int, tuple[Path, Path, int]] = {}  # N -> (Fat Row file, example log of the same rows, rows)
    rng = np.random.default_rng(0)
    for n, rows in scale.fat_sample.items():
        path = workdir / f"fatrow-{n}.parquet"
        sample_log, sampled = log, requests
        if rows < scale.pointers:
            keep = pa.array(np.sort(rng.choice(scale.pointers, rows, replace=False)))
            sample_log = workdir / f"examples-sample-{n}.parquet"
            pq.write_table(examples.take(keep), sample_log)
            sampled = requests.take(keep)
        rows = sampled.num_rows
        with step(f"Fat Row N={n}: build and write ({rows:,} examples)", steps):
            write_fat_rows(iter_fat_rows(events, sampled, list(COLUMNS), n), path)
        fat[n] = (path, sample_log, rows)
    del events, examples, requests, sampled

    with step("warm-up: read both sides whole, check they agree", steps):
        for n, (path, sample_log, _) in fat.items():
            warm_and_compare(store, sample_log, path, n)

    live = store.versions()[-1].bytes
    store_bytes, log_bytes = du(store_dir / "segments"), du(log)
    cache_bytes = sum(du(decoded_file(store.cache_dir, info.name)) for info in store.segment_infos)
    with step("decode the live version into an empty read cache (once per host)", steps):
        decoded = lateseq.open(store_dir, cache_dir=workdir / "fresh-cache").segments()
    del decoded
    results: dict = {}
    speed = Table(title=f"materialize: lateseq vs Fat Row (one core, warm cache, batches of {BATCH}, best of {repeat})")
    for col in ("N", "examples", "events/ex", "Fat Row ex/s", "lateseq ex/s", "ratio", "Fat Row GB/s",
                "lateseq GB/s", "lateseq % memcpy"):
        speed.add_column(col, justify="right")
    parts, floor = {}, {}  # N -> breakdown; N -> seconds memcpy would take for lateseq's output
    for n, (path, sample_log, rows) in fat.items():
        with step(f"time N={n}", steps):
            base = best_of(repeat, lambda path=path: fat_batches(path))
            ours = best_of(repeat, lambda sample_log=sample_log, n=n: lateseq_batches(store, sample_log, n))
        if breakdowns:
            with step(f"breakdown N={n}", steps):
                parts[n] = breakdown(store, sample_log, n)
        if (base.examples, base.events) != (ours.examples, ours.events):
            raise SystemExit(f"N={n}: Fat Row gave {base.events} events, lateseq {ours.events}")
        floor[n] = ours.out_bytes / memcpy / 1e9
        fat_bytes = path.stat().st_size * scale.pointers / rows
        results[f"n{n}"] = {
            "lateseq_ex_s": round(ours.ex_s), "fatrow_ex_s": round(base.ex_s),
            "ratio": round(ours.ex_s / base.ex_s, 2),
            "lateseq_gb_s": round(ours.gb_s, 3), "fatrow_gb_s": round(base.gb_s, 3),
            "lateseq_memcpy_fraction": round(ours.gb_s / memcpy, 3),
            "fatrow_memcpy_fraction": round(base.gb_s / memcpy, 3),
            "examples_timed": rows, "fatrow_sampled": rows < scale.pointers,
            "mean_events_per_example": round(ours.events / rows, 1),
            "fatrow_bytes": round(fat_bytes), "fatrow_file_bytes": path.stat().st_size,
        }
        results[f"bytes_ratio_n{n}"] = round(fat_bytes / (live + log_bytes), 2)
        results[f"bytes_ratio_with_read_cache_n{n}"] = round(fat_bytes / (live + cache_bytes + log_bytes), 2)
        speed.add_row(str(n), f"{rows:,}", f"{ours.events / rows:.0f}", f"{base.ex_s:,.0f}", f"{ours.ex_s:,.0f}",
                      f"{ours.ex_s / base.ex_s:.2f}x", f"{base.gb_s:.2f}", f"{ours.gb_s:.2f}",
                      f"{100 * ours.gb_s / memcpy:.0f}%")
    console.print(speed)

    sizes = Table(title="bytes on disk")
    for col in ("layout", "bytes", "Fat Row / lateseq"):
        sizes.add_column(col, justify="right")
    sizes.add_row("lateseq store, live version (durable: packed Parquet + user index)", f"{live / 1e9:.3f} GB", "")
    sizes.add_row("lateseq segments, all versions (+ pre-compaction segments)", f"{store_bytes / 1e9:.3f} GB", "")
    sizes.add_row("read cache: decoded live segments (per host, rebuilt when missing)",
                  f"{cache_bytes / 1e9:.3f} GB", "")
    sizes.add_row(f"example log ({scale.pointers:,} pointers + label)", f"{log_bytes / 1e9:.3f} GB", "")
    for n, (path, _, rows) in fat.items():
        note = "" if rows == scale.pointers else f" (extrapolated from {rows:,})"
        sizes.add_row(f"Fat Row N={n}{note}", f"{results[f'n{n}']['fatrow_bytes'] / 1e9:.3f} GB",
                      f"{results[f'bytes_ratio_n{n}']:.1f}x")
    console.print(sizes)
    console.print("bytes ratio = Fat Row / (live store version + example log); the store holds all 4 columns, "
                  "the Fat Row only the 3 projected ones. Counting a host's read cache too: " + ", ".join(
                      f"N={n} {results[f'bytes_ratio_with_read_cache_n{n}']:.1f}x" for n in fat))
    results.update(store_live_bytes=live, store_dir_bytes=store_bytes, read_cache_bytes=cache_bytes,
                   example_log_bytes=log_bytes,
                   events=int(lengths.sum()), users=scale.users, pointers=scale.pointers)

    if parts:
        split = Table(title="lateseq loop: seconds per part, each timed alone")
        split.add_column("part")
        for n in parts:
            split.add_column(f"N={n}", justify="right")
        for name in next(iter(parts.values())):
            split.add_row(name, *(f"{parts[n][name]:.2f}" for n in parts))
        split.add_row("(memcpy of the same output bytes)", *(f"{floor[n]:.2f}" for n in parts))
        console.print(split)
        results["breakdown_s"] = {f"n{n}": {k: round(v, 3) for k, v in p.items()} for n, p in parts.items()}
    for n, target in ((256, 3), (4096, 8)):
        ratio = results[f"n{n}"]["ratio"]
        console.print(f"target N={n}: ratio >= {target}: {ratio:.2f} ({'met' if ratio >= target else 'MISSED'})")
    ratio = results["bytes_ratio_n256"]
    console.print(f"target bytes ratio N=256 >= 5: {ratio:.2f} ({'met' if ratio >= 5 else 'MISSED'})")
    return results


if __name__ == "__main__":
    main()
