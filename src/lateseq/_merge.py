"""Merging a partition's segments into one order: what compaction writes, and what a
read of an uncompacted version must reproduce."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._events import Events, Taken
from ._format import TIME
from ._kernels import merge_order
from ._schema import Schema
from ._segments import Segment


class _Concatenated(Mapping):
    """Payload columns of several segments end to end, each decoded only when read."""

    def __init__(self, segments: list[Segment], schema: Schema):
        self._segments, self._schema = segments, schema

    def __getitem__(self, name: str) -> np.ndarray:
        return np.concatenate([s.payload(name, self._schema) for s in self._segments])

    def __iter__(self):
        return iter(self._schema.columns)

    def __len__(self) -> int:
        return len(self._schema.columns)


def merge_segments(segments: list[Segment], schema: Schema) -> Events:
    """The events of one partition's segments, oldest segment first, stably sorted by
    (user, time, tie-break): equal keys keep segment order, then row order, which is
    commit order, so the merge is the order a single commit of everything would have."""
    user = np.concatenate([np.repeat(s.user_ids, np.diff(np.append(s.starts, s.info.rows))) for s in segments])
    ts = np.concatenate([s.decoded(TIME) for s in segments]).astype(np.int64, copy=False)
    tiebreak = None
    if schema.tiebreak is not None:
        tiebreak = np.concatenate([s.payload(schema.tiebreak, schema) for s in segments])
    order = merge_order(user, ts, tiebreak, [s.info.rows for s in segments])
    del tiebreak
    version = np.concatenate([s.decoded("_version").astype(np.uint32) for s in segments])[order]
    hashes = np.concatenate([s.hashes() for s in segments])[order]
    return Events(user[order], ts[order], Taken(_Concatenated(segments, schema), order), version, hashes)
