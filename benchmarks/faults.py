"""Fault injection: damage one file of a store, rebuild an example log, classify what happened.

    python benchmarks/faults.py                       # 300 trials per kind of file
    python benchmarks/faults.py --trials 15 --json out.json --seed 3
    python benchmarks/faults.py --self-check          # first provoke each outcome on purpose

A small but complete store is built in a temporary directory (300 users, six payload
types with NaN payloads and full-range int64s, two partitions; three commits with many
ties in time, a compaction, two tags, two more commits with late events, so the latest
version reads three segments per partition; version 1 retired to a tombstone), with an
example log of pointers logged against every version. The undamaged reference is the rebuild of every pointer (every column,
a max_len longer than any history) and the pointers logged at the latest version; it
is checked against a brute-force rebuild from the raw events first.

Then, for each kind of file (schema, manifest, tag, durable parquet, index, decoded
copy), each trial restores the pristine store, picks a random file of that kind and a
random mutation of it (one byte xor a random non-zero mask; a truncation to a random
length; or a 64-byte run zeroed), and asks a long-lived worker process (so a segfault
is a counted crash, not the end of the run) to

1. run ``lateseq.audit.verify`` on the damaged store (read-only; when the store cannot
   even be opened, the error from opening it counts, since that is what
   ``lateseq verify`` prints), and note whether it named the damaged file;
2. open the store afresh (by the damaged tag's name for tags; with an empty read cache
   for the durable kinds, so the durable files are really decoded; with the store's
   read cache otherwise), rebuild the whole example log and log the requests again;
3. classify: ``correct`` (bit-identical output and pointers), ``clear error`` (a
   ``LateseqError`` naming the damaged file or its segment), ``unclear error`` (a
   ``LateseqError`` that does not), ``raw exception`` (any other exception: a bug),
   ``silently wrong`` (other output, no error), ``crash`` (the worker died, or took
   more than 30 s).

Correct trials are split by why they were correct: the damaged copy was ``repaired``
(decoded again from the durable files), the damage was ``harmless`` (the file was read
but its content is unchanged: JSON whitespace, Arrow padding), or the file was ``not
read`` by this run (an older version's manifest or segment). A damaged file is
``real damage`` unless its content is provably unchanged; verify should name every one.

Exit status 1 if any trial was silently wrong, crashed, or raised a raw exception (in
the rebuild or in verify).
"""

from __future__ import annotations

import os

# two shared cores: one thread everywhere, set before numpy, numba or pyarrow start pools
for _name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import datetime
import gc
import json
import pickle
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("schema", "manifest", "tag", "parquet", "index", "decoded")
DURABLE = ("parquet", "index")  # opened with an empty read cache: the durable files are decoded
OUTCOMES = ("correct", "clear error", "unclear error", "raw exception", "silently wrong", "crash")
WHY_CORRECT = ("repaired", "harmless", "not read")
TRIAL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0
MAX_LEN = 100_000  # longer than any history: every visible event is rebuilt
PAYLOAD = {"item": "int64", "rating": "int8", "dwell": "float32", "click": "bool", "pos": "int32",
           "score": "float64"}
NUMPY = {"int8": np.int8, "int32": np.int32, "int64": np.int64, "float32": np.float32,
         "float64": np.float64, "bool": np.bool_}
TAGS = {"compacted": 4, "second": 2}
EXAMPLES_KEPT = 5  # per outcome and kind: the details kept for the report


# ================================================================ the store


