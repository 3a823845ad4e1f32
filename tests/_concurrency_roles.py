"""The processes of test_concurrency: committers, heartbeats, compactors, cleaners, readers.

Each role runs in its own (forked) process on one store and writes what it did, with
times, to its own journal (``<round>/<role>-<i>.jsonl``, one JSON object a line). The
test reads the journals afterwards to check the invariants and to count which
interleavings really happened; readers read the committers' journals while running, to
know which commits returned success before they opened the store.

* committer: commits ``commit_events(seed, w, k)`` for k = 0, 1, ... under commit id
  ``w<w>-k<k>``, retrying with the same id after a CommitConflict; now and then also
  another writer's commit (the same id and events, as a retried job would), reruns of
  its own finished commits (which must publish nothing), and versions with nothing new
  (a redelivery of its own earlier events under event ids, or a watermark-only commit),
  which lateseq publishes without taking the store's lock.
* heartbeat: watermark-only commits, often.
* compactor: ``compact()`` of the latest, in a loop.
* cleaner: ``cleanup(before=latest, grace_s=0)`` in a loop, with the store's cache or
  the readers' local one; after each, no kept manifest may name a missing file.
* reader: opens the latest (now and then an older version), rebuilds every user's whole
  history and a random cut, re-rebuilds pointers logged at an older version, and checks
  it all against the commits (below); any error must concern a version cleanup retired.

Every child wraps a few library functions to record what it published, retired and
deleted, and to add random pauses where a busy machine may preempt a process anyway
(before and after a segment is written, between writing a temporary file and renaming
it, before a manifest is published, between listing the versions and reading them,
between retiring and locking): real processes and files, only the scheduling varied.

Each event's ``item`` is a marker naming its commit and row; its ``ts`` a bijection of
the marker, so every event time is unique (no ties, and late arrivals across writers)
and anyone can compute every user's exact history from the set of commits a version
holds. ``paused`` runs one operation stopped at one chosen moment, for the targeted tests.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import pathlib
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa

import lateseq
import lateseq._store
from lateseq._versions import VersionLog, load_checked

USERS = 40
ALL_USERS = np.arange(USERS + 1, dtype=np.int64)  # user USERS never has events
COLUMNS = {"item": "int64"}
PARENT_WRITER = 99  # the test process's own first commit
_PRIME, _MULT = 1_000_000_007, 7_777_777
NO_CUT = 2**62
FULL = lateseq.Projection(10**6, ("ts", "item"))

# errors a role may get from lateseq without anything being wrong (each is checked further
# by the test): a conflict (retried), and a version cleaned up under the caller
ALLOWED = ("CommitConflict", "VersionNotFound", "StoreError")


class Violation(AssertionError):
    """An invariant broke: a lost or partial commit, wrong bytes, a dangling manifest."""


# ---------------------------------------------------------------- the data


def commit_id(w: int, k: int) -> str:
    return f"w{w}-k{k}"


def parse_commit_id(cid: str) -> tuple[int, int]:
    w, k = cid.split("-")
    return int(w[1:]), int(k[1:])


def marker(w: int, k: int, j: np.ndarray) -> np.ndarray:
    return ((w + 1) * 10_000 + k) * 1000 + np.asarray(j, np.int64)


def unmark(items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return items // 10_000_000 - 1, (items // 1000) % 10_000, items % 1000


def event_time(markers: np.ndarray) -> np.ndarray:
    return (np.asarray(markers, np.int64) * _MULT) % _PRIME


_EVENTS: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}


def commit_events(seed: int, w: int, k: int) -> dict[str, np.ndarray]:
    key = (seed, w, k)
    if key not in _EVENTS:
        rng = np.random.default_rng([seed, w, k])
        n = int(rng.integers(3, 40))
        items = marker(w, k, np.arange(n))
        _EVENTS[key] = {"user_id": rng.integers(0, USERS, n).astype(np.int64), "ts": event_time(items),
                        "item": items}
    return _EVENTS[key]


def commit_table(seed: int, w: int, k: int, event_ids: bool = False) -> pa.Table:
    """Commit (w, k)'s events; with ``event_ids``, each with its marker as its event id."""
    events = commit_events(seed, w, k)
    return pa.table({**events, "eid": events["item"]} if event_ids else events)


