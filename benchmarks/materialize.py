"""Materialization throughput and bytes: lateseq in every store state against the
strongest Fat Rows.

    python benchmarks/materialize.py            # 200k users per workload (realistic: 40M events, 43M examples)
    python benchmarks/materialize.py --small    # 20k users (--cold: 13-19 min on the AMD VM, 14-17 on the Intel one)
    python benchmarks/materialize.py --tiny     # a smoke run of every part (seconds; what the tests run)
    options: --json PATH  --plot PATH  --cold  --repeat R  --min-pass-s S  --cpu K  --workdir DIR
             --fat-budget-gb G

Workloads and store states are ``benchmarks/workload.py``'s: a realistic one (power-law
users over 30 days, an example per event) read through five store states (compacted with
pointers at the latest version; 30 daily commits never compacted; 5% late events,
uncompacted and compacted; daily commits with tiered compaction where lateseq has it),
and the original sparse one. For each state and N in (256, 1024, 4096), projection
(item_id, action, ts):

- **lateseq** reads the example log (Parquet) through its streaming loader,
  ``iter_batches``, batches of 1024 (it rebuilds a few small batches in one read: 4 at
  N=256, one from N=1024 on here), verifying every history's checksum (the default).
- **Fat Rows** hold the same examples' histories, built by an independent oracle, in
  three forms: Parquet with pyarrow's defaults, Parquet in its smallest form (sorted by
  user then time, zstd, the smallest of several encodings), and an Arrow IPC file read
  through a memory map with each batch's values copied out into numpy.
- **an events table** built by hand (``workload.EventsTable``, the brief's reference
  design: every event once, sorted, memory-mapped, a stored user index, each example's
  events found from the length its log row records), on the compacted-latest state's
  examples only: it has no versions, so that is the one state where it is exact.

Before anything is timed, an untimed pass reads every Fat Row form and rebuilds the same
examples with lateseq, and checks each batch equal (offsets and values, bit for bit).
Then each side is timed ``--repeat`` times (fewer for a side whose passes took over
``--patience`` seconds in all; a warm pass drains its side again until it took
``--min-pass-s``), the passes interleaved, and the best pass counts (the median is
reported beside it); both sides' outputs go into arrays reused batch after batch: one
core (the process is pinned; numba, Arrow and BLAS run one thread), warm page cache;
each pass's CPU share (CPU time over wall time) shows whether other processes took the
core meanwhile. With ``--cold`` every file of both sides (store segments, decoded read
cache, example log, Fat Row file) is evicted from the page cache before each pass with
``posix_fadvise(DONTNEED)``; the output reports how much of them stayed cached (mincore)
and how many bytes each pass read from disk (/proc/self/io).

Where the Fat Rows of every example would exceed ``--fat-budget-gb`` (as an Arrow IPC
file: 4 GB at full scale, for run time), both sides are timed on a uniform random sample
of requests (with all their examples: a request's impressions stay together), so
lateseq reads from all over the store as it would for the whole log. Fat Row bytes for
every example are then extrapolated, and the output says so: the IPC and default Parquet
files by output events; the smallest form from a separate file of every example of a
random sample of whole users (it compresses each row against the user's previous one,
which a sample of requests would break), scaled by examples.
"""

from __future__ import annotations

import os

# one core: set before numpy, numba or pyarrow start their thread pools
for _name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import lateseq  # noqa: E402
from lateseq._derived import DERIVED_DIR  # noqa: E402
from lateseq._pointers import write_log  # noqa: E402
from lateseq._store import AUTO_MERGE_RENT  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from workload import (  # noqa: E402
    BATCH,
    COLUMNS,
    FORMS,
    EventsTable,
    FatRowMismatch,
    Histories,
    State,
    Workload,
    build_forms,
    build_states,
    check_equal,
    derived_files,
    lateseq_reads,
    loader_reads,
    read_days,
    read_fat_rows,
    readable_days,
    realistic,
    request_sample,
    same_jagged,
    smallest_settings,
    sparse,
    store_files,
    tiered_compaction,
    user_sample,
)

NS = (256, 1024, 4096)
EVENT_BYTES = 13  # item_id (int32) + action (int8) + ts (int64): what one projected event costs in memory
console = Console(highlight=False, width=150)


@dataclass(frozen=True)
class Scale:
    realistic_users: int
    sparse_users: int
    sparse_pointers: int
    fat_budget: float  # bytes of Arrow IPC Fat Rows above which both sides are timed on a user sample
    max_timed: int  # examples timed at most per N


SCALES = {
    "full": Scale(realistic_users=200_000, sparse_users=200_000, sparse_pointers=2_000_000,
                  fat_budget=4e9, max_timed=2_000_000),
    "small": Scale(realistic_users=20_000, sparse_users=20_000, sparse_pointers=200_000,
                   fat_budget=0.4e9, max_timed=200_000),
    "tiny": Scale(realistic_users=100, sparse_users=200, sparse_pointers=3_000, fat_budget=20e6, max_timed=6_000),
}


