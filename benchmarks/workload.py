"""The benchmarks' shared workload: events, examples, lateseq store states, and the Fat
Row baseline in three forms, built from an oracle that shares no code with lateseq.

Two workloads, generated in-process from a seed:

- **realistic**: power-law users (Pareto history lengths, alpha 1.4, up to 50k events,
  the heaviest users with 10k+) over 30 days, and an example per event on average: a
  request at 90% of events' times (from day 1 on: day 0 has no published version to
  read), each with 1 + Poisson(0.25) examples (the impressions of one ranking request
  share its history), as when every impression or engagement is a training example.
- **sparse**: ``lateseq.datasets.synthetic_events`` over a year with requests at random
  events (``synthetic_requests``): the benchmark's original workload, kept for continuity.

Store states hold the same events and serve the same requests (``build_states``):
compacted with pointers at the latest version; 30 daily commits, never compacted, each
request's pointer against the version online could read (the previous midnight's); the
same with 5% of events arriving 1 h to 2 days late (so committed on a later day and
invisible to some pointers), uncompacted and compacted; and daily commits with tiered
compaction when ``Store.compact`` takes a ``policy``.

A Fat Row is an example that carries its history. ``Histories`` rebuilds each history
from the raw events with numpy and a plain loop (events of the user before the request,
readable online on the request's day, the newest ``max_len``), and ``build_forms`` writes
them in three forms: Parquet with pyarrow's defaults, Parquet in its smallest form
(examples sorted by user then time; the smallest of ``SMALLEST_CANDIDATES`` on a trial
slice, ``smallest_settings``), and an Arrow IPC file that ``read_fat_rows`` reads through
a memory map. ``check_equal`` compares them with lateseq's rebuild, bit for bit.
(``lateseq.cli.fatrow`` keeps the demo's own builder.)

Samples, where every example's Fat Rows would be too big: ``request_sample`` (uniform
requests with all their examples: what to time) and ``user_sample`` (every example of
random users: what the smallest form's bytes are measured on).
"""

from __future__ import annotations

import itertools
import mmap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import lateseq
import lateseq._loader
from lateseq import datasets
from lateseq._derived import DERIVED_DIR

# item ids fit int32 (a million items): both sides hold them so, the narrowest type that
# holds them, as a skeptic's Fat Row would (lateseq's own store narrows any integer)
SCHEMA = lateseq.Schema({"item_id": "int32", "action": "int8", "dwell": "float32"})
COLUMNS = ("item_id", "action", "ts")  # what the benchmarks project (dwell is stored, not read)
BATCH = 1024  # examples per loader batch
DAY = 86_400
START_TS = 1_700_006_400  # a UTC midnight: day d is [START_TS + d * DAY, START_TS + (d + 1) * DAY)
REALISTIC_DAYS = 30
ALL_DAYS = np.iinfo(np.int64).max  # "reads every event": the read day of a pointer at the latest version
TIERED_POLICY = "tiered"  # what ``Store.compact(policy=...)`` is asked for, where it exists

# flat .npy memmaps (no Arrow at all: one array per column, every row's values end to
# end) read 2-15% faster than the IPC file warm, and 1.3-2.4x cold (s26's skeptic): the
# fastest form, timed beside the others in every run
FORMS = ("parquet-default", "parquet-smallest", "arrow-ipc", "flat-npy")
# forms a skeptic also picks, compared once in benchmarks/fatrow_forms.py: compressed IPC
# (about lateseq's bytes), the smallest Parquet's settings over flat event columns
# (no list levels to decode; s21d), and those flat columns as zstd frames of a few loader
# batches each (smaller than any Parquet form, no page or level decoding at all; s34C) or
# LZ4 HC ones (bigger, and faster to read than lateseq at N=256; s35H)
MORE_FORMS = ("arrow-ipc-lz4", "arrow-ipc-zstd", "arrow-ipc-lz4-by-user", "arrow-ipc-zstd-by-user",
              "parquet-flat-by-user", "zstd-frames-by-user", "lz4-frames-by-user")
_IPC_COMPRESSION = {"arrow-ipc": None, "arrow-ipc-lz4": "lz4", "arrow-ipc-zstd": "zstd", "arrow-ipc-lz4-by-user": "lz4",
                    "arrow-ipc-zstd-by-user": "zstd"}
BY_USER = ("parquet-smallest", "arrow-ipc-lz4-by-user", "arrow-ipc-zstd-by-user",  # examples ordered by ``by_user``:
           "parquet-flat-by-user", "zstd-frames-by-user", "lz4-frames-by-user")
# a compressor finds a user's previous history in each row


# ---------------------------------------------------------------- events and requests


@dataclass
class Workload:
    """Events (time order), requests (log order: time) and, for late ingestion, arrivals."""

    name: str
    events: pa.Table  # user_id, ts, item_id, action, dwell
    requests: pa.Table  # user_id, request_ts, label
    arrival: np.ndarray | None = None  # arrival time of each event (realistic only)
    notes: list[str] = field(default_factory=list)

    def lengths(self) -> np.ndarray:
        """Events per user (users with none left out)."""
        counts = np.bincount(self.events.column("user_id").to_numpy())
        return counts[counts > 0]

    def describe(self) -> dict:
        lengths = self.lengths()
        p50, p99 = np.percentile(lengths, [50, 99])
        return {
            "events": self.events.num_rows, "users": len(lengths), "examples": self.requests.num_rows,
            "examples_per_event": round(self.requests.num_rows / max(self.events.num_rows, 1), 3),
            "history_mean": round(float(lengths.mean()), 1), "history_p50": int(p50),
            "history_p99": int(p99), "history_max": int(lengths.max()),
            "users_10k_plus": int((lengths >= 10_000).sum()),
            "days": round(float(np.ptp(self.events.column("ts").to_numpy())) / DAY, 1),
            "late_share": None if self.arrival is None else round(float(np.mean(
                self.arrival != self.events.column("ts").to_numpy())), 4),
            "notes": self.notes,
        }


def loader_reads() -> dict:
    """The read sizes of lateseq's loader (it rebuilds small batches a few in one read), for a results file."""
    return {"read_bytes": lateseq._loader.READ_BYTES, "read_pointers": lateseq._loader.READ_POINTERS}


def day_of(ts: np.ndarray) -> np.ndarray:
    return (np.asarray(ts, np.int64) - START_TS) // DAY


def realistic(users: int, seed: int = 0, min_len: int = 60, max_len: int = 50_000) -> Workload:
    events = realistic_events(users, seed=seed, min_len=min_len, max_len=max_len)
    return Workload("realistic", events, realistic_requests(events, seed=seed),
                    late_arrivals(events.column("ts").to_numpy(), seed=seed),
                    [(f"{users:,} users, Pareto(1.4) history lengths of {min_len:,} to {max_len:,} events over "
                      f"{REALISTIC_DAYS} days; a request at 90% of events (from day 1), 1 + Poisson(0.25) "
                      "examples each; 5% of events arrive 1 h to 2 days late in the late-ingestion states")])


