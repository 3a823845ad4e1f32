"""Versioned pointers: what each training example carries instead of its sequence.

A pointer names the user, the request time, the store version the online side read,
how many events were visible to it (event time strictly before the request, committed
in that version or earlier) and a 32-bit checksum of those events (the sum of their
content hashes). Together they pin the exact history: any later handle on the store
rebuilds it and can prove it did. On disk a pointer is 28 bytes:

===============  ======  ==========================================================
column           type    meaning
===============  ======  ==========================================================
``user_id``      int64   whose history
``request_ts``   int64   the request time; only events strictly before it count
``uih_version``  uint32  the store version online read (0: the empty store)
``uih_length``   uint32  number of events visible to the request
``uih_checksum`` uint32  sum (mod 2**32) of those events' content hashes
===============  ======  ==========================================================

An *example log* is any Arrow table or Parquet file with these columns plus whatever
else an example carries (labels, request features). ``request_ts`` counts the store's
``time_unit``; a timestamp-typed ``request_ts`` is converted to it against the store's
schema (``log_examples``, ``make_pointers``, ``pointers_from_log``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import PointerError, SchemaError, exact_bool, exact_integer
from ._events import partition_of
from ._format import replaceable, replaced_when_written, usable_path
from ._kernels import Visibility
from ._parquet import columns_described
from ._schema import Schema, as_user_ids, decoded, exported_arrow, frame_hint, string_ids_hint, unsigned_bits_hint
from ._store import Store

POINTER_FIELDS = pa.schema([
    ("user_id", pa.int64()),
    ("request_ts", pa.int64()),
    ("uih_version", pa.uint32()),
    ("uih_length", pa.uint32()),
    ("uih_checksum", pa.uint32()),
])
POINTER_BYTES = sum(f.type.byte_width for f in POINTER_FIELDS)
# a two-tier record's own columns (see ``_records``): the whole served history's length and
# checksum, the version covering its tail once stripped, and the tail inline (``tail_<column>``)
RECORD_FIELDS = pa.schema([
    ("seq_length", pa.uint32()),
    ("seq_checksum", pa.uint32()),
    ("tail_version", pa.uint32()),
])
TAIL_PREFIX = "tail_"
PARTITIONS_KEY = b"lateseq.row_group_partitions"  # a co-partitioned log's metadata (see copartition_log)


def check_servable(schema: Schema) -> None:
    """SchemaError for a payload column no two-tier record can carry: its tail column
    would be a field every record has. Said when the tier is made, not at the first
    request, after events were folded (s61C)."""
    clash = [name for name in schema.columns if TAIL_PREFIX + name in RECORD_FIELDS.names]
    if clash:
        raise SchemaError(f"column {clash[0]!r} cannot be served in two-tier records: its tail column "
                          f"{TAIL_PREFIX + clash[0]!r} is a field every record has; rename it in the schema")


@dataclass(frozen=True)
class Pointers:
    """Pointer columns as numpy arrays, checked for presence and type.

    ``version_hi`` and ``arrival_limit`` widen what a pointer sees to events of later
    versions that arrived before ``arrival_limit`` (how a stripped online tail is
    rebuilt, see ``online.py``); plain pointers leave them unset.
    """

    user_id: np.ndarray
    request_ts: np.ndarray
    version: np.ndarray
    length: np.ndarray
    checksum: np.ndarray
    version_hi: np.ndarray | None = None
    arrival_limit: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def visibility(self) -> Visibility:
        if self.version_hi is None:
            return Visibility.of_versions(self.version)
        return Visibility(self.version, np.maximum(self.version_hi, self.version), self.arrival_limit)

    @classmethod
    def from_arrow(cls, examples: pa.Table | pa.RecordBatch) -> Pointers:
        """The pointer columns of an example log. A timestamp-typed ``request_ts`` is
        refused: only the store's schema knows its unit (see ``pointers_from_log``)."""
        return _read_pointers(examples, None)