def _events(rng: np.random.Generator, users: np.ndarray, n: int, t0: int, t1: int, wide: bool = False) -> pa.Table:
    """``n`` events of random ``users`` at times in [t0, t1) (a narrow range: many ties)."""
    user = rng.choice(users, n)
    ts = rng.integers(t0, t1, n)
    if wide:  # values that do not fit frame-of-reference: stored as they are
        item = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64, endpoint=True)
        item[:2] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max]
    else:
        item = rng.integers(0, 10**6, n)
    dwell = rng.normal(0, 100, n).astype(np.float32)
    specials32 = np.array([np.nan, -0.0, np.inf, -np.inf], np.float32)
    specials32 = np.append(specials32, np.array([0x7FC00001, 0xFFC12345], np.uint32).view(np.float32))
    pick = rng.random(n) < 0.05
    dwell[pick] = rng.choice(specials32, int(pick.sum()))
    score = rng.standard_normal(n)
    specials64 = np.array([np.nan, -0.0, np.inf, 5e-324], np.float64)
    specials64 = np.append(specials64, np.array([0x7FF8000000000ABC], np.uint64).view(np.float64))
    pick = rng.random(n) < 0.05
    score[pick] = rng.choice(specials64, int(pick.sum()))
    return pa.table({
        "user_id": pa.array(user, pa.int64()),
        "ts": pa.array(ts, pa.int64()),
        "item": pa.array(item, pa.int64()),
        "rating": pa.array(rng.integers(-128, 128, n), pa.int8()),
        "dwell": pa.array(dwell, pa.float32()),
        "click": pa.array(rng.random(n) < 0.3, pa.bool_()),
        "pos": pa.array(rng.integers(-(2**31), 2**31, n), pa.int32()),
        "score": pa.array(score, pa.float64()),
    })


def _requests(rng: np.random.Generator, users: np.ndarray, n: int, t1: int) -> pa.Table:
    unknown = np.array([0, 10**12 + 7, 201, 202], np.int64)  # never stored
    return pa.table({
        "user_id": pa.array(rng.choice(np.concatenate([users, unknown]), n), pa.int64()),
        "request_ts": pa.array(rng.integers(-5, t1 + 5, n), pa.int64()),
        "label": pa.array(rng.integers(0, 2, n), pa.int8()),
    })