def schema(partitions: int, event_ids: bool) -> lateseq.Schema:
    if event_ids:
        return lateseq.Schema(columns={**COLUMNS, "eid": "int64"}, partitions=partitions, event_id_col="eid")
    return lateseq.Schema(columns=COLUMNS, partitions=partitions)


# ---------------------------------------------------------------- checking a version


def read_all(store: lateseq.Store, request_ts: int = NO_CUT,
             projection: lateseq.Projection = FULL) -> tuple[pa.Table, lateseq.JaggedBatch]:
    requests = pa.table({"user_id": ALL_USERS, "request_ts": np.full(len(ALL_USERS), request_ts, np.int64)})
    log = lateseq.log_examples(store, requests)
    return log, lateseq.materialize(store, log, projection)


def commits_in(seed: int, batch: lateseq.JaggedBatch, num_events: int) -> set[tuple[int, int]]:
    """The commits a whole-history read holds, checking every event against its commit:
    right user and time, no event twice, every commit whole, each history in time order."""
    items, ts, offsets = batch.values["item"], batch.values["ts"], batch.offsets
    if len(items) != num_events:
        raise Violation(f"the version holds {num_events} events but its histories hold {len(items)}")
    if len(np.unique(items)) != len(items):
        values, counts = np.unique(items, return_counts=True)
        raise Violation(f"events stored more than once: markers {values[counts > 1][:10].tolist()}")
    users = np.repeat(ALL_USERS, np.diff(offsets))
    ws, ks, js = unmark(items)
    found: dict[tuple[int, int], int] = {}
    for w, k in set(zip(ws.tolist(), ks.tolist(), strict=True)):
        mine = (ws == w) & (ks == k)
        want = commit_events(seed, w, k)
        j = js[mine]
        if (unknown := j >= len(want["item"])).any():
            raise Violation(f"markers of rows commit {commit_id(w, k)} never had: {items[mine][unknown]}")
        if not (np.array_equal(want["user_id"][j], users[mine]) and np.array_equal(want["ts"][j], ts[mine])):
            raise Violation(f"events of commit {commit_id(w, k)} came back with other users or times")
        if mine.sum() != len(want["item"]):
            raise Violation(f"commit {commit_id(w, k)} is partly visible: {int(mine.sum())} of "
                            f"{len(want['item'])} events")
        found[(w, k)] = len(j)
    for u in range(len(ALL_USERS)):
        row = ts[offsets[u]:offsets[u + 1]]
        if (np.diff(row) <= 0).any():
            raise Violation(f"user {u}'s history is not in time order")
    return set(found)


def expected_cut(seed: int, commits: set[tuple[int, int]], request_ts: int,
                 max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, items) of the newest ``max_len`` events before ``request_ts``, per user,
    computed from the commits alone."""
    parts = [commit_events(seed, w, k) for w, k in commits]
    users = np.concatenate([p["user_id"] for p in parts] or [np.empty(0, np.int64)])
    ts = np.concatenate([p["ts"] for p in parts] or [np.empty(0, np.int64)])
    items = np.concatenate([p["item"] for p in parts] or [np.empty(0, np.int64)])
    keep = ts < request_ts
    users, ts, items = users[keep], ts[keep], items[keep]
    order = np.lexsort((ts, users))
    users, items = users[order], items[order]
    out_items, lengths = [], []
    for u in ALL_USERS:
        mine = items[users == u][-max_len:]
        out_items.append(mine)
        lengths.append(len(mine))
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), np.concatenate(out_items)


def read_version(store: lateseq.Store, rng: random.Random) -> dict:
    """Every user's whole history, and the newest few events before a random time."""
    log, batch = read_all(store)
    cut, max_len = rng.randrange(_PRIME), rng.choice([1, 3, 10])
    _, cut_batch = read_all(store, cut, lateseq.Projection(max_len, ("ts", "item")))
    return {"version": store.version, "events": store.num_events, "log": log, "batch": batch,
            "cut": cut, "max_len": max_len, "cut_batch": cut_batch}