# ---------------------------------------------------------------- the machine


def machine() -> dict:
    def first(path: str, key: str) -> str:
        try:
            return next((line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                         if line.startswith(key)), "unknown")
        except OSError:
            return "unknown"

    memory = first("/proc/meminfo", "MemTotal")
    return {
        "cpu": first("/proc/cpuinfo", "model name"), "cores": os.cpu_count(),
        "memory_gb": round(int(memory.split()[0]) * 1024 / 1e9, 1) if memory != "unknown" else None,
        "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__,
        "numba": numba.__version__, "lateseq": lateseq.__version__, "git": _git(),
        "page_fault_us": round(page_fault_us(), 2), "llc": _last_level_cache(),
    }


def _last_level_cache() -> str:
    """The size of the CPU's last-level cache, as Linux names it ("480M"): whether a store
    fits in it decides much of a ratio to a Fat Row read in file order (benchmarks/scale.py)."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    try:
        return max(((int((c / "level").read_text()), (c / "size").read_text().strip()) for c in caches),
                   default=(0, "unknown"))[1]
    except (OSError, ValueError):
        return "unknown"


def _git() -> str:
    """The commit of the lateseq this run imports (and whether its src/ has uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    imported = Path(lateseq.__file__).resolve().parent
    if not imported.is_relative_to(root):
        return f"the copy in {imported}"
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def pin_one_core(cpu: int | None) -> int | None:
    """Pins this process to one CPU (the last one allowed by default); Arrow to one thread."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def memcpy_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Single-core copy bandwidth (bytes copied per second), best of ``repeats``."""
    src = np.ones(megabytes * (1 << 20) // 8, np.int64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best / 1e9


def page_fault_us(megabytes: int = 64, repeats: int = 3) -> float:
    """Microseconds to fault in one page of fresh memory (a new anonymous map written
    page by page), best of ``repeats``: what every fresh buffer costs per page on this
    machine, which a virtual machine can make many times a bare-metal host's."""
    best = float("inf")
    for _ in range(repeats):
        area = mmap.mmap(-1, megabytes << 20)
        pages = np.frombuffer(area, np.uint8)
        start = time.perf_counter()
        pages[::_PAGE] = 1
        best = min(best, (time.perf_counter() - start) / (len(pages) // _PAGE))
        del pages
        area.close()
    return best * 1e6


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# ---------------------------------------------------------------- the page cache

_LIBC = ctypes.CDLL(None, use_errno=True)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def evict(paths: list[Path]) -> None:
    """Drops ``paths`` from the page cache (written back first: dirty pages are not dropped)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_pages(files: list[Path]) -> None:
    """Evicts ``files`` from the page cache, pages this process maps included: fadvise keeps
    mapped pages, so every map of them (``/proc/self/maps``) lets go of its pages first (the
    next access faults them in from disk again; the maps keep their readahead advice)."""
    wanted = {str(p.resolve()) for p in files}
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in wanted:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), mmap.MADV_DONTNEED)
    evict(files)


def resident_bytes(paths: list[Path]) -> int:
    """Bytes of ``paths`` now in the page cache (mincore on a fresh, untouched map)."""
    total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        view = np.memmap(path, dtype=np.uint8, mode="r")
        pages = (size + _PAGE - 1) // _PAGE
        vector = (ctypes.c_ubyte * pages)()
        if _LIBC.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
        total += int((np.frombuffer(vector, np.uint8) & 1).sum()) * _PAGE
        del view
    return total


def disk_read_bytes() -> int | None:
    """Bytes this process has caused to be read from storage (None where not reported)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- timing


@dataclass
class Run:
    examples: int = 0
    events: int = 0
    out_bytes: int = 0
    seconds: float = float("inf")
    cpu_seconds: float = 0.0  # CPU time this process used in the pass: less than seconds when others ran
    disk_bytes: int | None = None  # read from storage during the pass (cold passes)
    resident_after_evict: float | None = None  # share of the evicted bytes still cached (cold passes)
    passes: int = 0  # passes made (this one is the fastest)
    pass_s: list[float] = field(default_factory=list)  # seconds an example, of every pass made (for the median)
    drains: int = 1  # drains of the side this pass made (``min_pass_s``), each of every example once

    @property
    def ex_s(self) -> float:
        return self.examples / self.seconds

    @property
    def gb_s(self) -> float:
        return self.out_bytes / self.seconds / 1e9

    @property
    def events_s(self) -> float:
        return self.events / self.seconds

    @property
    def ex_s_median(self) -> float:
        return 1 / float(np.median(self.pass_s)) if self.pass_s else self.ex_s

    def add(self, other: Run) -> None:
        """Counts ``other`` (a drain of the same side) into this pass."""
        for name in ("examples", "events", "out_bytes", "seconds", "cpu_seconds", "drains"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self, memcpy: float) -> dict:
        return {"ex_s": self.ex_s, "ex_s_median": self.ex_s_median, "gb_s": self.gb_s,
                "memcpy_fraction": self.gb_s / memcpy, "events_per_example": self.events / max(self.examples, 1),
                "seconds": self.seconds, "cpu_share": self.cpu_seconds / self.seconds, "passes": self.passes,
                "pass_ex_s": sorted(1 / t for t in self.pass_s), "drains": self.drains}


Batches = Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]


def drain(batches: Batches) -> Run:
    """Times draining (offsets, values) batches, counting what they hold."""
    run = Run()
    start, cpu = time.perf_counter(), time.process_time()
    for offsets, values in batches:
        run.examples += len(offsets) - 1
        run.events += int(offsets[-1])
        run.out_bytes += offsets.nbytes + sum(v.nbytes for v in values.values())
    run.seconds = time.perf_counter() - start
    run.cpu_seconds = time.process_time() - cpu
    return run


def best_of(repeat: int, sides: dict[str, Callable[[], Batches]], cold_files: list[Path] | None = None,
            patience: float = float("inf"), min_pass_s: float = 0.0) -> dict[str, Run]:
    """The fastest of ``repeat`` passes of each side, passes interleaved (so a busy moment
    on a shared machine does not fall on one side only); a side stops early once its
    passes took ``patience`` seconds in all. A warm pass drains its side again until it
    took ``min_pass_s`` (a pass of 25 ms moved by ±10% from run to run, s48D). With
    ``cold_files``, they are all evicted from the page cache before every pass."""
    best = {name: Run() for name in sides}
    times: dict[str, list[float]] = {name: [] for name in sides}
    spent = dict.fromkeys(sides, 0.0)
    for _ in range(repeat):
        for name, make in sides.items():
            if spent[name] >= patience:
                continue
            before = None
            resident = None
            if cold_files is not None:
                gc.collect()  # close maps of finished passes: mapped pages cannot be evicted
                evict(cold_files)
                resident = resident_bytes(cold_files) / max(sum(os.path.getsize(p) for p in cold_files), 1)
                before = disk_read_bytes()
            run = drain(make())
            while cold_files is None and run.seconds < min_pass_s:
                run.add(drain(make()))
            if before is not None:
                run.disk_bytes = disk_read_bytes() - before
            run.resident_after_evict = resident
            spent[name] += run.seconds
            times[name].append(run.seconds / max(run.examples, 1))
            run.passes = best[name].passes + 1
            if run.seconds / max(run.examples, 1) < best[name].seconds / max(best[name].examples, 1):
                best[name] = run
            else:
                best[name].passes = run.passes
    for name, run in best.items():
        run.pass_s = times[name]
    return best


def lateseq_batches(open_store: Callable[[], lateseq.Store], log: Path, max_len: int) -> Batches:
    """A loader's loop (``workload.lateseq_reads``: 4 batches a read at N=256), as
    (offsets, values)."""
    for jagged in lateseq_reads(open_store(), log, lateseq.Projection(max_len, COLUMNS)):
        yield jagged.offsets, jagged.values


@contextmanager
def step(name: str, steps: dict[str, float]):
    """Times one named step into ``steps``, printing as it starts and ends."""
    console.print(f"[dim]{name} ...[/dim]")
    start = time.perf_counter()
    yield
    steps[name] = round(time.perf_counter() - start, 2)
    console.print(f"[dim]{name}: {steps[name]:.1f} s[/dim]")


# ---------------------------------------------------------------- one workload


@dataclass
class Options:
    repeat: int
    patience: float
    min_pass_s: float
    cold: bool
    memcpy: float
    scale: Scale


@dataclass
class Sample:
    timed: np.ndarray  # log rows both sides are timed on: a uniform sample of requests, all their examples
    sized: np.ndarray  # log rows the smallest form's bytes come from: every example of a sample of users

    def describe(self, requests: pa.Table) -> str:
        total = requests.num_rows
        if len(self.timed) == total:
            return "every example"
        users = len(np.unique(requests.column("user_id").to_numpy()[self.sized]))
        sized = (f"every example of {users:,} random users ({len(self.sized):,} examples), scaled by examples"
                 if len(self.sized) < total else "every example")
        return (f"{len(self.timed):,} of {total:,} examples (uniform random requests, all their examples); "
                f"Fat Row bytes scaled from them by output events, but the smallest form's from {sized}")


def run_workload(work: Workload, root: Path, opts: Options, steps: dict[str, float]) -> dict:
    out: dict = {"workload": work.describe(), "states": {}, "n": {}}
    unavailable = None
    if work.arrival is not None:  # the realistic workload: try daily commits + tiered compaction too
        unavailable = tiered_compaction(root / "probe")
        out["tiered_compaction"] = "measured" if unavailable is None else f"not measured: {unavailable}"
    with step(f"{work.name}: store states", steps):
        states = build_states(work, root / "stores", tiered=unavailable is None,
                              progress=lambda text: console.print(f"[dim]  {text}[/dim]"))
    for state in states:
        log = root / f"{work.name}-{state.name}-examples.parquet"
        write_log(state.log, log)  # as log_examples writes it
        durable, cache = store_files(state)
        out["states"][state.name] = {
            "title": state.title, "visibility": state.visibility, "version": state.version,
            "segments": len(state.open().segment_infos), "durable_bytes": sum(p.stat().st_size for p in durable),
            "read_cache_bytes": sum(p.stat().st_size for p in cache), "example_log_bytes": log.stat().st_size,
            "written_bytes": state.written, "written_cache_bytes": state.written_cache, "days": state.days,
            "merged_reads": state.merged_reads, "merge_s": state.merge_s,
        }
        log.unlink()
    # per N, shared by every state and form: the examples both sides are timed on (uniform
    # requests), and those the smallest form's bytes are measured on (whole users)
    lengths = states[0].log.column("uih_length").to_numpy().astype(np.int64)
    samples = {}
    for n in NS:
        cost = np.minimum(lengths, n) * EVENT_BYTES + 8.0  # bytes of the example's Fat Row in memory
        samples[n] = Sample(request_sample(work.requests, cost, opts.scale.fat_budget, opts.scale.max_timed),
                            user_sample(work.requests, cost, opts.scale.fat_budget, work.requests.num_rows))
        out["n"][str(n)] = {
            "examples": work.requests.num_rows, "timed_examples": len(samples[n].timed),
            "sample": samples[n].describe(work.requests), "fat_rows": {}, "lateseq": {},
        }
    with step(f"{work.name}: an events table built by hand (every event once, sorted, mapped)", steps):
        table = EventsTable(work.events, root / "events-table.arrow")
    out["events_table_bytes"] = table.bytes
    out["events_table_form"] = "logged-lengths"  # narrow columns, a stored index, the log's lengths (before:
    # "narrow", a CSR index rebuilt on open and a binary search per request; before that int64 columns)
    reference = next(s for s in states if s.name == "compacted-latest")
    for visibility in dict.fromkeys(s.visibility for s in states):
        group = [s for s in states if s.visibility == visibility]
        with step(f"{work.name}: Fat Row oracle, history = {visibility}", steps):
            histories = Histories(work.events, readable_days(work, visibility))
            read_day = read_days(visibility, work.requests)
        for n in NS:
            measure(work, group, histories, read_day, n, samples[n], root, opts, steps, out,
                    table if visibility == "all" else None,
                    None if any(s.name == reference.name for s in group) else reference)
        del histories
    table.path.unlink()
    table.index_path.unlink()
    for at in out["n"].values():
        base = at["lateseq"]["compacted-latest"]
        for s in at["lateseq"].values():
            s.setdefault("vs_compacted_latest", s["ex_s"] / base["ex_s"])
            s.setdefault("events_vs_compacted_latest", s["ex_s"] * s["events_per_example"]
                         / (base["ex_s"] * base["events_per_example"]))
            if "epoch" in s:
                s["epoch"].setdefault("vs_compacted_latest", s["epoch"]["ex_s"] / base["epoch"]["ex_s"])
                if "next_day" in s["epoch"]:
                    s["epoch"]["next_day"]["vs_compacted_latest"] = (s["epoch"]["next_day"]["ex_s"]
                                                                     / base["epoch"]["ex_s"])
            if "cold" in s:
                s["cold"].setdefault("vs_compacted_latest", s["cold"]["ex_s"] / base["cold"]["ex_s"])
    return out


def measure(work: Workload, group: list[State], histories: Histories, read_day: np.ndarray, n: int,
            sample: Sample, root: Path, opts: Options, steps: dict[str, float], out: dict,
            table: EventsTable | None = None, reference: State | None = None) -> None:
    """Builds one history's Fat Rows at N=n, checks them against every state that shares
    that history, times both sides, and fills ``out["n"][n]``. ``table`` (for the history
    of every event) is timed beside them, checked against the first state first. The
    ``reference`` state (compacted-latest, of another history) is timed in the same
    interleaved passes on the same requests, and each state's ``vs_compacted_latest`` is
    taken against it: states timed minutes apart on a shared VM differ by up to 1.3x."""
    at = out["n"][str(n)]
    visibility = group[0].visibility
    tag = f"{work.name}-{visibility}-n{n}"
    rows = sample.timed
    with step(f"{tag}: build Fat Rows of {len(rows):,} examples ({len(FORMS)} forms)", steps):
        settings, candidates = smallest_settings(histories, work.requests, read_day, sample.sized, n)
        forms = build_forms(histories, work.requests, read_day, rows, n, root / "fat", tag, settings)
        forms["parquet-smallest"].candidates = candidates
        sized = forms["parquet-smallest"]
        if not np.array_equal(sample.sized, rows):
            sized = build_forms(histories, work.requests, read_day, sample.sized, n, root / "fat", f"{tag}-sized",
                                settings, forms=("parquet-smallest",))["parquet-smallest"]
            sized.path.unlink()
    logs = {}
    timed = [*group, *([reference] if reference is not None else [])]
    for state in timed:  # the timed example log: the same rows, pointer columns + label
        logs[state.name] = root / f"{tag}-{state.name}-examples.parquet"
        write_log(state.log.take(pa.array(rows)), logs[state.name])
    handles = {state.name: state.open() for state in timed}
    checked: dict[str, dict[str, int]] = {}
    with step(f"{tag}: untimed pass, every form checked equal to lateseq in {len(group)} state(s)", steps):
        same_order = [[forms["parquet-default"], forms["arrow-ipc"], forms["flat-npy"]], [forms["parquet-smallest"]]]
        for state in group:
            checked[state.name] = {}
            for files in same_order:
                compared = check_equal(files, handles[state.name], state.log, n, f"{tag}/{state.name}")
                checked[state.name].update({file.form: compared for file in files})
        if table is not None:
            checked[group[0].name]["events-table"] = check_table(table, handles[group[0].name], logs[group[0].name],
                                                                 n, f"{tag}/{group[0].name}")

    def sides(cold: bool) -> dict[str, Callable[[], Batches]]:
        made: dict[str, Callable[[], Batches]] = {
            f"fat:{form}": (lambda file=file: read_fat_rows(file, reopen=cold)) for form, file in forms.items()}
        for state in timed:
            opener = state.open if cold else (lambda h=handles[state.name]: h)
            made[state.name] = lambda opener=opener, log=logs[state.name]: lateseq_batches(opener, log, n)
        if table is not None:
            made["events-table"] = lambda: table.batches(logs[group[0].name], n, reopen=cold)
        return made

    with step(f"{tag}: time, warm", steps):
        warm = best_of(opts.repeat, sides(cold=False), patience=opts.patience, min_pass_s=opts.min_pass_s)
    cold = None
    if opts.cold:
        handles.clear()
        for file in [*forms.values(), *([table] if table is not None else [])]:
            file.mapped = None  # the warm passes' maps go, or their pages would stay cached
        gc.collect()
        files = [path for file in forms.values() for path in _files(file.path)] + list(logs.values())
        if table is not None:
            files += [table.path, table.index_path]
        for state in timed:
            durable, cache = store_files(state)
            files += durable + cache
        with step(f"{tag}: time, cold", steps):
            cold = best_of(opts.repeat, sides(cold=True), cold_files=files, patience=opts.patience)
    counts = {(run.examples // run.drains, run.events // run.drains) for name, run in warm.items()
              if reference is None or name != reference.name}
    if len(counts) != 1:
        raise SystemExit(f"{tag}: the sides produced different examples/events: {counts}")

    # every example's Fat Rows: the sample's file, scaled by output events when sampled
    lengths = group[0].log.column("uih_length").to_numpy().astype(np.int64)
    events_all = int(np.minimum(lengths, n).sum())
    fat: dict[str, dict] = {}
    for form, file in forms.items():
        run = warm[f"fat:{form}"]
        if len(file.rows) == work.requests.num_rows:
            bytes_all = file.bytes
        elif form == "parquet-smallest":  # sorted rows cost about the same each: scale by examples
            bytes_all = sized.bytes * work.requests.num_rows / len(sized.rows)
        else:  # the other forms cost about the same per event
            bytes_all = file.bytes * events_all / max(file.events, 1)
        fat[form] = {
            **run.figures(opts.memcpy), "file_bytes": file.bytes, "bytes": bytes_all,
            "extrapolated": len((sized if form == "parquet-smallest" else file).rows) < work.requests.num_rows,
            "settings": file.settings, "candidates": file.candidates,
        }
        if cold:
            fat[form]["cold"] = _cold(cold[f"fat:{form}"])
    at["fat_rows"][visibility] = fat
    if table is not None:
        run = warm["events-table"]
        base = warm[group[0].name]
        at["events_table"] = {**run.figures(opts.memcpy), "state": group[0].name, "lateseq_ex_s": base.ex_s,
                              "lateseq_vs_events_table": base.ex_s / run.ex_s}
        if cold:
            ratio = cold[group[0].name].ex_s / cold["events-table"].ex_s
            at["events_table"]["cold"] = {**_cold(cold["events-table"]), "lateseq_vs_events_table": ratio}
    for state in group:
        run = warm[state.name]
        info = out["states"][state.name]
        ours = info["durable_bytes"] + info["example_log_bytes"]
        days = state.days
        entry = {
            **run.figures(opts.memcpy),
            "vs_fat_row": {form: run.ex_s / fat[form]["ex_s"] for form in FORMS},
            "checked": checked[state.name],
            "bytes": ours, "bytes_vs_fat_row": {form: fat[form]["bytes"] / ours for form in FORMS},
            # the read cache's decoded copies a writer makes at each commit and compaction too (s48D)
            "written_per_day": {"lateseq": (info["written_bytes"] + info["example_log_bytes"]) / days,
                                "lateseq_with_read_cache": (info["written_bytes"] + info["written_cache_bytes"]
                                                            + info["example_log_bytes"]) / days,
                                "fat_rows": {form: fat[form]["bytes"] / days for form in FORMS}},
        }
        if reference is not None:
            entry["vs_compacted_latest"] = run.ex_s / warm[reference.name].ex_s
            # its pointers see the same day's events, the states' do not: their histories are shorter (s48D)
            entry["events_vs_compacted_latest"] = run.events_s / warm[reference.name].events_s
        if cold:
            entry["cold"] = {**_cold(cold[state.name]),
                             "vs_fat_row": {form: cold[state.name].ex_s / fat[form]["cold"]["ex_s"] for form in FORMS}}
            if reference is not None:
                entry["cold"]["vs_compacted_latest"] = cold[state.name].ex_s / cold[reference.name].ex_s
        at["lateseq"][state.name] = entry
    for file in forms.values():
        if file.path.is_dir():
            shutil.rmtree(file.path)
        else:
            file.path.unlink()
    for log in logs.values():
        log.unlink()
    with step(f"{tag}: one epoch over the whole example log per state, default reads (merged_reads='auto'), "
              f"{EPOCH_ROUNDS} rounds", steps):
        for name, figures in epochs([state for state in group if not state.merged_reads], n, root, opts.memcpy,
                                    reference).items():
            at["lateseq"][name]["epoch"] = figures


def check_table(table: EventsTable, store: lateseq.Store, log: Path, max_len: int, what: str) -> int:
    """Checks the events table's batches of ``log`` against lateseq's, bit for bit;
    returns the examples compared."""
    done = 0
    projection = lateseq.Projection(max_len, table.columns)
    pointers = pq.ParquetFile(log).iter_batches(BATCH, columns=lateseq.POINTER_FIELDS.names, use_threads=False)
    for k, ((offsets, values), batch) in enumerate(zip(table.batches(log, max_len), pointers, strict=True)):
        if not same_jagged(offsets, values, lateseq.materialize(store, batch, projection)):
            raise FatRowMismatch(f"{what}: lateseq and the events table differ in batch {k}")
        done += len(offsets) - 1
    return done


# A first epoch is one pass: two runs of this benchmark a quarter of an hour apart timed the
# same state's 25-50% apart, where best-of-5 warm passes moved 5-10% (s59). So every state's
# first epoch is timed in rounds, each round passing over every state in turn and over
# compacted-latest (the reference, timed in every group), and each state's figure is its
# median round; its ratio to compacted-latest's is the median of the rounds' own ratios, so
# a slow minute falls on both sides of one.
EPOCH_ROUNDS = 3


def epochs(states: list[State], n: int, root: Path, memcpy: float,
           reference: State | None = None) -> dict[str, dict]:
    """Each state's first epoch (``first_epoch``), its median of ``EPOCH_ROUNDS`` rounds over
    ``states`` and ``reference``; then once each, where a day's commit made the state's
    version from an earlier one, the first epoch of the next day's training on one host, and
    the same pass on a new host."""
    timed = [*states, *([reference] if reference is not None else [])]
    logs = {state.name: root / f"{state.name}-epoch-examples.parquet" for state in timed}
    for state in timed:  # written once: every pass over a state reads its whole example log
        write_log(state.log, logs[state.name])
    try:
        rounds = [{state.name: first_epoch(state, logs[state.name], n) for state in timed}
                  for _ in range(EPOCH_ROUNDS)]
        base = [r["compacted-latest"][0].ex_s for r in rounds]
        out = {}
        for state in states:
            log = logs[state.name]
            run, merged = sorted((r[state.name] for r in rounds), key=lambda done: done[0].seconds)[len(rounds) // 2]
            own = [r[state.name][0].ex_s for r in rounds]
            out[state.name] = {**run.figures(memcpy), "examples": run.examples, "merged_copies": merged,
                               "rounds_ex_s": own, "compacted_latest_rounds_ex_s": base,
                               "vs_compacted_latest": float(np.median(np.divide(own, base)))}
            store = _without_copies(state)
            before = day_before(store)
            if before is not None:  # a day's training on: the version before's copy built, this one's not
                lateseq.open(state.path, before, merged_reads=True).prefault([])
                built = set(derived_files(store))
                day = drain(lateseq_batches(lambda: store, log, n))  # (drained before the loop moves on)
                out[state.name]["next_day"] = {
                    **day.figures(memcpy), "examples": day.examples, "version_before": before,
                    "merged_copies": sum(p.suffix == ".json" for p in set(derived_files(store)) - built)}
            out[state.name]["new_host"] = new_host_epoch(state, log, n, root)  # last: it evicts the log
    finally:
        for log in logs.values():
            log.unlink(missing_ok=True)
    return out


def first_epoch(state: State, log: Path, n: int) -> tuple[Run, int]:
    """One pass over ``state``'s whole example log (``log``) through a new handle with the
    default ``merged_reads="auto"`` and no merged copy on this host yet (a first epoch of
    training, reading segment by segment until the reads paid for the merged copies, then
    building and reading through them), and the merged copies it built."""
    store = _without_copies(state)
    run = drain(lateseq_batches(lambda: store, log, n))
    return run, sum(p.suffix == ".json" for p in derived_files(store))


def _without_copies(state: State) -> lateseq.Store:
    """A new handle on ``state`` (``merged_reads="auto"``) whose read cache holds no merged copy."""
    store = lateseq.open(state.path, state.version)
    for path in [*derived_files(store), *(store.cache_dir / DERIVED_DIR).glob(".tmp-rent-*")]:
        path.unlink()  # the copies, and what earlier reads paid towards them
    return store


def day_before(store: lateseq.Store) -> int | None:
    """The newest version before ``store``'s whose segments of each partition begin its own,
    fewer of them (a commit or more ago): None where none does (a compaction since)."""
    def names(handle: lateseq.Store) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for info in handle.segment_infos:
            out.setdefault(info.partition, []).append(info.name)
        return out

    latest = names(store)
    for version in range(store.version - 1, 0, -1):
        older = names(store.checkout(version))
        if older.keys() == latest.keys() and all(1 < len(v) < len(latest[p]) and v == latest[p][:len(v)]
                                                 for p, v in older.items()):
            return version
    return None


def new_host_epoch(state: State, log: Path, n: int, root: Path) -> dict:
    """The same pass (over ``log``) on a host that has never read the store: an empty read
    cache and the durable files and example log evicted from the page cache, so the pass
    decodes every segment it needs (once) from disk. The cold passes above read a host's
    built cache."""
    durable, _ = store_files(state)
    with tempfile.TemporaryDirectory(dir=root, prefix="new-host-cache-") as cache:
        evict([*durable, log])
        before = disk_read_bytes()
        run = drain(lateseq_batches(lambda: lateseq.open(state.path, state.version, cache_dir=cache), log, n))
        read = disk_read_bytes()
    return {"ex_s": run.ex_s, "seconds": run.seconds, "examples": run.examples,
            "disk_read_bytes": None if before is None else read - before}


def _files(path: Path) -> list[Path]:
    """``path``, or the files of a folder (the flat form's: a .npy per column)."""
    return sorted(path.iterdir()) if path.is_dir() else [path]


def _cold(run: Run) -> dict:
    return {"ex_s": run.ex_s, "gb_s": run.gb_s, "seconds": run.seconds, "disk_read_bytes": run.disk_bytes,
            "resident_after_evict": run.resident_after_evict, "passes": run.passes}


# ---------------------------------------------------------------- targets


MMAP_FORMS = (("arrow-ipc", "Arrow IPC mmap"), ("flat-npy", "flat .npy mmap"))


def targets(results: dict) -> list[dict]:
    """Every target, for every workload, state and N it applies to; met or not."""
    out = []

    def add(target: str, workload: str, n: str, state: str, value: float, threshold: float) -> None:
        out.append({"target": target, "workload": workload, "n": int(n), "state": state, "value": value,
                    "threshold": threshold, "met": bool(value >= threshold)})

    for name, work in results["workloads"].items():
        for n, at in work["n"].items():
            for state, s in at["lateseq"].items():
                if state != "compacted-latest":
                    add("state vs compacted-latest, warm ex/s", name, n, state, s["vs_compacted_latest"], 0.7)
                    if "events_vs_compacted_latest" in s:  # (runs before s48D lack it)
                        add("state vs compacted-latest, warm events/s", name, n, state,
                            s["events_vs_compacted_latest"], 0.7)
                if n in ("256", "4096"):
                    for form, what in MMAP_FORMS:
                        if form in s["vs_fat_row"]:  # runs before a form joined FORMS lack it
                            add(f"warm ex/s vs {what} Fat Row", name, n, state, s["vs_fat_row"][form],
                                1.0 if n == "4096" else 0.5)
                    add("warm ex/s vs smallest Parquet Fat Row", name, n, state,
                        s["vs_fat_row"]["parquet-smallest"], 10.0 if n == "4096" else 5.0)
                if name == "realistic" and n == "1024":
                    add("bytes: smallest Parquet Fat Row / (durable store + example log)", name, n, state,
                        s["bytes_vs_fat_row"]["parquet-smallest"], 10.0)
                    for form, what in MMAP_FORMS:
                        if "cold" in s and form in s["cold"]["vs_fat_row"]:
                            add(f"cold ex/s vs {what} Fat Row", name, n, state, s["cold"]["vs_fat_row"][form], 2.0)
    return out


# ---------------------------------------------------------------- output


def print_tables(results: dict) -> None:
    for spec in report.tables(results):
        table = Table(title=spec.title, title_justify="left")
        for k, header in enumerate(spec.headers):
            left = k < 2 or header in ("what it is", "settings", "target")
            table.add_column(header, justify="left" if left else "right", no_wrap=k < 2 and header != "target",
                             overflow="fold")
        for row in spec.rows:
            style = "red" if row and row[-1] == "MISSED" else None
            table.add_row(*row, style=style)
        console.print(table)
        for note in spec.notes:
            console.print(f"[dim]  {note}[/dim]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="20k users per workload (minutes)")
    size.add_argument("--tiny", action="store_true", help="a smoke run of every part (seconds)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    parser.add_argument("--cold", action="store_true", help="also time with both sides evicted from the page cache")
    parser.add_argument("--repeat", type=int, help="timed passes per side, the best counts (default 5; 1 with --tiny)")
    parser.add_argument("--min-pass-s", type=float,
                        help="a warm pass drains its side again until it took this long "
                             "(default 0.5; 0.05 with --tiny)")
    parser.add_argument("--patience", type=float, default=60.0,
                        help="a side whose passes took this many seconds in all makes no more (default 60)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--workdir", type=Path,
                        help="parent of the build folder (removed after; default: the system's)")
    parser.add_argument("--fat-budget-gb", type=float,
                        help="time on a user sample where every example's Fat Rows (IPC) would exceed this")
    args = parser.parse_args(argv)
    scale_name = "small" if args.small else "tiny" if args.tiny else "full"
    scale = SCALES[scale_name]
    if args.repeat is None:
        args.repeat = 1 if args.tiny else 5
    if args.min_pass_s is None:
        args.min_pass_s = 0.05 if args.tiny else 0.5  # (a tiny run's drains take milliseconds: several a pass)
    if args.fat_budget_gb is not None:
        scale = Scale(**{**asdict(scale), "fat_budget": args.fat_budget_gb * 1e9})

    started = time.perf_counter()
    cpu = pin_one_core(args.cpu)
    info = machine()
    load_start = load_average()
    console.print(f"[bold]machine[/bold]: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; pinned to "
                  f"CPU {cpu}; python {info['python']}, numpy {info['numpy']}, pyarrow {info['pyarrow']}, numba "
                  f"{info['numba']}, lateseq {info['lateseq']} at {info['git']}")
    memcpy = memcpy_gb_s(64 if args.tiny else 512)
    console.print(f"single-core memcpy {memcpy:.1f} GB/s; load average {load_start} (other processes share the cores)")
    opts = Options(args.repeat, args.patience, args.min_pass_s, args.cold, memcpy, scale)
    steps: dict[str, float] = {}
    results: dict = {
        "benchmark": "materialize",
        "command": shlex.join(["python", "benchmarks/materialize.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale_name, "scale_settings": asdict(scale),
        "settings": {"batch": BATCH, **loader_reads(), "repeat": args.repeat, "patience_s": args.patience,
                     "min_pass_s": args.min_pass_s, "fat_rows_reuse_outputs": True,
                     "columns": list(COLUMNS), "n": list(NS),
                     "cold": args.cold, "pinned_cpu": cpu, "verify": True,
                     "auto_merge_rent": AUTO_MERGE_RENT, "auto_merge_foresees_the_pass": True,
                     "example_log_written_by": "lateseq (pointer columns delta-packed)",
                     "reference_timed_alongside": True,
                     "ipc_cold_viewed_lazily": True},
        "workloads": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="lateseq-bench-", dir=args.workdir))
    try:
        for make in (lambda: realistic(scale.realistic_users),
                     lambda: sparse(scale.sparse_users, scale.sparse_pointers)):
            with step("generate a workload", steps):
                work = make()
            name = work.name
            results["workloads"][name] = run_workload(work, workdir / name, opts, steps)
            del work
            shutil.rmtree(workdir / name, ignore_errors=True)
    except FatRowMismatch as exc:
        raise SystemExit(f"lateseq and the Fat Rows disagree: {exc}") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = {**info, "pinned_cpu": cpu, "memcpy_gb_s": round(memcpy, 2),
                          "load_average_start": load_start, "load_average_end": load_average(),
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)}
    results["targets"] = targets(results)
    if args.cold:
        resident = [side["cold"]["resident_after_evict"] for w in results["workloads"].values()
                    for at in w["n"].values()
                    for side in [*at["lateseq"].values(), *(f for fs in at["fat_rows"].values() for f in fs.values())]]
        results["eviction"] = {
            "method": "fsync + posix_fadvise(POSIX_FADV_DONTNEED) on every file of both sides before each pass",
            "max_resident_after_evict": max(resident), "worked": max(resident) < 0.05,
        }
    results["steps_s"] = steps
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(results)
    if args.cold:
        verdict = "worked" if results["eviction"]["worked"] else "DID NOT WORK"
        console.print(f"eviction {verdict}: at most {100 * results['eviction']['max_resident_after_evict']:.1f}% "
                      "of the evicted bytes stayed cached (mincore)")
    console.print(f"load average at the end: {results['machine']['load_average_end']}; "
                  f"{results['seconds']:.0f} s in all")
    save(results, args.json, args.plot)


def save(results: dict, json_path: Path | None, plot_path: Path | None) -> None:
    """Writes the results as JSON and the chart (report.plot), where asked."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"wrote {json_path}")
    if plot_path:
        if report.plot(results, plot_path):
            console.print(f"wrote {plot_path}")
        else:
            console.print("no chart: matplotlib is not installed (pip install matplotlib)")


if __name__ == "__main__":
    main()
