"""An example log on disk: one Parquet file, or a folder of part files (as Spark, Flink
or a logging service leave them) read as one log.

A folder's files are read in the order of their paths, names starting with ``_`` or
``.`` left out (Spark's ``_SUCCESS`` and ``_temporary/``, checksum files), as pyarrow's
datasets leave them out; its rows are numbered across the files in that order, and so
are its row groups, which loaders deal to ranks and workers. Each file's footer is
checked once and digested: a file rewritten or replaced under a reader is found.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ._errors import SchemaError
from ._format import holds_store, usable_path
from ._parquet import check_rows_read, open_checked
from ._schema import frame_hint

Identity = tuple[int, int, int, int]  # device, inode, size, modification time of a file as opened


def parquet_path(path: str | os.PathLike) -> str:
    """``path`` as an absolute path, once it is known to name a file or a folder: a loader
    reads it later, maybe after the trainer changed directory (Hydra's launcher does) or
    in a worker of another one, maybe on another host (so links are not resolved here:
    they may lead elsewhere there). ``..`` stays for the system to resolve
    (``link/../x`` is x beside the link's target, which shortening the text would miss)."""
    if not isinstance(path, str | os.PathLike):
        raise SchemaError(f"examples must be a pyarrow Table or a Parquet path, not {type(path).__name__}"
                          f"{frame_hint(path)}")
    usable_path(path)  # a NUL byte: "no example log at" the path printed with it raw (s48C)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no example log at {path}")
    if holds_store(path):  # read as a folder log, a file of its cache was blamed
        raise SchemaError(f"{path} is a lateseq store, not an example log: pass the log (Parquet, with pointers) "
                          "after the store")
    return str(Path(path).absolute())


def part_files(folder: str) -> list[str]:
    """A folder log's files, in path order (those pyarrow's datasets read: linked folders
    too, each real folder once, so a link to a folder above ends no walk)."""
    def unreadable(exc: OSError) -> None:  # os.walk would leave a folder it cannot list out, its rows lost
        raise SchemaError(f"cannot list {exc.filename}, a folder of example log {folder}: {exc.strerror}") from exc

    found, seen = [], set()
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found += [os.path.join(root, f) for f in files if not f.startswith(("_", "."))]
    if not found:
        raise SchemaError(f"example log {folder} is a folder without Parquet files (names starting with '_' or '.' "
                          "are left out, as Spark's _SUCCESS and _temporary/)")
    return sorted(found)


def footer_digest(path: str) -> str:
    """A digest of a Parquet file's footer (its schema, row groups, column chunk offsets
    and statistics), read in one small read: what tells a log from the same file rewritten."""
    digest = xxhash.xxh3_64()
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - 8, 0))
            tail = file.read(8)
            footer = int.from_bytes(tail[:4], "little")
            parquet = size >= 12 and tail[4:] == b"PAR1" and footer <= size - 12  # else a seek said EINVAL
            if parquet:
                file.seek(size - 8 - footer)
                digest.update(file.read())
    except OSError as exc:
        raise SchemaError(f"cannot read example log {path}: {exc}") from exc
    if not parquet:
        raise SchemaError(f"example log {path} is not a Parquet file ({size:,} bytes, without Parquet's footer at "
                          "the end: empty, cut short, or another format)")
    return digest.hexdigest()


def file_identity(path: str) -> Identity:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _written(path: str) -> tuple[int, int] | None:
    """(size, modification time) of a file: what a rewrite changes, on any host that reads
    it (a dataset made on one host may be read on another, where device and inode differ)."""
    try:
        return file_identity(path)[2:]
    except OSError:
        return None


