"""The one read entry point: any example log (plain pointers, two-tier records with
inline tails, or stripped ones) to the exact sequences online saw."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from ._gather import gather
from ._jagged import JaggedBatch, stitch
from ._pointers import Pointers
from ._projection import Projection
from ._records import is_two_tier, rebuild_batch, rebuild_streaming
from ._store import Store


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
    if isinstance(examples, Pointers) or not is_two_tier(examples):
        return gather(store, examples, projection, verify=verify, on_mismatch=on_mismatch)
    stripped = examples.column("tail_version").to_numpy() > 0
    if stripped.all() or not stripped.any():
        how = rebuild_batch if stripped.all() and len(stripped) else rebuild_streaming
        return how(store, examples, projection, on_mismatch)
    parts = []
    for mask, how in ((stripped, rebuild_batch), (~stripped, rebuild_streaming)):
        index = np.flatnonzero(mask)
        parts.append((index, how(store, examples.take(pa.array(index)), projection, on_mismatch)))
    return stitch(parts, len(stripped))
