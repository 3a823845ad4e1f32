"""A process forked while another thread held one of lateseq's locks: the child's first
use of it waited forever (a DataLoader forking its workers while an in-process loader's
prefetch thread built a view or checked a column). The child finds them free."""

from __future__ import annotations

import os
import select
import signal
import threading

import numpy as np
import pyarrow as pa

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
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(60)
        got = lateseq.materialize(store, log, projection)
        same = not want.rows_differ(got).any()
        os.write(write, b"1" if same else b"0")
        os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        answer = os.read(read, 1) if ready else b""
    finally:
        release.set()
        holder.join()
        if not answer:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    assert answer == b"1"