class ExampleLog:
    """A Parquet example log (a file or a folder of them), its footers checked and
    digested; picklable, so a loader's workers read it without parsing them again (a log
    of 10,000 row groups has a 6 MB footer: ~0.2 s, every epoch of every worker)."""

    def __init__(self, path: str | os.PathLike):
        self.path = parquet_path(path)
        self.files = tuple(part_files(self.path)) if os.path.isdir(self.path) else (self.path,)
        self.written = tuple(_written(f) for f in self.files)  # what a rewrite changes, per file
        # digested before a footer is parsed: a file replaced in between fails every later check
        self.footers = tuple(footer_digest(f) for f in self.files)
        footers = [_checked_footer(f) for f in self.files]
        self.metadata: tuple[pq.FileMetaData, ...] = tuple(meta for meta, _ in footers)
        self.schema = _one_schema(self.files, [schema for _, schema in footers])
        sizes = [[meta.row_group(g).num_rows for g in range(meta.num_row_groups)] for meta in self.metadata]
        self.row_groups = tuple(n for file in sizes for n in file)  # rows of each, across the files
        self._file_of = np.repeat(np.arange(len(self.files)), [len(s) for s in sizes])
        self._local = np.concatenate([np.arange(len(s)) for s in sizes]) if sizes else np.zeros(0, np.int64)
        self.num_rows = sum(meta.num_rows for meta in self.metadata)

    @property
    def digest(self) -> str:
        """What tells this log from another or from itself rewritten (a single file's: its
        footer's digest, as states saved before folders were read hold)."""
        if len(self.files) == 1 and self.files[0] == self.path:
            return self.footers[0]
        named = xxhash.xxh3_64()
        for file, footer in zip(self.files, self.footers, strict=True):
            named.update(f"{os.path.relpath(file, self.path)}\0{footer}\0".encode())
        return named.hexdigest()

    def changed(self) -> bool:
        """Whether a file was rewritten, replaced, touched, added or removed since this was
        read (a rewrite can leave the footer as it was: one label corrected in a file without
        compression or dictionaries)."""
        try:
            files = tuple(part_files(self.path)) if os.path.isdir(self.path) else (self.path,)
            return files != self.files or tuple(_written(f) for f in files) != self.written or tuple(
                footer_digest(f) for f in files) != self.footers
        except (OSError, SchemaError):
            return True

    def open(self, streamed: bool = False) -> LogReader:
        """A reader of its row groups, or (``streamed``) of its batches (``LogReader.iter_batches``)."""
        return LogReader(self, streamed)

    def __str__(self) -> str:
        return self.path