def sparse(users: int, pointers: int, seed: int = 0) -> Workload:
    events = datasets.synthetic_events(users, seed=seed)
    events = events.set_column(events.schema.get_field_index("item_id"), "item_id",
                               events.column("item_id").cast(pa.int32()))  # checked: its ids fit
    return Workload("sparse", events, datasets.synthetic_requests(events, pointers, seed=seed), None,
                    [(f"lateseq.datasets.synthetic_events({users:,}) (lognormal lengths, one year), "
                      f"{pointers:,} requests at random events: the original benchmark")])


def realistic_events(users: int, days: int = REALISTIC_DAYS, seed: int = 0, *, alpha: float = 1.4,
                     min_len: int = 60, max_len: int = 50_000, items: int = 1_000_000) -> pa.Table:
    """Power-law users over ``days``: ``user_id``, ``ts``, ``item_id``, ``action`` (int8), ``dwell``.

    History lengths are Pareto (``alpha``, at least ``min_len``, capped at ``max_len``). A
    user's events come in sessions of ~15 (30% in the same second as the previous one,
    the others ~30 s apart), sessions spread over the whole span, so a heavy user is
    active every day. Items follow a power law. Rows are in time order (ties in
    generation order), as events are ingested.
    """
    rng = np.random.default_rng([seed, 21])
    lengths = np.minimum(np.floor(min_len * (1 + rng.pareto(alpha, users))), max_len).astype(np.int64)
    total = int(lengths.sum())
    span = days * DAY
    first = np.cumsum(lengths) - lengths
    kind = rng.random(total, dtype=np.float32)
    new_session = kind < 1 / 15
    gaps = rng.standard_exponential(total).astype(np.float64)
    between = np.repeat(span / np.maximum(lengths / 15, 1), lengths)  # mean gap before a session
    gaps *= np.where(new_session, between, 30.0)
    gaps[~new_session & (kind < 1 / 15 + 0.3)] = 0
    del kind, new_session, between
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    del gaps
    elapsed -= np.repeat(elapsed[first], lengths)
    duration = elapsed[first + lengths - 1]
    squeeze = np.minimum(1.0, (span - 1) / np.maximum(duration, 1e-9))
    offset = rng.random(users) * np.maximum(span - 1 - duration * squeeze, 0)
    ts = np.floor(elapsed * np.repeat(squeeze, lengths) + np.repeat(offset, lengths)).astype(np.int64)
    np.clip(ts, 0, span - 1, out=ts)  # float rounding must not leave the span
    del elapsed
    ts += START_TS
    ranks = np.exp(rng.random(total) * np.log(items + 1)).astype(np.int64) - 1
    item_id = rng.permutation(items).astype(np.int32)[np.minimum(ranks, items - 1)]
    del ranks
    action_p = np.array([0.62, 0.18, 0.08, 0.05, 0.03, 0.02, 0.012, 0.008])
    action = np.searchsorted(np.cumsum(action_p)[:-1], rng.random(total, dtype=np.float32), side="right")
    dwell = rng.lognormal(2.0, 1.0, total).astype(np.float32)
    order = np.argsort(ts, kind="stable")
    user = np.repeat(np.arange(users, dtype=np.int64), lengths)
    return pa.table({"user_id": user[order], "ts": ts[order], "item_id": item_id[order],
                     "action": action.astype(np.int8)[order], "dwell": dwell[order]})


def realistic_requests(events: pa.Table, seed: int = 0, share: float = 0.9, extra: float = 0.25) -> pa.Table:
    """A request at ``share`` of the events' times (from day 1 on), with 1 + Poisson(``extra``)
    examples each, in time order: ``user_id``, ``request_ts``, ``label`` (int8)."""
    rng = np.random.default_rng([seed, 22])
    ts = events.column("ts").to_numpy()
    rows = np.flatnonzero((rng.random(len(ts)) < share) & (day_of(ts) >= 1))
    copies = 1 + rng.poisson(extra, len(rows))
    label = np.repeat(events.column("action").to_numpy()[rows] > 0, copies)
    firsts = np.cumsum(copies) - copies
    others = np.ones(len(label), bool)
    others[firsts] = False
    label[others] = rng.random(int(others.sum())) < 0.05  # the other impressions of a request
    rows = np.repeat(rows, copies)
    return pa.table({"user_id": events.column("user_id").to_numpy()[rows], "request_ts": ts[rows],
                     "label": label.astype(np.int8)})


def late_arrivals(ts: np.ndarray, seed: int = 0, share: float = 0.05) -> np.ndarray:
    """Arrival times: ``share`` of the events arrive 1 h to 2 days late, the others at once."""
    rng = np.random.default_rng([seed, 23])
    arrival = np.asarray(ts, np.int64).copy()
    late = rng.random(len(arrival)) < share
    arrival[late] += rng.integers(3600, 2 * DAY + 1, int(late.sum()))
    return arrival


# ---------------------------------------------------------------- store states


@dataclass
class State:
    """One store state: a store version to read through and the example log it serves."""

    name: str
    title: str
    path: Path  # the store directory
    version: int  # the version loaders read through
    log: pa.Table  # the example log (pointer columns + label, a row per request, log order), memory-mapped
    visibility: str  # the Fat Row oracle that matches it: "all", "daily" or "daily-late"
    written: int  # durable bytes written while ingesting (every commit and compaction)
    written_cache: int  # decoded copies the writers put in the read cache meanwhile
    days: int  # days of ingestion (for bytes written per day)
    merged_reads: bool = False  # read through merged copies in the read cache
    merge_s: float | None = None  # seconds the reading host spent building those copies

    def open(self) -> lateseq.Store:
        """A fresh handle (its own open segments), at the state's version."""
        return lateseq.open(self.path, self.version, merged_reads=self.merged_reads)


def merged_twin(state: State) -> State:
    """``state`` read with ``merged_reads``: its merged copies built (and timed) here, as a
    training host would before its first epoch (``Store.prefault``)."""
    twin = replace(state, name=f"{state.name}+merged",
                   title=f"{state.title}; read through merged copies in the read cache (merged_reads=True)",
                   merged_reads=True)
    start = time.perf_counter()
    twin.open().prefault(list(SCHEMA.columns))
    return replace(twin, merge_s=time.perf_counter() - start)


