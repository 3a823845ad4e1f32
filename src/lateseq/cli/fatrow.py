"""The Fat Row baseline: every example stores its own history as Parquet list columns.

This is how training data is laid out today, and what lateseq is measured against. It
is also the demo's independent oracle: it is written from the event table alone with
numpy (sort, binary search, gather) and shares no code with the store or its kernels.

A request's history is its user's events with ``ts < request_ts`` (and, with versioned
ingestion, committed in a version ``<=`` the request's), ordered oldest first by
(ts, commit, row order in ``events``); the newest ``max_len`` of them are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._errors import exact_integer

ROW_GROUP_ROWS = 65_536


class _SortedEvents:
    """Events sorted by (user, ts, commit, row), with one int64 search key per event.

    The key packs (user rank, time rank) so a request's cut is a single searchsorted:
    ``key = user_rank * stride + time``; ``time`` is the offset from the earliest event
    time when that fits in 63 bits, else the rank among distinct event times.
    """

    def __init__(self, events: pa.Table, columns: list[str], use_commit: bool):
        user = _int64(events, "user_id")
        ts = _int64(events, "ts")
        self.users, user_rank = np.unique(user, return_inverse=True)
        user_rank = user_rank.astype(np.int64).reshape(-1)
        self.ts_min, ts_max = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
        self.ts_past_max = min(ts_max + 1, 2**63 - 1)  # a request time after every event
        self.distinct_ts: np.ndarray | None = None
        if (len(self.users) + 1) * (ts_max - self.ts_min + 2) < 2**62:
            self.stride = ts_max - self.ts_min + 2
            time = ts - self.ts_min
        else:  # times too spread to pack: use their ranks (at most one per event)
            self.distinct_ts, time = np.unique(ts, return_inverse=True)
            self.stride = len(self.distinct_ts) + 1
            time = time.astype(np.int64).reshape(-1)
        key = user_rank * self.stride + time
        if use_commit:
            commit = _int64(events, "commit")
            order = np.lexsort((commit, key))
            self.commit: np.ndarray | None = commit[order]
        else:
            order = np.argsort(key, kind="stable")
            self.commit = None
        self.key = key[order]
        self.columns = {name: events.column(name).combine_chunks().take(order) for name in columns}

    def request_keys(self, user: np.ndarray, request_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, key of the user's first possible event, key of the request's cut)."""
        pos = np.minimum(np.searchsorted(self.users, user), max(len(self.users) - 1, 0))
        found = (self.users[pos] == user) if len(self.users) else np.zeros(len(user), bool)
        if self.distinct_ts is None:
            time = np.clip(request_ts, self.ts_min, self.ts_past_max) - self.ts_min
        else:
            time = np.searchsorted(self.distinct_ts, request_ts, side="left").astype(np.int64)
        user_key = pos.astype(np.int64) * self.stride
        return found, user_key, user_key + time


def fat_rows(
    events: pa.Table,
    requests: pa.Table,
    columns: list[str],
    max_len: int,
    *,
    visible_version: bool | None = None,
) -> pa.Table:
    """One row per request (input order): its columns, then one list column per event column.

    ``visible_version``: ``None`` filters by version when ``events`` has a ``commit``
    column and ``requests`` a ``version`` column; ``True`` requires them; ``False``
    ignores versions.
    """
    use_commit = _check(events, requests, columns, max_len, visible_version)
    sorted_events = _SortedEvents(events, list(columns), use_commit)
    return _assemble(requests, sorted_events.columns, *_gather(sorted_events, requests, max_len, use_commit))


def iter_fat_rows(
    events: pa.Table,
    requests: pa.Table,
    columns: list[str],
    max_len: int,
    *,
    visible_version: bool | None = None,
    chunk_rows: int = ROW_GROUP_ROWS,
) -> Iterator[pa.Table]:
    """``fat_rows`` in consecutive slices of ``chunk_rows`` requests, sorting the events once.

    For building Fat Row files larger than memory: pass the chunks to ``write_fat_rows``.
    """
    columns = list(columns)
    use_commit = _check(events, requests, columns, max_len, visible_version)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    sorted_events = _SortedEvents(events, columns, use_commit)
    for start in range(0, requests.num_rows, chunk_rows):
        chunk = requests.slice(start, chunk_rows)
        offsets, gather = _gather(sorted_events, chunk, max_len, use_commit)
        yield _assemble(chunk, sorted_events.columns, offsets, gather)


