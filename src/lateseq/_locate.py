"""The read path's first step: where each pointer's visible events are, segment by segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _kernels
from ._errors import PointerError
from ._events import partition_of
from ._format import TIME
from ._kernels import Visibility
from ._schema import Schema
from ._segments import Segment


@dataclass
class Located:
    """Where each pointer's visible events are, as found by :func:`locate`.

    ``windows`` has one entry per segment that holds visible events for some pointer:
    (segment, pointer indices, lo, hi, holes). ``spread`` marks pointers whose events
    span several segments (uncompacted versions) and so must be merged by time.
    """

    count: np.ndarray
    checksum: np.ndarray
    windows: list[tuple[Segment, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    spread: np.ndarray


def locate(schema: Schema, segments: Callable[[int], list[Segment]], version: int, users: np.ndarray,
           request_ts: np.ndarray, visibility: Visibility, max_len: int) -> Located:
    """Finds each pointer's visible events (time before the request, and ``visibility``)
    in the ``segments(partition)`` of a handle at ``version``."""
    if len(users) and (visibility.version_hi.max() > version or visibility.version.min() < 0):
        raise PointerError(
            f"pointers need versions up to {int(visibility.version_hi.max())} but this handle "
            f"is at version {version}; open the store at a version >= every pointer's"
        )
    arrival = schema.arrival_col
    if arrival is None and np.any(visibility.version_hi != visibility.version):
        raise PointerError("pointers bounded by arrival (version_hi, arrival_limit) need a store "
                           "whose schema names an arrival_col; this one has none")
    n = len(users)
    count = np.zeros(n, np.int64)
    checksum = np.zeros(n, np.uint32)
    hits = np.zeros(n, np.int64)
    windows = []
    parts = partition_of(users, schema.partitions)
    for p in np.unique(parts) if schema.partitions > 1 else [0]:
        rows = np.flatnonzero(parts == p) if schema.partitions > 1 else np.arange(n)
        for segment in segments(int(p)):
            lo, hi = segment.user_ranges(users[rows])
            keep = hi > lo
            if not keep.any():
                continue
            present = rows[keep]
            c, s, wlo, whi, holes = _kernels.locate(
                lo[keep], hi[keep], segment.stored(TIME), segment.base(TIME),
                segment.stored("_version"), segment.stored("_vmax"), segment.stored("_vmin"),
                segment.base("_version"),
                segment.stored("_hcum"), *segment.encoded(arrival), request_ts[present],
                visibility.take(present), max_len,
            )
            count[present] += c
            checksum[present] += s
            nonempty = whi > wlo
            hits[present[nonempty]] += 1
            if nonempty.any():
                windows.append((segment, present[nonempty], wlo[nonempty], whi[nonempty], holes[nonempty]))
    return Located(count, checksum, windows, hits > 1)
