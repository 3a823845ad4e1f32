"""The mutable tier: recent events, readable online the moment they arrive.

Online serving reads a store version plus this tier's events that arrived after the
version's watermark. The tier keeps events at least ``retention`` seconds (one
compaction period or more, so the next version always covers what it drops; in a store
of plain integer times, ``time_unit=None``, that many of its own ticks) and
drops redeliveries of an event it holds, or, given the store, of one already stored
(without it, ``OnlineReader.serve`` leaves those out of the tails it reads).

``MutableTier`` is the interface a real key-value store would implement;
``InMemoryTier`` is the in-process reference implementation.
"""

from __future__ import annotations

import datetime
import threading
from abc import ABC, abstractmethod

import numpy as np
import pyarrow as pa

from ._errors import SchemaError, exact_integer
from ._events import first_deliveries, row_ranges
from ._forks import fork_safe
from ._pointers import check_servable
from ._schema import Schema, as_user_ids, frame_hint, ticks_per_second
from ._store import Store

__all__ = ["InMemoryTier", "MutableTier"]

_FAR_PAST = np.iinfo(np.int64).min


class MutableTier(ABC):
    """Arrival-ordered recent events, queried by user and arrival window.

    ``fold`` marks its watermark (``begin_fold``) before it drains: appends that arrive
    before it are refused from then on. An implementation shared by threads or hosts must
    check an append (``_refuse_folded``) and store it as one step against that mark, or an
    event checked before a fold and stored after its drain would be in neither that
    version nor the next. ``InMemoryTier`` does so with a lock across threads of one
    process; a key-value store would with a conditional write.
    """

    def __init__(self, schema: Schema, retention: int):
        if schema.arrival_col is None or schema.event_id_col is None:
            raise SchemaError("a mutable tier needs a schema with arrival_col and event_id_col")
        check_servable(schema)
        if isinstance(retention, np.timedelta64):  # an integer to numpy: ns read as seconds, or a bare TypeError
            if np.datetime_data(retention.dtype)[0] == "generic":  # (s61I)
                raise SchemaError(f"retention {retention!r} has no unit; give np.timedelta64(N, 's') or a timedelta")
            retention = float(retention / np.timedelta64(1, "s"))
        if isinstance(retention, datetime.timedelta):  # pandas' Timedelta too
            retention = retention.total_seconds()
        if (isinstance(retention, bool) or not isinstance(retention, int | float | np.integer | np.floating)
                or not np.isfinite(retention) or retention <= 0):
            raise SchemaError(f"retention must be a positive number of seconds (or a timedelta), got "
                              f"{type(retention).__name__} {retention!r}")
        self.schema = schema
        self.retention = retention
        # in the store's time unit, which arrival times count (plain integers: seconds are theirs)
        self._retention_ticks = int(retention * (ticks_per_second(schema.time_unit) if schema.time_unit else 1))
        if self._retention_ticks < 1:
            raise SchemaError(f"retention {retention} s is less than one tick of the store's time unit "
                              f"({schema.time_unit or 'plain integers'}): the tier would keep nothing")
        # the store whose events this tier checks redeliveries against (None: none), which
        # folds and readers must then be given (``twotier`` refuses another)
        self.store: Store | None = None
        # events that arrived before this were dropped; reads must not reach below it
        self.expired_before = _FAR_PAST
        # a store version holds every event that arrived before this: the next fold
        # drains from here, so an append below it would never be stored nor served
        self.folded_before = _FAR_PAST
        # a request at this time read the tier: an event appended later that arrived
        # before it would be in what the store says that request saw, and it was not
        self.served_before = _FAR_PAST
        # the watermarks of folds under way: appends before them are refused, but events
        # stay until a version holds them (``expire`` looks at ``folded_before`` only)
        self._folding: list[int] = []
        self._lock = fork_safe(threading.RLock())  # an append's check and store, and a fold's mark, one at a time

    @abstractmethod
    def append(self, events: pa.Table) -> int:
        """Adds events as they arrive (arrival time never decreasing, and not before
        the folded watermark: see ``_refuse_folded``); returns how many were new
        (redeliveries of a known (user, event id) are dropped)."""

    @abstractmethod
    def tail(self, users: np.ndarray, since: int | None, until: np.ndarray) -> tuple[np.ndarray, pa.Table]:
        """Each request's events with ``since <= arrival < until[i]``, in arrival order:
        (request index per row, rows). ``since=None`` means from the beginning."""

    @abstractmethod
    def drain(self, since: int | None, until: int) -> pa.Table:
        """Every event with ``since <= arrival < until``, in arrival order, for a commit."""

    @abstractmethod
    def _drop_before(self, cutoff: int) -> None:
        """Forgets events that arrived before ``cutoff``."""

    @abstractmethod
    def delete(self, users: np.ndarray | list[int]) -> int:
        """Forgets every event of ``users`` (a privacy request: ``Store.delete`` reaches the
        store only, and the next fold would store the tier's events again); returns how many."""

    def folded(self, watermark: int) -> None:
        """Records that a store version now holds every event that arrived before
        ``watermark`` (``end_fold`` does so for ``twotier.fold``; a writer that commits
        with a watermark another way tells the tier here)."""
        with self._lock:
            self.folded_before = max(self.folded_before, watermark)

    def begin_fold(self, watermark: int) -> None:
        """Marks a fold to ``watermark`` under way (``twotier.fold`` calls this before it
        drains): appends that arrive before it are refused until ``end_fold``."""
        with self._lock:
            self._folding.append(watermark)

    def end_fold(self, watermark: int, published: bool) -> None:
        """Ends the fold ``begin_fold`` marked: its version was published (the watermark
        is then folded) or not (appends before it are on time again, unless another fold
        or the store covers them)."""
        with self._lock:
            if published:
                self.folded_before = max(self.folded_before, watermark)
            self._folding.remove(watermark)

    def served(self, until: int) -> None:
        """Records that a request at ``until`` read the tier (``OnlineReader.serve`` calls
        this): from then on, appends that arrived before it are refused."""
        with self._lock:
            self.served_before = max(self.served_before, until)

    def _refuse_folded(self, arrival: np.ndarray, store_watermark: int | None) -> None:
        """Raises SchemaError if any arrival time is below the folded watermark (the
        tier's own, or ``store_watermark``, its store's newest) or a request already
        served; implementations call this in ``append`` before changing anything."""
        stored = max(self.folded_before, _FAR_PAST if store_watermark is None else store_watermark)
        floor = max([stored, *self._folding])
        first = int(arrival.min())
        if first < floor:
            raise SchemaError(
                f"{int((arrival < floor).sum())} events arrived before {floor} (the first at {first}), "
                f"the watermark already folded (or being folded) into the store: the next fold starts there, so "
                f"they would never be stored nor served; append events as they arrive, before folding past them")
        if first < self.served_before:
            raise SchemaError(
                f"{int((arrival < self.served_before).sum())} events arrived before {self.served_before} (the first "
                f"at {first}), when a request already read the tier without them: the store would hold them as "
                f"seen by that request, and its log record would no longer verify; stamp arrival times as events "
                f"reach the tier")
        self.folded_before = stored  # learned from the store: a fold under way may still fail

    def expire(self, now: int, folded_watermark: int | None) -> int:
        """Drops what retention allows: older than ``now - retention`` and already
        folded into a store version (``folded_watermark``, the store's, counts only as far
        as folds told this tier: one given ahead of them would drop what no version holds).
        Returns the cutoff applied."""
        now = exact_integer("expire's now (an arrival time in the store's time unit)", now)
        if folded_watermark is None:
            return self.expired_before
        folded_watermark = exact_integer("expire's folded_watermark", folded_watermark)
        with self._lock:
            cutoff = min(now - self._retention_ticks, folded_watermark, self.folded_before)
            if cutoff > self.expired_before:
                # raised before the drop: a reader that checks it after its read (``serve``)
                # knows whether the drop may have reached what it read, tier lock or not
                self.expired_before = cutoff
                self._drop_before(cutoff)
            return self.expired_before


