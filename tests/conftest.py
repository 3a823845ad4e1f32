"""Shared fixtures: store factories, directory snapshots, Hypothesis profiles, slow tests.

Hypothesis runs under the ``ci`` profile (no deadline: the first calls compile numba
kernels) unless ``HYPOTHESIS_PROFILE`` names another registered one. Each property test
sets its own example count, sized so the suite runs in about two minutes on two cores;
tests marked ``slow`` (bigger runs of the same properties) run only when asked for:
``pytest -m slow``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import signal
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, settings

import lateseq

settings.register_profile(
    "ci", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_store(tmp_path):
    """``make_store(columns, **schema_options)`` -> a new, empty store under tmp_path."""
    counter = itertools.count()

    def make(columns: dict[str, str] | None = None, **options) -> lateseq.Store:
        schema = lateseq.Schema(columns={"item": "int64"} if columns is None else columns, **options)
        return lateseq.create(tmp_path / f"store{next(counter)}", schema)

    return make


@pytest.fixture
def small_store(make_store):
    """A store with two commits: users 1 and 2, then a late event for user 1."""
    store = make_store({"item": "int64", "rating": "int8"})
    store = store.commit(pa.table({
        "user_id": [1, 1, 1, 2, 2],
        "ts": [10, 20, 30, 10, 15],
        "item": [100, 200, 300, 400, 500],
        "rating": pa.array([1, 2, 3, 4, 5], pa.int8()),
    }))
    return store.commit(pa.table({
        "user_id": [1], "ts": [15], "item": [150], "rating": pa.array([9], pa.int8()),
    }))


@contextlib.contextmanager
def files_at_most(size: int):
    """No file this process writes may grow past ``size`` bytes (EFBIG, as a full disk's
    ENOSPC: a write fails midway)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> contents), to prove nothing changed."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def dir_snapshot():
    return snapshot


@pytest.fixture
def world(tmp_path):
    """An empty two-tier setup: a store with arrival and event ids, and a mutable tier."""
    from oracle import TWO_TIER_SCHEMA

    from lateseq.mutable import InMemoryTier

    return lateseq.create(tmp_path / "store", TWO_TIER_SCHEMA), InMemoryTier(TWO_TIER_SCHEMA, retention=100)


class ArrowExporter:
    """A column as polars hands it over: it exports Arrow (the PyCapsule stream), and reads
    through numpy to the microsecond, as polars' datetime[ns] Series did."""

    def __init__(self, array: pa.Array):
        self.array = array
        self.dtype = "exported"

    def __arrow_c_stream__(self, requested_schema=None):
        return pa.chunked_array([self.array]).__arrow_c_stream__(requested_schema)

    def __array__(self, dtype=None, copy=None):
        values = self.array.to_numpy(zero_copy_only=False)
        return values.astype("datetime64[us]") if values.dtype.kind == "M" else values.astype(float)

    def __len__(self):
        return len(self.array)
