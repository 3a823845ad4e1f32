"""A brute-force reference for what lateseq must return, written for clarity, not speed.

The oracle knows nothing of segments, encodings, kernels or compaction. It keeps every
committed event in a plain list with the version of its commit and its row in the
committed input, and answers every question by filtering and sorting that list. The
only thing it borrows from lateseq is ``kernels.event_hashes`` (the content hash that
checksums are made of), itself tested against ``kernels.event_hash_reference``.

The contract it encodes:

- An event is visible to a pointer (user, request_ts, version[, version_hi,
  arrival_limit]) when it is the user's, its time is strictly before request_ts, and
  its commit version is <= version, or <= version_hi with arrival < arrival_limit.
- A user's events are ordered by (time, tie-break column if any, commit version, row in
  the committed input).
- uih_length counts the visible events; uih_checksum is the sum of their hashes mod 2**32.
- A materialized sequence is the newest min(max_len, length) visible events, oldest first.
- A commit with an event-id column keeps the first row of each (user, event id).

Projections that select (tenants) add, on top of the visible history:

- ``window``: only events with time >= request_ts - window (the window in the store's
  time unit: an int as it is; "90d", "12h", "30m", "45s", "500ms", "7us", "3ns" or a
  timedelta converted exactly by the store's ``time_unit``); events at request_ts are
  never visible anyway.
- ``where``: only events whose (integer or bool) column value is in ``isin``, has any
  bit of ``any_bits`` set, or has every bit of ``all_bits`` set.
- Both apply BEFORE the length: the sequence is the newest max_len of the events left.
- ``transforms``: {time column: "age"} gives request_ts - event time (int64, store
  units); "age_s" that in whole seconds (floor division by the units per second).
- The pointer's length and checksum still describe the whole visible history.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

import lateseq
from lateseq._kernels import event_hashes

NUMPY_TYPES = {
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class Event:
    user: int
    ts: int
    version: int
    row: int
    values: dict  # payload column -> numpy scalar of the column's type
    hash: int


@dataclass(frozen=True)
class Request:
    """One pointer as the oracle sees it; ``version_hi``/``arrival_limit`` for two-tier."""

    user: int
    request_ts: int
    version: int
    version_hi: int | None = None
    arrival_limit: int | None = None


def oracle_requests(examples) -> list[Request]:
    """The pointers of an example log (a pyarrow table) as the oracle's requests."""
    return [Request(u, t, v) for u, t, v in zip(examples.column("user_id").to_pylist(),
                                                 examples.column("request_ts").to_pylist(),
                                                 examples.column("uih_version").to_pylist(), strict=True)]


def widened_pointers(oracle: Oracle, examples, rng: np.random.Generator,
                     final: int) -> tuple[list[Request], lateseq.Pointers]:
    """The log's pointers widened by arrival (how a stripped online tail is rebuilt): each
    also sees events of versions up to a random one <= ``final`` that arrived before a
    random limit; lengths and checksums from the oracle."""
    requests = [Request(r.user, r.request_ts, r.version, int(rng.integers(r.version, final + 1)),
                        int(rng.integers(-4, 14))) for r in oracle_requests(examples)]
    lengths, checksums = zip(*(oracle.pointer(r) for r in requests), strict=True)
    pointers = lateseq.Pointers(
        np.array([r.user for r in requests], np.int64), np.array([r.request_ts for r in requests], np.int64),
        np.array([r.version for r in requests], np.int64), np.array(lengths, np.int64),
        np.array(checksums, np.uint32), version_hi=np.array([r.version_hi for r in requests], np.int64),
        arrival_limit=np.array([r.arrival_limit for r in requests], np.int64))
    return requests, pointers