def build_states(work: Workload, root: Path, tiered: bool = False,
                 progress: Callable[[str], None] = print) -> list[State]:
    """Every store state of ``work`` under ``root``: the sparse workload has one (4 commits,
    compacted, pointers at the latest version), the realistic one four, five with
    ``tiered`` (see ``tiered_compaction``)."""
    ts = work.events.column("ts").to_numpy()
    if work.arrival is None:
        bounds = np.quantile(ts, [0.25, 0.5, 0.75]).astype(np.int64)  # a tie never spans two slices
        store, _ = _ingest(root / "store", work.events, np.searchsorted(bounds, ts, side="right"))
        store = store.compact()
        days = max(1, round(float(np.ptp(ts)) / DAY))
        return [State("compacted-latest", "4 commits + compaction; pointers at the latest version", store.path,
                      store.version, _log(store, work.requests, root / "logs" / "latest.arrow"), "all",
                      *_written(store), days)]

    day = day_of(work.requests.column("request_ts").to_numpy())  # a request on day d reads read[d - 1]
    progress("ingest: daily commits, then a compaction")
    daily, read = _ingest(root / "daily", work.events, day_of(ts))
    daily_log = _log(daily, work.requests, root / "logs" / "daily.arrow", np.asarray(read)[day - 1])
    written = _written(daily)
    latest = daily.compact()
    states = [
        State("compacted-latest", f"{len(read)} daily commits + compaction; pointers at the latest version",
              latest.path, latest.version, _log(latest, work.requests, root / "logs" / "latest.arrow"), "all",
              *_written(latest), len(read)),
        State(f"daily-{len(read)}", f"{len(read)} daily commits, never compacted; pointers against the version "
              "online read", daily.path, daily.version, daily_log, "daily", *written, len(read)),
    ]
    progress("ingest: 5% late events, daily commits by arrival, then a compaction")
    late, read = _ingest(root / "late", work.events, day_of(work.arrival))
    late_log = _log(late, work.requests, root / "logs" / "late.arrow", np.asarray(read)[day - 1])
    states.append(State(f"late-daily-{len(read)}", f"5% late events, {len(read)} daily commits by arrival, never "
                        "compacted; pointers against the version online read", late.path, late.version, late_log,
                        "daily-late", *_written(late), len(read)))
    compacted = late.compact()
    states.append(State("late-compacted", "the same, compacted once at the end; the same pointers", compacted.path,
                        compacted.version, late_log, "daily-late", *_written(compacted), len(read)))
    if tiered:
        progress(f"ingest: 5% late events, daily commits, compact(policy={TIERED_POLICY!r}) after each")
        store, read = _ingest(root / "tiered", work.events, day_of(work.arrival),
                              lambda store: store.compact(policy=TIERED_POLICY))
        states.append(State("late-tiered", f"5% late events, {len(read)} daily commits, each followed by "
                            f"compact(policy={TIERED_POLICY!r}); pointers against the version online read",
                            store.path, store.version,
                            _log(store, work.requests, root / "logs" / "tiered.arrow", np.asarray(read)[day - 1]),
                            "daily-late", *_written(store), len(read)))
    progress("merged copies of the states of many segments, as a reading host builds them")
    return states + [merged_twin(s) for s in states if len(s.open().segment_infos) > SCHEMA.partitions]


def tiered_compaction(scratch: Path) -> str | None:
    """Why this lateseq cannot do daily commits + tiered compaction (tried on a scratch
    store at ``scratch``), or None when it can."""
    store = lateseq.create(scratch, SCHEMA)
    store = store.commit(pa.table({"user_id": [1], "ts": [START_TS], "item_id": [1], "action": [0], "dwell": [0.0]}))
    try:
        store.compact(policy=TIERED_POLICY)
    except TypeError as exc:  # no policy parameter
        return f"Store.compact() takes no policy in this lateseq ({exc})"
    except ValueError as exc:  # a policy parameter, but not this policy (SchemaError is a ValueError)
        return f"Store.compact(policy={TIERED_POLICY!r}) is refused: {exc}"
    return None


def _ingest(path: Path, events: pa.Table, day: np.ndarray,
            after_commit: Callable[[lateseq.Store], lateseq.Store | None] | None = None,
            ) -> tuple[lateseq.Store, list[int]]:
    """A new store holding the events of each day (``day`` per event, from 0) in its own
    commit, ``after_commit`` run after each; returns it and the version published after
    each day (what online reads the next day)."""
    if day.min() < 0:
        raise ValueError("events before day 0")
    store = lateseq.create(path, SCHEMA)
    order = np.argsort(day, kind="stable")  # the rows of a day stay in time order
    bounds = np.searchsorted(day[order], np.arange(int(day.max()) + 2))
    read = []
    for d in range(int(day.max()) + 1):
        rows = order[bounds[d]:bounds[d + 1]]
        if len(rows):
            store = store.commit(events.take(pa.array(rows)))
        if after_commit is not None:
            store = after_commit(store) or store
        read.append(store.version)
    return store, read


def _written(store: lateseq.Store) -> tuple[int, int]:
    """Bytes of every segment file written so far (nothing is cleaned up): durable, and
    the decoded copies writers put in the read cache."""
    return _du(store.path / "segments"), _du(store.cache_dir, ".arrow")


def _du(path: Path, suffix: str = "") -> int:
    return sum(p.stat().st_size for p in Path(path).rglob(f"*{suffix}") if p.is_file())


def _log(store: lateseq.Store, requests: pa.Table, path: Path, versions: np.ndarray | None = None,
         chunk: int = 1 << 21) -> pa.Table:
    """The example log: each request's pointer against ``versions[i]`` (the latest if
    None), logged in runs of one version (requests are in time order) of at most
    ``chunk``, written to ``path`` (Arrow IPC) and returned memory-mapped from it, so
    several logs of many examples fit in memory."""
    versions = np.full(requests.num_rows, store.version) if versions is None else versions
    cuts = sorted({0, requests.num_rows, *(np.flatnonzero(np.diff(versions)) + 1).tolist(),
                   *range(0, requests.num_rows, chunk)})
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for lo, hi in itertools.pairwise(cuts):
        part = lateseq.log_examples(store.checkout(int(versions[lo])), requests.slice(lo, hi - lo))
        writer = writer or pa.ipc.new_file(path, part.schema)
        writer.write_table(part)
    writer.close()
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def read_days(visibility: str, requests: pa.Table) -> np.ndarray:
    """The day whose readable events each request sees (``ALL_DAYS`` for the latest version)."""
    if visibility == "all":
        return np.full(requests.num_rows, ALL_DAYS, np.int64)
    return day_of(requests.column("request_ts").to_numpy())


def readable_days(work: Workload, visibility: str) -> np.ndarray:
    """The first day online can read each event: the day after it arrives (0 for "all")."""
    if visibility == "all":
        return np.zeros(work.events.num_rows, np.int64)
    arrival = work.events.column("ts").to_numpy() if visibility == "daily" else work.arrival
    return day_of(arrival) + 1


# ---------------------------------------------------------------- the Fat Row oracle


