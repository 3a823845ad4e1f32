"""Parquet inputs (example logs, events, requests), read checked: the pages' CRCs where
the writer kept them, and what the footer, which no checksum covers, holds twice."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.parse
from collections.abc import Collection

import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import SchemaError

COLUMNS_KEY = b"lateseq:columns"  # in the footer of a Parquet file lateseq wrote: see columns_described


def open_checked(path: str | os.PathLike, checked: pq.FileMetaData | None = None,
                 what: str = "example log", streamed: bool = False) -> pq.ParquetFile:
    """The Parquet file at ``path``, its footer checked (``check_footer``), its pages' CRCs
    checked as they are read where it has them; or, with ``checked``, read through that
    footer, already checked, which the caller knows to be the file's. FileNotFoundError
    if there is none; SchemaError naming it if it cannot be read. ``streamed``: to be read
    through ``iter_batches`` (not pre-buffered: a pre-buffered file keeps every range it
    read until it is freed, closed or not, so a pass over a 200 MB log held 200 MB by its
    end; row groups read whole lose nothing to it, and a few of their columns read cold
    took 1.7x as long without it)."""
    return _opened(path, checked, what, streamed)[0]


def _opened(path: str | os.PathLike, checked: pq.FileMetaData | None,
            what: str, streamed: bool = False) -> tuple[pq.ParquetFile, bool, bool]:
    """``open_checked``'s file, and whether its INT96 times hold one beyond the nanosecond
    range and one finer than a microsecond (``_int96_times``): it is then read in
    microseconds (pyarrow reads INT96 as nanoseconds, which silently wrap outside
    1677-2262, 9999-12-31 becoming 1816-03-29)."""
    try:
        source = pq.ParquetFile(path, metadata=checked, page_checksum_verification=True, pre_buffer=not streamed)
        beyond, finer = _int96_times(source, path)
        _check_int96(beyond, finer, path, what)
        if beyond:
            source.close()
            source = pq.ParquetFile(path, metadata=source.metadata, page_checksum_verification=True,
                                    pre_buffer=not streamed, coerce_int96_timestamp_unit="us")
        if checked is None:
            check_footer(source, path, what)
    except FileNotFoundError:
        raise
    except UnicodeEncodeError as exc:  # pyarrow takes names as UTF-8
        raise SchemaError(f"cannot read {what} {os.fsdecode(path)!r}: its name is not UTF-8, which pyarrow "
                          "needs; rename it") from exc
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a name's damaged byte: not UTF-8
        text = os.fspath(path).lower().endswith((".csv", ".tsv", ".txt", ".dat", ".json", ".jsonl"))
        hint = (" (lateseq reads Parquet: read a text file with pyarrow.csv.read_csv or pandas, then write it "
                "with pyarrow.parquet.write_table, or give the table itself to the Python API)") if text else ""
        raise SchemaError(f"cannot read {what} {path} as Parquet: {exc}{hint}") from exc
    return source, beyond, finer


def read_checked(path: str | os.PathLike, what: str, ids: Collection[str] = ()) -> pa.Table:
    """A whole Parquet file (the CLI's events, requests, logs), checked as an example log
    is; or a folder of them (hive partitions too), read as pyarrow reads one, each checked.
    ``ids``: columns that hold ids (the store's user column) besides any ``*_id``."""
    if os.path.isdir(path):
        return _read_folder(path, what, ids)
    with open_checked(path, what=what) as source:
        try:
            table = source.read()
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"cannot read {what} {path}: {exc}") from exc
        check_rows_read(table.num_rows, source.metadata, path, what)
    return table


_NS_RANGE_US = (2**63 - 1) // 1000  # a time in microseconds beyond this is no int64 of nanoseconds


def _check_int96(beyond: bool, finer: bool, path: str | os.PathLike, what: str) -> None:
    if beyond and finer:
        raise SchemaError(f"{what} {path}: its INT96 times hold dates beyond 1677-2262 and times finer than a "
                          "microsecond; no unit keeps both (write them as int64 timestamps)")


def _int96_times(source: pq.ParquetFile, path: str | os.PathLike) -> tuple[bool, bool]:
    """Whether the file's INT96 times hold one beyond the nanosecond range, and one (that
    fits it) finer than a microsecond."""
    names = _int96_columns(source)
    if not names:
        return False, False
    as_us = pq.ParquetFile(path, coerce_int96_timestamp_unit="us").read(columns=names, use_threads=False)
    as_ns = source.read(columns=names, use_threads=False)
    beyond = finer = False
    for name in names:
        if not pa.types.is_timestamp(as_us.schema.field(name).type):
            continue  # nested INT96: left as pyarrow reads it
        us = as_us.column(name).combine_chunks().cast(pa.int64()).fill_null(0).to_numpy()
        ns = as_ns.column(name).combine_chunks().cast(pa.int64()).fill_null(0).to_numpy()
        fits = (us >= -_NS_RANGE_US) & (us <= _NS_RANGE_US)
        beyond |= not fits.all()
        finer |= bool((ns[fits] != us[fits] * 1000).any())
    return beyond, finer


def _int96_columns(source: pq.ParquetFile) -> list[str]:
    """The file's columns stored as INT96 (top-level names)."""
    schema = source.schema
    return list(dict.fromkeys(schema.column(i).path.split(".")[0] for i in range(len(schema))
                              if schema.column(i).physical_type == "INT96"))


def _int96_in(schema: pa.Schema, names: list[str], unit: str) -> pa.Schema:
    """``schema`` with its INT96 timestamp columns ``names`` read in ``unit``."""
    for name in dict.fromkeys(names):
        field = schema.field(name) if name in schema.names else None
        if field is not None and pa.types.is_timestamp(field.type):
            schema = schema.set(schema.get_field_index(name), field.with_type(pa.timestamp(unit, field.type.tz)))
    return schema


def _read_folder(path: str | os.PathLike, what: str, ids: Collection[str]) -> pa.Table:
    import pyarrow.dataset as ds  # here: it imports pandas, which lateseq's import does not need

    try:
        files = [fragment.path for fragment in ds.dataset(path, format="parquet").get_fragments()]
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(f"cannot read {what} {path} as Parquet: {exc}") from exc
    rows, beyond, finer, columns, typed, int96 = 0, False, False, None, None, []
    for file in files:
        source, file_beyond, file_finer = _opened(file, None, what)
        with source:
            rows += source.metadata.num_rows
            names = source.schema_arrow.names
            if source.metadata.num_rows:  # an empty file's types (pandas writes nulls) change no value
                own = _int96_columns(source)  # compared in one unit: which is read is the folder's choice
                int96 += own
                typed = _same_types(typed, (file, _int96_in(source.schema_arrow, own, "ns")), path, what)
        beyond, finer = beyond or file_beyond, finer or file_finer
        if columns is None:
            columns = (file, names)
        elif set(names) != set(columns[1]):  # pyarrow reads the folder with the first file's columns only
            extra, lacking = sorted(set(names) - set(columns[1])), sorted(set(columns[1]) - set(names))
            raise SchemaError(
                f"the files of {what} {path} hold different columns: {file} has "
                + " and ".join(part for part in (f"{extra}, which {columns[0]} has not" if extra else "",
                                                 f"not {lacking}, which {columns[0]} has" if lacking else "") if part)
                + "; read as one, a column would be dropped or filled with nulls: write every file with the same "
                "columns, or give the files one at a time")
    folder_values: dict[str, set[str]] = {}  # as pyarrow reads them: user%5Fid= is user_id=
    for file in files:
        for part in os.path.relpath(file, path).split(os.sep)[:-1]:
            if "=" in part:
                key, value = (urllib.parse.unquote(half) for half in part.split("=", 1))
                folder_values.setdefault(key, set()).add(value)
    keys = set(folder_values)
    _one_integer_each(folder_values, path, what, ids)
    both = sorted(keys & set(columns[1] if columns else ()))
    if both:  # pyarrow takes the folder's value over the file's, silently (a user's events under another id)
        raise SchemaError(f"{what} {path} has folder keys ({both[0]}=... in its paths) that name a column its files "
                          f"also hold ({both}); read as one, the folder's value would replace every file's: rename "
                          "the folders, or write the files without those columns")
    _check_int96(beyond, finer, path, what)  # each file may hold one kind, the folder both
    def dataset(file_format: str | ds.FileFormat = "parquet", schema: pa.Schema | None = None) -> ds.Dataset:
        """The files found and checked above, not the folder walked again."""
        return ds.dataset(files, format=file_format, partitioning="hive", partition_base_dir=os.fspath(path),
                          schema=schema)

    try:
        folder = dataset()
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(f"cannot read {what} {path} as Parquet: {exc}") from exc
    # read with the types of its files that hold rows (pyarrow would take the first file's)
    schema = None if typed is None else pa.schema(
        [*typed[1], *(f for f in folder.schema if f.name not in typed[1].names)], metadata=typed[1].metadata)
    if schema is not None and beyond:
        schema = _int96_in(schema, int96, "us")
    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us")) \
        if beyond else "parquet"  # one file's INT96 times need microseconds: all are read so
    if beyond or schema is not None:
        folder = dataset(file_format, schema)
    try:
        table = folder.to_table(fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))
    except (pa.ArrowException, OSError) as exc:
        raise SchemaError(f"cannot read {what} {path}: {exc}") from exc
    if table.num_rows != rows:
        raise SchemaError(f"{what} {path} is damaged: {table.num_rows:,} of its files' {rows:,} rows could be read")
    return _integer_keys(table, set(table.column_names) - set(columns[1]) if columns else set())


