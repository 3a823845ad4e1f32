"""The audit: rebuild logged examples and explain every one that does not match."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ._format import TIME
from ._kernels import Visibility, event_hashes
from ._materialize import materialize
from ._pointers import Pointers
from ._projection import Projection
from ._records import is_two_tier, tail_intact
from ._store import Store


@dataclass
class AuditReport:
    """Mismatch causes: "corrupt data", "version no longer kept", "tail stripped too
    early", "late event", or "unknown" when none of those explains it."""

    examples: int
    checked: int
    mismatches: dict[int, str] = field(default_factory=dict)  # log row -> cause

    @property
    def matched(self) -> int:
        return self.checked - len(self.mismatches)

    @property
    def causes(self) -> Counter:
        return Counter(self.mismatches.values())


def audit(store: Store, log: pa.Table, sample: int | None = None, seed: int = 0) -> AuditReport:
    """Rebuilds ``sample`` random records (all by default) and explains mismatches."""
    rows = np.arange(log.num_rows)
    if sample is not None and sample < log.num_rows:
        rows = np.sort(np.random.default_rng(seed).choice(log.num_rows, sample, replace=False))
    subset = log.take(pa.array(rows, pa.int64()))
    bad = materialize(store, subset, Projection(1, (store.schema.time_col,)), on_mismatch="flag").mismatched
    report = AuditReport(log.num_rows, len(rows))
    if bad.any():
        explain = _Explainer(store, is_two_tier(subset))
        for i in np.flatnonzero(bad):
            report.mismatches[int(rows[i])] = explain(subset.slice(int(i), 1))
    return report


class _Explainer:
    """Names the cause of one mismatched record; store-wide facts are read once."""

    def __init__(self, store: Store, two_tier: bool):
        self.store = store
        self.two_tier = two_tier
        self.watermarks = {v.version: v.watermark for v in store.versions()}

    def __call__(self, record: pa.Table) -> str:
        pointer = Pointers.from_arrow(record)
        tail_version = int(record.column("tail_version")[0].as_py()) if self.two_tier else 0
        if self._rehash_differs(pointer.user_id[:1]):
            return "corrupt data"
        if self.two_tier and tail_version == 0 and not tail_intact(self.store, record)[0]:
            return "corrupt data"
        kept = self.watermarks.keys() | {0}
        if int(pointer.version[0]) not in kept or tail_version not in kept:
            return "version no longer kept"
        mark = self.watermarks.get(tail_version)
        if tail_version and (mark is None or mark < pointer.request_ts[0]):
            return "tail stripped too early"
        if _late_events(self.store, pointer) > 0:
            return "late event"
        return "unknown"

    def _rehash_differs(self, user: np.ndarray) -> bool:
        """Whether any of the user's events no longer hashes as it did when written
        (damage to a decoded segment; damaged durable files fail their CRC on decoding)."""
        schema = self.store.schema
        for segment in self.store.segments():
            lo, hi = segment.user_ranges(user)
            if hi[0] == lo[0]:
                continue
            rows = np.arange(lo[0], hi[0])
            payload = [segment.decoded(n, rows).astype(np.uint8 if t == "bool" else t)
                       for n, t in schema.columns.items()]
            fresh = event_hashes(np.full(len(rows), user[0]), segment.decoded(TIME, rows), payload)
            if not np.array_equal(fresh, segment.hashes(int(lo[0]), int(hi[0]))):
                return True
        return False


def _late_events(store: Store, pointer: Pointers) -> int:
    """Events the pointer's version shows that arrived at or after the request."""
    arrival = store.schema.arrival_col
    if arrival is None:
        return 0
    visibility = Visibility.of_versions(pointer.version)
    located = store.locate(pointer.user_id, pointer.request_ts, visibility, max_len=1)
    full = Pointers(pointer.user_id, pointer.request_ts, pointer.version, located.count, located.checksum)
    batch = materialize(store, full, Projection(max(int(located.count[0]), 1), (arrival,)))
    return int((batch.values[arrival] >= pointer.request_ts[0]).sum())