class Histories:
    """Every user's events in history order, with the day each became readable online.

    History order is (ts, readable day, row): lateseq's order within a user, (ts, commit,
    row in the commit), when each day is one commit. A request on day ``d`` sees the
    user's events with ``ts < request_ts`` and readable day ``<= d``. Independent of
    lateseq: one sort, one binary search and a backward walk per request.
    """

    def __init__(self, events: pa.Table, readable: np.ndarray, columns: tuple[str, ...] = COLUMNS):
        user = events.column("user_id").to_numpy()
        ts = events.column("ts").to_numpy()
        order = np.lexsort((readable, ts, user))
        self.ts = ts[order]
        self.readable = np.ascontiguousarray(readable[order], np.int64)
        self.users, starts = np.unique(user[order], return_index=True)
        self.bounds = np.append(starts, len(order)).astype(np.int64)
        self.columns = {name: events.column(name).to_numpy()[order] for name in columns}

    def windows(self, user: np.ndarray, request_ts: np.ndarray, read_day: np.ndarray,
                max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, rows): each request's newest ``max_len`` visible events, oldest first."""
        slot = np.minimum(np.searchsorted(self.users, user), len(self.users) - 1)
        found = self.users[slot] == user
        lo = np.where(found, self.bounds[slot], 0)
        hi = np.where(found, self.bounds[slot + 1], 0)
        offsets = np.zeros(len(user) + 1, np.int64)
        request_ts, read_day = np.asarray(request_ts, np.int64), np.asarray(read_day, np.int64)
        _walk(lo, hi, self.ts, self.readable, request_ts, read_day, max_len, offsets[1:], np.empty(0, np.int64))
        np.cumsum(offsets, out=offsets)
        rows = np.empty(int(offsets[-1]), np.int64)
        _walk(lo, hi, self.ts, self.readable, request_ts, read_day, max_len, offsets, rows)
        return offsets, rows

    def lengths(self, user: np.ndarray, request_ts: np.ndarray, read_day: np.ndarray, max_len: int) -> np.ndarray:
        return np.diff(self.windows(user, request_ts, read_day, max_len)[0])


@numba.njit(cache=True)
def _walk(lo, hi, ts, readable, request_ts, read_day, max_len, offsets, rows):  # pragma: no cover - jitted
    """Walks back from each request's cut keeping visible events. Without ``rows`` it
    writes each count to ``offsets[i]``; with them, the rows ending at ``offsets[i + 1]``."""
    fill = len(rows) > 0
    for i in range(len(lo)):
        j = lo[i] + np.searchsorted(ts[lo[i]:hi[i]], request_ts[i])  # first event not before the request
        kept = 0
        while j > lo[i] and kept < max_len:
            j -= 1
            if readable[j] <= read_day[i]:
                if fill:
                    rows[offsets[i + 1] - 1 - kept] = j
                kept += 1
        if not fill:
            offsets[i] = kept


# ---------------------------------------------------------------- the events table you would build yourself


class EventsTable:
    """The baseline a skeptic writes in an afternoon instead of lateseq (the brief's reference
    design): every event once, sorted by (user, time), in one uncompressed Arrow IPC file
    read through a memory map; a user index; a numba kernel that copies each example's
    newest N events. It has no versions, late events or checks: exact for pointers into a
    store that saw no late event, read at the version they name (the compacted-latest
    state), nothing verified. It reads the same example log as lateseq (its ``user_id``
    and ``uih_length``), so both pay that read.

    In its strongest form (strangers' reviews: each version was slower than it need be,
    1.3-1.5x, then about 2x): each integer column stored narrow, as offsets from its
    smallest value in the smallest unsigned type that holds them (what lateseq stores),
    widened as it is copied by a loop over slices that LLVM vectorizes; the user index
    stored beside the events (the users and where each begins: a reader maps it, where
    rebuilding it read a user id per event); and no search for a request's cut: the log
    records how many events the request saw (the pointer's ``uih_length``, what an online
    service would log), so an example's events end that many rows into its user's."""

    def __init__(self, events: pa.Table, path: Path, columns: tuple[str, ...] = COLUMNS):
        if len(columns) != 3:  # its copy kernel takes three, fused
            raise ValueError(f"EventsTable copies three columns, not {columns}")
        user = events.column("user_id").to_numpy()
        ts = events.column("ts").to_numpy()
        order = np.lexsort((ts, user))  # stable: a tie keeps input order, its commit order here (a tie shares a day)
        stored, self.bases, self.dtypes = {}, {}, {}
        for name in columns:
            values = events.column(name).to_numpy()[order]
            stored[name], self.bases[name] = _narrowed(values)
            self.dtypes[name] = values.dtype
        users, starts = np.unique(user[order], return_index=True)
        index = pa.table({"user_id": users, "start": np.append(starts, len(order)).astype(np.int64)[:len(users)]})
        table = pa.table(stored)
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table)
        self.index_path = path.with_name(path.name + ".index")
        with pa.ipc.new_file(self.index_path, index.schema) as writer:
            writer.write_table(index)
        self.path, self.columns, self.events = path, columns, len(order)
        self.bytes = path.stat().st_size + self.index_path.stat().st_size
        self.mapped: tuple | None = None

    def _open(self) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """(user ids -> their index rows, -1 for none; each user's first row, then the end;
        {column: stored values}) over new maps of the files. Dense ids are looked up in a
        table of slots (lateseq's own index does so), others by a binary search."""
        batch = pa.ipc.open_file(pa.memory_map(str(self.path))).get_batch(0)
        index = pa.ipc.open_file(pa.memory_map(str(self.index_path))).get_batch(0)
        users = index.column("user_id").to_numpy()
        starts = np.append(index.column("start").to_numpy(), self.events)
        values = {name: batch.column(name).to_numpy() for name in self.columns}
        if not len(users):
            return lambda user: np.full(len(user), -1), starts, values
        low, span = int(users[0]), int(users[-1]) - int(users[0]) + 1
        if span <= 4 * len(users):
            slots = np.full(span, -1, np.int64)
            slots[users - low] = np.arange(len(users))
            return lambda user: _slots_of(user, low, slots), starts, values

        def search(user: np.ndarray) -> np.ndarray:
            slot = np.minimum(np.searchsorted(users, user), len(users) - 1)
            return np.where(users[slot] == user, slot, -1)
        return search, starts, values

    def batches(self, log: Path, max_len: int, reopen: bool = False) -> Iterator[tuple[np.ndarray, dict]]:
        """(offsets, {column: values}) per batch of ``log``, as ``lateseq_batches`` reads it,
        a batch a read (its best: given lateseq's reads of 4 batches at N=256 it ran 6-9%
        slower, a reviewer's measurement, s39C)."""
        if reopen:
            find, bounds, values = self._open()
        else:
            find, bounds, values = self.mapped = self.mapped or self._open()
        for batch in pq.ParquetFile(log).iter_batches(BATCH, columns=["user_id", "uih_length"], use_threads=False):
            offsets, start = _table_rows(find(batch.column(0).to_numpy()), batch.column(1).to_numpy(), bounds,
                                         max_len)
            out = {name: np.empty(int(offsets[-1]), self.dtypes[name]) for name in values}
            _table_copy(*[part for name, column in values.items()
                          for part in (column, out[name].dtype.type(self.bases[name]), out[name])], start, offsets)
            yield offsets, out


def _narrowed(values: np.ndarray) -> tuple[np.ndarray, int]:
    """(values as offsets from their smallest in the narrowest unsigned type that holds
    them, that smallest); other columns as they are, with base 0."""
    if values.dtype.kind not in "iu" or not len(values):
        return values, 0
    low, high = int(values.min()), int(values.max())
    for narrow in (np.uint8, np.uint16, np.uint32):
        if high - low <= np.iinfo(narrow).max:
            return (values.astype(np.int64) - low).astype(narrow), low
    return values, 0


@numba.njit(cache=True)
def _slots_of(user, low, slots):  # pragma: no cover - jitted
    """Each user's index row (-1: none) from a table of slots, one pass (numpy's where,
    clip and take were most of a batch at N=256: a stranger's fused reader, s35H)."""
    out = np.empty(len(user), np.int64)
    for i in range(len(user)):
        u = user[i] - low
        out[i] = slots[u] if 0 <= u < len(slots) else -1
    return out