def _check(events: pa.Table, requests: pa.Table, columns: list[str], max_len: int,
           visible_version: bool | None) -> bool:
    exact_integer("max_len", max_len, 1)
    for name in ("user_id", "ts", *columns):
        if name not in events.column_names:
            raise ValueError(f"events have no column {name!r} (columns: {events.column_names})")
    for name in ("user_id", "request_ts"):
        if name not in requests.column_names:
            raise ValueError(f"requests have no column {name!r} (columns: {requests.column_names})")
        _int64(requests, name)
    clashes = [c for c in columns if c in requests.column_names]
    if clashes or len(set(columns)) != len(columns):
        raise ValueError(f"list columns {columns} repeat or clash with request columns {requests.column_names}")
    has_versions = "commit" in events.column_names and "version" in requests.column_names
    if visible_version and not has_versions:
        raise ValueError("visible_version=True needs a 'commit' column in events and a 'version' column in requests")
    return has_versions if visible_version is None else bool(visible_version)


def _int64(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"column {name!r} has null values")
    if not pa.types.is_integer(column.type):
        raise ValueError(f"column {name!r} must be integers, not {column.type}")
    return column.to_numpy().astype(np.int64, copy=False)


def _gather(events: _SortedEvents, requests: pa.Table, max_len: int,
            use_commit: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the sorted-event rows of its history: (offsets, rows)."""
    found, user_key, cut_key = events.request_keys(_int64(requests, "user_id"), _int64(requests, "request_ts"))
    if not use_commit:
        lo = np.searchsorted(events.key, user_key, side="left")
        cut = np.searchsorted(events.key, cut_key, side="left")
        return _ranges(np.where(found, np.maximum(lo, cut - max_len), 0), np.where(found, cut, 0))
    # versioned: one pass per distinct request version over the events visible to it
    version = _int64(requests, "version")
    lengths = np.zeros(requests.num_rows, np.int64)
    parts = []
    for v in np.unique(version[found]):
        which = np.flatnonzero(found & (version == v))
        visible = np.flatnonzero(events.commit <= v)
        key = events.key[visible]
        lo = np.searchsorted(key, user_key[which], side="left")
        cut = np.searchsorted(key, cut_key[which], side="left")
        _, rows = _ranges(np.maximum(lo, cut - max_len), cut)
        lengths[which] = cut - np.maximum(lo, cut - max_len)
        parts.append((which, visible[rows]))
    offsets = np.zeros(requests.num_rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.empty(int(offsets[-1]), np.int64)
    for which, rows in parts:
        n = lengths[which]
        gather[_ranges(offsets[which], offsets[which] + n)[1]] = rows
    return offsets, gather


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the ranges ``[lo, hi)`` laid end to end, and their concatenated rows."""
    n = (hi - lo).astype(np.int64)
    offsets = np.zeros(len(n) + 1, np.int64)
    np.cumsum(n, out=offsets[1:])
    rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(lo - offsets[:-1], n)
    return offsets, rows


def _assemble(requests: pa.Table, columns: dict[str, pa.Array], offsets: np.ndarray,
              gather: np.ndarray) -> pa.Table:
    fits = offsets[-1] < 2**31
    array_offsets = pa.array(offsets.astype(np.int32 if fits else np.int64))
    make = pa.ListArray if fits else pa.LargeListArray
    out = requests
    for name, values in columns.items():
        out = out.append_column(name, make.from_arrays(array_offsets, values.take(pa.array(gather))))
    return out


def write_fat_rows(table: pa.Table | Iterable[pa.Table], path: str | os.PathLike,
                   row_group_size: int = ROW_GROUP_ROWS) -> int:
    """Writes Fat Rows as Parquet (pyarrow defaults: snappy) in row groups; returns the bytes.

    ``table`` may be one table or an iterable of tables with one schema (e.g. from
    ``iter_fat_rows``), so files larger than memory can be written.
    """
    tables = [table] if isinstance(table, pa.Table) else table
    writer = schema = None
    try:
        for part in tables:
            if writer is None:
                schema = part.schema
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(part if part.schema == schema else part.cast(schema), row_group_size=row_group_size)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("no tables to write")
    return os.path.getsize(path)


def read_fat_rows_batches(
    path: str | os.PathLike, columns: list[str], batch_size: int = 1024, *, use_threads: bool = True,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The baseline reader: ``(offsets, {column: values})`` per batch of ``batch_size`` rows.

    Offsets are int64 and start at 0; every list column of a row has the same length (one
    history), which is checked. No per-row Python work.
    """
    columns = list(columns)
    if not columns:
        raise ValueError("read at least one list column")
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns, use_threads=use_threads):
        yield jagged_columns(batch, columns)


def jagged_columns(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """List columns sharing row lengths as ``(offsets from 0, {column: values})``, slices included."""
    offsets = None
    values = {}
    for name in columns:
        column = batch.column(name)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        raw = column.offsets.to_numpy()
        first, last = int(raw[0]), int(raw[-1])
        if offsets is None:
            offsets = raw.astype(np.int64) - first if first or raw.dtype != np.int64 else raw
        elif not np.array_equal(raw - first, offsets):
            raise ValueError(f"list column {name!r} has other lengths than {columns[0]!r}: not a Fat Row file")
        values[name] = column.values.slice(first, last - first).to_numpy(zero_copy_only=False)
    return offsets, values