def require_table(log: object) -> None:
    """Refuses an example log that is not a pyarrow Table or RecordBatch, saying what to
    do with a path (a user with a log on disk passes its path first)."""
    if not isinstance(log, pa.Table | pa.RecordBatch):
        path = isinstance(log, str | os.PathLike)
        raise SchemaError(f"an example log is a pyarrow Table, not a {type(log).__name__}{frame_hint(log)}" + (
            ": read the file first (pyarrow.parquet.read_table(path)), or stream it in batches with "
            "lateseq.iter_batches(store, path, projection)" if path else ""))


def pointers_from_log(log: pa.Table | pa.RecordBatch, schema: Schema) -> Pointers:
    """The pointer columns of an example log read against the store's ``schema``: a
    timestamp-typed ``request_ts`` is converted exactly to the store's time unit."""
    return _read_pointers(log, schema)


# the schema of the last example log read whose pointer columns needed no conversion, and
# their positions: a loader reads batch after batch of one log, and finding and checking
# the columns anew cost as much as reading them (every batch pays it)
_last_plain: tuple[pa.Schema, list[int]] | None = None


def _read_pointers(examples: pa.Table | pa.RecordBatch, schema: Schema | None) -> Pointers:
    global _last_plain
    plain = _last_plain
    if plain is not None and examples.schema.equals(plain[0]):
        columns = [examples.column(i) for i in plain[1]]
        if not any(column.null_count for column in columns):
            return _pointers([column.to_numpy() for column in columns])
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(examples.schema.names):
        positions.setdefault(name, []).append(i)
    missing = [f.name for f in POINTER_FIELDS if f.name not in positions]
    if missing:
        raise PointerError(f"example log is missing pointer columns {missing}; "
                           "make pointers with lateseq.log_examples or `lateseq pointers`")
    arrays = []
    converted = False
    for f in POINTER_FIELDS:
        if len(positions[f.name]) > 1:
            raise PointerError(f"example log has {len(positions[f.name])} columns named {f.name!r}")
        column = examples.column(positions[f.name][0])  # by position: a name is looked up each time
        if pa.types.is_dictionary(column.type):  # (a pandas categorical's round trip) as log_examples takes them;
            column = _decoded_pointer(column, f.name)  # decoded first: a null can sit in the dictionary (s47C)
            converted = True  # (not the plain fast path next time)
        if column.null_count:
            raise PointerError(f"pointer column {f.name!r} has null values")
        if column.type.id == f.type.id:  # every batch of a log made by lateseq: nothing to convert
            arrays.append(column.to_numpy())
            continue
        converted = True
        if f.name == "request_ts" and pa.types.is_timestamp(column.type):
            if schema is None:
                raise PointerError(f"pointer column 'request_ts' has type {column.type}; read the log "
                                   "against the store's schema, which knows the store's time unit")
            column = schema.times_to_store(column, "example log column 'request_ts'", requests=True)
        elif not pa.types.is_integer(column.type):  # a whole float would be cast: above 2**53 another id or time
            raise PointerError(f"pointer column {f.name!r} has type {column.type}, expected {f.type}"
                               + (" (floats cannot hold every id and time exactly: write the log's pointer "
                                  "columns as integers)" if pa.types.is_floating(column.type) else "")
                               + (string_ids_hint(column.type) if f.name == "user_id" else ""))
        try:
            arrays.append((column if column.type == f.type else column.cast(f.type)).to_numpy())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PointerError(f"pointer column {f.name!r} has type {column.type}, expected {f.type}"
                               + _out_of_range(column, f.type, bits=f.name == "uih_checksum")
                               + (unsigned_bits_hint(column.type, f.type, True) if f.name == "user_id" else "")
                               ) from exc
    if not converted:
        _last_plain = (examples.schema, [positions[f.name][0] for f in POINTER_FIELDS])
    return _pointers(arrays)


