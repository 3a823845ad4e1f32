"""The one read entry point: any example log (plain pointers, two-tier records with
inline tails, or stripped ones) to the exact sequences online saw."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Literal, TypeVar

import numpy as np
import pyarrow as pa

from ._errors import ChecksumMismatch, SchemaError, StoreError, TransformOverflow, reading_checks
from ._gather import budget_chunks, compare, gather
from ._jagged import JaggedBatch, stitch
from ._pointers import Pointers, pointers_from_log
from ._projection import Projection, require_projection
from ._records import is_two_tier, rebuild_batch, rebuild_streaming, stripped_pointers
from ._select import earliest_kept, merge_depths, reach, select, transform
from ._store import Store
from ._tenants import check_tenant_names

T = TypeVar("T")


def materialize(
    store: Store,
    examples: Pointers | pa.Table | pa.RecordBatch,
    projection: Projection,
    *,
    verify: bool = True,
    on_mismatch: Literal["raise", "flag"] = "raise",
) -> JaggedBatch:
    """Rebuilds, for each example, the newest ``projection.max_len`` events online saw.

    ``examples`` is an example log in any form: plain pointers (events of the pointer's
    user with event time strictly before the request, visible in the pointer's version,
    oldest first), or two-tier records, rebuilt from their inline tail where they carry
    one and from the store alone where it was stripped. With ``verify`` (the default,
    and nearly free), each history's length and checksum are compared with the
    record's; a difference raises ChecksumMismatch, or with ``on_mismatch="flag"`` marks
    the row. Two-tier records are always verified (their merge relies on it).
    """
    require_store(store, "materialize reads")
    require_projection(projection)
    verify, on_mismatch = reading_checks(verify, on_mismatch)  # (a two-tier log's read ignores verify)
    if projection.selects:
        return _materialize_tenants(store, examples, {"": projection}, verify, on_mismatch)[""]
    return _steady(store, lambda: _materialize(store, examples, projection, verify, on_mismatch))


def require_store(store: object, what: str) -> None:
    """SchemaError naming what ``what`` takes, unless ``store`` is a handle: a path is not
    opened here, as opening one per batch would be slow."""
    if not isinstance(store, Store):
        raise SchemaError(f"{what} a lateseq Store (lateseq.open(path), once, then reused), not a "
                          f"{type(store).__name__} {store!r:.80}")


_READS = 3  # reads of one batch before a read cache written in place every time is an error


def _steady(store: Store, read: Callable[[], T]) -> T:
    """``read()``, made again where a decoded copy it read was written in place meanwhile.
    The read cache is checked before each batch; a program writing into a copy during the
    batch (``rsync --inplace``, ``dd conv=notrunc``) changed the bytes copied out after that
    check, with nothing flagged, or a checksum blamed the store. Made again, the read finds
    the copy changed, checks it, and decodes it again from the store."""
    for _ in range(_READS):
        generation = store._read_cache_generation()
        mismatch = None
        try:
            result = read()
        except ChecksumMismatch as exc:
            mismatch = exc
        finally:  # ends the read, whatever it raised: the next one looks at the cache afresh
            overwritten = store._overwritten_since(generation)
        if overwritten:
            continue
        if mismatch is not None:
            raise mismatch
        return result
    raise StoreError(f"the read cache's decoded copies were written in place during {_READS} reads in a row: "
                     f"another program writes into {store.cache_dir} (lateseq never writes a copy in place); stop it, "
                     "or give this reader a cache of its own (cache_dir=, the CLI's --cache-dir)")


def _materialize(store: Store, examples: Pointers | pa.Table | pa.RecordBatch, projection: Projection, verify: bool,
                 on_mismatch: Literal["raise", "flag"]) -> JaggedBatch:
    batch = _rebuild(store, examples, projection, verify, on_mismatch)
    if projection.transforms:
        pointers = examples if isinstance(examples, Pointers) else pointers_from_log(examples, store.schema)
        batch = transform(batch, projection, store.schema, pointers.request_ts)
    return batch


def _rebuild(store: Store, examples: Pointers | pa.Table | pa.RecordBatch, projection: Projection, verify: bool,
             on_mismatch: Literal["raise", "flag"]) -> JaggedBatch:
    if isinstance(examples, Pointers) or not is_two_tier(examples):
        return gather(store, examples, projection, verify=verify, on_mismatch=on_mismatch)
    stripped = examples.column("tail_version").to_numpy() > 0
    if stripped.all() or not stripped.any():
        how = rebuild_batch if stripped.all() and len(stripped) else rebuild_streaming
        return how(store, examples, projection, on_mismatch)
    parts, failed = [], []
    for mask, how in ((stripped, rebuild_batch), (~stripped, rebuild_streaming)):
        index = np.flatnonzero(mask)
        try:
            parts.append((index, how(store, examples.take(pa.array(index)), projection, on_mismatch)))
        except ChecksumMismatch as exc:  # it named rows of the part: good rows of the log, dropped (s36E)
            failed.append(exc.renumbered(index, total=len(stripped)))
    if failed:  # both kinds' rows: a caller dropping them all drops every one that failed
        raise ChecksumMismatch("; ".join(exc.problem for exc in failed),
                               sorted(row for exc in failed for row in exc.rows), failed[0].hint)
    return stitch(parts, len(stripped))


def materialize_tenants(
    store: Store,
    examples: Pointers | pa.Table | pa.RecordBatch,
    tenants: Mapping[str, Projection],
    *,
    verify: bool = True,
    on_mismatch: Literal["raise", "flag"] = "raise",
) -> dict[str, JaggedBatch]:
    """Rebuilds ``examples`` for several tenants (name -> Projection) in one pass.

    Each history is located (and verified) once; each tenant then gets its own batch
    with its window, filter, length and columns. A two-tier log is rebuilt once per
    tenant instead, and only for tenants without a window or filter.
    """
    require_store(store, "materialize_tenants reads")
    verify, on_mismatch = reading_checks(verify, on_mismatch)
    if not isinstance(tenants, Mapping):
        one = " (for one Projection, call materialize)" if isinstance(tenants, Projection) else ""
        raise SchemaError(f"tenants must be a mapping of name -> lateseq.Projection, got {type(tenants).__name__}{one}")
    check_tenant_names(tenants)
    return _materialize_tenants(store, examples, dict(tenants), verify, on_mismatch)


def _materialize_tenants(store: Store, examples: Pointers | pa.Table | pa.RecordBatch, tenants: dict[str, Projection],
                         verify: bool, on_mismatch: Literal["raise", "flag"]) -> dict[str, JaggedBatch]:
    """``materialize_tenants`` of checked arguments (``materialize``'s one projection,
    named "")."""
    for name, projection in tenants.items():
        require_projection(projection, f"tenant {name!r} must be")
        try:
            projection.resolve(store.schema)
        except SchemaError as exc:
            raise SchemaError(f"tenant {name!r}: {exc}" if name else str(exc)) from None
    if not isinstance(examples, Pointers) and is_two_tier(examples):
        selecting = [name for name, p in tenants.items() if p.selects]
        if not selecting:
            return {name: materialize(store, examples, p, verify=verify, on_mismatch=on_mismatch)
                    for name, p in tenants.items()}
        inline = np.flatnonzero(examples.column("tail_version").to_numpy() == 0)
        if len(inline):
            who = f"tenants {selecting} select" if selecting != [""] else "this projection selects"
            raise SchemaError(f"{who} by window or filter, which reads events from the store alone; "
                              f"{len(inline)} records of this two-tier log carry their tail inline (first rows: "
                              f"{inline[:5].tolist()}): strip it first (`lateseq strip`, once a kept version "
                              "covers the tails), or log plain pointers")
        examples = stripped_pointers(store, examples)
    pointers = examples if isinstance(examples, Pointers) else pointers_from_log(examples, store.schema)
    return _steady(store, lambda: _select_tenants(store, pointers, tenants, verify, on_mismatch))


def _select_tenants(store: Store, pointers: Pointers, tenants: dict[str, Projection], verify: bool,
                    on_mismatch: Literal["raise", "flag"]) -> dict[str, JaggedBatch]:
    depth = reach(tenants.values())
    lower = earliest_kept(store, pointers, tenants)
    located = store.locate(pointers.user_id, pointers.request_ts, pointers.visibility, depth, pointers.length, lower)
    mismatched = compare(pointers, located, verify, on_mismatch, store)
    depths = merge_depths(store, pointers, located, tenants, depth)
    store._record_reads(located, depths)  # a filtered tenant merges whole histories: what merged copies save
    chunks = _merge_chunks(located.merge, np.minimum(located.count, depths))
    if len(chunks) == 1:
        return {name: batch for name, (batch, _) in select(store, pointers, located, tenants, mismatched,
                                                          depths).items()}
    parts: dict[str, list[JaggedBatch]] = {name: [] for name in tenants}
    for start, end in chunks:  # each located again: its merge's runs held for those pointers only
        part = _rows(pointers, start, end)
        part_located = store.locate(part.user_id, part.request_ts, part.visibility, depth, part.length,
                                    None if lower is None else lower[start:end])
        try:
            selected = select(store, part, part_located, tenants, mismatched[start:end],
                              depths if np.isscalar(depths) else depths[start:end])
        except TransformOverflow as exc:
            raise TransformOverflow(exc.problem, exc.row + start, "", exc.tenant) from None
        for name, (batch, _) in selected.items():
            parts[name].append(batch)
    return {name: JaggedBatch.concat(batches) for name, batches in parts.items()}


def _rows(pointers: Pointers, start: int, end: int) -> Pointers:
    columns = {f.name: getattr(pointers, f.name) for f in fields(pointers)}
    return Pointers(**{name: None if column is None else column[start:end] for name, column in columns.items()})


def _merge_chunks(merge: np.ndarray, depths: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of pointers whose overlapping windows (late events, uncompacted) hold at
    most ``MERGE_BUDGET`` events between them (a pointer alone may hold more). A filtered
    tenant merges each such pointer's whole history, and a batch of a heavy user's
    examples held runs for all of them at once: 2.7 GB for 1,000 pointers into one user's
    400k events (a stranger's trial; a million-event user's batch was killed)."""
    return budget_chunks(np.where(merge, depths, 0))