def _same_types(first: tuple[str, pa.Schema] | None, file: tuple[str, pa.Schema], path: str | os.PathLike,
                what: str) -> tuple[str, pa.Schema]:
    """The first file's (name, schema), once ``file``'s columns are known to have its types:
    read as one, pyarrow casts every file to the first one's types, silently (seconds read
    as milliseconds, float64 narrowed to float32, int8 2 cast to bool True)."""
    if first is None:
        return file
    types = {field.name: field.type for field in first[1]}
    differ = [(first[1].field(b.name), b) for b in file[1] if b.name in types and types[b.name] != b.type]
    if differ:
        a, b = differ[0]
        raise SchemaError(f"the files of {what} {path} hold different types: {file[0]} has {b.name} {b.type}, "
                          f"{first[0]} has {a.name} {a.type}; read as one, values would be cast to one file's type "
                          "(times' units, float widths, integers as bools): write every file with the same types, or "
                          "give the files one at a time")
    return first


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _one_integer_each(folder_values: dict[str, set[str]], path: str | os.PathLike, what: str,
                      ids: Collection[str]) -> None:
    """SchemaError where two folders' values of an id key (``ids``, or any ``*_id``), all
    integers, are one integer written two ways (``user_id=007/`` and ``user_id=7/``, ``-0``
    and ``0``): pyarrow reads both as that integer, and two users' events would be one
    history. (``hour=07/`` and ``hour=7/`` are one hour: left as pyarrow reads them.)"""
    for key, values in folder_values.items():
        if not (key.endswith("_id") or key in ids) or not all(_INTEGER.fullmatch(value) for value in values):
            continue  # not an id, or strings: pyarrow keeps them apart
        spelled: dict[int, str] = {}
        for value in sorted(values):
            if spelled.setdefault(int(value), value) != value:
                raise SchemaError(f"{what} {path} has folders {key}={spelled[int(value)]} and {key}={value}, which "
                                  f"pyarrow reads as one integer, {int(value)}: two ids would be one; name the "
                                  "folders by the integers as written, or map string ids to integers first")