def check_read(seed: int, read: dict, must_have: set, must_not: set) -> set[tuple[int, int]]:
    """Checks a ``read_version`` against the commits: each whole, in time order, every
    one of ``must_have`` there and none of ``must_not``; the cut exactly as computed."""
    version, batch = read["version"], read["batch"]
    if not np.array_equal(read["log"].column("uih_length").to_numpy(), np.diff(batch.offsets)):
        raise Violation(f"version {version}: pointer lengths differ from the rebuilt histories")
    held = commits_in(seed, batch, read["events"])
    if missing := must_have - held:
        raise Violation(f"version {version} lacks commits that returned success: "
                        f"{sorted(commit_id(*c) for c in missing)[:10]}")
    if extra := held & must_not:
        raise Violation(f"version {version} holds commits published after it: "
                        f"{sorted(commit_id(*c) for c in extra)[:10]}")
    offsets, items = expected_cut(seed, held, read["cut"], read["max_len"])
    got = read["cut_batch"]
    if not (np.array_equal(got.offsets, offsets) and np.array_equal(got.values["item"], items)):
        raise Violation(f"version {version}: the newest {read['max_len']} events before {read['cut']} "
                        "differ from what its commits give")
    return held


def dangling(path: Path) -> list[str]:
    """Durable segment files that a kept (not retired) manifest names but that are gone.
    A version retired meanwhile is no problem: cleanup retires first, deletes after (its
    chain of manifests too: another cleaner may remove one while this reads it, CI s49)."""
    log = VersionLog(path)
    problems = []
    for number in log.numbers():
        manifest = load_checked(log.manifest_path(number))
        if manifest.get("retired"):
            continue
        try:
            infos = log.segments(number, manifest).infos
        except lateseq.VersionNotFound as exc:
            if log.manifest_path(number).exists() and not is_retired(path, number):  # (gone: removed meanwhile)
                problems.append(f"kept version {number}'s manifests cannot be read: {exc}")
            continue
        for segment in infos:
            for suffix in (".parquet", ".index.arrow"):
                f = path / "segments" / f"{segment.name}{suffix}"
                if not f.exists() and not load_checked(log.manifest_path(number)).get("retired"):
                    problems.append(f"kept version {number} names {f.name}, which is missing")
    return problems


def is_retired(path: Path, version: int | None) -> bool:
    if not version:
        return False
    try:
        return bool(load_checked(VersionLog(path).manifest_path(version)).get("retired"))
    except lateseq.LateseqError:
        return False


def retired_version_in(message: str) -> int | None:
    """The version a VersionNotFound says was cleaned up."""
    words = message.split()
    if "cleaned" in words and "version" in words:
        number = words[words.index("version") + 1]
        return int(number) if number.isdigit() else None
    return None


# ---------------------------------------------------------------- the journal and the hooks


