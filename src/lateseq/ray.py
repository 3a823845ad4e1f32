"""Ray Data: sequences rebuilt on CPU workers, handed to the trainer as lateseq Batches.

Disaggregated preprocessing: the trainer's process need not rebuild histories.
``materialized`` reads an example log as a Ray Dataset and rebuilds each example's
sequences in a pool of actors (each opens the store once, at the version the driver
pinned); each output row holds the example's log row number, its example columns and
one list column per projected column. ``Collate`` turns those Arrow batches into
``lateseq.torch.Batch`` (values + offsets) in ``iter_torch_batches``, where Ray would
otherwise make numpy object arrays of ragged lists (ray#44615).

>>> ds = lateseq.ray.materialized(store, "examples.parquet", Projection(200, ("item_id", "ts")), actors=4)
>>> for batch in ds.iter_torch_batches(batch_size=1024, collate_fn=lateseq.ray.Collate()):
...     ids = batch.padded("item_id", 200)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

try:
    import ray.data
    from ray.data.collate_fn import ArrowBatchCollateFn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lateseq.ray needs Ray Data: pip install 'lateseq[ray]'") from exc

from ._errors import SchemaError, exact_bool, exact_integer, rows_in_log
from ._events import partition_of
from ._examplelog import ExampleLog
from ._loader import DROP_NEEDS_VERIFY, in_store_time, undeleted_rows
from ._materialize import materialize
from ._projection import Projection, require_projection
from ._sampling import BLOCK_ROWS
from ._store import ReadPass, Reopening, Store

# lateseq.torch (and so torch) is imported where it is used, on the driver and the
# trainer: Ray's workers unpickle this module's tasks and actors, and need not load torch
if TYPE_CHECKING:
    from .torch import Batch

__all__ = ["ROW", "Collate", "Materializer", "materialized", "read_examples"]

ROW = "row"  # each example's row number in the log


def read_examples(examples: pa.Table | str | os.PathLike,
                  example_columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """The example log as a Ray Dataset: the columns materializing needs, the example
    columns, and ``ROW``, each example's row number in the log (Ray's own Parquet reader
    does not give it; it says which examples came out, and joins them back to the log).

    A Parquet log is read in tasks of consecutive row groups (up to ``BLOCK_ROWS`` rows
    each, or one row group where it is bigger), each checking that the file is still the
    one planned; a Table is put in the object store.
    ``example_columns`` as in ``lateseq.torch.ExampleDataset`` (default: every numeric or
    bool column but the pointer's).
    """
    return _read(examples, example_columns)[0]


def _read(examples: pa.Table | str | os.PathLike, example_columns: Sequence[str] | None,
          blocks: int = 1, store: Store | None = None) -> tuple[ray.data.Dataset, list[str], int]:
    """(the log as a Dataset, its example columns, its rows), from the log's footers alone; a
    Table is cut into at least ``blocks`` blocks (of at most ``BLOCK_ROWS`` rows), so
    that as many actors share it, and a Parquet log's small row groups are read together
    up to that size. Pointers into versions newer than ``store`` are refused
    now, not in an actor (from a Parquet log's statistics)."""
    from .torch import _log_columns, _refuse_newer

    if isinstance(examples, pa.Table):
        if store is not None:
            _refuse_newer(store, examples)
        read, example_columns = _log_columns(examples.schema, example_columns)
        _check_row_name(read)
        table = examples.select(read)
        table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        step = max(1, min(BLOCK_ROWS, -(-table.num_rows // blocks)))
        parts = [table.slice(a, step) for a in range(0, max(table.num_rows, 1), step)]
        return ray.data.from_arrow(parts), example_columns, table.num_rows
    log = ExampleLog(examples)
    if store is not None:
        _refuse_newer(store, log.metadata)
    read, example_columns = _log_columns(log.schema, example_columns)
    sizes = np.array(log.row_groups, np.int64)
    _check_row_name(read)
    if not len(sizes):
        return ray.data.from_arrow(log.schema.empty_table().select(read).append_column(ROW, pa.array([], pa.int64()))
                                   ), example_columns, 0
    # a task reads consecutive row groups up to a block's rows, as a table is cut (a log of
    # 10,000 small row groups is not 10,000 tasks, each opening the file)
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    step = max(1, min(BLOCK_ROWS, -(-int(sizes.sum()) // blocks)))
    starts = np.flatnonzero(np.diff(firsts // step, prepend=-1))
    tasks = [{"groups": [int(a), int(b)], "first": int(firsts[a])}
             for a, b in zip(starts, [*starts[1:], len(sizes)], strict=True)]
    ds = ray.data.from_items(tasks).map_batches(
        _read_row_groups, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"path": log.path, "digest": log.digest, "written": log.written, "columns": read})
    return ds, example_columns, log.num_rows


def _check_row_name(read: list[str]) -> None:
    if ROW in read:
        raise SchemaError(f"the example column {ROW!r} clashes with the row numbers lateseq.ray adds; "
                          "rename it or leave it out of example_columns")


# the logs this process read, by path, footer digest and the files' sizes and times: a Ray
# worker runs many tasks. The digest alone named a rewrite that kept the footer (labels
# corrected in place), or another folder's parts of the same names: its rows were the first's
_LOGS: dict[tuple[str, str, tuple], ExampleLog] = {}


def _read_row_groups(tasks: pa.Table, path: str, digest: str, written: tuple, columns: list[str]) -> pa.Table:
    """Each task's row groups, with their rows' numbers, through footers this process
    parsed once (a log of 10,000 row groups has a 6 MB footer: ~0.1 s a task), of the log
    the driver planned (each file is read only if it is still the one it was)."""
    key = (str(path), digest, written)
    log = _LOGS.get(key)
    if log is None:
        log = ExampleLog(path)
        if (log.digest, log.written) != (digest, written):
            raise SchemaError(f"example log {path} changed since lateseq.ray planned its reads; read it again")
        _LOGS.clear()  # one log at a time, mostly: kept small
        _LOGS[key] = log
    tables = []
    with log.open() as reader:
        for (lo, hi), first in zip(tasks.column("groups").to_pylist(), tasks.column("first").to_pylist(),
                                   strict=True):
            table = reader.read_row_groups(range(lo, hi), columns)
            tables.append(table.append_column(ROW, pa.array(np.arange(first, first + table.num_rows,
                                                                      dtype=np.int64))))
    return pa.concat_tables(tables)


class Materializer:
    """Rebuilds the sequences of batches of an example log (a callable class for Ray
    Data's ``map_batches``).

    ``store`` (a handle, or how to reopen one) is opened once per actor, at the driver's
    version (or the latest once cleanup retired it), and keeps its segments mapped across
    batches. Each call's output:
    ``ROW``, the example columns, then one list column per projected column
    (``large_list``: 64-bit offsets, as ``Batch.offsets``), one row per example.
    ``pass_rows``: about how many examples this actor reads in all, which lets a store read
    with ``merged_reads="auto"`` build a merged copy as soon as the pass would pay for it.
    """

    def __init__(self, store: Store | Reopening, projection: Projection, example_columns: Sequence[str],
                 batch_size: int = 1024, verify: bool = True, drop_deleted: bool = False, *, pass_rows: int = 0):
        self.verify = exact_bool("verify", verify)  # "no" is true: checked here, not at an actor's first batch
        self.drop_deleted = exact_bool("drop_deleted", drop_deleted)
        if self.drop_deleted and not self.verify:
            raise SchemaError(DROP_NEEDS_VERIFY)
        self.store = store.open() if isinstance(store, Reopening) else store
        require_projection(projection)
        self.projection = projection
        self.names = projection.resolve(self.store.schema)
        self.example_columns = list(example_columns)
        clash = [c for c in [ROW, *self.example_columns] if c in self.names]
        if clash:
            raise SchemaError(f"example columns {clash} clash with projected columns of the same name")
        self.batch_size = batch_size
        self._left = exact_integer("pass_rows", pass_rows, 0, 2**63 - 1)
        self._reading = ReadPass()

    def __call__(self, examples: pa.Table) -> Iterator[pa.Table]:
        """Batches of at most ``batch_size`` examples (Ray may hand over more at once)."""
        for start in range(0, examples.num_rows, self.batch_size):
            part = examples.slice(start, self.batch_size).combine_chunks()
            # it named rows of this part, not of the log (s36F)
            with rows_in_log(part.column(ROW).to_numpy()), self.store._in_pass(self._reading, self._left):
                sequences = materialize(self.store, part, self.projection, verify=self.verify,
                                        on_mismatch="flag" if self.drop_deleted else "raise")
                kept = undeleted_rows(self.store, part, sequences.mismatched) if self.drop_deleted else None
            self._left = max(0, self._left - part.num_rows)
            if kept is not None:
                part, sequences = part.take(pa.array(kept)), sequences.take(kept)
            offsets = pa.array(sequences.offsets)
            lists = [pa.LargeListArray.from_arrays(offsets, pa.array(sequences.values[n])) for n in self.names]
            columns = {c: in_store_time(part.column(c), c, self.store.schema) for c in [ROW, *self.example_columns]}
            yield pa.Table.from_arrays([*columns.values(), *lists], names=[*columns, *self.names])


def materialized(store: Store | str | os.PathLike, examples: pa.Table | str | os.PathLike,
                 projection: Projection, *, actors: int = 1, batch_size: int = 1024, by_partition: bool = False,
                 example_columns: Sequence[str] | None = None, verify: bool = True,
                 drop_deleted: bool = False) -> ray.data.Dataset:
    """A Ray Dataset of the examples of ``examples`` with their exact sequences, rebuilt
    by ``actors`` ``Materializer`` actors on CPU workers (every example exactly once;
    Ray decides the order).

    ``store`` is a handle or a path (opened here at its latest version, which every
    actor then reads). ``examples`` is an example log (a Parquet file or folder, or a Table; see
    ``read_examples``). ``by_partition`` gives each actor its own store partitions
    (those ``p`` with ``p % actors == k``; a user's examples all go to one actor), so
    each actor maps and reads only its partitions' segments: worth it when a store's
    segments do not fit in one worker's page cache. It reads the log (pointers: small)
    once per actor, and needs a store of several partitions. ``drop_deleted`` leaves out
    the examples of users deleted (``Store.delete``) since their pointer's version, as
    ``lateseq.torch.ExampleDataset``'s does (any other changed history still raises).
    Read it with ``iter_torch_batches(collate_fn=Collate())``: Ray's own conversion turns
    a batch of histories all one length into a dense tensor of that width, silently (0
    for empty ones), and fails on the first ragged batch (s51E).
    """
    store = store if isinstance(store, Store) else Store(store)
    actors, batch_size = exact_integer("actors", actors, 1), exact_integer("batch_size", batch_size, 1)
    if by_partition and store.schema.partitions == 1:
        raise SchemaError("by_partition shares store partitions out to actors, and this store has one: "
                          "one actor would do everything; leave by_partition off")
    ds, example_columns, rows = _read(examples, example_columns, 1 if by_partition else actors, store)
    # the actors' checks (unknown columns, clashes) made here first, not in an actor
    Materializer(store, projection, example_columns, batch_size, verify, drop_deleted)
    options: dict[str, Any] = {
        "batch_size": batch_size, "batch_format": "pyarrow",
        # each actor reopens the store: at its version, or the latest once cleanup retired it (an epoch's
        # actors start anew, and a run of many epochs outlives a daily cleanup)
        "fn_constructor_args": (Reopening(store, verify), projection, example_columns, batch_size, verify,
                                drop_deleted),
        "fn_constructor_kwargs": {"pass_rows": -(-rows // actors)}}
    if not by_partition:
        return ds.map_batches(Materializer, compute=ray.data.ActorPoolStrategy(size=actors), **options)
    # one branch per actor, each keeping its partitions' examples (Ray Data cannot route
    # rows to a chosen actor of one pool; its grouping shuffle also fails on Ray 2.60)
    branches = [
        ds.map_batches(_of_actor, batch_format="pyarrow",
                       fn_kwargs={"actor": k, "actors": actors, "partitions": store.schema.partitions})
        .map_batches(Materializer, compute=ray.data.ActorPoolStrategy(size=1), **options)
        for k in range(actors)]
    return branches[0].union(*branches[1:]) if actors > 1 else branches[0]


def _of_actor(examples: pa.Table, actor: int, actors: int, partitions: int) -> pa.Table:
    """The examples whose user's store partition is ``actor``'s."""
    parts = partition_of(examples.column("user_id").to_numpy(), partitions)
    return examples.filter(pa.array(parts % actors == actor))


class Collate(ArrowBatchCollateFn):
    """``iter_torch_batches(collate_fn=Collate())``: each Arrow batch of ``materialized``
    as a ``lateseq.torch.Batch``, list columns as one values tensor each plus shared
    offsets, on ``device`` (Ray moves only tensors and dicts of them, not a Batch)."""

    def __init__(self, device: str | Any | None = None):
        super().__init__()
        self.device = device

    def __call__(self, batch: pa.Table) -> Batch:
        from .torch import Batch, _example_numpy, _tensor

        rows = batch.column(ROW).to_numpy()
        lists = [f.name for f in batch.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
        if not lists:
            raise SchemaError(f"batch has no list columns (it has {batch.schema.names}); collate the output "
                              "of lateseq.ray.materialized")
        offsets, values = None, {}
        for name in lists:
            column = batch.column(name).combine_chunks()
            raw = column.offsets.to_numpy().astype(np.int64)
            here = raw - raw[0]
            if offsets is not None and not np.array_equal(here, offsets):
                raise SchemaError(f"list column {name!r} has other lengths than {lists[0]!r}")
            offsets = here
            values[name] = _tensor(column.flatten().to_numpy(zero_copy_only=False))
        out = Batch(rows=_tensor(rows),
                    examples={n: _tensor(_example_numpy(batch, n)) for n in batch.schema.names
                              if n != ROW and n not in values},
                    offsets=_tensor(offsets), lengths=_tensor(np.diff(offsets)), values=values)
        return out if self.device is None else out.to(self.device)