def _integer_keys(table: pa.Table, keys: set[str]) -> pa.Table:
    """Hive folder keys whose every value is an integer, as integers: pyarrow infers int32
    for them, and strings once one value is past int32 (``user_id=3000000000/``), which a
    user id column would then refuse as string ids."""
    for name in keys:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        for integers in (pa.int64(), pa.uint64()):
            try:
                cast = column.cast(integers)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            table = table.set_column(table.column_names.index(name), name, cast)
            break
        else:
            values = column.unique().drop_null().to_pylist()
            past = [v for v in values if _INTEGER.fullmatch(v) and not -2**63 <= int(v) < 2**63]
            if past and all(_INTEGER.fullmatch(v) for v in values):  # else strings, named as such later
                raise SchemaError(f"folder key {name}={past[0]} does not fit int64, nor do its other values fit "
                                  "one integer type")
    return table


def check_footer(source: pq.ParquetFile, path: str | os.PathLike, what: str) -> None:
    """No checksum covers a Parquet footer; what it holds twice is compared. Its row
    counts: a row group's, and each of its unrepeated columns' (one damaged would silently
    drop or invent rows). Its columns' names and types: those of the Parquet schema, and
    those pyarrow's writers keep again in ``ARROW:schema`` (a damaged name read as another
    column, a damaged type read a label as bytes or unsigned counts as negative), up to
    what Parquet cannot keep (``_read_as``); and in a file lateseq wrote, what it says it
    wrote (``lateseq:columns``), while the Arrow schema still says the same."""
    meta = source.metadata
    flat = [i for i in range(meta.num_columns) if meta.schema.column(i).max_repetition_level == 0]
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    if (sum(group.num_rows for group in groups) != meta.num_rows
            or any(group.column(i).num_values != group.num_rows for group in groups for i in flat)):
        raise SchemaError(f"{what} {path} is damaged: its row counts disagree with each other")
    kept = (meta.metadata or {}).get(b"ARROW:schema")
    if kept is None:  # written by a tool that keeps no Arrow schema
        return
    try:
        written = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(kept, validate=True)))
    except (pa.ArrowException, ValueError) as exc:
        raise SchemaError(f"{what} {path} is damaged: its footer's Arrow schema cannot be read ({exc})") from exc
    read = source.schema_arrow
    differ = [f"{b.name} {b.type} read as {a.name} {a.type}" for a, b in zip(read, written)
              if a.name != b.name or not _read_as(a.type, b.type)]
    if differ or read.names != written.names:
        raise SchemaError(f"{what} {path} is damaged: its footer's two schemas disagree "
                          f"({'; '.join(differ[:3]) or f'{written.names} read as {read.names}'})")
    said = (meta.metadata or {}).get(COLUMNS_KEY)
    if said is None:
        return
    try:
        said = json.loads(said)
        columns, leaves = said["columns"], said["parquet"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"{what} {path} is damaged: its footer's {COLUMNS_KEY.decode()} cannot be read") from exc
    # a file rewritten by another writer (a label cast, a column added) carries the key along
    # with schemas of its own: lateseq's word holds where one of them is still as it wrote it
    if columns == _columns(written) and columns != _columns(read):
        raise SchemaError(f"{what} {path} is damaged: its columns read as {_columns(read)}, not as "
                          f"lateseq wrote them ({columns})")
    if columns != _columns(written) and leaves == _leaves(source.schema):
        raise SchemaError(f"{what} {path} is damaged: its Arrow schema says {_columns(written)}, where lateseq "
                          f"wrote {columns} over the same Parquet columns")


