"""The audit: rebuild logged examples and explain every one that does not match."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .kernels import Visibility, event_hashes
from .materializer import materialize
from .pointer import Pointers
from .projection import Projection
from .segment import Segment
from .store import Store
from .twotier import is_two_tier, rebuild, tail_intact

CAUSES = ("corrupt data", "version no longer kept", "tail stripped too early", "late event", "unknown")


@dataclass
class AuditReport:
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
    two_tier = is_two_tier(subset)
    bad = rebuild(store, subset, Projection(1, (store.schema.time_col,)), on_mismatch="flag").mismatched
    report = AuditReport(log.num_rows, len(rows))
    for i in np.flatnonzero(bad):
        report.mismatches[int(rows[i])] = _cause(store, subset.slice(int(i), 1), two_tier)
    return report


def _cause(store: Store, record: pa.Table, two_tier: bool) -> str:
    pointer = Pointers.from_arrow(record)
    user = pointer.user_id[:1]
    if _corrupt(store, user):
        return "corrupt data"
    tail_version = int(record.column("tail_version")[0].as_py()) if two_tier else 0
    if two_tier and tail_version == 0 and not tail_intact(store, record)[0]:
        return "corrupt data"
    kept = {v.version for v in store.versions()}
    if int(pointer.version[0]) not in kept | {0} or (tail_version and tail_version not in kept):
        return "version no longer kept"
    if tail_version and (store.checkout(tail_version).watermark or np.iinfo(np.int64).min) < pointer.request_ts[0]:
        return "tail stripped too early"
    if _late_events(store, pointer) > 0:
        return "late event"
    return "unknown"


def _corrupt(store: Store, user: np.ndarray) -> bool:
    """The user's segment files fail their CRC, or an event no longer hashes as written."""
    for segment in store.segments():
        if segment.info.corrupt_files(store.path / "segments"):
            return True
        if _rehash_differs(store, segment, user):
            return True
    return False


def _rehash_differs(store: Store, segment: Segment, user: np.ndarray) -> bool:
    lo, hi = (int(x[0]) for x in segment.user_ranges(user))
    if hi == lo:
        return False
    events = segment.events(store.schema)  # decoded once; audits look at few users
    fresh = event_hashes(events.user[lo:hi], events.ts[lo:hi], [v[lo:hi] for v in events.payload.values()])
    return not np.array_equal(fresh, segment.hashes(lo, hi))


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
