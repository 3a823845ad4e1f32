"""``readahead``: a store read at random from a map bigger than memory must not pull in
the disk's readahead window per page fault. What the kernel was told is read back from
/proc/self/smaps (``rr``: MADV_RANDOM); values read never depend on it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import lateseq
from lateseq import _store
from lateseq._derived import DERIVED_DIR

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the advice back from /proc/self/smaps")

PROJECTION = lateseq.Projection(max_len=3, columns=("item", "ts"))


def random_read_flags() -> list[tuple[int, int, bool]]:
    """(start, end, advised random) of every mapping of this process."""
    out = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
            elif head == "VmFlags:":
                out.append((start, end, "rr" in line.split()[1:]))
    return out


def advised_random(column: np.ndarray) -> bool:
    """Whether every page of ``column`` is in a mapping advised MADV_RANDOM."""
    first, last = column.ctypes.data, column.ctypes.data + column.nbytes
    covering = [rr for start, end, rr in random_read_flags() if start < last and end > first]
    assert covering, "the column is not mapped"
    return all(covering)


@pytest.fixture
def store(make_store):
    """Three commits over 40 users, the last with late events; one partition each."""
    rng = np.random.default_rng(5)
    store = make_store({"item": "int64"})
    for day in range(3):
        users = rng.integers(0, 40, 300)
        ts = day * 1000 + rng.integers(0, 1000, 300) - (rng.random(300) < 0.2) * 1500 * (day > 1)
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item": rng.integers(0, 10**6, 300)}))
    return store


def examples(store: lateseq.Store) -> pa.Table:
    return lateseq.log_examples(store, pa.table({"user_id": np.arange(40), "request_ts": np.full(40, 5000)}))


def read_columns(store: lateseq.Store) -> list[np.ndarray]:
    """The stored columns a read of ``store`` checked, in every segment it read."""
    return [segment._data[name] for view in store._views.values() if view is not None
            for segment in view.segments for name in segment._verified]


def test_off_reads_every_checked_column_without_readahead_and_the_same_values(store):
    log = examples(store)
    ahead = lateseq.materialize(lateseq.open(store.path, readahead=True), log, PROJECTION)
    for merged in (False, True):  # decoded copies of the segments, and a merged copy
        handle = lateseq.open(store.path, merged_reads=merged, readahead=False)
        batch = lateseq.materialize(handle, log, PROJECTION)
        assert not batch.rows_differ(ahead).any()
        columns = read_columns(handle)
        assert len(columns) >= 3 and all(advised_random(c) for c in columns)
        assert any(Path(s.path).parent.name == DERIVED_DIR for s in handle._view(0).segments) == merged


def test_on_leaves_the_kernel_readahead(store):
    handle = lateseq.open(store.path, readahead=True)
    lateseq.materialize(handle, examples(store), PROJECTION)
    columns = read_columns(handle)
    assert columns and not any(advised_random(c) for c in columns)


def test_auto_turns_it_off_for_a_version_bigger_than_half_the_memory(store, monkeypatch):
    row = 8 + 8 + 4 * 4  # item, time and the four system columns, as decoded at most
    for memory, random in ((10**15, False), (2 * 900 * row, False), (2 * 900 * row - 2, True)):
        monkeypatch.setattr(_store, "physical_memory", lambda memory=memory: memory)
        handle = lateseq.open(store.path)
        assert handle.num_events == 900
        lateseq.materialize(handle, examples(store), PROJECTION)
        assert all(advised_random(c) == random for c in read_columns(handle)), memory


def test_a_copy_decoded_again_after_damage_is_advised_too(store):
    log = examples(store)
    expected = lateseq.materialize(lateseq.open(store.path, merged_reads=False), log, PROJECTION)
    decoded = sorted(store.cache_dir.glob("*.arrow"))
    assert decoded
    for path in decoded:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    handle = lateseq.open(store.path, merged_reads=False, readahead=False)
    batch = lateseq.materialize(handle, log, PROJECTION)
    assert not batch.rows_differ(expected).any()
    assert all(advised_random(c) for c in read_columns(handle))



def test_a_map_stays_one_area_however_many_columns_are_read(make_store):
    """Advice per column would split a map into an area per column, and a process may
    hold only vm.max_map_count areas (65,530 by default): a few thousand open segments of
    a wide store would exhaust it. The map is advised whole, the check's readahead undone."""
    columns = {f"c{i:02d}": "int64" for i in range(16)}
    store = make_store(columns)
    rng = np.random.default_rng(1)
    store = store.commit(pa.table({"user_id": rng.integers(0, 9, 2000), "ts": rng.integers(0, 10**6, 2000),
                                   **{c: rng.integers(0, 1 << 40, 2000) for c in columns}}))
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(9), "request_ts": np.full(9, 10**6)}))
    for ahead in (False, True):
        handle = lateseq.open(store.path, readahead=ahead)
        lateseq.materialize(handle, log, lateseq.Projection(50, tuple(list(columns)[::2])))  # every other column
        (segment,) = handle.segments()
        stored = list(segment._data.values())  # not .stored(): that would check (and advise) every column
        first = min(c.ctypes.data for c in stored)
        last = max(c.ctypes.data + c.nbytes for c in stored)
        areas = [(start, end) for start, end, _ in random_read_flags() if start < last and end > first]
        assert len(areas) == 1, (ahead, len(areas))
        assert all(advised_random(c) != ahead for c in read_columns(handle))


def test_auto_decides_again_for_each_handle_of_a_growing_store(store, monkeypatch):
    """A lineage of handles starts small (create, then commits): a handle on a version
    past half the memory reads at random however its lineage began."""
    monkeypatch.setattr(_store, "physical_memory", lambda: 10**15)
    small = lateseq.open(store.path, 1)
    lateseq.materialize(small, examples(small), PROJECTION)
    assert not any(advised_random(c) for c in read_columns(small))
    monkeypatch.setattr(_store, "physical_memory", lambda: 1000)  # the store outgrew the machine
    grown = small.latest()
    lateseq.materialize(grown, examples(grown), PROJECTION)
    assert all(advised_random(c) for c in read_columns(grown))