@numba.njit(cache=True)
def _table_rows(slot, seen, bounds, max_len):  # pragma: no cover - jitted
    """Each example's offsets in the batch and first row in the table: its newest
    ``max_len`` of the ``seen`` events its user's rows begin with."""
    offsets = np.zeros(len(slot) + 1, np.int64)
    start = np.zeros(len(slot), np.int64)
    for i in range(len(slot)):
        n = min(np.int64(seen[i]), max_len) if slot[i] >= 0 else 0
        if slot[i] >= 0:
            start[i] = bounds[slot[i]] + np.int64(seen[i]) - n
        offsets[i + 1] = offsets[i] + n
    return offsets, start


@numba.njit(cache=True)
def _table_copy(c0, b0, o0, c1, b1, o1, c2, b2, o2, start, offsets):  # pragma: no cover - jitted
    """Each example's rows of the three columns (values, base, out), widened: loops over two
    slices, which LLVM vectorizes (slice assignment, the first version, was not); every
    column in one call, example by example (a call per column with numpy's lookup between
    cost 1.1-1.5x, a stranger's fused reader: s35H)."""
    for i in range(len(start)):
        d, a = offsets[i], start[i]
        n = offsets[i + 1] - d
        s0, t0 = c0[a:a + n], o0[d:d + n]
        for k in range(n):
            t0[k] = b0 + s0[k]
        s1, t1 = c1[a:a + n], o1[d:d + n]
        for k in range(n):
            t1[k] = b1 + s1[k]
        s2, t2 = c2[a:a + n], o2[d:d + n]
        for k in range(n):
            t2[k] = b2 + s2[k]


# ---------------------------------------------------------------- Fat Row forms

# The "smallest" Parquet candidates (all zstd; examples sorted by user then time).
# Sorted Fat Rows repeat most of the previous row's history, which zstd finds only
# where the encoding keeps repeated values byte-aligned (plain), and better in larger
# pages (each page starts a new zstd frame). Level 9: level 15 saves ~5% more at 10x
# the write time; level 3 leaves ~50% more.
SMALLEST_CANDIDATES: dict[str, dict] = {
    "zstd-9, dictionary": {"compression": "zstd", "compression_level": 9},
    "zstd-9, plain": {"compression": "zstd", "compression_level": 9, "use_dictionary": False},
    "zstd-9, plain, 8 MB pages": {"compression": "zstd", "compression_level": 9, "use_dictionary": False,
                                  "data_page_size": 8 << 20},
    "zstd-9, plain, 32 MB pages": {"compression": "zstd", "compression_level": 9, "use_dictionary": False,
                                   "data_page_size": 32 << 20},
    "zstd-9, delta ints, byte-stream-split int8": {
        "compression": "zstd", "compression_level": 9, "use_dictionary": False,
        "column_encoding": {"item_id.list.element": "DELTA_BINARY_PACKED", "ts.list.element": "DELTA_BINARY_PACKED",
                            "action.list.element": "BYTE_STREAM_SPLIT", "user_id": "DELTA_BINARY_PACKED",
                            "request_ts": "DELTA_BINARY_PACKED"}},
}
_TRIAL_EVENTS = 4 << 20  # events in the slice the candidates are tried on
_CHUNK_EVENTS = 8 << 20  # events per chunk built at once (~140 MB; a row group of the Parquet forms)


@dataclass
class FatRowFile:
    form: str
    path: Path
    rows: np.ndarray  # the example-log rows it holds, in file order
    bytes: int
    events: int
    columns: tuple[str, ...] = COLUMNS
    settings: str = ""  # for the smallest form: the candidate chosen
    candidates: dict[str, int] = field(default_factory=dict)  # trial bytes of every candidate
    mapped: list | None = field(default=None, repr=False, compare=False)  # IPC: see read_fat_rows


_FRAME_TYPES = {"item_id": np.int32, "action": np.int8, "ts": np.int64, "dwell": np.float32}


def fat_row_schema(columns: tuple[str, ...] = COLUMNS) -> pa.Schema:
    types = {name: pa.from_numpy_dtype(dtype) for name, dtype in _FRAME_TYPES.items()}
    return pa.schema([("user_id", pa.int64()), ("request_ts", pa.int64()), ("label", pa.int8()),
                      *[(name, pa.list_(types[name])) for name in columns]])


def fat_row_chunks(histories: Histories, requests: pa.Table, read_day: np.ndarray, rows: np.ndarray,
                   max_len: int, chunk_events: int = _CHUNK_EVENTS) -> Iterator[pa.Table]:
    """Fat Rows of ``requests[rows]`` in that order: tables of whole loader batches, each
    with about ``chunk_events`` events."""
    user = requests.column("user_id").to_numpy()[rows]
    request_ts = requests.column("request_ts").to_numpy()[rows]
    day = read_day[rows]
    per_batch = np.add.reduceat(histories.lengths(user, request_ts, day, max_len),
                                np.arange(0, len(rows), BATCH)) if len(rows) else np.zeros(0, np.int64)
    # cut into chunks of whole batches, about chunk_events events each
    starts = [0]
    total = 0
    for b, events in enumerate(per_batch):
        if total and total + events > chunk_events:
            starts.append(b * BATCH)
            total = 0
        total += events
    label = requests.column("label").to_numpy()[rows]
    schema = fat_row_schema(tuple(histories.columns))
    for lo, hi in zip(starts, [*starts[1:], len(rows)], strict=True):
        offsets, where = histories.windows(user[lo:hi], request_ts[lo:hi], day[lo:hi], max_len)
        arrays = [pa.array(user[lo:hi]), pa.array(request_ts[lo:hi]), pa.array(label[lo:hi])]
        list_offsets = pa.array(offsets.astype(np.int32 if offsets[-1] < 2**31 else np.int64))
        arrays += [pa.ListArray.from_arrays(list_offsets, pa.array(values[where]))
                   for values in histories.columns.values()]
        yield pa.Table.from_arrays(arrays, schema=schema)


def write_fat_rows(form: str, path: Path, chunks: Iterator[pa.Table], rows: np.ndarray,
                   **parquet_options) -> FatRowFile:
    """Writes Fat Row tables (one schema) in ``form``; IPC files get one record batch per
    loader batch; ``flat-npy`` is a folder of one .npy per column (every row's values end
    to end, example columns included) and ``offsets.npy`` (int64, from 0)."""
    if form in _FLAT_FORMS:
        return _write_flat(form, path, chunks, rows)
    writer = schema = None
    events = 0
    for chunk in chunks:
        if writer is None:
            schema = chunk.schema
            writer = (pa.ipc.new_file(path, chunk.schema,
                                      options=pa.ipc.IpcWriteOptions(compression=_IPC_COMPRESSION[form]))
                      if form in _IPC_COMPRESSION else pq.ParquetWriter(path, chunk.schema, **parquet_options))
        if form in _IPC_COMPRESSION:
            writer.write_table(chunk, max_chunksize=BATCH)
        else:
            writer.write_table(chunk, row_group_size=chunk.num_rows)
        events += _events(chunk)
    if writer is None:
        raise ValueError("no Fat Rows to write")
    writer.close()
    return FatRowFile(form, path, rows, path.stat().st_size, events, tuple(schema.names[3:]))


