"""Two-tier log records: a pointer into a store version plus the online tail inline
(``tail_*`` list columns) and the whole served history's length and checksum
(``seq_*``), and the two ways to rebuild them (see ``lateseq.twotier`` for the protocol).

- Streaming (before the tail is folded): version ``k`` through the pointer, plus the
  inline tail, merged by (time, tie-break, store before tail, arrival).
- Batch (any time later): events of versions ``<= k``, plus events of versions
  ``(k, K]`` that arrived before the request, where version ``K``'s watermark reaches
  the request. ``tail_version`` records ``K`` once the tail is stripped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import ChecksumMismatch, PointerError, SchemaError, reading_checks
from ._events import column_numpy
from ._gather import gather
from ._jagged import JaggedBatch
from ._kernels import event_hashes, merge_newest
from ._pointers import POINTER_FIELDS, RECORD_FIELDS, TAIL_PREFIX, Pointers, pointers_from_log, require_table
from ._projection import Projection
from ._store import Store


def payload_names(store: Store) -> list[str]:
    return [store.schema.time_col, *store.schema.columns]


def _tail_digest(store: Store, user: np.ndarray, columns: dict[str, np.ndarray], owners: np.ndarray,
                 rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per record: how many tail events, and the sum of their content hashes."""
    names = payload_names(store)
    hashes = event_hashes(user, columns[names[0]], [columns[n] for n in names[1:]])
    total = np.zeros(rows, np.uint64)
    np.add.at(total, owners, hashes.astype(np.uint64))
    return np.bincount(owners, minlength=rows), (total & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def attach_tails(log: pa.Table, store: Store, tail: pa.Table, owners: np.ndarray) -> pa.Table:
    """Adds the inline tail (rows of `tail`, owned by log row `owners`) and seq_* columns."""
    columns = {n: column_numpy(tail.column(n)) for n in payload_names(store)}
    count, digest = _tail_digest(store, tail.column(store.schema.user_col).to_numpy(), columns,
                                 owners, log.num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(count)]).astype(np.int32))
    length = log.column("uih_length").to_numpy().astype(np.int64) + count
    checksum = log.column("uih_checksum").to_numpy() + digest
    for field, values in zip(RECORD_FIELDS, [length, checksum, np.zeros(log.num_rows)], strict=True):
        log = log.append_column(field, pa.array(values.astype(field.type.to_pandas_dtype())))
    for name in payload_names(store):
        values = tail.column(name).combine_chunks()
        log = log.append_column(TAIL_PREFIX + name, pa.ListArray.from_arrays(offsets, values))
    return log


class InlineTail(NamedTuple):
    """A log's inline tail events: each one's record (``owners``) and user, its column
    values, and per record whether its tail is broken (``broken``: its columns hold
    different numbers of events, or a null; an edited log: its events are left out, and
    the record fails its check)."""

    owners: np.ndarray
    user: np.ndarray
    columns: dict[str, np.ndarray]
    broken: np.ndarray