def build(root: Path, seed: int) -> dict:
    """The pristine store at ``root / "store"`` and everything the worker needs."""
    import lateseq
    from lateseq.audit import verify

    rng = np.random.default_rng(seed)
    dense = np.arange(1, 201, dtype=np.int64)  # direct-indexed user lookups
    sparse = rng.choice(2**40, 100, replace=False).astype(np.int64) + 10**6  # binary-searched ones
    users = np.concatenate([dense, sparse])
    schema = lateseq.Schema(dict(PAYLOAD), partitions=2)
    path = root / "store"
    store = lateseq.create(path, schema)
    committed: list[tuple[int, pa.Table]] = []  # (version, events) of each commit
    logs: list[pa.Table] = []

    def commit(table: pa.Table) -> None:
        nonlocal store
        store = store.commit(table)
        committed.append((store.version, table))
        # requests at every time, late ones included, logged against the version online read
        logs.append(lateseq.log_examples(store, _requests(rng, users, 120, 400)))

    # ties everywhere: few distinct times per user, the same times again in later commits
    commit(_events(rng, users, 700, 0, 100))
    commit(_events(rng, users, 700, 50, 200))
    commit(_events(rng, users, 700, 100, 300, wide=True))
    store = store.compact()
    assert store.version == 4, store.version
    logs.append(lateseq.log_examples(store, _requests(rng, users, 120, 400)))
    for name, version in TAGS.items():
        store.tag(name, version)
    commit(_events(rng, users, 600, 0, 350))  # late events: before times already stored
    commit(_events(rng, users, 600, 200, 400))
    store.cleanup(before=2, grace_s=0)  # version 1 becomes a tombstone (its pointers still rebuild)
    latest = lateseq.open(path)
    assert latest.version == 6 and [v.version for v in latest.versions()] == [2, 3, 4, 5, 6]
    per_partition = Counter(i.partition for i in latest.segment_infos)
    assert per_partition == {0: 3, 1: 3}, per_partition

    log = pa.concat_tables(logs)
    requests = _requests(rng, users, 200, 400)
    projection = lateseq.Projection(MAX_LEN, ("ts", *PAYLOAD))
    expected, oracle_checked = {}, 0
    for key, version in [("latest", None), *[(f"tag:{n}", n) for n in TAGS]]:
        handle = lateseq.open(path, version)
        sub = log.filter(pc.less_equal(log.column("uih_version"), pa.scalar(handle.version, pa.uint32())))
        batch = lateseq.materialize(handle, sub, projection)
        pointers = lateseq.log_examples(handle, requests)
        oracle = _brute_force(committed, sub, projection.max_len)
        if not _same_batch(_as_dict(batch), oracle):
            raise SystemExit(f"the undamaged rebuild ({key}) differs from the brute-force one: a bug "
                             "without any damage; fix that first")
        replay = _brute_force(committed, pointers, projection.max_len)
        if not np.array_equal(np.diff(replay["offsets"]), pointers.column("uih_length").to_numpy()):
            raise SystemExit(f"pointers logged at {key} count other histories than the brute force")
        oracle_checked += sub.num_rows
        expected[key] = {"log": sub, "batch": _as_dict(batch), "pointers": pointers}
    problems = verify(latest, deep=True)
    if problems:
        raise SystemExit(f"verify finds problems in the undamaged store: {problems}")

    infos = {i.name: i for v in latest.versions() for i in lateseq.open(path, v.version).segment_infos}
    read_by_latest = {i.name for i in latest.segment_infos}
    files = {kind: [] for kind in KINDS}
    files["schema"].append("schema.json")
    files["manifest"] += sorted(f"versions/{p.name}" for p in (path / "versions").glob("*.json"))
    files["tag"] += sorted(f"tags/{p.name}" for p in (path / "tags").glob("*.json"))
    for name in sorted(infos):
        files["parquet"].append(f"segments/{name}.parquet")
        files["index"].append(f"segments/{name}.index.arrow")
        files["decoded"].append(f"cache/{name}.arrow")
    assert all(files.values()) and len(files["decoded"]) == 12, {k: len(v) for k, v in files.items()}
    read = {"schema.json"} | {f"tags/{t}.json" for t in TAGS} | {f"versions/{latest.version:08d}.json"}
    read |= {f for kind in ("parquet", "index", "decoded") for f in files[kind]
             if f.split("/")[1].split(".")[0] in read_by_latest}
    pristine_columns = {name: _columns_of(path / "cache" / f"{name}.arrow") for name in infos}
    return {
        "path": str(path), "files": files, "read": sorted(read), "expected": expected,
        "requests": requests, "pristine_columns": pristine_columns,
        "stats": {"events": latest.num_events, "users": len(users), "versions": latest.version,
                  "kept": [v.version for v in latest.versions()], "segments": len(infos),
                  "latest_segments": len(latest.segment_infos), "log_rows": log.num_rows,
                  "oracle_rows": oracle_checked,
                  "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file())},
    }


def _brute_force(committed: list[tuple[int, pa.Table]], log: pa.Table, max_len: int) -> dict:
    """Every pointer's visible events (user's, time before the request, version at most the
    pointer's), ordered by (time, commit, row), the newest ``max_len``: no lateseq code."""
    tables = [t.append_column("_version", pa.array(np.full(t.num_rows, v, np.int64))) for v, t in committed]
    allev = pa.concat_tables(tables)
    user = allev.column("user_id").to_numpy()
    ts = allev.column("ts").to_numpy()
    version = allev.column("_version").to_numpy()
    order = np.lexsort((np.arange(len(ts)), ts))  # stable: commit, then row order, within a time
    cols = {"ts": ts, **{n: allev.column(n).to_numpy(zero_copy_only=False) for n in PAYLOAD}}
    picks, lengths = [], []
    for u, rts, v in zip(log.column("user_id").to_numpy(), log.column("request_ts").to_numpy(),
                         log.column("uih_version").to_numpy(), strict=True):
        rows = order[(user[order] == u) & (ts[order] < rts) & (version[order] <= v)][-max_len:]
        picks.append(rows)
        lengths.append(len(rows))
    rows = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return {"offsets": offsets, "values": {n: c[rows].astype(NUMPY.get(PAYLOAD.get(n, "int64")))
                                           for n, c in cols.items()}}


def _as_dict(batch) -> dict:
    return {"offsets": np.asarray(batch.offsets), "values": {n: np.asarray(v) for n, v in batch.values.items()},
            "mismatched": np.asarray(batch.mismatched)}


def _bits(values: np.ndarray) -> np.ndarray:
    return values.view(f"u{values.dtype.itemsize}")


def _same_batch(got: dict, want: dict) -> bool:
    """Bit-identical offsets and values (floats by their bits); nothing flagged."""
    if "mismatched" in got and np.asarray(got["mismatched"]).any():
        return False
    if got["offsets"].dtype != want["offsets"].dtype or not np.array_equal(got["offsets"], want["offsets"]):
        return False
    if set(got["values"]) != set(want["values"]):
        return False
    for name, w in want["values"].items():
        g = got["values"][name]
        if g.dtype != w.dtype or g.shape != w.shape or not np.array_equal(_bits(g), _bits(w)):
            return False
    return True


def _columns_of(path: Path) -> dict | None:
    """A decoded copy's columns as (dtype, length, bytes), read without lateseq and without
    a memory map; None when pyarrow cannot read it."""
    try:
        batch = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).get_batch(0)
        out = {}
        for name in batch.schema.names:
            column = batch.column(name)
            if column.null_count:
                return None
            values = column.to_numpy(zero_copy_only=False)
            out[name] = (values.dtype.str, len(values), np.ascontiguousarray(values).tobytes())
        return out
    except Exception:  # noqa: BLE001 - any failure to read means "not provably unchanged"
        return None