def _events(chunk: pa.Table) -> int:
    return sum(len(c.flatten()) for c in chunk.column(chunk.schema.names[3]).chunks)


FLAT_PARQUET = "zstd-9, plain, 32 MB pages"  # the smallest form's usual choice (SMALLEST_CANDIDATES)
_FLAT_GROUP_EVENTS = 8 << 20  # a row group: whole loader batches, at least this many events
# a frame holds one column of this many loader batches: 4-16 wrote within 3% of one
# another at N=256 and 4096 (s34C), 1 2% more and read 6% slower (s35), more only costs a
# reader memory; each codec at level 9 (zstd's as the Parquet forms'; LZ4 HC's, s35H's pick)
_FRAME_BATCHES = 8
_FRAME_CODECS = {"zstd-frames-by-user": "zstd", "lz4-frames-by-user": "lz4_raw"}
_FRAME_LEVEL = 9
_FLAT_FORMS = ("flat-npy", "parquet-flat-by-user", *_FRAME_CODECS)


def _write_flat(form: str, folder: Path, chunks: Iterator[pa.Table], rows: np.ndarray) -> FatRowFile:
    """Every row's values end to end, and ``offsets.npy`` (int64, from 0): one .npy per
    column (``flat-npy``), or (``parquet-flat-by-user``) the history columns in
    ``events.parquet``, a row group per run of whole loader batches, and the example
    columns in ``examples.parquet``, both written with ``FLAT_PARQUET``'s settings, or
    (``zstd-frames-by-user``, ``lz4-frames-by-user``) each column of every
    ``_FRAME_BATCHES`` loader batches, the rows' lengths and the example columns
    included, one frame of the form's codec in ``frames.bin``,
    with ``frames.npy`` (per group: first row, last row, then each frame's start and size)."""
    parts: dict[str, list[np.ndarray]] = {}
    lengths = []
    for chunk in chunks:
        lists = chunk.schema.names[3:]
        lengths.append(np.diff(chunk.column(lists[0]).combine_chunks().offsets.to_numpy()))
        for name in chunk.schema.names:
            column = chunk.column(name).combine_chunks()
            parts.setdefault(name, []).append((column.flatten() if name in lists else column).to_numpy())
    if not lengths:
        raise ValueError("no Fat Rows to write")
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    np.save(folder / "offsets.npy", offsets)
    columns = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    if form == "flat-npy":
        for name, values in columns.items():
            np.save(folder / f"{name}.npy", values)
    elif form in _FRAME_CODECS:
        _write_frames(folder, offsets, columns, lists, pa.Codec(_FRAME_CODECS[form], compression_level=_FRAME_LEVEL))
    else:
        options = SMALLEST_CANDIDATES[FLAT_PARQUET]
        pq.write_table(pa.table({name: columns[name] for name in columns if name not in lists}),
                       folder / "examples.parquet", **options)
        with pq.ParquetWriter(folder / "events.parquet", pa.schema(
                [(name, pa.from_numpy_dtype(columns[name].dtype)) for name in lists]), **options) as writer:
            for first, last in _flat_groups(offsets):
                writer.write_table(pa.table({name: columns[name][offsets[first]:offsets[last]] for name in lists}),
                                   row_group_size=int(offsets[last] - offsets[first]))
    settings = {"parquet-flat-by-user": FLAT_PARQUET,
                **{frames: f"{codec}-{_FRAME_LEVEL}, {_FRAME_BATCHES} batches a frame"
                   for frames, codec in _FRAME_CODECS.items()}}.get(form, "")
    return FatRowFile(form, folder, rows, sum(p.stat().st_size for p in folder.iterdir()), int(offsets[-1]),
                      tuple(lists), settings)


def _write_frames(folder: Path, offsets: np.ndarray, columns: dict[str, np.ndarray], lists: list[str],
                  codec: pa.Codec) -> None:
    (folder / "offsets.npy").unlink()  # the lengths travel in the frames
    index = []
    with open(folder / "frames.bin", "wb") as out:
        for first in range(0, len(offsets) - 1, _FRAME_BATCHES * BATCH):
            last = min(first + _FRAME_BATCHES * BATCH, len(offsets) - 1)
            parts = [np.diff(offsets[first:last + 1]).astype(np.int32),
                     *(columns[name][offsets[first]:offsets[last]] for name in lists),
                     *(values[first:last] for name, values in columns.items() if name not in lists)]
            entry = [first, last]
            for part in parts:
                frame = codec.compress(np.ascontiguousarray(part), asbytes=True)
                entry += [out.tell(), len(frame)]
                out.write(frame)
            index.append(entry)
    np.save(folder / "frames.npy", np.array(index, np.int64))


def _flat_groups(offsets: np.ndarray) -> list[tuple[int, int]]:
    """Row groups of a flat Parquet Fat Row, as (first, last) example: whole loader batches."""
    groups, first = [], 0
    for end in [*range(BATCH, len(offsets) - 1, BATCH), len(offsets) - 1]:
        if offsets[end] - offsets[first] >= _FLAT_GROUP_EVENTS or end == len(offsets) - 1:
            groups.append((first, end))
            first = end
    return groups


