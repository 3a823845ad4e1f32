"""The two-tier protocol: exact online-to-offline (O2O) reconstruction.

Online, a request at time ``t`` reads store version ``k`` (every event that arrived
before ``k``'s watermark ``W_k``) plus the mutable tier's events that arrived in
``[W_k, t)``; both are cut to event time ``< t``. What it served is therefore exactly
*the user's events that arrived before t, with event time before t*. The log record
holds the pointer into ``k`` (``uih_*``), the tail inline (``tail_*`` list columns),
and the length and checksum of the whole served history (``seq_*``).

- Streaming rebuild (before the tail is folded): version ``k`` through the pointer,
  plus the inline tail, merged by (time, tie-break, store before tail, arrival).
- Batch rebuild (any time later): a version ``K`` whose watermark is ``>= t`` holds
  every event that arrived before ``t``. Events of versions ``<= k``, plus events of
  versions ``(k, K]`` that arrived before ``t``, are exactly the served set, in the
  same order, because folds commit the tier in arrival order. Once such a ``K`` is
  kept, ``strip_tails`` drops the inline tail and records ``tail_version = K``.

Both rebuilds are checked against ``seq_length``/``seq_checksum``; when an
assumption is broken (a version or tail gone too early, corrupt files, events that
bypassed the tier) the check fails loudly, never silently.
"""


from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import PointerError, SchemaError, StoreError, exact_bool
from ._events import known_pairs
from ._jagged import JaggedBatch
from ._materialize import materialize
from ._pointers import check_servable, checked_requests, log_examples, pointers_from_log
from ._projection import Projection, require_projection
from ._records import (
    RECORD_FIELDS,
    TAIL_PREFIX,
    attach_tails,
    covering_versions,
    inline_tail,
    is_two_tier,
    merge_tail,
    payload_names,
    protocol_part,
    rebuild_batch,
    rebuild_streaming,
    tail_column,
    tail_intact,
)
from ._select import transform
from ._store import Store, check_watermark
from .mutable import MutableTier

__all__ = [
    "RECORD_FIELDS",
    "TAIL_PREFIX",
    "OnlineReader",
    "attach_tails",
    "covering_versions",
    "fold",
    "is_two_tier",
    "rebuild_batch",
    "rebuild_streaming",
    "strip_tails",
    "tail_intact",
]


def fold(store: Store, tier: MutableTier, watermark: int) -> Store:
    """Commits the tier's events that arrived before ``watermark`` as a new version,
    having told the tier first, which from then on refuses appends that arrive before it
    (again accepted if the commit fails)."""
    watermark = check_watermark(watermark)
    if watermark is None:
        raise SchemaError("fold needs a watermark: the arrival time before which every event is folded")
    store.schema.refuse_far_future(np.array([watermark]), "fold's watermark")
    _check_tier(store, tier)
    since = store.latest().watermark
    if since is not None and watermark <= since:
        raise SchemaError(f"watermark {watermark} does not advance past {since}")
    if tier.expired_before > (np.iinfo(np.int64).min if since is None else since):
        raise StoreError(f"the mutable tier dropped events that arrived before {tier.expired_before}, which no "
                         f"version holds (the store's watermark is {since}): a fold would publish a version "
                         "without them; expire only what a fold has committed")
    tier.begin_fold(watermark)  # before the drain: an append arriving before it now is refused, not left behind
    try:
        folded = store.commit(tier.drain(since, watermark), watermark=watermark)
    except BaseException:
        published = _published(store, watermark)
        if published is not None:  # unknown: appends before it stay refused (were it published, they'd be lost)
            tier.end_fold(watermark, published)
        raise
    tier.end_fold(watermark, True)
    return folded


def _published(store: Store, watermark: int) -> bool | None:
    """Whether a version folded to ``watermark`` or past it was published (a commit can
    fail after publishing); None where that cannot be read."""
    try:
        latest = store.latest().watermark
    except Exception:
        return None
    return latest is not None and latest >= watermark


def _check_tier(store: Store, tier: MutableTier) -> None:
    """Refuses a tier whose events are not the store's (a bare KeyError at the first
    request), or that checks redeliveries against another store (s42A)."""
    for name in ("columns", "user_col", "time_col", "arrival_col", "event_id_col", "time_unit"):
        theirs, ours = getattr(tier.schema, name), getattr(store.schema, name)
        if theirs != ours:
            raise SchemaError(f"the tier's schema is not the store's: its {name} is {theirs!r}, the store's "
                              f"{ours!r}; make the tier with the store's schema (store.schema)")
    bound = tier.store
    if bound is not None and bound.path.resolve() != store.path.resolve():
        raise SchemaError(f"the tier was made for the store at {bound.path}, not {store.path}: it checks "
                          "redeliveries against that one's events")
    if bound is None and (watermark := store.latest().watermark) is not None:  # a tier made without store=
        tier.folded(watermark)  # after folds by another (a restart) took appends before them, lost (s61I)


