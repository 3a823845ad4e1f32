"""A process forked while another thread held one of lateseq's locks: the child's first
use of it waited forever (a DataLoader forking its workers while an in-process loader's
prefetch thread built a view or checked a column). The child finds them free."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
from forking import answer_of_forked_child

import lateseq


def test_a_child_forked_while_a_thread_holds_the_read_paths_locks_reads_the_same_histories(tmp_path):
    rng = np.random.default_rng(3)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64", "action": "int8"}))
    for _ in range(2):  # two segments: a view over both
        store = store.commit(pa.table({"user_id": rng.integers(0, 20, 300), "ts": rng.integers(0, 1000, 300),
                                       "item_id": rng.integers(0, 10**6, 300),
                                       "action": rng.integers(0, 4, 300).astype(np.int8)}))
    log = lateseq.log_examples(store, pa.table({"user_id": rng.integers(0, 20, 200),
                                                "request_ts": rng.integers(0, 1100, 200)}))
    projection = lateseq.Projection(50, ("item_id", "action", "ts"))
    want = lateseq.materialize(store, log, projection)
    segment = store.segments(0)[0]
    locks = [store._views_lock, segment._lock, store._segments._lock]  # the handle's views, a segment, their cache
    held, release = threading.Event(), threading.Event()

    def holding() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(60)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=holding)
    holder.start()
    assert held.wait(30)
    try:
        answer = answer_of_forked_child(
            lambda: b"0" if want.rows_differ(lateseq.materialize(store, log, projection)).any() else b"1")
    finally:
        release.set()
        holder.join()
    assert answer == b"1"