def decoded_pointer_columns(log: pa.Table) -> pa.Table:
    """``log`` with its dictionary-encoded pointer columns (a pandas categorical's round
    trip) as their values, chunk by chunk: chunks of other dictionaries holding a null
    cannot be combined, taken or sliced across as dictionaries (s47D)."""
    for field in POINTER_FIELDS:
        index = log.schema.get_field_index(field.name)  # (-1 where absent or repeated: named by the checks)
        if index >= 0 and pa.types.is_dictionary(log.schema.field(index).type):
            log = log.set_column(index, field.name, _decoded_pointer(log.column(index), field.name))
    return log


def _decoded_pointer(column: pa.Array | pa.ChunkedArray, name: str) -> pa.Array | pa.ChunkedArray:
    """A categorical pointer column as its values (``decoded``: one Arrow cannot decode,
    polars' categories of string_view, is refused naming it)."""
    return decoded(column, f"pointer column {name!r}", ids=name == "user_id")


def _out_of_range(column: pa.Array | pa.ChunkedArray, target: pa.DataType, bits: bool = False) -> str:
    """Why integers did not fit ``target``: the values past its range (a -1 version, a
    length past 2**32), which say more than the types do. ``bits``: the column is a hash,
    whose bits a writer without unsigned types may have kept signed (not so a length)."""
    if not (pa.types.is_integer(column.type) and pa.types.is_integer(target)):
        return ""
    info, values = np.iinfo(target.to_pandas_dtype()), np.asarray(column)
    have = np.iinfo(values.dtype)  # the bounds compared in the column's own type (no -1 as uint64)
    low, high = values.dtype.type(max(info.min, have.min)), values.dtype.type(min(info.max, have.max))
    bad = values[(values < low) | (values > high)]
    if not len(bad):
        return ""
    # a writer without unsigned types keeps them as signed ones of their width (Spark's int), maybe widened
    # since (to long): negative, and within the signed type of the target's width (s48C)
    signed = f"int{8 * target.byte_width}"
    kept_bits = bits and values.dtype.kind == "i" and np.dtype(target.to_pandas_dtype()).kind == "u" and (
        (bad < 0) & (bad >= np.iinfo(signed).min)).all()
    hint = (f"; a writer without unsigned types (Spark, Java) may have kept {target}'s bits as signed integers: "
            f"reinterpret them, pa.array(column.to_numpy().astype(np.{signed}).view(np.{target}))"
            if kept_bits else "")
    return (f": {len(bad)} of its values lie outside {target}'s {info.min}..{info.max} "
            f"(first: {bad[:3].tolist()}), which no pointer lateseq makes holds{hint}")


def _pointers(arrays: list[np.ndarray]) -> Pointers:
    return Pointers(arrays[0], arrays[1], arrays[2].astype(np.int64), arrays[3].astype(np.int64), arrays[4])


def make_pointers(store: Store, user_id: np.ndarray, request_ts: np.ndarray | pa.Array) -> pa.Table:
    """Pointers for requests served from ``store``'s version, as online makes them.

    ``request_ts`` holds integers in the store's time unit, or timestamps (numpy
    ``datetime64`` or Arrow), converted to it exactly.
    """
    user_id = as_user_ids(user_id, "user_id")
    if not isinstance(request_ts, pa.Array | pa.ChunkedArray):
        request_ts = _arrow_times(request_ts)  # integers or timestamps; anything else is refused below
    if request_ts.null_count:
        raise SchemaError(f"request_ts has {request_ts.null_count} null values")
    if len(request_ts) != len(user_id):
        raise SchemaError(f"{len(user_id)} user ids but {len(request_ts)} request times")
    request_ts = np.asarray(store.schema.times_to_store(request_ts, "request_ts", requests=True))
    two_tier = store.watermark is not None and store.schema.arrival_col is not None  # arrivals are known
    early = np.flatnonzero(request_ts < store.watermark) if two_tier else ()
    if len(early):
        raise PointerError(f"request {int(early[0])} at {int(request_ts[early[0]])} is before the watermark "
                           f"{store.watermark} of version {store.version}, which holds events that arrived "
                           "after it: point it at a version published before it (or serve it with "
                           "lateseq.twotier.OnlineReader)")
    versions = np.full(len(user_id), store.version, np.int64)
    located = store.locate(user_id, request_ts, Visibility.of_versions(versions), max_len=0)
    return pa.Table.from_arrays(
        [user_id, request_ts, versions.astype(np.uint32), located.count.astype(np.uint32), located.checksum],
        schema=POINTER_FIELDS,
    )