class InMemoryTier(MutableTier):
    """Columns in arrival order, with a (user, arrival) index rebuilt after appends; safe
    across the threads of one process."""

    def __init__(self, schema: Schema, retention: int, store: Store | None = None):
        super().__init__(schema, retention)
        self.store = store
        self._table = schema.empty_table()
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._table.num_rows

    def append(self, events: pa.Table) -> int:
        if not isinstance(events, pa.Table | pa.RecordBatch):  # a DataFrame raised a bare AttributeError (s36E)
            raise SchemaError(f"events are a pyarrow Table, not a {type(events).__name__}{frame_hint(events)}")
        if events.num_rows == 0:
            return 0
        events = self.schema.conform(events)
        with self._lock:  # checked and stored as one step: a fold's mark comes before or after
            arrival = events.column(self.schema.arrival_col).to_numpy()
            self.schema.refuse_far_future(arrival, "arrival")
            # an event time so stamped (a timestamp: integers are refused by conform) would be
            # refused by every fold after it as an integer past the year 3000 (s47C)
            self.schema.refuse_far_future(events.column(self.schema.time_col).to_numpy(), "event time",
                                          "Every fold of it would be refused")
            last = self._last_arrival()
            if np.any(np.diff(arrival) < 0) or (last is not None and arrival[0] < last):
                raise SchemaError("events must be appended in arrival order")
            latest = self.store.latest() if self.store is not None else None
            self._refuse_folded(arrival, latest.watermark if latest is not None else None)
            users = events.column(self.schema.user_col).to_numpy()
            ids = events.column(self.schema.event_id_col).to_numpy()
            known_users = [self._table.column(self.schema.user_col).to_numpy()]
            known_ids = [self._table.column(self.schema.event_id_col).to_numpy()]
            if latest is not None:  # events folded and expired from the tier are still known
                stored_users, stored_ids = latest.event_ids(np.unique(users))
                known_users.append(stored_users)
                known_ids.append(stored_ids)
            keep = first_deliveries(users, ids, np.concatenate(known_users), np.concatenate(known_ids))
            if keep.any():
                self._table = pa.concat_tables([self._table, events.filter(pa.array(keep))]).combine_chunks()
                self._index = None
            return int(keep.sum())

    def _last_arrival(self) -> int | None:
        if self._table.num_rows == 0:
            return None
        return self._table.column(self.schema.arrival_col)[-1].as_py()

    def _by_user(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows sorted by (user, arrival) (storage order breaks ties: it is arrival order),
        with one int64 search key per row: user slot * (arrivals + 1) + arrival rank."""
        if self._index is None:
            users = self._table.column(self.schema.user_col).to_numpy()
            arrival = self._table.column(self.schema.arrival_col).to_numpy()  # sorted: see append
            order = np.argsort(users, kind="stable")
            new_user = np.r_[True, users[order][1:] != users[order][:-1]][:len(users)]
            new_arrival = np.r_[True, arrival[1:] != arrival[:-1]][:len(users)]
            user_ids, arrivals = users[order][new_user], arrival[new_arrival]
            keys = (np.cumsum(new_user) - 1) * (len(arrivals) + 1) + (np.cumsum(new_arrival) - 1)[order]
            self._index = (order, keys, user_ids, arrivals)
        return self._index

    def tail(self, users, since, until):
        with self._lock:
            users = as_user_ids(users, "users")  # uint64 ids searched among int64 ones compare as floats
            order, keys, user_ids, arrivals = self._by_user()
            if len(order) == 0:
                return np.empty(0, np.int64), self._table
            slot = np.searchsorted(user_ids, users)
            present = (slot < len(user_ids)) & (user_ids[np.minimum(slot, len(user_ids) - 1)] == users)
            since = np.full(len(users), _FAR_PAST if since is None else since, np.int64)
            base = slot * (len(arrivals) + 1)
            lo = np.searchsorted(keys, base + np.searchsorted(arrivals, since), "left")
            hi = np.searchsorted(keys, base + np.searchsorted(arrivals, until), "left")
            hi = np.where(present, np.maximum(hi, lo), lo)
            rows = order[row_ranges(lo, hi)]
            return np.repeat(np.arange(len(users)), hi - lo), self._table.take(pa.array(rows, pa.int64()))

    def drain(self, since, until):
        with self._lock:
            arrival = self._table.column(self.schema.arrival_col).to_numpy()
            since = _FAR_PAST if since is None else since
            return self._table.filter(pa.array((arrival >= since) & (arrival < until)))

    def _drop_before(self, cutoff):
        with self._lock:
            arrival = self._table.column(self.schema.arrival_col).to_numpy()
            self._table = self._table.filter(pa.array(arrival >= cutoff))
            self._index = None

    def delete(self, users):
        with self._lock:
            gone = np.isin(self._table.column(self.schema.user_col).to_numpy(), as_user_ids(users, "users to delete"))
            self._table = self._table.filter(pa.array(~gone))
            self._index = None
            return int(gone.sum())
