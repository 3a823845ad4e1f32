"""Streaming reads of an example log: pointers in, example batches with sequences out.

This is the torch-free core that framework loaders (a PyTorch ``IterableDataset``,
Ray Data ``map_batches``) wrap. It reads the example log batch by batch, so memory
stays bounded by one batch whatever the size of the log.

>>> for examples, seqs in iter_batches(store, "examples.parquet", Projection(200, ["item_id"])):
...     train_step(examples["label"], seqs.values["item_id"], seqs.offsets)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._buffers import Recycler, recycling
from ._errors import (
    ChecksumMismatch,
    SchemaError,
    TransformOverflow,
    exact_bool,
    exact_integer,
    reading_checks,
    rows_in_log,
)
from ._examplelog import ExampleLog
from ._format import all_replaced_when_written, usable_path
from ._gather import output_dtype
from ._jagged import JaggedBatch
from ._materialize import materialize, materialize_tenants
from ._pointers import decoded_pointer_columns, outside_store
from ._projection import TRANSFORMS, Projection, require_projection
from ._records import protocol_columns
from ._schema import PAYLOAD_TYPES, UNIT_WORDS, Schema, decoded
from ._store import ReadPass, Store
from ._tenants import check_tenant_names

ExampleSource = pa.Table | str | os.PathLike
T = TypeVar("T")
_ROW_GROUP_ROWS = 65536  # rows per row group of materialize_log's output
# bytes of sequences one read rebuilds at most, where loader batches are smaller: a read's
# fixed cost (reading the log's batch, finding the segments, checking the read cache: about
# 0.2 ms) was a third of a batch of 1024 pointers at N=256 (3.4 MB); past about 16 MB the
# outputs outgrow the CPU's caches and reads slow down (54 MB: 0.9x)
READ_BYTES = 16 << 20
READ_POINTERS = 8192


def event_bytes(schema: Schema, projections: Iterable[Projection]) -> int:
    """Bytes an event takes in the outputs of ``projections`` together."""
    return sum(output_dtype(schema, name).itemsize for p in projections for name in p.resolve(schema))


def event_sizes(schema: Schema, projections: Sequence[Projection]) -> list[tuple[float, int]]:
    """Each projection's (``max_len``, bytes an event takes in its output), which
    ``sequence_bytes`` takes: found once a pass, not once a batch (2 us a projection)."""
    return [(float(p.max_len), event_bytes(schema, [p])) for p in projections]


def sequence_bytes(examples: pa.Table | pa.RecordBatch, sizes: list[tuple[float, int]]) -> np.ndarray:
    """Per example, the bytes its sequences take at most by its pointer's recorded length
    (``uih_length``, each projection's ``max_len`` at most; ``sizes``: ``event_sizes``; a
    window or filter returns fewer, a two-tier record's tail a few more): what sizes a
    read. A read sized by ``max_len`` alone held one batch of 256 pointers at N=4096
    (13.6 MB allowed, 2.7 MB returned) and paid its fixed cost every batch: 1.8-2.1x
    slower. A length column of no integer type (a dictionary's too), or none, counts
    ``max_len``."""
    found = examples.schema.get_all_field_indices("uih_length")  # none or twice: the read names it
    column = examples.column(found[0]) if len(found) == 1 else None
    # in floats (a null is NaN, counted as 0): a max_len up to 2**63 - 1 times an event's
    # bytes would wrap int64; and no Arrow kernel calls, which cost ~100 us a chunk (~10 ns
    # an example at N=256, a few % of a read); in place: a batch of 1024 in 8 us, not 13
    if column is not None and pa.types.is_integer(column.type):
        lengths = np.asarray(pa.chunked_array([column]) if isinstance(column, pa.Array) else column, np.float64)
        if column.null_count:
            lengths = np.nan_to_num(lengths, nan=0.0)
        np.maximum(lengths, 0.0, out=lengths)
    else:
        lengths = np.full(len(examples), np.inf)
    if len(sizes) == 1:
        (most, each), = sizes
        return np.multiply(np.minimum(lengths, most, out=lengths), each, out=lengths)
    return sum(np.minimum(lengths, most) * each for most, each in sizes)


def read_groups(items: Iterable[T], size: Callable[[T], int], most: int) -> Iterator[list[T]]:
    """Consecutive loader batches grouped into reads: as many as ``size`` (bytes of
    sequences a batch returns) puts within ``READ_BYTES``, ``most`` at most; a batch alone
    may return more."""
    group: list[T] = []
    total = 0
    for item in items:
        bytes_ = size(item)
        if group and (len(group) == most or total + bytes_ > READ_BYTES):
            yield group
            group, total = [], 0
        group.append(item)
        total += bytes_
    if group:
        yield group


def _reads(chunks: Iterator[pa.RecordBatch], batch_size: int, schema: Schema,
           projections: Sequence[Projection]) -> Iterator[pa.RecordBatch]:
    """Chunks of whole batches of the log, each cut into reads (``read_groups``)."""
    per_event = event_sizes(schema, projections)
    for chunk in chunks:
        if not chunk.num_rows:
            continue
        starts = np.arange(0, chunk.num_rows, batch_size)
        sizes = np.add.reduceat(sequence_bytes(chunk, per_event), starts)
        for group in read_groups(range(len(starts)), lambda b: int(sizes[b]), max(1, READ_POINTERS // batch_size)):
            start = group[0] * batch_size
            yield chunk.slice(start, min(chunk.num_rows, (group[-1] + 1) * batch_size) - start)


def iter_batches(
    store: Store | str | os.PathLike,
    examples: ExampleSource,
    projection: Projection,
    batch_size: int = 1024,
    columns: Sequence[str] | None = None,
    *,
    verify: bool = True,
    on_mismatch: Literal["raise", "flag"] = "raise",
) -> Iterator[tuple[pa.RecordBatch, JaggedBatch]]:
    """Yields ``(example batch, sequences)`` for consecutive batches of the example log.

    ``examples`` is an example log (a Parquet file, a folder of Parquet part files read
    as one log in path order, or a pyarrow Table holding pointer columns). Each example
    batch holds ``columns`` of the log (every column when None), in log order; batches
    have ``batch_size`` rows except perhaps the last.
    ``store`` is a handle or a path (opened at its latest version); it must be at a
    version at least as new as every pointer's. ``verify`` and ``on_mismatch`` are
    passed to :func:`lateseq.materialize` (a mismatch, or a transform's overflow, raises
    at its batch, the batches before it yielded). Small batches are rebuilt several at a time (``READ_BYTES`` of
    sequences at most), each yielded as its part of the read: views of its arrays, so a
    batch kept alive keeps the whole read (copy what you keep).
    """
    if not isinstance(store, Store):
        store = Store(store)
    batch_size = exact_integer("batch_size", batch_size, 1, 2**63 - 1)
    verify, on_mismatch = reading_checks(verify, on_mismatch)
    require_projection(projection)
    projection.resolve(store.schema)  # fail on unknown columns before reading anything
    examples = examples if isinstance(examples, pa.Table) else ExampleLog(examples)  # its rows: the pass's
    chunks = _example_chunks(examples, batch_size, columns)  # checked now
    return _materialized(store, _reads(chunks, batch_size, store.schema, [projection]), examples.num_rows,
                         batch_size, projection, columns, verify, on_mismatch)


def _materialized(store: Store, reads: Iterator[pa.RecordBatch], rows: int, batch_size: int, projection: Projection,
                  columns: Sequence[str] | None, verify: bool,
                  on_mismatch: Literal["raise", "flag"]) -> Iterator[tuple[pa.RecordBatch, JaggedBatch]]:
    first = 0
    recycler = Recycler()
    reading = ReadPass()
    for read in reads:
        try:
            with recycling(recycler), store._in_pass(reading, rows - first):
                sequences: JaggedBatch | None = materialize(store, read, projection, on_mismatch=on_mismatch,
                                                            verify=verify)
        except (ChecksumMismatch, TransformOverflow):  # read again batch by batch: it raises at its batch
            sequences = None
        kept = read.select(_selected(read.schema, columns))
        for start in range(0, read.num_rows, batch_size):
            stop = min(start + batch_size, read.num_rows)
            part = part_of(sequences, start, range(first + start, first + stop), lambda: materialize(
                store, read.slice(start, stop - start), projection, on_mismatch=on_mismatch, verify=verify))
            yield kept.slice(start, stop - start), part
        first += read.num_rows


def part_of(sequences: JaggedBatch | None, start: int, log_rows: Sequence[int],
            read_alone: Callable[[], JaggedBatch]) -> JaggedBatch:
    """The sequences of a part of a read (its rows from ``start``, rows ``log_rows`` of the
    log): its slice of the read's ``sequences``, or, where the read raised (None), the part
    read again alone (``read_alone``), whose error then names its rows of the log: the
    batches before it are handed out first."""
    if sequences is not None:
        return sequences.slice(start, start + len(log_rows))
    with rows_in_log(log_rows):
        return read_alone()


def materialize_log(
    store: Store | str | os.PathLike,
    examples: ExampleSource,
    projection: Projection,
    out_path: str | os.PathLike,
    batch_size: int = 1024,
    columns: Sequence[str] = (),
    *,
    verify: bool = True,
    drop_deleted: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Writes every example's sequences to ``out_path`` (Parquet); returns the rows written.

    One row per example, in log order: first the example-log ``columns`` asked for,
    then one list column per projected column, named as the column (oldest event
    first). Streams read by read with constant memory. ``drop_deleted`` leaves out the
    examples of users deleted (``Store.delete``) since their pointer's version, as the
    training loader does (without it their changed histories are a ChecksumMismatch).
    ``progress`` is called with the number of rows read after each read (several
    batches, up to ``READ_BYTES``). A file already at ``out_path`` is replaced once the
    new one is whole, as ``pyarrow.parquet.write_table`` replaces it (the CLI asks for
    ``--force``; what is there is output, made again by running this again); anything but
    a regular file there is refused.
    """
    return _write_logs(store, examples, {"": projection}, {"": os.fspath(out_path)}, batch_size, columns,
                       verify, drop_deleted, progress)


def materialize_log_tenants(
    store: Store | str | os.PathLike,
    examples: ExampleSource,
    tenants: Mapping[str, Projection],
    out_dir: str | os.PathLike,
    batch_size: int = 1024,
    columns: Sequence[str] = (),
    *,
    verify: bool = True,
    drop_deleted: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """:func:`materialize_log` for several tenants in one pass over the log (each
    history located once): ``out_dir/NAME.parquet`` per tenant; returns those paths.
    ``out_dir`` is made if its parent folder exists (and removed again if the run fails),
    as ``lateseq materialize --tenants`` makes it."""
    check_tenant_names(tenants)
    if not os.fspath(out_dir):  # an unset variable's "": not the current folder (s48C)
        raise SchemaError("out_dir is empty; name the folder the tenants' files go to ('.' for the current one)")
    usable_path(out_dir)  # before the folder is made (s48C)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir {out_dir} is a file; it names the folder the tenants' files go to")
    # absolute: what it returns stays right after a change of directory (s48F)
    outs = {name: os.path.join(Path(out_dir).absolute(), f"{name}.parquet") for name in tenants}
    folder = Path(out_dir)
    made = not folder.exists() and not folder.is_symlink() and folder.absolute().parent.is_dir()
    if made:
        folder.mkdir()
    try:
        _write_logs(store, examples, dict(tenants), outs, batch_size, columns, verify, drop_deleted, progress)
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a failed run leaves no folder it made
        raise
    return outs


def _write_logs(store: Store | str | os.PathLike, examples: ExampleSource, tenants: dict[str, Projection],
                outs: dict[str, str], batch_size: int, columns: Sequence[str], verify: bool, drop_deleted: bool,
                progress: Callable[[int], None] | None) -> int:
    """Each tenant's sequences to its own Parquet file (outside the store), all written
    under temporary names and renamed only once every file is complete: a failed run
    replaces none."""
    if not isinstance(store, Store):
        store = Store(store)
    if exact_bool("drop_deleted", drop_deleted) and not exact_bool("verify", verify):
        raise SchemaError(DROP_NEEDS_VERIFY)
    for tenant, projection in tenants.items():
        require_projection(projection, f"tenant {tenant!r} must be" if tenant else "projection must be")
    names = {tenant: projection.resolve(store.schema) for tenant, projection in tenants.items()}
    if isinstance(columns, str):
        raise SchemaError(f"columns must be a list of example-log column names, not the string {columns!r}")
    columns = list(dict.fromkeys(columns))  # a column named twice is kept once
    for tenant, projected in names.items():
        clash = [c for c in columns if c in projected]
        if clash:
            label = f"tenant {tenant!r}: " if tenant else ""
            raise SchemaError(f"{label}example columns {clash} clash with projected columns of the same name")
    examples = examples if isinstance(examples, pa.Table) else ExampleLog(examples)  # its footers read once
    log_schema = examples.schema
    _check_columns(log_schema, columns)  # unknown ones are named
    # a transformed column keeps its name: its field says what it holds (ages, not times: s48B)
    schemas = {tenant: pa.schema([log_schema.field(c) for c in columns] + [
        pa.field(n, pa.list_(pa.int64() if n == store.schema.time_col else PAYLOAD_TYPES[store.schema.columns[n]]),
                 metadata=_field_note(tenants[tenant], store.schema, n))
        for n in projected], metadata={"lateseq.projection": repr(tenants[tenant]),
                                       **({"lateseq.store_time_unit": store.schema.time_unit} if store.schema.time_unit
                                          else {})})
        for tenant, projected in names.items()}
    for path in outs.values():
        outside_store(store, path)
        if isinstance(examples, ExampleLog) and _within(path, examples):
            raise SchemaError(f"{path} is {'in ' * os.path.isdir(examples.path)}the example log this reads; write "
                              "the sequences elsewhere")
    rows = written_rows = 0
    on_mismatch: Literal["raise", "flag"] = "flag" if drop_deleted else "raise"
    pending: dict[str, list[pa.Table]] = {tenant: [] for tenant in tenants}
    held = dict.fromkeys(tenants, 0)  # rows in pending
    with all_replaced_when_written(list(outs.values())) as written, contextlib.ExitStack() as stack:
        writers = {t: stack.enter_context(pq.ParquetWriter(tmp, schemas[t])) for t, tmp in zip(outs, written)}
        chunks = _example_chunks(examples, batch_size, columns)
        reading = ReadPass()
        for batch in _reads(chunks, batch_size, store.schema, list(tenants.values())):
            read_rows = batch.num_rows
            with rows_in_log(range(rows, rows + read_rows)), store._in_pass(reading, examples.num_rows - rows):
                if len(tenants) == 1:
                    (tenant, projection), = tenants.items()
                    sequences = {tenant: materialize(store, batch, projection, verify=verify,
                                                     on_mismatch=on_mismatch)}
                else:
                    sequences = materialize_tenants(store, batch, tenants, verify=verify, on_mismatch=on_mismatch)
                undeleted = None if not drop_deleted else undeleted_rows(store, batch, next(
                    iter(sequences.values())).mismatched)
            if undeleted is not None:
                batch = batch.take(pa.array(undeleted))
                sequences = {tenant: seqs.take(undeleted) for tenant, seqs in sequences.items()}
            kept = batch.select(columns)
            for tenant, seqs in sequences.items():
                lists = seqs.to_arrow()
                schema = schemas[tenant]
                arrays = list(kept.columns) + [lists.column(n).cast(schema.field(n).type) for n in names[tenant]]
                pending[tenant].append(pa.Table.from_arrays(arrays, schema=schema))
                held[tenant] += batch.num_rows
                if held[tenant] >= _ROW_GROUP_ROWS:  # row groups of _ROW_GROUP_ROWS, the last aside
                    table = pa.concat_tables(pending[tenant])
                    whole = held[tenant] - held[tenant] % _ROW_GROUP_ROWS
                    writers[tenant].write_table(table.slice(0, whole), _ROW_GROUP_ROWS)
                    pending[tenant], held[tenant] = [table.slice(whole)], held[tenant] - whole
            rows += read_rows
            written_rows += batch.num_rows
            if progress is not None:
                progress(rows)
        for tenant, tables in pending.items():
            if tables:
                writers[tenant].write_table(pa.concat_tables(tables), _ROW_GROUP_ROWS)
    return written_rows


def _field_note(projection: Projection, schema: Schema, column: str) -> dict[str, str] | None:
    """What a projected column's values are, where its type does not say: a transform's
    result, or times as integers (a Fat Row's timestamp[us] came back as int64 with nothing
    naming the unit, s51A)."""
    transform = projection.transforms.get(column)
    if transform is not None:
        return {"lateseq.transform": transform, "description": TRANSFORMS[transform]}
    if column == schema.time_col and schema.time_unit is not None:
        return {"lateseq.time_unit": schema.time_unit,
                "description": f"event times, {UNIT_WORDS[schema.time_unit]} since 1970-01-01 UTC"}
    return None


def in_store_time(column: pa.Array | pa.ChunkedArray, name: str, schema: Schema) -> pa.Array | pa.ChunkedArray:
    """An example column as the loaders hand it on: timestamps (dictionary-encoded too) as
    counts of the store's time unit, as the histories' times are (a ``timestamp[ms]``
    request_ts beside times in µs would be 1000x off); any other column as it is."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not pa.types.is_timestamp(kind):
        return column
    what = f"example column {name!r}"
    return schema.times_to_store(column if kind == column.type else decoded(column, what), what)


DROP_NEEDS_VERIFY = ("drop_deleted leaves out the examples of deleted users and raises on any other changed history, "
                     "which only the checksums find: it needs verify=True")


def undeleted_rows(store: Store, examples: pa.Table | pa.RecordBatch, mismatched: np.ndarray) -> np.ndarray | None:
    """The rows of ``examples`` to keep where the examples of deleted users are left out
    (None: all): every example of a user deleted since its pointer's version, its label
    too, whether or not its history changed (an empty one does not); any other mismatch
    is a ChecksumMismatch naming its rows."""
    deleted = store.deleted_after(examples.column("user_id").to_numpy(), examples.column("uih_version").to_numpy())
    other = np.flatnonzero(mismatched & ~deleted)
    if len(other):
        raise ChecksumMismatch(
            f"{len(other)} of {len(examples)} rebuilt histories differ from what online saw (first rows: "
            f"{other[:5].tolist()}), and are not of users deleted since (drop_deleted leaves those out): "
            "the store lost or gained events those pointers counted, or the log was logged against another "
            "store.", other.tolist())
    return np.flatnonzero(~deleted) if deleted.any() else None


# ---------------------------------------------------------------- reading the example log


def _within(path: str, log: ExampleLog) -> bool:
    """Whether ``path`` is one of the example log's files (through a link or another name
    too: a part file linked from elsewhere, written through, would be lost), or in its folder."""
    out, folder = Path(path).absolute(), Path(log.path)
    return (out.exists() and any(os.path.samefile(out, f) for f in log.files)
            or (folder.is_dir() and (out.is_relative_to(folder) or out.resolve().is_relative_to(folder.resolve()))))


def _selected(schema: pa.Schema, columns: Sequence[str] | None) -> list[str]:
    return list(schema.names) if columns is None else list(columns)


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None) -> list[str] | None:
    """The columns to read: what rebuilding the examples reads (the pointer's, a two-tier
    record's) plus those asked for (None: all)."""
    repeated = sorted({n for n in (schema.names if columns is None else columns) if schema.names.count(n) > 1})
    if repeated:
        raise SchemaError(f"example log has columns named more than once: {repeated}; name the columns to read "
                          "(columns=) without them, or rename them")
    if columns is None:
        return None
    if isinstance(columns, str):  # read letter by letter: "no columns ['l', 'a', 'b', ...]"
        raise SchemaError(f"columns must be a list of names, not the string {columns!r} (columns=[{columns!r}])")
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise SchemaError(f"example log has no columns {unknown} (it has {schema.names})")
    return list(dict.fromkeys(protocol_columns(schema) + list(columns)))


def _example_chunks(examples: ExampleSource | ExampleLog, batch_size: int,
                    columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    """Checks the log and its columns now; returns an iterator over chunks of whole
    batches of it, as many as ``_CHUNK_READS`` reads' rows (READ_POINTERS each) and
    READ_BYTES of the columns read allow (``_reads`` cuts them into reads): read 8,192 rows
    at a time, a log of 19 KB rows held 360 MB (s49C)."""
    if isinstance(examples, pa.Table):
        examples = decoded_pointer_columns(examples)
        read = _check_columns(examples.schema, columns)
        table = examples if read is None else examples.select(read)
        return _table_batches(table, _chunk_rows(batch_size, table.nbytes / max(1, table.num_rows)))
    log = examples if isinstance(examples, ExampleLog) else ExampleLog(examples)
    read = _check_columns(log.schema, columns)
    return _parquet_batches(log, _chunk_rows(batch_size, _row_bytes(log, read)), read)


# a chunk holds many reads' pointers: each chunk's last read is what is left of it, and a
# read costs ~0.1 ms whatever its size (chunks of one read's pointers: 12 of the
# benchmark's 37 reads at N=256 held 1-2 batches of 1024; 1.09x, 1.07x, 1.05x slower at
# N=256, 1024, 4096 than chunks of 4, alternated in one process; 4 1.06x slower than 16
# at N=256, the same at 1024 and 4096). At most READ_BYTES of the log's columns still.
_CHUNK_READS = 16


def _chunk_rows(batch_size: int, row_bytes: float) -> int:
    most = min(_CHUNK_READS * READ_POINTERS, int(READ_BYTES / max(1.0, row_bytes)))
    return batch_size * max(1, most // batch_size)


def _row_bytes(log: ExampleLog, read: list[str] | None) -> float:
    """Bytes a row of ``log`` takes, of the columns ``read`` (all: None), as its first row
    group with rows says (uncompressed; a dictionary-encoded column counts as encoded: an
    estimate)."""
    for meta in log.metadata:
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows:
                columns = (group.column(c) for c in range(group.num_columns))
                return sum(c.total_uncompressed_size for c in columns
                           if read is None or c.path_in_schema.split(".")[0] in read) / group.num_rows
    return 0.0


def _table_batches(table: pa.Table, batch_size: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, table.num_rows, batch_size):
        # one chunk per column: zero-copy unless the slice spans chunks
        yield table.slice(start, batch_size).combine_chunks().to_batches()[0]


def _parquet_batches(log: ExampleLog, batch_size: int, read: list[str] | None) -> Iterator[pa.RecordBatch]:
    with log.open(streamed=True) as reader:
        yield from reader.iter_batches(batch_size, read)