class OnlineReader:
    """Lateseq's reference online side: serves sequences and writes log records."""

    def __init__(self, store: Store, tier: MutableTier, projection: Projection):
        if store.schema.arrival_col is None or store.schema.event_id_col is None:
            raise SchemaError("the two-tier protocol needs a schema with arrival_col and event_id_col")
        require_projection(projection)
        if projection.selects:  # training could not rebuild it from the records: refused there too
            raise SchemaError("OnlineReader serves the newest max_len events (and transforms); a window or "
                              "filter reads the store alone, so select after `strip` at training time")
        check_servable(store.schema)
        projection.resolve(store.schema)
        _check_tier(store, tier)
        self.store = store
        self.tier = tier
        self.projection = projection

    def serve(self, requests: pa.Table) -> tuple[pa.Table, JaggedBatch]:
        """The log records and the sequences served, for requests at ``request_ts``. Served
        again through the newest version where folds and expiry passed the one it read while
        it read (it raised, blaming the folds' pace, s61I)."""
        requests = checked_requests(requests)
        for _ in range(_SERVE_TRIES - 1):
            store = self.store.latest()
            try:
                return self._serve(store, requests)
            except _ExpiredPast:
                if self.store.latest().version == store.version:  # no fold since: the tier outran the store
                    raise
        return self._serve(self.store.latest(), requests)

    def _serve(self, store: Store, requests: pa.Table) -> tuple[pa.Table, JaggedBatch]:
        times = np.asarray(store.schema.times_to_store(requests.column("request_ts"), "requests' request_ts",
                                                       requests=True))
        store.schema.refuse_far_future(times, "request_ts")
        early = np.flatnonzero(times < store.watermark) if store.watermark is not None and len(times) else ()
        if len(early):  # what log_examples says sends the caller here
            raise PointerError(f"request {int(early[0])} at {int(times[early[0]])} is before the watermark "
                               f"{store.watermark} of version {store.version}, the newest: OnlineReader serves "
                               "requests as they come, and the store has folded past this one")
        log = log_examples(store, requests)
        users = log.column("user_id").to_numpy()  # the requests' ids, read (int64) by log_examples
        self._refuse_expired(store)  # before the tier is told of a request it will not serve
        if len(times):
            self.tier.served(int(times.max()))
        owners, tail = self.tier.tail(users, store.watermark, times)
        # and after the read: a fold and expire between the check and the read dropped tail
        # events, and the short history was served and logged as whole (s42A)
        self._refuse_expired(store)
        before = tail.column(store.schema.time_col).to_numpy() < times[owners]
        tail, owners = tail.filter(pa.array(before)), owners[before]
        if self.tier.store is None and tail.num_rows:  # a bound tier drops these as they arrive
            tail, owners = _without_stored(store, tail, owners)
        log = attach_tails(log, store, tail, owners)
        # the tail's digest was just computed from these very rows: merge, don't re-verify
        served = merge_tail(store, log, inline_tail(store, log), self.projection, np.zeros(log.num_rows, bool),
                            "raise")
        return log, transform(served, self.projection, store.schema, times) if self.projection.transforms else served

    def _refuse_expired(self, store: Store) -> None:
        if self.tier.expired_before > (store.watermark if store.watermark is not None else np.iinfo(np.int64).min):
            raise _ExpiredPast(f"the mutable tier dropped events that version {store.version} does not hold: fold "
                               "more often than the tier's retention")


_SERVE_TRIES = 3  # reads of a request through the newest version, where folds pass each while it reads


class _ExpiredPast(StoreError):
    """The tier dropped events the version a request read does not hold."""