def checked_requests(requests: pa.Table | pa.RecordBatch) -> pa.Table:
    """Requests checked to be a table with one ``user_id`` and one ``request_ts`` column,
    without nulls, and no column lateseq adds."""
    if isinstance(requests, pa.RecordBatch):
        requests = pa.Table.from_batches([requests])
    if not isinstance(requests, pa.Table):
        raise SchemaError(f"requests are a pyarrow Table, not a {type(requests).__name__}"
                          + frame_hint(requests))
    for needed in ("user_id", "request_ts"):
        if requests.column_names.count(needed) > 1:
            raise SchemaError(f"requests have {requests.column_names.count(needed)} columns named {needed!r}")
        if needed not in requests.column_names:
            raise SchemaError(f"requests have no column {needed!r} (columns: {requests.column_names})")
        if requests.column(needed).null_count:
            raise SchemaError(f"requests column {needed!r} has null values")
    repeated = sorted({n for n in requests.column_names if requests.column_names.count(n) > 1})
    if repeated:
        raise SchemaError(f"requests have columns named more than once: {repeated}")
    clashes = [n for n in requests.column_names
               if n in POINTER_FIELDS.names[2:] or n in RECORD_FIELDS.names or n.startswith(TAIL_PREFIX)]
    if clashes:
        raise SchemaError(f"requests already have pointer columns {clashes}: lateseq adds these (uih_*, and "
                          "seq_length, seq_checksum, tail_version and tail_* in two-tier records); rename them")
    return requests


def log_examples(store: Store, requests: pa.Table, path: str | os.PathLike | None = None, *,
                 overwrite: bool = False) -> pa.Table:
    """Adds a pointer to every request (columns ``user_id``, ``request_ts``, any others kept).

    Writes the example log to ``path`` as Parquet when given, and returns it. A file
    already there is replaced only with ``overwrite`` (see ``new_log``).
    """
    if path is not None:
        new_log(store, path, overwrite)
    requests = checked_requests(requests)
    pointers = make_pointers(store, requests.column("user_id"), requests.column("request_ts"))
    examples = pointers
    for name in requests.column_names:
        if name not in ("user_id", "request_ts"):
            examples = examples.append_column(requests.schema.field(name), requests.column(name))
    if path is not None:
        write_log(examples, path, store)
    return examples


