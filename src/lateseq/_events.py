"""Events on their way into (or out of) a segment: decoded columns sorted by user and
time, with the helpers that partition, order and deduplicate them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import xxhash

from ._kernels import _partition_of, event_hashes, frozen, pairs_seen
from ._schema import Schema


def partition_of(users: np.ndarray, partitions: int) -> np.ndarray:
    """The user-hash partition of each user (stable across processes and machines)."""
    out = np.zeros(len(users), np.int64)
    if partitions > 1:
        _partition_of(frozen(users, np.int64), np.int64(partitions), out)
    return out


def rows_by_partition(parts: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Each partition in ``parts`` with its rows, in order: one stable sort, where a scan
    of every row per partition cost a commit into 1,024 partitions more than its sorting."""
    counts = np.bincount(parts)
    order = np.argsort(parts, kind="stable")
    if len(order) < 2**31:  # held while the partitions are used (a commit's, written): half the bytes
        order = order.astype(np.int32)
    ends = np.cumsum(counts)
    for p in np.flatnonzero(counts):
        yield int(p), order[ends[p] - counts[p]:ends[p]]


class Taken(Mapping):
    """Payload columns at ``order``, each gathered when read: a segment's writer then holds
    one decoded column at a time (taking every column at once held them all: a deletion
    of one user needed more memory than compacting everything)."""

    def __init__(self, columns: Mapping[str, np.ndarray], order: np.ndarray):
        self._columns, self._order = columns, order

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name][self._order]

    def __iter__(self):
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def take(self, order: np.ndarray) -> Taken:
        return Taken(self._columns, self._order[order])


@dataclass
class Events:
    """Decoded, sorted event columns of one partition, on their way into a segment."""

    user: np.ndarray
    ts: np.ndarray
    payload: Mapping[str, np.ndarray]
    version: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, order: np.ndarray) -> Events:
        payload = self.payload.take(order) if isinstance(self.payload, Taken) else Taken(self.payload, order)
        return Events(self.user[order], self.ts[order], payload, self.version[order], self.hashes[order])

    @classmethod
    def from_table(cls, table: pa.Table, schema: Schema, version: int) -> Events:
        """Conformed commit input, in input order, every event stamped with ``version``."""
        user = table.column(schema.user_col).to_numpy()
        ts = table.column(schema.time_col).to_numpy()
        payload = {name: column_numpy(table.column(name)) for name in schema.columns}
        hashes = event_hashes(user, ts, list(payload.values()))
        return cls(user, ts, payload, np.full(len(user), version, np.uint32), hashes)

    def digest(self, order: np.ndarray | None = None) -> str:
        """A digest of the events' contents in their order, or in ``order`` (what a commit
        id vouches for)."""
        return xxhash.xxh3_64(np.ascontiguousarray(self.hashes if order is None else self.hashes[order])).hexdigest()

    def first_deliveries(self, event_id: str, known: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Mask of the rows whose (user, event id) is neither ``known`` nor came earlier."""
        return first_deliveries(self.user, self.payload[event_id], *known)

    def order(self, tiebreak: str | None, rows: np.ndarray | None = None) -> np.ndarray:
        """``rows`` (ascending; all by default) sorted by (user, time, tie-break), stably:
        equal keys keep their order."""
        keys = [self.ts, self.user] if rows is None else [self.ts[rows], self.user[rows]]
        if tiebreak is not None:
            keys.insert(0, self.payload[tiebreak] if rows is None else self.payload[tiebreak][rows])
        return np.lexsort(keys) if rows is None else rows[np.lexsort(keys)]


def row_ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Every row index of the ranges [lo[i], hi[i]), concatenated in order."""
    sizes = hi - lo
    return np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())


def first_deliveries(user: np.ndarray, ids: np.ndarray, known_user: np.ndarray,
                     known_ids: np.ndarray) -> np.ndarray:
    """Mask of rows that are the first delivery of their (user, event id), counting
    the ``known`` pairs (already stored) as delivered before every row."""
    repeat, known = pairs_seen(user, ids, known_user, known_ids)
    return ~(repeat | known)


def known_pairs(user: np.ndarray, ids: np.ndarray, known_user: np.ndarray, known_ids: np.ndarray) -> np.ndarray:
    """Mask of rows whose (user, event id) is among the ``known`` pairs (rows may repeat
    a pair: a tail read for two requests of one user holds its events twice)."""
    return pairs_seen(user, ids, known_user, known_ids)[1]


def column_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow column as numpy, bools as uint8 (how segments and hashes see them)."""
    values = column.to_numpy(zero_copy_only=False)
    return values.astype(np.uint8) if pa.types.is_boolean(column.type) else values
