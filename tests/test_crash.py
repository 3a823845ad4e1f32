"""Crash safety: a writer killed at any moment never damages a published version.

A child process commits (and now and then compacts) sizeable tables in a loop and is
SIGKILLed at a random moment, over and over. After every kill, every published version
must open, have intact segment files, and materialize completely to exactly what a
brute-force oracle expects for it; and the next commit, from this process, must succeed.

The child commits ``crash_events(v)`` as version ``v`` (a pure function of ``v``), so
the oracle can replay any version from the operations its manifests record.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from oracle import referenced_files

import lateseq
from lateseq._kernels import event_hashes

COLUMNS = {"item": "int32", "w": "float64", "seq": "int16", "flag": "bool"}
USERS = 150
ROUNDS, KILLS_PER_ROUND = 4, 6
CHILD = "import sys; sys.path.insert(0, sys.argv[1]); import test_crash; test_crash.child()"


def crash_events(version: int) -> dict[str, np.ndarray]:
    """The events committed as ``version``: late arrivals, ties, and every payload kind."""
    rng = np.random.default_rng([20_260_101, version])
    n = int(rng.integers(3000, 7000))
    return {
        "user_id": rng.integers(0, USERS, n),
        "ts": rng.integers(0, 1500, n),
        "item": rng.integers(-(2**31), 2**31, n).astype(np.int32),
        "w": rng.standard_normal(n),
        "seq": rng.integers(0, 3, n).astype(np.int16),
        "flag": rng.random(n) < 0.5,
    }


def child() -> None:
    """Once told a store and a seed on stdin, commits and compacts it until killed.

    It starts (imports, warms up) before it is needed, so that starting overlaps the
    parent's checks and the kill window holds nothing but writing.
    """
    pa.table(crash_events(0))  # the first pa.table() imports pandas: not inside the kill window
    with tempfile.TemporaryDirectory() as scratch:  # nor loading the kernels (~0.3 s: nearly every kill landed there)
        warm = lateseq.create(Path(scratch) / "warm", lateseq.Schema(columns=COLUMNS, tiebreak="seq", partitions=2))
        warm.commit(pa.table(crash_events(0))).commit(pa.table(crash_events(1))).compact()
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return  # not needed after all
    path, seed = line.split()
    rng = random.Random(int(seed))
    store = lateseq.open(path)
    real_write = lateseq._store.write_segment

    def announced_write(*args, **kwargs):
        print("segment", flush=True)  # the parent may aim its kill at the write that follows
        return real_write(*args, **kwargs)

    lateseq._store.write_segment = announced_write
    print("writing", flush=True)
    while True:
        store = store.latest()
        if rng.random() < 0.25:
            store = store.compact()
        else:
            version = store.version + 1
            store = store.commit(pa.table(crash_events(version)))
            assert store.version == version


class FrameOracle:
    """The oracle, vectorized with pandas for tables of many thousand events."""

    def __init__(self):
        self._commits: dict = {}

    def commit_frame(self, version: int):
        import pandas as pd  # here, so that the child process starts without it

        if version not in self._commits:
            data = crash_events(version)
            frame = pd.DataFrame(data)
            payload = [data[n].astype(np.uint8) if n == "flag" else data[n] for n in COLUMNS]
            frame["hash"] = event_hashes(data["user_id"], data["ts"], payload).astype(np.uint64)
            frame["version"] = version
            frame["row"] = np.arange(len(frame))
            self._commits[version] = frame
        return self._commits[version]

    def expected(self, commits: list[int], request_ts: int, max_len: int):
        """(lengths, checksums, offsets, values) for requests by every user 0..USERS."""
        import pandas as pd

        frame = pd.concat([self.commit_frame(v) for v in commits], ignore_index=True)
        frame = frame[frame["ts"] < request_ts]
        frame = frame.sort_values(["user_id", "ts", "seq", "version", "row"], kind="stable")
        users = pd.Index(range(USERS + 1))  # user USERS never has events
        by_user = frame.groupby("user_id")
        lengths = by_user.size().reindex(users, fill_value=0).to_numpy()
        checksums = (by_user["hash"].sum().reindex(users, fill_value=0).to_numpy() % 2**32).astype(np.uint32)
        newest = by_user.tail(max_len)
        offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, max_len))]).astype(np.int64)
        values = {"ts": newest["ts"].to_numpy(np.int64)}
        values.update({n: newest[n].to_numpy(np.bool_ if t == "bool" else t) for n, t in COLUMNS.items()})
        return lengths, checksums, offsets, values


def digest(batch: lateseq.JaggedBatch) -> str:
    h = hashlib.sha256(batch.offsets.tobytes())
    for name in sorted(batch.values):
        h.update(name.encode() + batch.values[name].tobytes())
    return h.hexdigest()


REQUESTS = [(2**62, 10**9), (700, 7)]  # (request time, max_len): whole histories, and a cut


def verify_version(store: lateseq.Store, oracle: FrameOracle, known: dict) -> None:
    """Opens, checks every file's CRC, rebuilds every user's history and compares."""
    infos = {i.version: i for i in store.versions()}
    handle = lateseq.open(store.path, version=store.version)
    assert handle.num_events == infos[store.version].events
    for info in handle.segment_infos:
        assert info.corrupt_files(store.path / "segments") == []
    commits = [v for v, i in infos.items() if v <= store.version and i.operation == "commit"]
    assert sum(len(oracle.commit_frame(v)) for v in commits) == handle.num_events
    for request_ts, max_len in REQUESTS:
        requests = pa.table({"user_id": np.arange(USERS + 1), "request_ts": np.full(USERS + 1, request_ts)})
        examples = lateseq.log_examples(handle, requests)
        projection = lateseq.Projection(max_len, ("ts", *COLUMNS))
        batch = lateseq.materialize(handle, examples, projection)  # verifies checksums
        key = (store.version, request_ts)
        if key in known:  # already compared with the oracle: must not have changed since
            assert digest(batch) == known[key], f"version {store.version} changed after a crash"
            return  # the whole history is enough to prove that
        lengths, checksums, offsets, values = oracle.expected(commits, request_ts, max_len)
        assert np.array_equal(examples.column("uih_length").to_numpy(), lengths)
        assert np.array_equal(examples.column("uih_checksum").to_numpy(), checksums)
        assert np.array_equal(batch.offsets, offsets)
        for name, want in values.items():
            got = batch.values[name]
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), f"v{store.version} {name}"
        known[key] = digest(batch)


def test_killed_writers_never_damage_published_versions(tmp_path):
    rng = random.Random(1234)
    oracle = FrameOracle()
    tests_dir = str(Path(__file__).parent)
    kills = mid_write = 0

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CHILD, tests_dir], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    waiting = start()
    try:
        for round_ in range(ROUNDS):
            path = tmp_path / f"store{round_}"
            schema = lateseq.Schema(columns=COLUMNS, tiebreak="seq", partitions=1 + round_ % 3)
            lateseq.create(path, schema).commit(pa.table(crash_events(1)))
            known: dict = {}
            for _ in range(KILLS_PER_ROUND):
                with waiting as proc:
                    waiting = start()  # the next writer warms up while this one is checked
                    assert proc.stdout.readline() == b"ready\n", proc.stderr.read().decode()
                    proc.stdin.write(f"{path} {rng.getrandbits(32)}\n".encode())
                    proc.stdin.flush()
                    assert proc.stdout.readline() == b"writing\n", proc.stderr.read().decode()
                    if rng.random() < 0.5:  # aimed: just after a segment write starts
                        assert proc.stdout.readline() == b"segment\n", proc.stderr.read().decode()
                        time.sleep(rng.uniform(0.0, 0.005))
                    else:  # anywhere in the loop of commits and compactions
                        time.sleep(rng.uniform(0.0, 0.12))
                    assert proc.poll() is None, proc.stderr.read().decode()  # it was still writing
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                kills += 1
                mid_write += verify_after_kill(path, oracle, known)
    finally:
        waiting.stdin.close()  # it exits when it reads end-of-file
        waiting.wait(timeout=60)
        waiting.stdout.close()
        waiting.stderr.close()
    assert kills == ROUNDS * KILLS_PER_ROUND
    # the kills must land inside writes, or the test proves nothing about them
    assert mid_write >= 1, f"none of {kills} kills interrupted a write"
    print(f"{kills} kills, {mid_write} left a half-written commit or compaction behind")


def verify_after_kill(path: Path, oracle: FrameOracle, known: dict) -> bool:
    """Every published version is whole and right; the next commit succeeds.

    Returns whether the kill left unreferenced files behind (it hit a write midway).
    """
    store = lateseq.open(path)
    names = referenced_files(store)
    orphans = any(p.name not in names for p in (path / "segments").iterdir())
    for version in range(1, store.version + 1):
        verify_version(store.checkout(version), oracle, known)
    store = store.commit(pa.table(crash_events(store.version + 1)))  # writing goes on
    verify_version(store, oracle, known)
    return orphans




def synced_order(monkeypatch) -> list[tuple[str, str]]:
    """What the process syncs and renames, in order: ("sync", path) and ("rename", destination)."""
    done: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        done.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        done.append(("rename", os.fspath(Path(dst).absolute())))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return done


def test_a_power_loss_loses_no_example_log_nor_new_store_once_written(tmp_path, monkeypatch):
    """An example log (the one record of what was served) was renamed into place unsynced,
    and a new store's folders were never synced in their parents: after a power loss the
    log could be empty and the store gone (s62P). Each file is synced before its rename,
    its folder after, and every folder a create makes, in its parent."""
    done = synced_order(monkeypatch)
    store = lateseq.create(tmp_path / "a" / "b" / "store", lateseq.Schema({"item": "int64"}))
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        assert ("sync", str(folder)) in done, (folder, done)
    store = store.commit(pa.table({"user_id": [1], "ts": [1], "item": [1]}))
    for overwrite in (False, True):
        done.clear()
        log = tmp_path / "log.parquet"
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [5]}), log, overwrite=overwrite)
        renamed = done.index(("rename", str(log)))
        assert [kind for kind, path in done[:renamed] if ".tmp-" in path and path.endswith("-log.parquet")] == \
            ["sync"], done
        assert ("sync", str(tmp_path)) in done[renamed:], done


def test_a_folder_that_cannot_be_synced_keeps_the_file_written_into_it(tmp_path, monkeypatch):
    """A folder one may write into but not open (mode 0733) cannot be synced: the sync added
    for power losses ran inside the write's rollback, which then took the new log back
    after the old one was replaced, leaving no file at all (s62R). And a create in such a
    folder failed, naming the wrong folder."""
    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(lateseq._format, "fsync_dir", refused)
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item": "int64"}))
    store = store.commit(pa.table({"user_id": [1], "ts": [1], "item": [1]}))
    log = tmp_path / "log.parquet"
    log.write_bytes(b"an older log")
    lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [5]}), log, overwrite=True)
    import pyarrow.parquet as pq

    assert lateseq.materialize(store, pq.read_table(log), lateseq.Projection(5, ("item",))).values["item"].tolist() \
        == [1]