# ================================================================ the worker


def worker_main(setup: str) -> None:
    """Answers one trial per line on stdin; the answer goes to the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, never into the protocol
    with open(setup, "rb") as f:
        ref = pickle.load(f)
    import lateseq
    from lateseq.audit import verify

    projection = lateseq.Projection(MAX_LEN, ("ts", *PAYLOAD))
    # warm up: compile (or load) every kernel once on the pristine store
    lateseq.materialize(lateseq.open(ref["warm"]), ref["expected"]["latest"]["log"], projection)
    print(json.dumps({"ready": True}), file=proto, flush=True)
    for done, line in enumerate(sys.stdin, 1):
        spec = json.loads(line)
        answer = _trial(spec, ref, projection, lateseq, verify)
        # a trial's handles go with their last reference (files are restored under new
        # inodes, so a stray mapping never sees them change); a full collection costs
        # ~60 ms here, so cycles are swept now and then, not after every trial
        gc.collect(0 if done % 50 else 2)
        print(json.dumps(answer), file=proto, flush=True)


def _names(spec: dict) -> list[str]:
    """What an error must name: the damaged file's name, or its segment's."""
    name = Path(spec["file"]).name
    names = [name]
    if spec["kind"] in ("parquet", "index", "decoded"):
        names.append(name.split(".")[0])
    return names


def _trial(spec: dict, ref: dict, projection, lateseq, verify) -> dict:
    path, cache = Path(ref["path"]), Path(spec["cache"])
    names = _names(spec)
    answer: dict = {}
    if spec["kind"] == "decoded":  # is the damage provably harmless (every column unchanged)?
        seg = names[1]
        answer["harmless"] = _columns_of(path / spec["file"]) == ref["pristine_columns"][seg]

    # 1. verify, on the damaged store as it lies (read-only without deep=True)
    found, how = False, "problems"
    try:
        handle = lateseq.open(path, cache_dir=cache)
    except lateseq.LateseqError as exc:
        found, how = any(n in str(exc) for n in names), "open error"
    except Exception:  # noqa: BLE001
        found, how = False, "raw exception"
        answer["verify_traceback"] = traceback.format_exc()
    else:
        try:
            problems = verify(handle)
            found = any(any(n in p.path or n in p.message for n in names) for p in problems)
            answer["verify_others"] = [p.path for p in problems if not any(n in p.path or n in p.message
                                                                            for n in names)]
        except lateseq.LateseqError as exc:
            found, how = any(n in str(exc) for n in names), "verify error"
        except Exception:  # noqa: BLE001
            found, how = False, "raw exception"
            answer["verify_traceback"] = traceback.format_exc()
        del handle
    answer["verify_found"], answer["verify_how"] = found, how

    # 2. the rebuild, from a fresh handle
    expected = ref["expected"][spec["ref"]]
    try:
        handle = lateseq.open(path, spec["version"], cache_dir=cache)
        batch = lateseq.materialize(handle, expected["log"], projection)
        if spec.get("sabotage"):
            _sabotage(spec["sabotage"], batch, names, lateseq)
        pointers = lateseq.log_examples(handle, ref["requests"])
        same = _same_batch(_as_dict(batch), expected["batch"]) and pointers.equals(expected["pointers"])
        answer["outcome"] = "correct" if same else "silently wrong"
        if not same:
            answer["detail"] = _difference(_as_dict(batch), expected["batch"], pointers, expected["pointers"])
        del handle, batch, pointers
    except lateseq.LateseqError as exc:
        answer["outcome"] = "clear error" if any(n in str(exc) for n in names) else "unclear error"
        answer["detail"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - every other exception is a bug, and is counted
        answer["outcome"] = "raw exception"
        answer["detail"] = f"{type(exc).__name__}: {exc}"
        answer["traceback"] = traceback.format_exc()
    return answer


def _sabotage(how: str, batch, names: list[str], lateseq) -> None:
    """--self-check: the worker misbehaves on purpose, so each outcome is seen to be caught."""
    if how == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "hang":
        time.sleep(3600)
    elif how == "wrong":
        values = batch.values["dwell"]
        values.view(np.uint32)[len(values) // 2] ^= 1  # one bit of one float
    elif how == "raw":
        raise IndexError("sabotage")
    elif how == "unclear":
        raise lateseq.StoreError("some file is damaged")
    elif how == "clear":
        raise lateseq.StoreError(f"{names[0]} is damaged")


def _difference(got: dict, want: dict, pointers: pa.Table, want_pointers: pa.Table) -> str:
    if not pointers.equals(want_pointers):
        return "pointers logged at the opened version differ"
    if not np.array_equal(got["offsets"], want["offsets"]):
        rows = np.flatnonzero(np.diff(got["offsets"]) != np.diff(want["offsets"]))
        return f"{len(rows)} histories have other lengths (rows {rows[:5].tolist()})"
    bad = [n for n, w in want["values"].items() if n not in got["values"]
           or got["values"][n].dtype != w.dtype or not np.array_equal(_bits(got["values"][n]), _bits(w))]
    return f"values of columns {bad} differ" if bad else "rows flagged as mismatched"


# ================================================================ the driver


class _Process:
    """One worker process: its pipes, its stderr file, what it has said so far."""

    def __init__(self, args: list[str], stderr_path: Path):
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed by kill
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     start_new_session=True)
        self.buffer = b""
        self.closed = False  # its end of the pipe closed: it died

    def send(self, spec: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(spec) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # died: read() says so

    def read(self, timeout: float) -> dict | None:
        """The next answer, or None if the process died or said nothing for ``timeout``."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only this worker
        code = self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.stderr.close()
        return code

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""