class LogReader:
    """The files of an ``ExampleLog`` opened through their checked footers, as they are
    needed; each read checks its file was not rewritten in place meanwhile (its later row
    groups would be read through the old footer from the new bytes; a file renamed over
    it is no harm: the open file keeps its bytes)."""

    def __init__(self, log: ExampleLog, streamed: bool = False):
        self.log = log
        self.streamed = streamed  # (see open_checked)
        self._open: dict[int, tuple[pq.ParquetFile, Identity]] = {}

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for source, _ in self._open.values():
            source.close()
        self._open.clear()

    def read_row_groups(self, groups: Sequence[int], columns: list[str] | None) -> pa.Table:
        """The log's row groups ``groups`` (numbered across its files), in that order."""
        groups = np.asarray(groups, np.int64)
        if not len(groups):
            return self.log.schema.empty_table() if columns is None else self.log.schema.empty_table().select(columns)
        files = self.log._file_of[groups]
        cuts = np.flatnonzero(np.diff(files)) + 1
        tables = [self._read(int(files[part[0]]), self.log._local[groups[part]].tolist(), columns)
                  for part in np.split(np.arange(len(groups)), cuts)]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def iter_batches(self, batch_size: int, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        """The log's rows in batches of ``batch_size`` (the last may be shorter), across files
        (of a reader opened ``streamed``: one that is not holds what it read till closed)."""
        held: list[pa.RecordBatch] = []
        count = 0
        for index in range(len(self.log.files)):
            source, _ = self._source(index)
            rows = 0
            with self._named(index):
                # one thread: Arrow's pool costs more than it saves on a batch (4x on 1024
                # pointers), and a loader's worker is one core already
                for batch in source.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
                    self._check(index)
                    batch = self._as_log(batch)
                    rows += batch.num_rows
                    if not held and batch.num_rows == batch_size:
                        yield batch
                        continue
                    held.append(batch)
                    count += batch.num_rows
                    while count >= batch_size:
                        joined = pa.Table.from_batches(held).combine_chunks()
                        yield joined.slice(0, batch_size).to_batches()[0]
                        rest = joined.slice(batch_size)
                        held, count = ([rest.combine_chunks().to_batches()[0]] if rest.num_rows else []), rest.num_rows
            check_rows_read(rows, self.log.metadata[index], self.log.files[index], "example log")
            self._open.pop(index)[0].close()  # a pass over a folder of 1,000 files opens one at a time
        if count:
            yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]

    def _read(self, index: int, groups: list[int], columns: list[str] | None) -> pa.Table:
        source, _ = self._source(index)
        with self._named(index):
            table = source.read_row_groups(groups, columns=columns, use_threads=False)
        self._check(index)
        return self._as_log(table)

    def _as_log(self, data: pa.Table | pa.RecordBatch) -> Any:
        """``data`` read from one file, with the log's schema (its files may differ in what
        they declare nullable, and in their metadata)."""
        schema = pa.schema([self.log.schema.field(name) for name in data.schema.names],
                           metadata=self.log.schema.metadata)
        return data if data.schema.equals(schema, check_metadata=True) else type(data).from_arrays(
            data.columns, schema=schema)

    def _source(self, index: int) -> tuple[pq.ParquetFile, Identity]:
        """File ``index`` opened through its checked footer, once it is known to be the file
        that footer was read from (another file there would be read through the old footer)."""
        if index not in self._open:
            file = self.log.files[index]
            try:
                opened = file_identity(file)
                same = opened[2:] == self.log.written[index] and footer_digest(file) == self.log.footers[index]
            except (OSError, SchemaError):
                same = False
            if not same:
                raise SchemaError(f"example log {file} changed, or is gone, since the log was first read; read it "
                                  "again (a new dataset or reader)")
            self._open[index] = (open_checked(file, self.log.metadata[index], streamed=self.streamed), opened)
        return self._open[index]

    def _check(self, index: int) -> None:
        """SchemaError if file ``index`` was rewritten in place since it was opened."""
        file, (_, opened) = self.log.files[index], self._open[index]
        try:
            now = file_identity(file)
        except OSError:  # removed or renamed away: the open file still reads its own bytes
            return
        if now[:2] == opened[:2] and now != opened:
            raise SchemaError(f"example log {file} was rewritten in place while it was read (rows of two files "
                              "would be mixed): write a new file and rename it into place, then make a new reader")

    @contextlib.contextmanager
    def _named(self, index: int) -> Iterator[None]:
        """Arrow's and the system's read errors as a SchemaError naming the file (after the
        likeliest cause, a file rewritten in place, is looked for)."""
        try:
            yield
        except (pa.ArrowException, OSError) as exc:
            self._check(index)
            raise SchemaError(f"cannot read example log {self.log.files[index]}: {exc}") from exc


def _checked_footer(file: str) -> tuple[pq.FileMetaData, pa.Schema]:
    with open_checked(file) as source:
        return source.metadata, source.schema_arrow


def _one_schema(files: tuple[str, ...], schemas: list[pa.Schema]) -> pa.Schema:
    """The files' one Arrow schema, every column nullable (writers differ in what they
    declare), or SchemaError naming a file that differs (read as one log, a column would
    change type or go missing between batches)."""
    schemas = [pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata) for schema in schemas]
    for file, schema in zip(files[1:], schemas[1:], strict=True):
        if not schema.equals(schemas[0]):
            raise SchemaError(f"the files of example log {os.path.dirname(file)} hold different columns: {file} has "
                              f"{_listed(schema)}, {files[0]} has {_listed(schemas[0])}; write every file with the "
                              "same columns and types")
    return schemas[0]


def _listed(schema: pa.Schema) -> str:
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "]"