class Journal:
    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, kind: str, **fields) -> None:
        os.write(self.fd, (json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def read_journals(directory: Path, prefix: str = "") -> list[dict]:
    out = []
    for path in sorted(directory.glob(f"{prefix}*.jsonl")):
        role = path.stem
        data = path.read_bytes()
        for line in data.split(b"\n")[:-1]:  # a last line without its newline is still being written
            out.append({"who": role, **json.loads(line)})
    return out


def committed(directory: Path) -> dict[tuple[int, int], int]:
    """Commits that returned success so far, and the version that holds each."""
    return {parse_commit_id(r["commit_id"]): r["version"]
            for r in read_journals(directory) if r["kind"] == "committed"}


def is_marker_commit(cid: str | None) -> bool:
    """Whether a commit id names one of the commits of new marker events ("w<w>-k<k>")."""
    return cid is not None and "-k" in cid


class Hooks:
    """Wraps library functions in this process: records publishing, retiring and
    deleting, and adds random pauses of up to ``jitter`` seconds."""

    def __init__(self, journal: Journal, rng: random.Random, jitter: float, slow: float):
        self.journal, self.rng, self.jitter, self.slow = journal, rng, jitter, slow
        self.published: list[int] = []
        self.attempt: dict | None = None
        self.deleted: list[tuple[str, str, float]] = []
        self.lock_waits: list[float] = []
        self.cleaning = False  # inside cleanup's exclusive lock
        self.locked: list[list] = []  # [acquired, released] of each exclusive lock

    def tried(self) -> dict:
        """What the last publish in this process tried (version, operation, parent)."""
        return {k: v for k, v in (self.attempt or {}).items() if k != "commit_id"}

    def pause(self, p: float = 0.5, most: float | None = None) -> None:
        """With probability ``p`` (none in rounds without jitter), a pause of up to
        ``most`` seconds (the round's jitter by default)."""
        if self.jitter and self.rng.random() < p:
            time.sleep(self.rng.uniform(0, self.jitter if most is None else most))

    def think(self, most: float) -> None:
        """A pause between operations (outside every lock), whatever the jitter."""
        time.sleep(self.rng.uniform(0, most))

    def install(self) -> None:
        hooks = self
        real_publish, real_retire = VersionLog.publish, VersionLog.retire_before
        real_deleting, real_numbers, real_resolve = VersionLog.deleting, VersionLog.numbers, VersionLog.resolve
        real_write, real_replace, real_unlink = lateseq._store.write_segment, os.replace, pathlib.Path.unlink

        def publish(self, version, manifest):
            hooks.pause()
            fields = {"version": version, "op": manifest["operation"], "commit_id": manifest["commit_id"],
                      "parent": manifest["parent"]}
            hooks.attempt = fields
            try:
                real_publish(self, version, manifest)
            except lateseq.CommitConflict:
                winner = load_checked(self.manifest_path(version))  # never deleted, only replaced
                hooks.journal.write("conflict", **fields, winner_retired=bool(winner.get("retired")),
                                    winner_op=winner.get("operation") or (
                                        "commit" if winner.get("commit_id") else "compact"),
                                    winner_commit_id=winner.get("commit_id"))
                raise
            hooks.published.append(version)
            hooks.journal.write("published", **fields)

        def retire_before(self, before):
            t0 = time.time()
            retired = real_retire(self, before)
            hooks.journal.write("retired", t0=t0, before=before, retired=retired)
            hooks.pause()  # between retiring and taking the lock to delete
            return retired

        def write_segment(*args, **kwargs):
            hooks.pause(0.2)
            info = real_write(*args, **kwargs)
            hooks.pause(0.2)
            if hooks.rng.random() < hooks.slow:  # now and then a slow writer (a big commit, a slow disk)
                time.sleep(hooks.rng.uniform(0.03, 0.15))
            return info

        def replace(src, dst, *args, **kwargs):
            if os.path.basename(os.fspath(src)).startswith(".tmp-"):  # written, not yet renamed into place
                if Path(dst).parent.name in ("segments", "versions", "tags"):
                    hooks.pause(0.1)
                else:  # a decoded copy in a read cache
                    hooks.pause(0.5, 0.02)
            return real_replace(src, dst, *args, **kwargs)

        def unlink(self, missing_ok=False):
            try:
                real_unlink(self)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return
            hooks.deleted.append((self.parent.name, self.name, time.time()))

        @contextlib.contextmanager
        def deleting(self):
            t0 = time.time()
            with real_deleting(self):
                hooks.lock_waits.append(time.time() - t0)
                hooks.locked.append([time.time(), None])
                hooks.cleaning = True
                try:
                    yield
                finally:
                    hooks.cleaning = False
                    hooks.locked[-1][1] = time.time()

        def numbers(self):
            listed = real_numbers(self)
            if hooks.cleaning:  # a cleanup, holding the lock, listed the versions; reads them next
                hooks.pause(0.5, 0.03)
            else:  # versions listed, their manifests not read yet
                hooks.pause(0.05)
            return listed

        def resolve(self, version, checked=True):
            number = real_resolve(self, version, checked)
            if version is None:  # the latest listed, its manifest not read yet
                hooks.pause(0.2)
            return number

        VersionLog.publish = publish
        VersionLog.deleting = deleting
        VersionLog.numbers = numbers
        VersionLog.resolve = resolve
        VersionLog.retire_before = retire_before
        lateseq._store.write_segment = write_segment
        os.replace = replace
        pathlib.Path.unlink = unlink


# ---------------------------------------------------------------- the roles


def run(role: str, index: int, cfg: dict, go, stop) -> None:
    """A child process's body: never lets an exception out unrecorded."""
    directory = Path(cfg["dir"])
    name = f"{role}-{index}"
    journal = Journal(directory / f"{name}.jsonl")
    stack = open(directory / f"{name}.stack", "w")  # noqa: SIM115 - for the hang watchdog
    faulthandler.dump_traceback_later(cfg["hang_s"], exit=True, file=stack)
    rng = random.Random(f"{cfg['seed']}-{name}")
    hooks = Hooks(journal, rng, cfg["jitter"], cfg["slow"])
    hooks.install()
    code = 0
    try:
        go.wait()
        ROLES[role](Context(cfg, index, journal, rng, hooks, stop))
        journal.write("done")
    except Violation as exc:
        journal.write("violation", message=str(exc), traceback=traceback.format_exc())
        code = 1
    except BaseException as exc:  # noqa: BLE001 - everything is recorded, then the test fails
        journal.write("raw", type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
        code = 1
    faulthandler.cancel_dump_traceback_later()
    sys.stdout.flush()
    os._exit(code)


class Context:
    def __init__(self, cfg, index, journal, rng, hooks, stop):
        self.cfg, self.index, self.journal, self.rng, self.hooks, self.stop = cfg, index, journal, rng, hooks, stop
        self.path = Path(cfg["store"])
        self.dir = Path(cfg["dir"])
        self.seed = cfg["seed"]

    def cache(self) -> str | None:
        return self.rng.choice(self.cfg["caches"])

    def error(self, op: str, exc: lateseq.LateseqError, **fields) -> None:
        """Records a LateseqError; anything but a clear one of the allowed kinds fails."""
        message = str(exc)
        if type(exc).__name__ not in ALLOWED:
            raise Violation(f"{op} raised {type(exc).__name__}: {message}") from exc
        if len(message) < 20:
            raise Violation(f"{op} raised {type(exc).__name__} with an unclear message {message!r}") from exc
        self.journal.write("error", op=op, type=type(exc).__name__, message=message, **fields)


def committer(ctx: Context) -> None:
    w, writers = ctx.index, ctx.cfg["committers"]
    for k in range(ctx.cfg["commits"]):
        if ctx.rng.random() < ctx.cfg["lockfree"]:
            if ctx.cfg["event_ids"] and k > 0:  # events already stored: a version with nothing new
                submit(ctx, f"w{w}-d{k}", commit_table(ctx.seed, w, ctx.rng.randrange(k), True), "redelivered")
            else:  # coverage advanced, no events: a version with nothing new
                submit(ctx, None, None, "watermark")
        if writers > 1 and ctx.rng.random() < 0.1:  # another writer's commit, as a retried job would
            other = ctx.rng.choice([v for v in range(writers) if v != w])
            submit(ctx, commit_id(other, k), commit_table(ctx.seed, other, k, ctx.cfg["event_ids"]), "committed")
        store = submit(ctx, commit_id(w, k), commit_table(ctx.seed, w, k, ctx.cfg["event_ids"]), "committed")
        if ctx.rng.random() < 0.15:  # run again, as a retrying pipeline would: nothing new
            before = len(ctx.hooks.published)
            try:
                again = lateseq.open(ctx.path).commit(commit_table(ctx.seed, w, k, ctx.cfg["event_ids"]),
                                                      commit_id=commit_id(w, k))
            except lateseq.LateseqError as exc:
                ctx.error("rerun", exc, retired=retired_version_in(str(exc)))
            else:
                if len(ctx.hooks.published) != before or again.version < store.version:
                    raise Violation(f"rerunning commit {commit_id(w, k)} published {ctx.hooks.published[before:]} "
                                    f"and returned version {again.version}")
                ctx.journal.write("rerun", commit_id=commit_id(w, k), version=again.version, first=store.version)
        ctx.hooks.think(0.04)


def submit(ctx: Context, cid: str | None, table: pa.Table | None, kind: str) -> lateseq.Store:
    """Commits until it succeeds, retrying a CommitConflict (and any other LateseqError,
    recorded) with the same commit id; records the version that holds the commit."""
    log = VersionLog(ctx.path)
    for attempt in range(1000):
        ctx.hooks.attempt = None
        before = len(ctx.hooks.published)
        t0 = time.time()
        try:
            if table is None:
                store = lateseq.open(ctx.path).commit(_EMPTY, watermark=time.time_ns())
            else:
                store = lateseq.open(ctx.path).commit(table, commit_id=cid)
        except lateseq.LateseqError as exc:
            ctx.journal.write("attempt", commit_id=cid, what=kind, t0=t0, outcome=type(exc).__name__,
                              **ctx.hooks.tried())
            if isinstance(exc, lateseq.SchemaError) and table is None and "older than" in str(exc):
                continue  # another writer's watermark is newer than the time this one read
            ctx.error("commit", exc, retired=retired_version_in(str(exc)))
            ctx.hooks.think(0.005)
            continue
        mine = ctx.hooks.published[before:]
        if mine:
            if mine != [store.version]:
                raise Violation(f"commit {cid} returned version {store.version} but published {mine}")
            version = store.version
        else:  # the id was committed already (by another process): the version it names
            found = log.find_commit(cid) if cid is not None else None
            if found is None:
                raise Violation(f"commit {cid} returned version {store.version} without publishing one")
            version = found[0]
            if store.version != version and not (is_retired(ctx.path, version) and store.version > version):
                raise Violation(f"commit {cid}, published as version {version}, returned {store.version}")
        ctx.journal.write("attempt", commit_id=cid, what=kind, t0=t0, outcome="ok", **ctx.hooks.tried())
        ctx.journal.write(kind, commit_id=cid, version=version, attempts=attempt + 1, t0=t0,
                          published=bool(mine))
        return store
    raise Violation(f"commit {cid} never succeeded in 1000 attempts")


_EMPTY = pa.table({"user_id": pa.array([], pa.int64()), "ts": pa.array([], pa.int64()),
                   "item": pa.array([], pa.int64())})


def heartbeat(ctx: Context) -> None:
    """Advances the watermark with no events, often (coverage moving on while no event
    arrives): versions that name only their parent's segments, published without the lock."""
    for _ in range(8 * ctx.cfg["commits"]):  # not forever: each takes a number commits then race for
        if ctx.stop.is_set():
            break
        ctx.hooks.think(0.06)
        submit(ctx, None, None, "watermark")


def compactor(ctx: Context) -> None:
    done = 0
    while not ctx.stop.is_set() or done == 0:
        ctx.hooks.think(0.01)
        t0 = time.time()
        before = len(ctx.hooks.published)
        try:
            store = lateseq.open(ctx.path, cache_dir=ctx.cache()).compact()
        except lateseq.LateseqError as exc:
            ctx.error("compact", exc, t0=t0, retired=retired_version_in(str(exc)))
        else:
            if (mine := ctx.hooks.published[before:]) and mine != [store.version]:
                raise Violation(f"a compaction returned version {store.version} but published {mine}")
        done += 1


def cleaner(ctx: Context) -> None:
    done = 0
    idle = (0.01, 0.06, 0.002)[ctx.index % 3]  # cleaners start at more varied moments
    while not ctx.stop.is_set() or done == 0:
        ctx.hooks.think(idle)
        cache = ctx.cache()
        t0 = time.time()
        del ctx.hooks.deleted[:], ctx.hooks.lock_waits[:], ctx.hooks.locked[:]
        try:
            store = lateseq.open(ctx.path, cache_dir=cache)
            retired = store.cleanup(before=store.version, grace_s=0)
        except lateseq.LateseqError as exc:
            ctx.error("cleanup", exc, t0=t0, retired=retired_version_in(str(exc)))
            retired = None
        deleted = [(d, n, t) for d, n, t in ctx.hooks.deleted if d in ("segments", Path(cache or "cache").name)]
        ctx.journal.write("cleanup", t0=t0, t1=time.time(), retired=retired, cache=cache,
                          deleted=[n for d, n, _ in deleted if d == "segments"],
                          deleted_cache=[n for d, n, _ in deleted if d != "segments"],
                          first_delete=min((t for *_, t in deleted), default=None),
                          last_delete=max((t for *_, t in deleted), default=None),
                          lock_wait=max(ctx.hooks.lock_waits, default=None),
                          locked=ctx.hooks.locked[0] if ctx.hooks.locked else None)
        if problems := dangling(ctx.path):
            raise Violation("; ".join(problems))
        done += 1


def reader(ctx: Context) -> None:
    done = 0
    previous = None  # a read of an older version: its pointers must rebuild the same
    while not ctx.stop.is_set() or done == 0:
        ctx.hooks.think(0.03)
        known = committed(ctx.dir)  # commits that returned success before this read began
        target = None
        if ctx.rng.random() < 0.25:  # now and then an older version, which cleanup may retire
            numbers = VersionLog(ctx.path).numbers()
            target = ctx.rng.choice(numbers) if numbers else None
        t0 = time.time()
        version, names = target, []
        try:
            store = lateseq.open(ctx.path, target, cache_dir=ctx.cache())
            version, names = store.version, [i.name for i in store.segment_infos]
            read = read_version(store, ctx.rng)
            again = None
            if previous is not None and previous["version"] <= store.version:
                again = lateseq.materialize(store, previous["log"], FULL)
            t1 = time.time()
        except lateseq.LateseqError as exc:
            retired = is_retired(ctx.path, version) or retired_version_in(str(exc)) is not None
            ctx.error("read", exc, version=version, target=target, t0=t0, t1=time.time(),
                      retired_now=retired, segments=names)
            done += 1
            continue
        if again is not None and previous["batch"].rows_differ(again).any():
            raise Violation(f"pointers logged at version {previous['version']} rebuild other histories "
                            f"through version {version}")
        if target is None and (late := sorted(commit_id(*c) for c, v in known.items() if v > version)):
            raise Violation(f"opened the latest version, {version}, after commits {late} returned success")
        must_have = {c for c, v in known.items() if v <= version}
        must_not = {c for c, v in committed(ctx.dir).items() if v > version}
        check_read(ctx.seed, read, must_have, must_not)
        ctx.journal.write("read", version=version, target=target, t0=t0, t1=t1, segments=names,
                          events=store.num_events, retired_after=is_retired(ctx.path, version),
                          repeated=None if previous is None else previous["version"])
        previous = read
        done += 1


ROLES = {"committer": committer, "heartbeat": heartbeat, "compactor": compactor, "cleaner": cleaner,
         "reader": reader}


# ---------------------------------------------------------------- pause points: the races, one at a time


def paused(point: str, path: str, cache: str | None, arrived, resume, out: str, table: pa.Table | None = None) -> None:
    """A child process that runs one operation on the store at ``path`` and stops at
    ``point`` (sets ``arrived``, waits for ``resume``), so the test can make other
    processes act at exactly that moment. Writes its outcome as JSON to ``out``.

    Points: "cleanup-listing" (a cleanup holding the exclusive lock has just listed the
    versions), "decode-rename" (a reader decoded a segment into ``cache`` and has not yet
    renamed the temporary file into place), "commit-latest" (a commit has read which
    version is the latest, not yet its manifest), "commit-dedup" (a commit to a store
    with event ids has opened its base version, not yet read its event ids).
    """
    state = {"armed": point != "cleanup-listing", "done": False}

    def stop_here() -> None:
        if state["armed"] and not state["done"]:
            state["done"] = True
            arrived.set()
            resume.wait(60)

    if point == "cleanup-listing":
        real_deleting, real_numbers, real_resolve = VersionLog.deleting, VersionLog.numbers, VersionLog.resolve

        @contextlib.contextmanager
        def deleting(self):
            with real_deleting(self):
                state["armed"] = True
                yield

        def numbers(self):
            listed = real_numbers(self)
            stop_here()
            return listed

        VersionLog.deleting, VersionLog.numbers = deleting, numbers
    elif point == "decode-rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if os.path.basename(os.fspath(src)).startswith(".tmp-") and Path(cache) in Path(dst).parents:
                stop_here()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif point == "commit-latest":
        real_resolve = VersionLog.resolve

        def resolve(self, version, checked=True):
            number = real_resolve(self, version, checked)
            if version is None:
                stop_here()
            return number

        VersionLog.resolve = resolve
    elif point == "commit-dedup":
        real_event_ids = lateseq.Store.event_ids

        def event_ids(self, users):
            stop_here()
            return real_event_ids(self, users)

        lateseq.Store.event_ids = event_ids
    else:
        raise ValueError(point)

    outcome: dict = {"outcome": "ok"}
    try:
        if point == "cleanup-listing":
            store = lateseq.open(path)
            outcome["retired"] = store.cleanup(before=store.version, grace_s=0)
        elif point == "decode-rename":
            store = lateseq.open(path, cache_dir=cache)
            outcome["version"] = store.version
            outcome["events"] = int(read_all(store)[1].offsets[-1])
        else:
            store = lateseq.open(path, lateseq.open(path).version)  # a number: the pause comes in commit
            outcome["version"] = store.commit(table, commit_id="paused").version
    except lateseq.LateseqError as exc:
        outcome = {"outcome": "error", "type": type(exc).__name__, "message": str(exc),
                   "traceback": traceback.format_exc()}
    except BaseException as exc:  # noqa: BLE001 - recorded for the test to fail on
        outcome = {"outcome": "raw", "type": type(exc).__name__, "message": str(exc),
                   "traceback": traceback.format_exc()}
    outcome["paused"] = state["done"]
    Path(out).write_text(json.dumps(outcome))
    sys.stdout.flush()
    os._exit(0)


def cleanup_once(path: str, cache: str | None, out: str) -> None:
    """A child process: one ``cleanup(before=latest, grace_s=0)``; its outcome to ``out``."""
    try:
        store = lateseq.open(path, cache_dir=cache)
        outcome = {"outcome": "ok", "retired": store.cleanup(before=store.version, grace_s=0)}
    except lateseq.LateseqError as exc:
        outcome = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        outcome = {"outcome": "raw", "type": type(exc).__name__, "message": str(exc),
                   "traceback": traceback.format_exc()}
    Path(out).write_text(json.dumps(outcome))
    os._exit(0)