def inline_tail(store: Store, log: pa.Table | pa.RecordBatch) -> InlineTail:
    """The inline tail of a two-tier log's records."""
    names = payload_names(store)
    have = {n for n in log.schema.names if n.startswith(TAIL_PREFIX) and n not in RECORD_FIELDS.names}
    missing, extra = sorted({TAIL_PREFIX + n for n in names} - have), sorted(have - {TAIL_PREFIX + n for n in names})
    if missing or extra:
        raise SchemaError(f"two-tier example log: its tail columns do not match the store's columns (missing "
                          f"{missing}, unknown {extra}); a served log holds one {TAIL_PREFIX}<column> per column")
    tails = {name: tail_column(store, log, name) for name in names}
    lengths = {name: pc.list_value_length(column).fill_null(0).to_numpy() for name, column in tails.items()}
    # a record whose columns disagree on its event count, or hold a null, fails its check as
    # any edit does, alone (numpy's "could not broadcast" from the hashing kernel, through
    # "flag" and audit, s47B, s47C; a null made every value of its column a float, s47D)
    broken = np.zeros(log.num_rows, bool)
    for name, column in tails.items():
        broken |= lengths[name] != lengths[names[0]]
        nulls = pc.is_null(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
        if nulls.any():
            broken[np.repeat(np.arange(log.num_rows), lengths[name])[nulls]] = True
    if broken.any():
        tails = {name: column.filter(pa.array(~broken)) for name, column in tails.items()}
    owners = np.repeat(np.arange(log.num_rows), np.where(broken, 0, lengths[names[0]]))
    columns = {name: column_numpy(pc.list_flatten(column)) for name, column in tails.items()}
    user = pointers_from_log(log, store.schema).user_id[owners]  # decoded and checked as the pointers are
    return InlineTail(owners, user, columns, broken)


def tail_column(store: Store, log: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    """A tail column, refused where its type would change the events' hashes (a float or
    text for an integer, another float width) rather than blamed on the checksum;
    integers of any width hash as the store's."""
    column = log.column(TAIL_PREFIX + name)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list_view(column.type) or pa.types.is_large_list_view(column.type):
        column = _as_list(column)
    stored = pa.int64() if name == store.schema.time_col else pa.type_for_alias(store.schema.columns[name])
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
            kind.value_type == stored or pa.types.is_integer(kind.value_type) and pa.types.is_integer(stored)):
        raise PointerError(f"two-tier example log column {TAIL_PREFIX + name!r} has type {kind}, expected "
                           f"list<{stored}> (the inline tail as it was served; a round trip through text or floats "
                           "changes it): keep the log's tail columns in the types lateseq wrote")
    return column


def _as_list(column: pa.Array) -> pa.Array:
    """A list_view column (DuckDB's, Arrow's view readers') as the list lateseq writes, its
    values in row order (pyarrow 26's cast between them gives an invalid array)."""
    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    large = pa.types.is_large_list_view(column.type)
    return (pa.LargeListArray if large else pa.ListArray).from_arrays(
        offsets if large else offsets.cast(pa.int32()), pc.list_flatten(column), mask=pc.is_null(column))


def tail_intact(store: Store, log: pa.Table | pa.RecordBatch,
                inline: InlineTail | None = None) -> np.ndarray:
    """Per record: pointer plus inline tail add up to the served length and checksum.
    ``inline`` is the log's ``inline_tail``, when the caller has it already."""
    inline = inline or inline_tail(store, log)
    count, digest = _tail_digest(store, inline.user, inline.columns, inline.owners, log.num_rows)
    pointers = pointers_from_log(log, store.schema)
    return ((pointers.length + count == log.column("seq_length").to_numpy().astype(np.int64))
            & (pointers.checksum + digest == log.column("seq_checksum").to_numpy()) & ~inline.broken)


def rebuild_streaming(store: Store, log: pa.Table | pa.RecordBatch, projection: Projection,
                      on_mismatch: str = "raise") -> JaggedBatch:
    """Version ``uih_version`` through the pointer, plus the inline tail."""
    _, on_mismatch = reading_checks(True, on_mismatch)
    inline = inline_tail(store, log)
    bad = ~tail_intact(store, log, inline)
    _check(bad, on_mismatch, "the inline tail does not match the record's seq_checksum")
    return merge_tail(store, log, inline, projection, bad, on_mismatch)


def merge_tail(store: Store, log: pa.Table | pa.RecordBatch,
                inline: InlineTail, projection: Projection,
                bad: np.ndarray, on_mismatch: str) -> JaggedBatch:
    """The newest ``max_len`` of each record's history: the store part through the
    pointer, merged with the inline tail in serving order."""
    schema = store.schema
    wanted = projection.resolve(schema)
    names = list(dict.fromkeys([*wanted, schema.time_col] + ([schema.tiebreak] if schema.tiebreak else [])))
    head = gather(store, log, Projection(projection.max_len, tuple(names)), on_mismatch=on_mismatch)
    owners, tail = inline.owners, inline.columns
    rows = len(head)
    bad = bad | head.mismatched

    # the tail arrives in arrival order; order it by (row, time, tie-break), stably
    tail_tb = tail[schema.tiebreak] if schema.tiebreak else np.zeros(len(owners), np.int64)
    order = np.lexsort((tail_tb, tail[schema.time_col], owners))
    tail = {k: v[order] for k, v in tail.items()}
    tail_offsets = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=rows))])
    head_tb = head.values[schema.tiebreak] if schema.tiebreak else np.zeros(len(head.values[schema.time_col]), np.int64)
    offsets, chosen = merge_newest(
        head.offsets, head.values[schema.time_col], head_tb, tail_offsets, tail[schema.time_col],
        tail_tb[order], projection.max_len,
    )
    values = {n: np.concatenate([head.values[n], tail[n].astype(head.values[n].dtype)])[chosen] for n in wanted}
    return JaggedBatch(offsets, values, bad)


def rebuild_batch(store: Store, log: pa.Table | pa.RecordBatch, projection: Projection,
                  on_mismatch: str = "raise") -> JaggedBatch:
    """From the store alone: versions up to a covering version, bounded by arrival."""
    return gather(store, stripped_pointers(store, log), projection, on_mismatch=on_mismatch)