class Oracle:
    """Every committed event, in a list; versions count commits and compactions alike."""

    def __init__(self, columns: dict[str, str], *, time_col: str = "ts", tiebreak: str | None = None,
                 arrival_col: str | None = None, event_id_col: str | None = None,
                 feature_groups: dict[str, list[str]] | None = None, time_unit: str | None = None):
        self.columns = dict(columns)
        self.feature_groups = dict(feature_groups or {})
        self.time_unit = time_unit
        self.time_col = time_col
        self.tiebreak = tiebreak
        self.arrival_col = arrival_col
        self.event_id_col = event_id_col
        self.version = 0
        self.events: list[Event] = []
        self.operations: dict[int, str] = {}
        self._visible: dict[tuple[Request, int], list[Event]] = {}  # answers so far, by request

    @classmethod
    def for_schema(cls, schema) -> Oracle:
        return cls(schema.columns, time_col=schema.time_col, tiebreak=schema.tiebreak,
                   arrival_col=schema.arrival_col, event_id_col=schema.event_id_col,
                   feature_groups=schema.feature_groups, time_unit=schema.time_unit)

    # ------------------------------------------------------------------ writing

    def commit(self, user: Sequence[int], ts: Sequence[int], payload: dict[str, Sequence]) -> int:
        """Records one commit of rows given column by column; returns its version."""
        assert len(user) == len(ts) and all(len(v) == len(user) for v in payload.values())
        self.version += 1
        self.operations[self.version] = "commit"
        arrays = {name: np.array(payload[name], dtype=NUMPY_TYPES[t]) for name, t in self.columns.items()}
        hash_inputs = [a.astype(np.uint8) if a.dtype == np.bool_ else a for a in arrays.values()]
        hashes = event_hashes(np.array(user, np.int64), np.array(ts, np.int64), hash_inputs)
        # a redelivery of a stored event, or of one earlier in this commit, is dropped
        seen = {(e.user, int(e.values[self.event_id_col])) for e in self.events} if self.event_id_col else set()
        for row in range(len(user)):
            if self.event_id_col is not None:
                key = (int(user[row]), int(arrays[self.event_id_col][row]))
                if key in seen:
                    continue
                seen.add(key)
            self.events.append(Event(
                int(user[row]), int(ts[row]), self.version, row,
                {name: a[row] for name, a in arrays.items()}, int(hashes[row]),
            ))
        return self.version

    def compact(self) -> int:
        """A compaction publishes a version with the same events."""
        self.version += 1
        self.operations[self.version] = "compact"
        return self.version

    # ------------------------------------------------------------------ reading

    def order_key(self, e: Event) -> tuple:
        tiebreak = int(e.values[self.tiebreak]) if self.tiebreak else 0
        return (e.ts, tiebreak, e.version, e.row)

    def visible(self, r: Request) -> list[Event]:
        """The request's visible events, oldest first."""
        assert r.version <= self.version, "a pointer cannot name a version not yet published"

        def sees(e: Event) -> bool:
            if e.user != r.user or not e.ts < r.request_ts:
                return False
            if e.version <= r.version:
                return True
            if r.version_hi is None:
                return False
            return e.version <= r.version_hi and int(e.values[self.arrival_col]) < r.arrival_limit

        key = (r, len(self.events))
        if key not in self._visible:
            self._visible[key] = sorted((e for e in self.events if sees(e)), key=self.order_key)
        return self._visible[key]

    def pointer(self, r: Request) -> tuple[int, int]:
        """(uih_length, uih_checksum) online would log for this request."""
        events = self.visible(r)
        return len(events), sum(e.hash for e in events) % 2**32

    def sequence(self, r: Request, max_len: int) -> list[Event]:
        events = self.visible(r)
        return events[len(events) - min(len(events), max_len):]

    def output_dtype(self, name: str) -> np.dtype:
        if name == self.time_col:
            return np.dtype(np.int64)
        return np.dtype(NUMPY_TYPES[self.columns[name]])

    def expected(self, requests: Iterable[Request], max_len: int,
                 columns: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(offsets, values per column) that materialize must return."""
        sequences = [self.sequence(r, max_len) for r in requests]
        offsets = np.zeros(len(sequences) + 1, np.int64)
        offsets[1:] = np.cumsum([len(s) for s in sequences], dtype=np.int64)
        values = {}
        for name in columns:
            dtype = self.output_dtype(name)
            if name == self.time_col:
                items = [e.ts for s in sequences for e in s]
            else:
                items = [e.values[name] for s in sequences for e in s]
            values[name] = np.array(items, dtype=dtype) if items else np.empty(0, dtype)
        return offsets, values

    # ------------------------------------------------------------------ projections (tenants)

    def passes(self, e: Event, where) -> bool:
        """Whether ``e`` passes a filter (anything with column, isin, any_bits, all_bits)."""
        value = int(e.values[where.column])  # bools as 0 / 1; Python ints: two's complement bits
        if where.isin is not None:
            return value in {int(v) for v in where.isin}
        if where.any_bits is not None:
            return value & int(where.any_bits) != 0
        return value & int(where.all_bits) == int(where.all_bits)

    def chosen(self, r: Request, max_len: int, window: int | None = None, where=None) -> list[Event]:
        """The newest ``max_len`` visible events with time >= request_ts - window (in store
        units; None: no window) that pass ``where``, oldest first: selection first, then length."""
        kept = [e for e in self.visible(r)
                if (window is None or e.ts >= r.request_ts - window) and (where is None or self.passes(e, where))]
        return kept[len(kept) - min(len(kept), max_len):]

    def projection_columns(self, projection) -> list[str]:
        """The output columns of a projection: its columns, then its feature groups'
        members, each once; every payload column when it names neither."""
        groups = self.feature_groups or {"default": list(self.columns)}
        wanted = list(projection.columns)
        for g in projection.feature_groups:
            wanted += groups[g]
        return list(dict.fromkeys(wanted)) or list(self.columns)

    def expected_projection(self, requests: Sequence[Request],
                            projection) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(offsets, values per column) that materialize must return for a projection with
        any window, filter and transforms (see the module docstring)."""
        window = window_ticks(projection.window, self.time_unit)
        sequences = [self.chosen(r, projection.max_len, window, projection.where) for r in requests]
        offsets = np.zeros(len(sequences) + 1, np.int64)
        offsets[1:] = np.cumsum([len(s) for s in sequences], dtype=np.int64)
        values = {}
        for name in self.projection_columns(projection):
            how = projection.transforms.get(name)
            if how is not None:
                assert name == self.time_col, "transforms apply to the time column"
                divisor = UNITS_PER_SECOND[self.time_unit] if how == "age_s" else 1
                items = [(r.request_ts - e.ts) // divisor for r, s in zip(requests, sequences, strict=True)
                         for e in s]
                dtype = np.dtype(np.int64)
            elif name == self.time_col:
                items, dtype = [e.ts for s in sequences for e in s], np.dtype(np.int64)
            else:
                items, dtype = [e.values[name] for s in sequences for e in s], self.output_dtype(name)
            values[name] = np.array(items, dtype=dtype) if items else np.empty(0, dtype)
        return offsets, values

    def all_events(self, version: int) -> list[Event]:
        """Every event of ``version``, in the order of a full scan: user, then history order."""
        return sorted((e for e in self.events if e.version <= version),
                      key=lambda e: (e.user, *self.order_key(e)))


# ---------------------------------------------------------------------- windows

UNITS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_SECONDS_PER = {"d": Fraction(86_400), "h": Fraction(3_600), "m": Fraction(60), "s": Fraction(1),
                "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6), "ns": Fraction(1, 10**9)}


def window_ticks(window, time_unit: str | None) -> int | None:
    """A projection's window as a count of the store's time unit (None: no window). Only
    for windows the contract accepts: an int (already store units), or a string or
    timedelta that is a whole number of the store's unit."""
    if window is None:
        return None
    if isinstance(window, int) and not isinstance(window, bool):
        assert window > 0
        return window
    if isinstance(window, dt.timedelta):
        seconds = Fraction(window // dt.timedelta(microseconds=1), 10**6)
    else:
        match = re.fullmatch(r"\s*([0-9]+)\s*([a-z]+)\s*", window)
        assert match and match.group(2) in _SECONDS_PER, f"not a window: {window!r}"
        seconds = int(match.group(1)) * _SECONDS_PER[match.group(2)]
    assert time_unit is not None, "a window with a unit needs a store with a time_unit"
    ticks = seconds * UNITS_PER_SECOND[time_unit]
    assert ticks.denominator == 1 and ticks > 0, f"{window!r} is not a whole number of {time_unit}"
    return int(ticks)


# ---------------------------------------------------------------------- comparing


def same_values(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Exact equality, bit for bit for floats (so NaN == NaN and -0.0 != 0.0)."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if actual.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
        return bool(np.array_equal(actual.view(width), expected.view(width)))
    return bool(np.array_equal(actual, expected))


def assert_batch_equal(batch, offsets: np.ndarray, values: dict[str, np.ndarray], context: str = "") -> None:
    """A JaggedBatch equals the oracle's (offsets, values) exactly: dtypes, bits, lengths."""
    assert batch.offsets.dtype == np.int64, context
    assert np.array_equal(batch.offsets, offsets), (
        f"{context}\nlengths {np.diff(batch.offsets).tolist()} != expected {np.diff(offsets).tolist()}"
    )
    assert sorted(batch.values) == sorted(values), f"{context}\ncolumns {list(batch.values)} != {list(values)}"
    for name, want in values.items():
        got = batch.values[name]
        assert same_values(got, want), (
            f"{context}\ncolumn {name!r}: got {got.dtype} {got.tolist()}\n"
            f"{'':>{len(name) + 10}}expected {want.dtype} {want.tolist()}"
        )


def edit_in_place(path, at: float, mask: int) -> None:
    """Flips bits of the byte at fraction ``at`` of a file, in place (same inode), and
    moves its mtime on: what another program writing into a read cache leaves."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[int(len(data) * at)] ^= mask
        f.seek(0)
        f.write(data)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))


def referenced_files(store) -> set[str]:
    """Names of the segment files some kept version of ``store`` lists."""
    names = set()
    for v in store.versions():
        for info in store.checkout(v.version).segment_infos:
            names |= {p.name for p in info.files(store.path / "segments")}
    return names


# the schema of the two-tier tests: events with an arrival time and an event id
TWO_TIER_SCHEMA = lateseq.Schema({"item_id": "int64", "arrival_ts": "int64", "event_id": "int64"},
                                 arrival_col="arrival_ts", event_id_col="event_id")


def as_list_views(table):
    """``table`` with its list columns as list views (DuckDB's, Arrow's view readers'),
    their values stored in reverse row order, so that only offsets find them; built in
    Python, not by Arrow's cast."""
    import pyarrow as pa

    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_list(field.type):
            rows = [r or [] for r in column.to_pylist()]
            sizes = np.array([len(r) for r in rows], np.int32)
            offsets = (sizes.sum() - np.cumsum(sizes)).astype(np.int32)  # row i after the rows that follow it
            values = pa.array([v for r in reversed(rows) for v in r], field.type.value_type)
            column = pa.ListViewArray.from_arrays(pa.array(offsets), pa.array(sizes), values)
        columns.append(column)
    return pa.table(columns, names=table.column_names)