def _arrow_times(values: Any) -> pa.Array:
    """Request times as Arrow, read as user ids are (what exports Arrow, scalars,
    byte-swapped arrays, an empty list): datetime64 of a unit Arrow lacks (days, hours,
    minutes) in exact seconds; of a unit of no fixed length (months, years) or finer than
    ns, refused. A pandas Series or Index of a datetime dtype goes to Arrow as it is: numpy
    makes Timestamp objects of time-zoned times, which Arrow reads to the microsecond
    only; one of objects (Timestamps) goes through numpy, where their nanoseconds are kept."""
    exported = exported_arrow(values)
    if exported is not None:
        return exported
    if hasattr(values, "dtype") and not isinstance(values, np.ndarray) and values.dtype != object:
        try:
            return pa.array(values)
        except (pa.ArrowException, TypeError, ValueError):
            pass  # not a kind Arrow reads: through numpy below
    values = np.atleast_1d(np.asarray(values))
    if values.dtype == object and len(values):
        try:
            times = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise SchemaError(f"request_ts must be integer times in the store's unit or timestamps: {exc}") from exc
        if pa.types.is_timestamp(times.type) and any(getattr(v, "nanosecond", 0) for v in values):
            times = pa.array(values, pa.timestamp("ns", times.type.tz))  # pandas Timestamps: every nanosecond
        return times
    if values.ndim != 1:
        raise SchemaError(f"request_ts must be one-dimensional, not of shape {values.shape}")
    if values.size == 0:
        values = values.astype(np.int64)  # no requests: times of no type (an empty list reads as floats)
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    if values.dtype.kind == "M":
        unit = np.datetime_data(values.dtype)[0]
        if unit in ("W", "D", "h", "m"):
            seconds = {"W": 604_800, "D": 86_400, "h": 3_600, "m": 60}[unit]
            raw = values.view(np.int64)
            if np.any((raw != np.iinfo(np.int64).min) & (np.abs(raw) > np.iinfo(np.int64).max // seconds)):
                raise SchemaError(f"request_ts has datetime64[{unit}] values too far from 1970 to count in seconds")
            values = values.astype("datetime64[s]")  # exact: a whole number of seconds each (NaT stays NaT)
        elif unit not in ("s", "ms", "us", "ns"):
            raise SchemaError(f"request_ts has type datetime64[{unit}]; give times in s, ms, us or ns (or "
                              "days, hours, minutes)")
    try:
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise SchemaError(f"request_ts must be integer times in the store's unit or timestamps: {exc}") from exc


LOG_ROW_GROUP_ROWS = 65536  # a loader's block (_sampling.BLOCK_ROWS): pyarrow's 1Mi made one block of most logs


def write_log(examples: pa.Table, path: str | os.PathLike, store: Store | None = None) -> None:
    """Writes an example log as Parquet with a CRC-32 per page, which lateseq's readers
    check: a damaged request time or label is an error, not a silently shifted window
    (the pointer checksum covers the history, not the log's other bytes). All or nothing
    at ``path``, which must not be inside ``store``. Pointer columns are written as
    ``pointer_encodings`` says; the others as pyarrow does by default."""
    with replaced_when_written(outside_store(store, path)) as tmp:  # row groups: what loaders deal out
        described = examples.replace_schema_metadata({**(examples.schema.metadata or {}),
                                                      **columns_described(examples.schema)})
        pq.write_table(described, tmp, write_page_checksum=True, row_group_size=LOG_ROW_GROUP_ROWS,
                       **pointer_encodings(described.schema))


_DELTA_FIELDS = ("user_id", "request_ts", "uih_version", "uih_length")  # what an example log sorts or repeats


def pointer_encodings(schema: pa.Schema) -> dict:
    """``pq.write_table`` options for a log of ``schema``: its pointer columns' integers
    delta-packed (``user_id``, ``request_ts``, ``uih_version``, ``uih_length``; times
    and versions climb, lengths are small) or plain (``uih_checksum``: random bits),
    uncompressed; every other column dictionary-encoded and compressed as by default. The
    benchmark's log read 0.55x the bytes of pyarrow's defaults, and 1.8x as fast
    (dictionary pages and Snappy for random checksums cost 33 ns a pointer, 18 so): 7% of
    a whole read at N=256."""
    pointer = {f.name for f in schema if f.name in POINTER_FIELDS.names
               and (pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type))}
    return {"use_dictionary": [name for name in schema.names if name not in pointer],
            "compression": {name: "none" if name in pointer else "snappy" for name in schema.names},
            "column_encoding": {name: "DELTA_BINARY_PACKED" if name in _DELTA_FIELDS else "PLAIN"
                                for name in pointer}}


def outside_store(store: Store | None, path: str | os.PathLike) -> Path:
    """``path``, refused if it is in ``store``'s directory: a log written over a manifest
    or the schema would destroy the store."""
    usable_path(path)
    if os.fspath(path).endswith(("/", os.sep)):  # pathlib drops the slash: a file was written there (s51B)
        raise IsADirectoryError(f"{path} names a folder (it ends with a slash); name the file to write")
    target = Path(path).resolve()
    if store is not None and store.path.resolve() in (target, *target.parents):
        raise SchemaError(f"{path} is inside the store {store.path}; write it elsewhere")
    return Path(path)


def new_log(store: Store, path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` checked for an example log to be written: outside ``store``, and not
    there already unless ``overwrite`` (a log records what online served, which a later
    version of the store cannot make again; the CLI asks for ``--force``)."""
    overwrite = exact_bool("overwrite", overwrite)  # "no" and "false" are truthy strings
    at = outside_store(store, path)
    replaceable(at)
    if not overwrite and at.exists():
        raise FileExistsError(f"example log {path} exists; pass overwrite=True to replace it")
    return at


def copartition_log(store: Store, examples: pa.Table | pa.RecordBatch, path: str | os.PathLike, *,
                    row_group_rows: int = 65536, overwrite: bool = False) -> None:
    """Writes ``examples`` to ``path`` as Parquet co-partitioned with ``store``: each row
    group holds examples of one of the store's user-hash partitions (in log order within
    it), and the file's metadata names each group's partition. A loader dealing row
    groups by partition (``ExampleDataset(copartition=True)``) then has each worker read
    the segments of its own partitions only. A file at ``path`` is replaced only with
    ``overwrite``."""
    new_log(store, path, overwrite)
    row_group_rows = exact_integer("row_group_rows", row_group_rows, 1)
    require_table(examples)
    if isinstance(examples, pa.RecordBatch):
        examples = pa.Table.from_batches([examples])
    users = pointers_from_log(examples, store.schema).user_id
    parts = partition_of(users, store.schema.partitions)
    order = np.argsort(parts, kind="stable")
    try:
        table = examples.take(pa.array(order))
    except pa.ArrowNotImplementedError as exc:  # pyarrow 26 cannot reorder string_view or binary_view
        raise SchemaError(f"copartition_log cannot reorder the log's rows: {exc}; cast such columns to string or "
                          "binary first") from exc
    parts = parts[order]
    bounds = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1], True]) if len(parts) else np.zeros(1, np.int64)
    groups = [(int(parts[a]), start, min(start + row_group_rows, b))
              for a, b in zip(bounds[:-1], bounds[1:], strict=False) for start in range(a, b, row_group_rows)]
    meta = {"partitions": store.schema.partitions, "row_groups": [p for p, _, _ in groups]}
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), PARTITIONS_KEY: json.dumps(meta),
                                         **columns_described(table.schema)})
    with replaced_when_written(outside_store(store, path)) as tmp:
        # written as ``write_log`` writes
        with pq.ParquetWriter(tmp, schema, write_page_checksum=True, **pointer_encodings(schema)) as writer:
            for _, a, b in groups:
                writer.write_table(table.slice(a, b - a).replace_schema_metadata(schema.metadata),
                                   row_group_size=b - a)


def row_group_partitions(metadata: dict[bytes, bytes] | None, partitions: int, name: str) -> tuple[int, ...]:
    """Each row group's partition, from a log written by ``copartition_log`` for a store
    of ``partitions`` partitions."""
    if not metadata or PARTITIONS_KEY not in metadata:
        raise SchemaError(f"{name} is not co-partitioned: write it with lateseq.copartition_log")
    try:
        meta = json.loads(metadata[PARTITIONS_KEY])
        found, row_groups = meta["partitions"], tuple(int(p) for p in meta["row_groups"])
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise SchemaError(f"{name}'s co-partitioning record ({PARTITIONS_KEY.decode()} in its metadata) is "
                          f"damaged ({exc!r}): write it again with lateseq.copartition_log") from None
    if found != partitions:
        raise SchemaError(f"{name} was co-partitioned for a store of {found} partitions; this store has {partitions}")
    return row_groups