def by_user(requests: pa.Table, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by user, then request time (ties keep log order): the smallest form's order."""
    user, ts = requests.column("user_id").to_numpy()[rows], requests.column("request_ts").to_numpy()[rows]
    return rows[np.lexsort((ts, user))]


def smallest_settings(histories: Histories, requests: pa.Table, read_day: np.ndarray, rows: np.ndarray,
                      max_len: int) -> tuple[str, dict[str, int]]:
    """The ``SMALLEST_CANDIDATES`` entry that writes the first slice of ``rows`` (ordered
    by user) smallest, and the bytes of each candidate on that slice."""
    trial = next(fat_row_chunks(histories, requests, read_day, by_user(requests, rows), max_len, _TRIAL_EVENTS))
    candidates = {}
    for name, options in SMALLEST_CANDIDATES.items():
        sink = pa.BufferOutputStream()
        pq.write_table(trial, sink, **options)
        candidates[name] = sink.getvalue().size
    return min(candidates, key=candidates.get), candidates


def build_forms(histories: Histories, requests: pa.Table, read_day: np.ndarray, rows: np.ndarray,
                max_len: int, folder: Path, tag: str, smallest: str,
                forms: tuple[str, ...] = FORMS) -> dict[str, FatRowFile]:
    """Fat Row files of ``requests[rows]`` under ``folder``: every form in log order but
    those of ``BY_USER``, ordered by user (the smallest Parquet form with the
    ``SMALLEST_CANDIDATES`` entry named ``smallest``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for form in forms:
        order = by_user(requests, rows) if form in BY_USER else rows
        options = SMALLEST_CANDIDATES[smallest] if form == "parquet-smallest" else {}
        suffix = "" if form in _FLAT_FORMS else ".arrow" if form in _IPC_COMPRESSION else ".parquet"
        path = folder / f"{tag}-{form}{suffix}"
        chunks = fat_row_chunks(histories, requests, read_day, order, max_len)
        out[form] = write_fat_rows(form, path, chunks, order, **options)
    if "parquet-smallest" in out:
        out["parquet-smallest"].settings = smallest
    return out


def read_fat_rows(file: FatRowFile, reopen: bool = False) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """A loader's read of a Fat Row file: (offsets from 0, {column: values}) per batch of 1024.

    Parquet batches are decoded into fresh buffers. The memory-mapped IPC file is read
    the fastest way we know (a skeptic's review found the per-batch Arrow work of
    ``get_batch`` and ``to_numpy`` cost 1.2-2.5x at N=256): mapped once and kept, as
    lateseq's handle is (``reopen``: mapped anew, for a cold pass), each record batch's
    columns taken as numpy views once; a batch then costs its offsets and one copy per
    column out of the map (what a loader hands on must not pin the map), into arrays
    reused batch after batch (``Outputs``), as lateseq's are.
    """
    if file.form == "flat-npy":
        yield from _flat_batches(file, reopen)
        return
    if file.form == "parquet-flat-by-user":
        yield from _flat_parquet_batches(file)
        return
    if file.form in _FRAME_CODECS:
        yield from _frame_batches(file)
        return
    if file.form != "arrow-ipc":
        for batch in record_batches(file, file.columns):
            yield _jagged(batch, file.columns)
        return
    if reopen:  # each batch viewed as it comes: viewing all first read the whole cold file before a copy
        mapped = ipc_views(file.path, file.columns, lazily=True)
    else:
        mapped = file.mapped = file.mapped or ipc_views(file.path, file.columns)
    copy = Outputs().copied_out
    for offsets, values, _ in mapped:
        yield copy(offsets, values)


def _flat_batches(file: FatRowFile, reopen: bool) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The ``flat-npy`` form as mapped plain arrays (no memmap subclass per slice), kept
    like the IPC form's views; a batch is a slice of the offsets and a copy per column."""
    mapped = None if reopen else file.mapped
    if mapped is None:
        mapped = [np.asarray(np.load(file.path / "offsets.npy", mmap_mode="r")),
                  {name: np.asarray(np.load(file.path / f"{name}.npy", mmap_mode="r")) for name in file.columns}]
        if not reopen:
            file.mapped = mapped
    offsets, values = mapped
    copy = Outputs().copied_out
    for lo in range(0, len(offsets) - 1, BATCH):
        yield copy(offsets[lo:lo + BATCH + 1], values)


def _flat_parquet_batches(file: FatRowFile) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The ``parquet-flat-by-user`` form: each row group decoded whole (its columns as
    numpy), then a batch is a slice of the offsets and a copy per column."""
    offsets = np.load(file.path / "offsets.npy")
    events = pq.ParquetFile(file.path / "events.parquet")
    copy = Outputs().copied_out
    for group, (first, last) in enumerate(_flat_groups(offsets)):
        table = events.read_row_group(group, columns=list(file.columns), use_threads=False)
        values = {name: table.column(name).combine_chunks().to_numpy() for name in file.columns}
        local = offsets[first:last + 1] - offsets[first]
        for lo in range(0, last - first, BATCH):
            yield copy(local[lo:lo + BATCH + 1], values)


def _frame_batches(file: FatRowFile) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """A frames form (``_FRAME_CODECS``): each group's lengths and history columns
    decompressed from the mapped file (the example columns left alone, as Parquet's
    column pruning would), then a batch is a slice of the offsets and a copy per column."""
    codec = pa.Codec(_FRAME_CODECS[file.form])
    index = np.load(file.path / "frames.npy")
    itemsizes = [np.dtype(_FRAME_TYPES[name]).itemsize for name in file.columns]
    with pa.memory_map(str(file.path / "frames.bin")) as source:
        for first, last, *frames in index.tolist():
            rows = last - first
            lengths = np.frombuffer(codec.decompress(source.read_at(frames[1], frames[0]), rows * 4), np.int32)
            offsets = np.zeros(rows + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            events = int(offsets[-1])
            values = {name: np.frombuffer(codec.decompress(source.read_at(frames[2 * i + 3], frames[2 * i + 2]),
                                                           events * size), _FRAME_TYPES[name])
                      for i, (name, size) in enumerate(zip(file.columns, itemsizes, strict=True))}
            for lo in range(0, rows, BATCH):  # views: the buffers are this group's own, fresh (nothing to copy)
                first_event, last_event = int(offsets[lo]), int(offsets[min(lo + BATCH, rows)])
                yield (offsets[lo:lo + BATCH + 1] - first_event,
                       {name: v[first_event:last_event] for name, v in values.items()})


def ipc_views(path: Path, columns: tuple[str, ...], flat: tuple[str, ...] = (), random_access: bool = False,
              lazily: bool = False) -> list[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each record batch of a memory-mapped Fat Row IPC file as (list offsets, {list
    column: values}, {``flat`` column: values}), zero-copy numpy views into the map (which
    they keep open). ``random_access``: the map is advised ``MADV_RANDOM``, so a fault
    reads its page and no readahead (the fewest pages for a reader of each row's last N).
    ``lazily``: an iterator viewing each batch as it is reached (a cold pass's: each
    batch's header faults in, with readahead, the pages around it)."""
    views = _ipc_views(path, columns, flat, random_access)
    return views if lazily else list(views)


def _ipc_views(path: Path, columns: tuple[str, ...], flat: tuple[str, ...],
               random_access: bool) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    if random_access:
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        mapped.madvise(mmap.MADV_RANDOM)
        source = pa.BufferReader(pa.py_buffer(mapped))
    else:
        source = pa.memory_map(str(path))
    reader = pa.ipc.open_file(source)
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        lists = [batch.column(name) for name in columns]
        yield (lists[0].offsets.to_numpy(), {name: c.values.to_numpy() for name, c in zip(columns, lists, strict=True)},
               {name: batch.column(name).to_numpy() for name in flat})


def copied_out(offsets: np.ndarray, values: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One batch out of the map: its offsets from 0 and a copy of each column's values,
    in fresh memory (a loader whose batches cross into other memory next)."""
    first, last = int(offsets[0]), int(offsets[-1])
    out = offsets.astype(np.int64)
    out -= first
    return out, {name: v[first:last].copy() for name, v in values.items()}


class Outputs:
    """Output arrays reused batch after batch, as lateseq's loader reuses its outputs:
    fresh memory costs a fault and a zeroing per page, and comes cold into the caches
    (1.1-1.2x of a mapped Fat Row's pass, up to 3.5x in a new process, s48D). Each batch
    (``next_batch``) takes its arrays (``empty``) from the next of ``depth`` slots: the
    last ``depth - 1`` batches stay intact while the next is made."""

    def __init__(self, depth: int = 4) -> None:
        self._slots: list[dict[str, np.ndarray]] = [{} for _ in range(depth)]
        self._turn = 0

    def next_batch(self) -> None:
        self._turn = (self._turn + 1) % len(self._slots)

    def empty(self, key: str, size: int, dtype: np.dtype) -> np.ndarray:
        slot = self._slots[self._turn]
        held = slot.get(key)
        if held is None or held.dtype != dtype or len(held) < size:
            held = slot[key] = np.empty(size + size // 4, dtype)  # batches differ in size: room for the next
        return held[:size]

    def copied_out(self, offsets: np.ndarray, values: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``copied_out`` into this batch's arrays."""
        self.next_batch()
        first, last = int(offsets[0]), int(offsets[-1])
        out = self.empty("offsets", len(offsets), np.dtype(np.int64))
        np.subtract(offsets, first, out=out, casting="unsafe")
        copied = {}
        for name, v in values.items():
            copied[name] = self.empty(name, last - first, v.dtype)
            np.copyto(copied[name], v[first:last])
        return out, copied


def record_batches(file: FatRowFile, columns: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    """A Fat Row file's batches of 1024 examples: memory-mapped IPC record batches (every
    column a zero-copy view into the map: a reader touches only the buffers it uses), or
    Parquet batches with only ``columns`` read and decoded (column pruning)."""
    if file.form in _IPC_COMPRESSION:  # compressed: each batch decompressed into its own buffers
        with pa.memory_map(str(file.path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
    else:
        # one thread: Arrow's pool only adds work on one core (1.1-1.7x CPU on these batches)
        yield from pq.ParquetFile(file.path).iter_batches(batch_size=BATCH, columns=list(columns), use_threads=False)


def _jagged(batch: pa.RecordBatch, columns: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Offsets of the first list column (the others share them, by construction) and
    values, of a batch decoded into its own buffers (a Parquet batch's)."""
    raw = batch.column(columns[0]).offsets.to_numpy()
    first, last = int(raw[0]), int(raw[-1])
    offsets = raw.astype(np.int64)
    offsets -= first
    return offsets, {name: batch.column(name).values.slice(first, last - first).to_numpy() for name in columns}


class FatRowMismatch(AssertionError):
    """lateseq's rebuild and a Fat Row file differ."""


def same_jagged(offsets: np.ndarray, values: dict[str, np.ndarray], ours: lateseq.JaggedBatch) -> bool:
    """Whether (offsets, values) equal lateseq's batch: dtypes, and bit for bit."""
    return offsets.dtype == ours.offsets.dtype and np.array_equal(offsets, ours.offsets) and all(
        values[c].dtype == ours.values[c].dtype
        and np.array_equal(values[c].view(np.uint8), ours.values[c].view(np.uint8)) for c in values)


def lateseq_reads(store: lateseq.Store, log: Path | pa.Table, projection: lateseq.Projection,
                  ) -> Iterator[lateseq.JaggedBatch]:
    """lateseq's batches of ``log`` as the benchmarks time them: the library's streaming
    loader over the example log's pointer columns, batches of ``BATCH``, verified (it
    rebuilds a few small batches in one read and hands each its part)."""
    for _, jagged in lateseq.iter_batches(store, log, projection, BATCH, columns=[]):
        yield jagged


def check_equal(files: list[FatRowFile], store: lateseq.Store, log: pa.Table, max_len: int,
                what: str = "") -> int:
    """Reads Fat Row files holding the same rows in the same order and checks each batch
    against lateseq's rebuild of those rows of ``log`` as the benchmarks time it (the
    streaming loader, ``iter_batches``: several batches a read, each handed its part), offsets
    and values bit for bit; raises FatRowMismatch at the first difference. Returns the
    examples compared."""
    projection = lateseq.Projection(max_len, tuple(files[0].columns))
    rows = files[0].rows
    done = 0
    ours_batches = lateseq_reads(store, log.take(pa.array(rows)), projection)
    for k, (*batches, ours) in enumerate(zip(*(read_fat_rows(file) for file in files), ours_batches, strict=True)):
        done += len(ours)
        for file, (offsets, values) in zip(files, batches, strict=True):
            if not same_jagged(offsets, values, ours):
                raise FatRowMismatch(f"{what}: lateseq and the Fat Row ({file.form}) differ in batch {k}")
    if done != len(rows):
        raise FatRowMismatch(f"{what}: the Fat Row files hold {done} examples, not {len(rows)}")
    return done


# ---------------------------------------------------------------- samples


def request_sample(requests: pa.Table, cost: np.ndarray, budget: float, max_rows: int,
                   seed: int = 0) -> np.ndarray:
    """Log rows (ascending) of a uniform random sample of requests with all their examples
    (the impressions of a request stay together): every row when the total ``cost`` fits
    ``budget`` and the rows ``max_rows``, else a share of requests that fits in expectation."""
    share = min(1.0, budget / max(float(cost.sum()), 1.0), max_rows / max(requests.num_rows, 1))
    if share >= 1.0:
        return np.arange(requests.num_rows)
    user = requests.column("user_id").to_numpy()
    ts = requests.column("request_ts").to_numpy()
    starts = np.r_[True, (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])]  # a request's first example
    picked = np.random.default_rng([seed, 25]).random(int(starts.sum())) < share
    return np.flatnonzero(picked[np.cumsum(starts) - 1])


def user_sample(requests: pa.Table, cost: np.ndarray, budget: float, max_rows: int, seed: int = 0) -> np.ndarray:
    """Log rows (ascending) of every example of a random set of users: all users when the
    total ``cost`` fits ``budget`` and the rows ``max_rows``, else users in a seeded random
    order while they fit (at least one). Whole users keep a user's consecutive examples
    together, as in the full log (what the smallest form's compression feeds on)."""
    if cost.sum() <= budget and requests.num_rows <= max_rows:
        return np.arange(requests.num_rows)
    users, slot = np.unique(requests.column("user_id").to_numpy(), return_inverse=True)
    rank = np.random.default_rng([seed, 24]).permutation(len(users))  # rank of each user
    by_rank = np.empty(len(users), np.int64)
    by_rank[rank] = np.arange(len(users))  # user at each rank
    cost_of = np.bincount(slot, weights=cost, minlength=len(users))[by_rank]
    rows_of = np.bincount(slot, minlength=len(users))[by_rank]
    fits = (np.cumsum(cost_of) <= budget) & (np.cumsum(rows_of) <= max_rows)
    taken = max(int(np.argmin(fits)) if not fits.all() else len(users), 1)
    return np.flatnonzero(rank[slot] < taken)


def store_files(state: State) -> tuple[list[Path], list[Path]]:
    """(durable files, read-cache files) of the segments ``state``'s version reads."""
    store = state.open()
    names = [info.name for info in store.segment_infos]
    durable = [p for name in names for p in sorted((state.path / "segments").glob(f"{name}.*"))]
    cache = [p for name in names if (p := store.cache_dir / f"{name}.arrow").exists()]
    if state.merged_reads:  # what its reads map, beside the decoded copies they were merged from
        cache += derived_files(store)
    return durable, cache


def derived_files(store: lateseq.Store) -> list[Path]:
    """The files of the merged and filtered copies in ``store``'s read cache."""
    return sorted(p for p in (store.cache_dir / DERIVED_DIR).glob("p*") if p.suffix in (".arrow", ".json"))