def _without_stored(store: Store, tail: pa.Table, owners: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The tail without redeliveries of events the store holds: a tier that does not know
    the store cannot tell one of an event it expired from a new event, and serving it
    would show the event twice (s42)."""
    users = tail.column(store.schema.user_col).to_numpy()
    ids = tail.column(store.schema.event_id_col).to_numpy()
    fresh = ~known_pairs(users, ids, *store.event_ids(np.unique(users)))
    return tail.filter(pa.array(fresh)), owners[fresh]


def strip_tails(store: Store, log: pa.Table | pa.RecordBatch, drop_deleted: bool = False) -> tuple[pa.Table, int]:
    """Drops inline tails that a kept version covers and rebuilds; returns the log and how many.

    A tail stays, with a warning, where the covering version does not rebuild its record:
    online then served something the store does not hold as served (an event stamped as
    arriving before a request that did not see it), and the tail is the only copy.
    ``drop_deleted`` also drops the tails of records served before a deletion of their
    user (its events must not survive in example logs either); those records then no
    longer verify, and the audit reports them as ``deleted``. A record served after the
    deletion holds only the user's new events, and keeps them.
    """
    drop_deleted = exact_bool("drop_deleted", drop_deleted)  # "no" is true: it erased tails
    if isinstance(log, pa.RecordBatch):
        log = pa.Table.from_batches([log])
    if not is_two_tier(log):
        raise SchemaError("strip_tails takes a two-tier log (records with tail_version and tail_* columns, as "
                          "OnlineReader.serve writes them); this one holds plain pointers, with no tail to strip")
    request_ts = np.asarray(store.schema.times_to_store(log.column("request_ts"), "request_ts", requests=True))
    covering = covering_versions(store, request_ts)
    current = log.column("tail_version").to_numpy().astype(np.int64)
    strip = (current == 0) & (covering > 0)
    erase = deleted = np.zeros(log.num_rows, bool)
    if drop_deleted:  # the tails left of deleted users (a tail stripped before counts no more)
        held = pc.list_value_length(log.column(TAIL_PREFIX + store.schema.time_col).combine_chunks()).to_numpy()
        pointers = pointers_from_log(log, store.schema)
        deleted = store.deleted_after(pointers.user_id, pointers.version)
        erase = deleted & (held > 0)
    if not (strip | erase).any():
        return log, 0
    stripped = _without_tails(store, log, strip | erase, np.where(strip, covering, current))
    # a deleted user's record no longer verifies (its tail erased, or none left): not checked
    checked = np.flatnonzero(strip & ~deleted)
    failed = checked[materialize(store, protocol_part(stripped).take(pa.array(checked)),
                                 Projection(1, (store.schema.time_col,)), on_mismatch="flag").mismatched]
    if len(failed):
        strip[failed] = False
        pointers = pointers_from_log(protocol_part(log).take(pa.array(failed)), store.schema)
        gone = int(store.deleted_after(pointers.user_id, pointers.version).sum())  # not online's doing (s36E)
        why = []
        if gone:
            why.append(f"{gone} of them are records of users deleted since (Store.delete), whose tails "
                       "drop_deleted=True (`lateseq strip --drop-deleted`) erases")
        if gone < len(failed):
            why.append(f"{'for the others, ' if gone else ''}what online served differs from what the store holds as "
                       "served")
        warnings.warn(f"kept the tails of {len(failed):,} records that their covering versions do not rebuild (the "
                      f"first at row {failed[0]}): {'; '.join(why)} (`lateseq audit` on the log says why)",
                      stacklevel=2)
        stripped = _without_tails(store, log, strip | erase, np.where(strip, covering, current))
    return stripped, int((strip | erase).sum())


def _without_tails(store: Store, log: pa.Table, drop: np.ndarray, tail_version: np.ndarray) -> pa.Table:
    """``log`` with the tails of the records in ``drop`` emptied, and ``tail_version`` set."""
    log = log.set_column(log.schema.get_field_index("tail_version"), RECORD_FIELDS.field("tail_version"),
                         pa.array(tail_version.astype(np.uint32)))
    for name in payload_names(store):
        index = log.schema.get_field_index(TAIL_PREFIX + name)
        column = tail_column(store, log, name)  # checked, and a list_view one as a list
        lengths = pc.list_value_length(column).fill_null(0).to_numpy()  # a null list: none (s47D)
        keep = np.repeat(~drop, lengths)
        lengths = np.where(drop, 0, lengths)
        large = pa.types.is_large_list(column.type)  # polars' lists, and Arrow readers set to large types
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64 if large else np.int32))
        values = pc.list_flatten(column).filter(pa.array(keep))
        lists = (pa.LargeListArray if large else pa.ListArray).from_arrays(offsets, values, type=column.type)
        log = log.set_column(index, log.schema.field(index).with_type(column.type), lists)
    return log