def stripped_pointers(store: Store, log: pa.Table | pa.RecordBatch) -> Pointers:
    """Two-tier records as plain pointers into the store alone (their tails in a covering
    version, bounded by arrival), with the length and checksum of the whole history."""
    pointers = pointers_from_log(log, store.schema)
    tail_version = log.column("tail_version").to_numpy().astype(np.int64)
    uncovered = tail_version == 0
    if uncovered.any():
        tail_version = tail_version.copy()
        tail_version[uncovered] = covering_versions(store, pointers.request_ts[uncovered])
    if (tail_version == 0).any():
        first = int(np.flatnonzero(tail_version == 0)[0])
        raise PointerError(f"no kept version covers arrivals up to request {first}'s time yet; "
                           "rebuild in streaming mode, or fold first")
    return Pointers(
        pointers.user_id, pointers.request_ts, pointers.version,
        log.column("seq_length").to_numpy().astype(np.int64), log.column("seq_checksum").to_numpy(),
        version_hi=tail_version, arrival_limit=pointers.request_ts,
    )


def is_two_tier(log: pa.Table | pa.RecordBatch) -> bool:
    """Whether a log holds two-tier records (else plain pointers); PointerError for a null
    in a record's columns (a null tail_version was read as a garbage version, s47E)."""
    require_table(log)
    if not holds_records(log.schema):
        return False
    indices = (log.schema.get_field_index(name) for name in RECORD_FIELDS.names)
    nulls = [log.schema.names[i] for i in indices if i >= 0 and log.column(i).null_count]
    if nulls:
        raise PointerError(f"two-tier record columns {nulls} have null values")
    return True


# the schema of the last log found to hold plain pointers: a loader asks batch after batch
_last_plain: pa.Schema | None = None


def holds_records(schema: pa.Schema) -> bool:
    """Whether a log of ``schema`` holds two-tier records: all of ``RECORD_FIELDS``. Some
    of them only is an error, not a plain log: its tails would be left out unseen."""
    global _last_plain
    if _last_plain is not None and schema.equals(_last_plain):
        return False
    names = schema.names
    present = [name for name in RECORD_FIELDS.names if name in names]
    if present and len(present) < len(RECORD_FIELDS):
        missing = [name for name in RECORD_FIELDS.names if name not in present]
        raise SchemaError(f"example log has two-tier record columns {present} but not {missing}: a two-tier log "
                          f"has all of {RECORD_FIELDS.names}, and a plain log cannot use these names")
    if not present:
        _last_plain = schema
    return bool(present)


def protocol_columns(schema: pa.Schema) -> list[str]:
    """The columns of a log that rebuilding its examples reads: the pointer's and, in a
    two-tier log, the record's own (``seq_*``, ``tail_*``)."""
    names = [f.name for f in POINTER_FIELDS if f.name in schema.names]
    if holds_records(schema):
        names += [name for name in schema.names if name in RECORD_FIELDS.names or name.startswith(TAIL_PREFIX)]
    return names


def protocol_part(log: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``log``'s ``protocol_columns`` alone (a repeated one each time, for the checks to
    name): what a pass that takes rows of a log reads; others may be of types Arrow cannot
    take (polars' and DuckDB's string_view, s47E)."""
    read = set(protocol_columns(log.schema))
    return log.select([i for i, name in enumerate(log.schema.names) if name in read])


def covering_versions(store: Store, request_ts: np.ndarray) -> np.ndarray:
    """For each request time, a kept version whose watermark reaches it (0: none): this
    handle's own when it covers them all, else the oldest that does."""
    if store.watermark is not None and (len(request_ts) == 0 or request_ts.max() <= store.watermark):
        return np.full(len(request_ts), store.version, np.int64)
    kept = [(v.version, v.watermark) for v in store.versions() if v.version <= store.version]
    versions = np.array([v for v, w in kept if w is not None], np.int64)
    marks = np.array([w for v, w in kept if w is not None], np.int64)
    if len(versions) == 0:
        return np.zeros(len(request_ts), np.int64)
    best = np.maximum.accumulate(marks)  # watermarks never go back; be safe anyway
    pos = np.searchsorted(best, request_ts, "left")
    return np.where(pos < len(versions), versions[np.minimum(pos, len(versions) - 1)], 0)


def _check(bad: np.ndarray, on_mismatch: str, what: str) -> None:
    if on_mismatch == "raise" and bad.any():
        rows = np.flatnonzero(bad)
        raise ChecksumMismatch(f"{len(rows)} records: {what} (first rows: {rows[:5].tolist()})", rows.tolist())