class Worker:
    """The long-lived worker process, replaced when it dies or hangs. A spare is always
    starting in the background (it warms up on its own copy of the store), so a
    replacement costs no wait."""

    def __init__(self, script: Path, setup: Path, workdir: Path):
        self.args = [sys.executable, str(script), "--worker", str(setup)]
        self.workdir = workdir
        self.starts = 0
        self.spare = self._spawn()
        self._next()

    def _spawn(self) -> _Process:
        self.starts += 1
        return _Process(self.args, self.workdir / f"worker-{self.starts}.stderr")

    def _next(self) -> None:
        self.current, self.spare = self.spare, self._spawn()
        ready = self.current.read(START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            tail = self.current.stderr_tail()
            self.stop()
            raise SystemExit(f"the worker did not start; its stderr:\n{tail}")

    def stop(self) -> None:
        for process in (self.current, self.spare):
            process.kill()

    def ask(self, spec: dict, timeout: float = TRIAL_TIMEOUT_S) -> dict:
        self.current.send(spec)
        answer = self.current.read(timeout)
        if answer is not None:
            return answer
        hung = not self.current.closed
        code = self.current.kill()
        why = f"hung for more than {timeout:.0f} s" if hung else f"died (exit status {code})"
        detail = {"outcome": "crash", "detail": f"worker {why}", "stderr": self.current.stderr_tail()}
        self._next()
        return detail


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def restore(root: Path, pristine: dict[str, bytes]) -> int:
    """Puts every file of the store back as it was (new inodes: a mapping of the old ones
    elsewhere is never truncated under it) and removes any file added; returns how many
    files it had to touch."""
    touched = 0
    for p in sorted(root.rglob("*"), reverse=True):
        rel = str(p.relative_to(root))
        if p.is_file() or p.is_symlink():
            if rel not in pristine:
                p.unlink()
                touched += 1
        elif p.is_dir() and not any(p.iterdir()) and not any(k.startswith(rel + "/") for k in pristine):
            p.rmdir()
    for rel, data in pristine.items():
        p = root / rel
        try:
            same = p.read_bytes() == data
        except OSError:
            same = False
        if not same:
            replace(p, data)
            touched += 1
    return touched


def replace(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".faults-{os.getpid()}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A damaged copy of ``data`` (always different from it) and what was done."""
    n = len(data)
    roll = rng.random()
    if roll < 0.2 and n > 0:
        for _ in range(20):  # zero a 64-byte run that holds something
            at = int(rng.integers(0, max(n - 64, 0) + 1))
            if any(data[at:at + 64]):
                return data[:at] + bytes(min(64, n - at)) + data[at + 64:], f"zero 64 bytes at {at}"
    if roll < 0.55 and n > 0:
        at = int(rng.integers(0, n))
        return data[:at], f"truncate to {at} of {n} bytes"
    at, mask = int(rng.integers(0, n)), int(rng.integers(1, 256))
    damaged = bytearray(data)
    damaged[at] ^= mask
    return bytes(damaged), f"xor 0x{mask:02x} at byte {at} of {n}"


def harmless_json(damaged: bytes, pristine: bytes) -> bool:
    try:
        return json.loads(damaged) == json.loads(pristine)
    except (ValueError, UnicodeDecodeError):
        return False


def template(message: str, store: str) -> str:
    """An error message with its store path, segment names and numbers generalized."""
    message = message.replace(store, "STORE")
    message = re.sub(r"/tmp/[^\s;,)']*", "TMP", message)
    message = re.sub(r"p\d{5}-[0-9a-f]{32}", "SEG", message)
    message = re.sub(r"\d+", "N", message)
    return message[:220]


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lateseq
    return {"host": platform.node(), "cpu": model, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__,
            "lateseq": lateseq.__version__}


SELF_CHECK = {None: "correct", "clear": "clear error", "unclear": "unclear error", "raw": "raw exception",
              "wrong": "silently wrong", "segfault": "crash", "hang": "crash"}


def self_check(worker: Worker, store: Path) -> dict:
    """Each outcome provoked once on the undamaged store: the harness must tell them apart
    (a harness that could not see a crash or a wrong bit would pass vacuously)."""
    got = {}
    for how, want in SELF_CHECK.items():
        spec = {"kind": "schema", "file": "schema.json", "cache": str(store / "cache"), "version": None,
                "ref": "latest", "sabotage": how}
        answer = worker.ask(spec, timeout=3.0 if how == "hang" else TRIAL_TIMEOUT_S)
        got[str(how)] = answer["outcome"]
        if answer["outcome"] != want:
            raise SystemExit(f"self-check: sabotage {how!r} gave {answer['outcome']!r}, not {want!r}: "
                             f"the harness is broken ({answer.get('detail')})")
    return got


def run(trials: int, seed: int, workdir: Path, check: bool = False) -> dict:
    started = time.perf_counter()
    info = build(workdir, seed)
    build_s = time.perf_counter() - started
    store = Path(info["path"])
    setup = workdir / "setup.pickle"
    warm = workdir / "warm"  # workers warm up on a copy: the store may be damaged when one starts
    shutil.copytree(store, warm)
    with open(setup, "wb") as f:
        pickle.dump({"warm": str(warm), **{k: info[k] for k in ("path", "expected", "requests",
                                                                 "pristine_columns")}}, f)
    pristine = snapshot(store)
    worker = Worker(Path(__file__).resolve(), setup, workdir)
    try:
        return _trials(info, trials, seed, workdir, worker, pristine, check, build_s)
    finally:
        worker.stop()


def _trials(info: dict, trials: int, seed: int, workdir: Path, worker: Worker, pristine: dict[str, bytes],
            check: bool, build_s: float) -> dict:
    store = Path(info["path"])
    read = set(info["read"])
    checked = self_check(worker, store) if check else None
    restore(store, pristine)
    rng = np.random.default_rng(seed + 1)
    results: dict = {}
    trial_started = time.perf_counter()
    for kind in KINDS:
        counts = Counter({o: 0 for o in OUTCOMES})
        why = Counter({w: 0 for w in WHY_CORRECT})
        found_by: Counter = Counter()  # (group, found) -> trials
        verify_how: Counter = Counter()
        verify_missed_real, verify_raw, verify_false = 0, 0, 0
        mutations: Counter = Counter()
        messages: Counter = Counter()
        examples: dict[str, list] = {}
        for t in range(trials):
            rel = str(rng.choice(info["files"][kind]))
            damaged, mutation = mutate(pristine[rel], rng)
            mutations[mutation.split()[0]] += 1
            replace(store / rel, damaged)
            cache = workdir / f"empty-cache-{t}" if kind in DURABLE else store / "cache"
            tag = Path(rel).stem if kind == "tag" else None
            spec = {"kind": kind, "file": rel, "cache": str(cache), "version": tag,
                    "ref": f"tag:{tag}" if tag else "latest"}
            answer = worker.ask(spec)
            outcome = answer["outcome"]
            counts[outcome] += 1
            after = (store / rel).read_bytes() if (store / rel).exists() else None
            if kind in ("schema", "manifest", "tag"):
                harmless = harmless_json(damaged, pristine[rel])
            elif kind == "decoded":
                harmless = bool(answer.get("harmless"))
            else:
                harmless = False  # a durable file is what the store keeps: any changed byte is damage
            if outcome != "correct":
                group = outcome
            elif kind == "decoded" and after != damaged:
                group = "repaired"  # decoded again from the durable files
            elif harmless:
                group = "harmless"
            elif rel not in read:
                group = "not read"
            else:
                group = "read, damage unnoticed"  # correct, although real damage was read: suspicious
            if outcome == "correct":
                why[group] += 1
            if "verify_found" in answer:
                found_by[(group, answer["verify_found"])] += 1
                verify_how[answer["verify_how"]] += 1
                verify_raw += answer["verify_how"] == "raw exception"
                verify_missed_real += not answer["verify_found"] and not harmless
                verify_false += bool(answer.get("verify_others"))
            if outcome in ("clear error", "unclear error", "raw exception"):
                messages[template(answer["detail"], str(store))] += 1
            if (outcome not in ("correct", "clear error") or answer.get("verify_traceback")
                    or group == "read, damage unnoticed"):
                kept = examples.setdefault(outcome, [])
                if len(kept) < EXAMPLES_KEPT:
                    kept.append({"file": rel, "mutation": mutation, **{k: v for k, v in answer.items()
                                                                       if k not in ("outcome",)}})
            if kind in DURABLE:
                shutil.rmtree(cache, ignore_errors=True)
            restore(store, pristine)
        groups = sorted({g for g, _ in found_by})
        results[kind] = {
            "trials": trials, **{o: counts[o] for o in OUTCOMES},
            "verify found": sum(n for (_, f), n in found_by.items() if f),
            "correct because": dict(why),
            "verify found by group": {g: [found_by[(g, True)], found_by[(g, True)] + found_by[(g, False)]]
                                      for g in groups},
            "verify missed real damage": verify_missed_real,
            "verify raw exception": verify_raw,
            "verify named other files": verify_false,
            "verify how": dict(verify_how),
            "mutations": dict(mutations),
            "messages": dict(messages.most_common()),
            "examples": examples,
            "files": len(info["files"][kind]),
        }
    return {"build_s": round(build_s, 2), "trials_s": round(time.perf_counter() - trial_started, 2),
            "worker_starts": worker.starts, "self_check": checked, "store": info["stats"], "kinds": results}


def report(out: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"fault injection: {out['trials_per_kind']} trials per kind (seed {out['seed']})")
    for col in ("kind", "trials", *OUTCOMES, "verify found"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, r in out["kinds"].items():
        cells = [str(r[o]) for o in OUTCOMES]
        for i, o in enumerate(OUTCOMES):
            if o in ("unclear error", "raw exception", "silently wrong", "crash") and r[o]:
                cells[i] = f"[bold red]{r[o]}[/bold red]"
        table.add_row(kind, str(r["trials"]), *cells, f"{r['verify found']}/{r['trials']}")
    console.print(table)

    detail = Table(title="why correct, and what verify found (found/trials) in each group")
    for col in ("kind", "files", "repaired", "harmless", "not read", "verify: errors", "verify: repaired",
                "verify: harmless", "verify: not read", "verify missed real damage"):
        detail.add_column(col, justify="left" if col == "kind" else "right")
    for kind, r in out["kinds"].items():
        by = r["verify found by group"]
        errors = [by[g] for g in by if g not in WHY_CORRECT]

        def cell(pairs):
            found, total = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            return f"{found}/{total}" if total else "-"

        missed = r["verify missed real damage"]
        detail.add_row(kind, str(r["files"]), *[str(r["correct because"].get(w, 0)) for w in WHY_CORRECT],
                       cell(errors), *[cell([by[g]] if g in by else []) for g in WHY_CORRECT],
                       f"[bold red]{missed}[/bold red]" if missed else "0")
    console.print(detail)
    for kind, r in out["kinds"].items():
        odd = r["correct because"].get("read, damage unnoticed", 0)
        if odd or r["verify raw exception"] or r["verify named other files"]:
            console.print(f"[bold red]{kind}: {odd} correct runs read real damage unnoticed, "
                          f"{r['verify raw exception']} raw exceptions in verify, "
                          f"{r['verify named other files']} verify runs named undamaged files[/bold red]")
    console.print("[bold]error messages[/bold] (generalized; count)")
    for kind, r in out["kinds"].items():
        for message, n in list(r["messages"].items())[:6]:
            console.print(f"  {kind:9s} {n:4d}  {message}", highlight=False, soft_wrap=True)
    for kind, r in out["kinds"].items():
        for outcome, kept in r["examples"].items():
            for e in kept[:2]:
                console.print(f"[red]{kind} {outcome}[/red]: {e['file']} ({e['mutation']}): "
                              f"{e.get('detail', '')}", highlight=False, soft_wrap=True)
                for key in ("traceback", "verify_traceback", "stderr"):
                    if e.get(key):
                        console.print(e[key], highlight=False, markup=False, soft_wrap=True)
    store = out["store"]
    console.print(f"store: {store['events']} events of {store['users']} users, versions {store['kept']} kept "
                  f"(1 retired), {store['segments']} segments ({store['latest_segments']} in the latest), "
                  f"{store['bytes']:,} bytes; {store['log_rows']} logged pointers (checked against a brute "
                  f"force); build {out['build_s']} s, trials {out['trials_s']} s, "
                  f"{out['worker_starts']} worker processes; wall {out['wall_s']} s", highlight=False)
    if out["self_check"]:
        console.print(f"self-check (each outcome provoked on purpose, each classified so): {out['self_check']}",
                      highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="trials per kind of file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the counts here")
    parser.add_argument("--keep", type=Path, help="work in this (new) directory and keep it")
    parser.add_argument("--self-check", action="store_true",
                        help="first make the worker crash, hang, raise and return a wrong bit on purpose, "
                             "and check that each is classified so (costs ~5 s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return 0
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    from rich.console import Console

    console = Console(highlight=False, width=160)
    started = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True)
        out = run(args.trials, args.seed, args.keep, args.self_check)
    else:
        with tempfile.TemporaryDirectory(prefix="lateseq-faults-") as tmp:
            out = run(args.trials, args.seed, Path(tmp), args.self_check)
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine(), "seed": args.seed, "trials_per_kind": args.trials,
           "wall_s": round(time.perf_counter() - started, 1), **out}
    report(out, console)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    bad = {kind: {o: r[o] for o in ("silently wrong", "crash", "raw exception") if r[o]}
           for kind, r in out["kinds"].items()}
    bad = {k: v for k, v in bad.items() if v}
    verify_raw = {k: r["verify raw exception"] for k, r in out["kinds"].items() if r["verify raw exception"]}
    if bad or verify_raw:
        console.print(f"[bold red]FAILED[/bold red]: {bad or ''} {verify_raw and f'verify raw exceptions {verify_raw}'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
