"""lateseq: exact, just-in-time user histories for sequential recommendation training.

Histories live once in a versioned store; examples carry small pointers; the
materializer rebuilds exactly the sequence the online model saw.
"""

from __future__ import annotations

import os
import typing

from ._errors import (
    ChecksumMismatch,
    CommitConflict,
    LateseqError,
    NotSynced,
    PointerError,
    SchemaError,
    StoreError,
    TransformOverflow,
    VersionNotFound,
)
from ._jagged import JaggedBatch
from ._loader import iter_batches, materialize_log, materialize_log_tenants
from ._materialize import materialize, materialize_tenants
from ._pointers import (
    POINTER_BYTES,
    POINTER_FIELDS,
    Pointers,
    copartition_log,
    log_examples,
    make_pointers,
)
from ._projection import Filter, Projection
from ._schema import Schema
from ._store import Store
from ._tenants import check_tenants, load_tenants
from ._versions import VersionInfo

__version__ = "0.1.0"


def open(path: str | os.PathLike, version: int | str | None = None, *,  # noqa: A001
         cache_dir: str | os.PathLike | None = None, merged_reads: bool | typing.Literal["auto"] = "auto",
         readahead: bool | typing.Literal["auto"] = "auto") -> Store:
    """Opens the store at ``path`` at ``version`` (a number or a tag; the latest by default).

    Readers memory-map decoded segments from a read cache (default: ``path/cache``;
    with ``cache_dir``, the store's own folder in it, so that stores can share one),
    decoding any that are missing there from the store's durable files. ``merged_reads``
    says when a version of many segments is read through merged copies kept there
    (``"auto"``: once its reads have cost about what the copy does); ``readahead``
    whether the kernel reads ahead of the pages a read needs (``"auto"``: unless the
    version would not fit in half of this machine's memory). See ``Store``.
    """
    return Store(path, version, cache_dir=cache_dir, merged_reads=merged_reads, readahead=readahead)


def create(path: str | os.PathLike, schema: Schema) -> Store:
    """Creates an empty store (version 0) at ``path``."""
    return Store.create(path, schema)


__all__ = [
    "POINTER_BYTES",
    "POINTER_FIELDS",
    "ChecksumMismatch",
    "CommitConflict",
    "Filter",
    "JaggedBatch",
    "LateseqError",
    "NotSynced",
    "PointerError",
    "Pointers",
    "Projection",
    "Schema",
    "SchemaError",
    "Store",
    "StoreError",
    "TransformOverflow",
    "VersionInfo",
    "VersionNotFound",
    "check_tenants",
    "copartition_log",
    "create",
    "iter_batches",
    "load_tenants",
    "log_examples",
    "make_pointers",
    "materialize",
    "materialize_log",
    "materialize_log_tenants",
    "materialize_tenants",
    "open",
]