def _read_as(read: pa.DataType, written: pa.DataType) -> bool:
    """Whether a column pyarrow wrote as ``written`` may read back as ``read`` from an
    undamaged file: the same kind, or unsigned integers in a wider signed type (format 1.0)."""
    read, written = _plain(read), _plain(written)
    if pa.types.is_integer(read) and pa.types.is_integer(written):
        return (pa.types.is_signed_integer(read) == pa.types.is_signed_integer(written)
                or pa.types.is_unsigned_integer(written) and read.bit_width > written.bit_width)
    return _kind(read) == _kind(written)


def _plain(t: pa.DataType) -> pa.DataType:
    """A type without what a reader may or may not restore: a dictionary's values (pyarrow
    restores dictionaries of strings only), an extension's storage (unknown to a process
    that did not register it)."""
    while isinstance(t, pa.BaseExtensionType) or pa.types.is_dictionary(t):
        t = t.storage_type if isinstance(t, pa.BaseExtensionType) else t.value_type
    return t


def columns_described(schema: pa.Schema) -> dict[bytes, bytes]:
    """The footer metadata that lets a reader check a file lateseq wrote: its columns'
    names and types as written, up to what Parquet changes in them (times' units, dates in
    days), and the Parquet columns pyarrow stores them as (found by writing no rows).
    ``ARROW:schema`` alone is no check: a damaged type there is what pyarrow reads (a
    label read as durations), which it cannot tell from a duration column."""
    empty = io.BytesIO()
    pq.write_table(schema.empty_table(), empty)
    empty.seek(0)
    leaves = _leaves(pq.ParquetFile(empty).schema)
    return {COLUMNS_KEY: json.dumps({"columns": _columns(schema), "parquet": leaves}).encode()}


def _leaves(schema: pq.ParquetSchema) -> list[list[str]]:
    return [[c.path, c.physical_type, str(c.logical_type)] for c in (schema.column(i) for i in range(len(schema)))]


def _columns(schema: pa.Schema) -> list[list[str]]:
    return [[field.name, _described(field.type)] for field in schema]


def _described(t: pa.DataType) -> str:
    """A type, up to what Parquet and pyarrow's versions change in it: times' units, dates
    in days, strings, bytes and lists in their large or view forms, a list's item name."""
    t = _plain(t)
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.tz or ''}]"
    if pa.types.is_map(t):
        return f"map<{_described(t.key_type)}, {_described(t.item_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{field.name}: {_described(field.type)}" for field in t) + ">"
    if pa.types.is_time(t):
        return "time"
    kind = _kind(t)
    if kind == "list" or pa.types.is_fixed_size_list(t):
        return f"list<{_described(t.value_type)}>"
    return kind if kind in ("date", "string", "binary") else str(t)


def _kind(t: pa.DataType) -> str:
    """What a column's type is, up to what Parquet changes when it stores it (units,
    widths, large or view forms)."""
    for kind, test in (("integer", pa.types.is_integer), ("date", pa.types.is_date),
                       ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                        or pa.types.is_string_view(t)),
                       ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)
                        or pa.types.is_binary_view(t)),
                       ("list", lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)
                        or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))):
        if test(t):
            return kind
    return str(t.id)


def check_rows_read(rows: int, meta: pq.FileMetaData, path: str | os.PathLike, what: str) -> None:
    if rows != meta.num_rows:  # a damaged page header ends a column early, silently
        raise SchemaError(f"{what} {path} is damaged: {rows:,} of its {meta.num_rows:,} rows could be read")
