"""Streaming reads of an example log: pointers in, example batches with sequences out.

This is the torch-free core that framework loaders (a PyTorch ``IterableDataset``,
Ray Data ``map_batches``) wrap. It reads the example log batch by batch, so memory
stays bounded by one batch whatever the size of the log.

>>> for examples, seqs in iter_batches(store, "examples.parquet", Projection(200, ["item_id"])):
...     train_step(examples["label"], seqs.values["item_id"], seqs.offsets)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import SchemaError
from ._jagged import JaggedBatch
from ._materialize import materialize
from ._pointers import POINTER_FIELDS
from ._projection import Projection
from ._schema import PAYLOAD_TYPES
from ._store import Store

ExampleSource = pa.Table | str | os.PathLike
_ROW_GROUP_ROWS = 65536  # rows per row group of materialize_log's output


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

    ``examples`` is an example log (a Parquet path or a pyarrow Table holding pointer
    columns). Each example batch holds ``columns`` of the log (every column when None),
    in log order; batches have ``batch_size`` rows except perhaps the last.
    ``store`` is a handle or a path (opened at its latest version); it must be at a
    version at least as new as every pointer's. ``verify`` and ``on_mismatch`` are
    passed to :func:`lateseq.materialize`.
    """
    if not isinstance(store, Store):
        store = Store(store)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SchemaError(f"batch_size must be a positive integer, got {batch_size!r}")
    projection.resolve(store.schema)  # fail on unknown columns before reading anything
    batches = _example_batches(examples, batch_size, columns)  # validates the log eagerly
    return _materialized(store, batches, projection, columns, verify, on_mismatch)


def _materialized(store: Store, batches: Iterator[pa.RecordBatch], projection: Projection,
                  columns: Sequence[str] | None, verify: bool,
                  on_mismatch: Literal["raise", "flag"]) -> Iterator[tuple[pa.RecordBatch, JaggedBatch]]:
    for batch in batches:
        sequences = materialize(store, batch, projection, on_mismatch=on_mismatch, verify=verify)
        yield batch.select(_selected(batch.schema, columns)), sequences


def materialize_log(
    store: Store | str | os.PathLike,
    examples: ExampleSource,
    projection: Projection,
    out_path: str | os.PathLike,
    batch_size: int = 1024,
    columns: Sequence[str] = (),
    *,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Writes every example's sequences to ``out_path`` (Parquet); returns the row count.

    One row per example, in log order: first the example-log ``columns`` asked for,
    then one list column per projected column, named as the column (oldest event
    first). Streams batch by batch with constant memory. ``progress`` is called with
    the number of rows after each batch is written.
    """
    if not isinstance(store, Store):
        store = Store(store)
    names = projection.resolve(store.schema)
    columns = list(columns)
    clash = [c for c in columns if c in names]
    if clash:
        raise SchemaError(f"example columns {clash} clash with projected columns of the same name")
    batches = iter_batches(store, examples, projection, batch_size, columns, verify=verify)
    log_schema = _read_schema(examples)
    schema = pa.schema([log_schema.field(c) for c in columns] + [
        pa.field(n, pa.list_(pa.int64() if n == store.schema.time_col
                             else PAYLOAD_TYPES[store.schema.columns[n]]))
        for n in names
    ])
    out_path = os.fspath(out_path)
    tmp = os.path.join(os.path.dirname(out_path) or ".", f".tmp-{os.path.basename(out_path)}")
    rows = 0
    pending: list[pa.Table] = []
    try:
        # written under a temporary name: a failed run leaves no partial output behind
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch, seqs in batches:
                lists = seqs.to_arrow()
                arrays = list(batch.columns) + [lists.column(n).cast(schema.field(n).type) for n in names]
                pending.append(pa.Table.from_arrays(arrays, schema=schema))
                rows += batch.num_rows
                if sum(t.num_rows for t in pending) >= _ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending.clear()
                if progress is not None:
                    progress(rows)
            if pending:
                writer.write_table(pa.concat_tables(pending))
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return rows


# ---------------------------------------------------------------- reading the example log


def _selected(schema: pa.Schema, columns: Sequence[str] | None) -> list[str]:
    return list(schema.names) if columns is None else list(columns)


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None) -> list[str] | None:
    """The columns to read: the pointer columns plus those asked for (None: all)."""
    if columns is None:
        return None
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise SchemaError(f"example log has no columns {unknown} (it has {schema.names})")
    wanted = [f.name for f in POINTER_FIELDS if f.name in schema.names] + list(columns)
    return list(dict.fromkeys(wanted))


def _read_schema(examples: ExampleSource) -> pa.Schema:
    if isinstance(examples, pa.Table):
        return examples.schema
    with _open_parquet(examples) as source:
        return source.schema_arrow


def _open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    if not isinstance(path, str | os.PathLike):
        raise SchemaError(f"examples must be a pyarrow Table or a Parquet path, not {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no example log at {path}")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"cannot read example log {path} as Parquet: {exc}") from exc


def _example_batches(examples: ExampleSource, batch_size: int,
                     columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    """Checks the log and its columns now; returns an iterator over its batches."""
    if isinstance(examples, pa.Table):
        read = _check_columns(examples.schema, columns)
        return _table_batches(examples if read is None else examples.select(read), batch_size)
    source = _open_parquet(examples)
    read = _check_columns(source.schema_arrow, columns)
    return _parquet_batches(source, str(examples), batch_size, read)


def _table_batches(table: pa.Table, batch_size: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, table.num_rows, batch_size):
        # one chunk per column: zero-copy unless the slice spans chunks
        yield table.slice(start, batch_size).combine_chunks().to_batches()[0]


def _parquet_batches(source: pq.ParquetFile, name: str, batch_size: int,
                     read: list[str] | None) -> Iterator[pa.RecordBatch]:
    with source:
        try:
            yield from source.iter_batches(batch_size=batch_size, columns=read)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"cannot read example log {name}: {exc}") from exc
