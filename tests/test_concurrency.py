"""Concurrency: processes committing, compacting, cleaning up and reading one store at once.

Each round starts real processes (forked) in random roles on a new store, with random
pauses inside them (see ``_concurrency_roles``): committers, each commit carrying its
own commit id and marker events and retried with the same id after a CommitConflict;
heartbeats (watermark-only commits); compactors; cleaners calling
``cleanup(before=latest, grace_s=0)`` in a loop; readers checking every history they
rebuild against the commits that returned success before they opened the store, and
re-rebuilding pointers logged at older versions. Afterwards:

* every commit that returned success is in the latest version, every event once, and
  it returned the version that published it;
* every kept version opens, holds exactly the commits published up to it, and
  ``verify`` finds no problem; no kept manifest ever named a missing file (cleaners
  check that after every cleanup, too); retired versions raise VersionNotFound;
* no version number was published twice, and the store's numbers are exactly those
  the processes published;
* no exception but a LateseqError with a message ever reached a role; a reader's error
  always concerns a version that cleanup retired. (Commits and cleanups that got a
  VersionNotFound or StoreError instead of a CommitConflict are counted and printed;
  the targeted test at the end fails on them.)

The test also counts the interleavings that happened and fails if the interesting ones
never did, so it cannot pass by running the roles one after another. The tests after
it stop a process at one exact moment, for the races the rounds hit only by chance.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import _concurrency_roles as roles
import pytest

import lateseq
from lateseq._versions import VersionLog, load_checked
from lateseq.audit import verify

HANG_S = 90  # a child still running after this long is stuck: it dumps its stack and exits


def round_config(seed: int, first: bool) -> dict:
    rng = random.Random(seed)
    return {
        "seed": seed,
        "partitions": rng.choice([1, 2, 3]),
        "committers": 3 if first else rng.choice([2, 3, 4]),
        "commits": rng.randint(4, 7),
        "heartbeats": 1 if first else rng.choice([0, 0, 1]),  # watermark-only versions, often
        "compactors": 1 if first else rng.choice([0, 1, 1, 1, 2]),
        "cleaners": 2 if first else rng.choice([0, 1, 2, 2, 3]),
        "readers": 2 if first else rng.choice([1, 2, 3]),
        "local_cache": first or rng.random() < 0.6,  # readers decode into a cache cleanup also cleans
        "jitter": 0.004 if first else rng.choice([0.0, 0.002, 0.006]),
        "slow": 0.05 if first else rng.choice([0.0, 0.02, 0.05]),  # a writer pausing while it holds the lock
        "event_ids": not first and rng.random() < 0.5,  # commits drop redelivered events
        "lockfree": 0.3 if first else rng.choice([0.0, 0.2, 0.5]),  # versions with nothing new
    }


def run_round(base: Path, config: dict) -> tuple[list[dict], dict]:
    """Runs one round; returns the journals' records and what the round was."""
    seed = config["seed"]
    directory = base / f"round-{seed}"
    directory.mkdir()
    path = directory / "store"
    schema = roles.schema(config["partitions"], config["event_ids"])
    cid = roles.commit_id(roles.PARENT_WRITER, 0)
    table = roles.commit_table(seed, roles.PARENT_WRITER, 0, config["event_ids"])
    first = lateseq.create(path, schema).commit(table, commit_id=cid)
    parent = roles.Journal(directory / "parent.jsonl")
    parent.write("published", version=first.version, op="commit", commit_id=cid, parent=0)
    parent.write("committed", commit_id=cid, version=first.version, attempts=1, t0=time.time())
    parent.close()
    roles.read_version(first, random.Random(0))  # kernels compiled here, not in every child

    caches = [None, str(directory / "readcache")] if config["local_cache"] else [None]
    cfg = {**config, "dir": str(directory), "store": str(path), "caches": caches, "hang_s": HANG_S}
    context = multiprocessing.get_context("fork")
    go, stop = context.Event(), context.Event()
    procs = [(role, i, context.Process(target=roles.run, args=(role, i, cfg, go, stop), daemon=True))
             for role in ("committer", "heartbeat", "compactor", "cleaner", "reader")
             for i in range(config[role + "s"])]
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        for *_, p in procs:
            p.start()
    go.set()
    deadline = time.time() + HANG_S + 15
    try:
        for role, _, p in procs:
            if role == "committer":
                p.join(max(deadline - time.time(), 0))
        stop.set()
        for *_, p in procs:
            p.join(max(deadline - time.time(), 0))
    finally:
        stuck = [(role, i) for role, i, p in procs if p.is_alive()]
        for *_, p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if stuck:
        stacks = "\n".join(f"--- {r}-{i}\n" + (directory / f"{r}-{i}.stack").read_text() for r, i in stuck)
        pytest.fail(f"round {seed}: processes {stuck} hung (deadlock?)\n{stacks}")
    records = roles.read_journals(directory)
    for role, i, p in procs:
        name = f"{role}-{i}"
        if p.exitcode != 0 and not any(r["who"] == name and r["kind"] in ("violation", "raw") for r in records):
            stack = (directory / f"{name}.stack").read_text()
            records.append({"who": name, "kind": "raw", "type": f"exit code {p.exitcode}", "message": stack,
                            "traceback": stack})
    return records, {**config, "path": path, "caches": caches, "dir": directory}


def check_round(records: list[dict], info: dict) -> list[str]:
    """The invariants after a round; returns what broke."""
    seed, path = info["seed"], info["path"]
    broken = [f"{r['who']}: {r['kind']} {r.get('type', '')}: {r['message']}\n{r['traceback']}"
              for r in records if r["kind"] in ("violation", "raw")]

    # version numbers: each published once, and exactly the store's
    published = [r for r in records if r["kind"] == "published"]
    reused = [v for v, n in Counter(r["version"] for r in published).items() if n > 1]
    if reused:
        broken.append(f"version numbers published twice: {reused}: "
                      f"{[(r['who'], r['version'], r['op']) for r in published if r['version'] in reused]}")
    numbers = VersionLog(path).numbers()
    if sorted(r["version"] for r in published) != numbers or numbers != list(range(1, len(numbers) + 1)):
        broken.append(f"the store holds versions {numbers}, the processes published "
                      f"{sorted(r['version'] for r in published)}")

    # commits: each published once; every success names the version that holds it
    everyone = {(w, k) for w in range(info["committers"]) for k in range(info["commits"])}
    everyone.add((roles.PARENT_WRITER, 0))
    by_id = Counter(r["commit_id"] for r in published if r["op"] == "commit" and r["commit_id"])
    if twice := [c for c, n in by_id.items() if n > 1]:
        broken.append(f"commit ids published more than once: {twice}")
    version_of = {roles.parse_commit_id(r["commit_id"]): r["version"]
                  for r in published if r["op"] == "commit" and roles.is_marker_commit(r["commit_id"])}
    done = [r for r in records if r["kind"] == "committed"]
    if {roles.parse_commit_id(r["commit_id"]) for r in done} != everyone:
        broken.append(f"commits that returned success: {len(done)}, of {len(everyone)} made")
    if wrong := [(r["who"], r["commit_id"], r["version"]) for r in done
                 if version_of.get(roles.parse_commit_id(r["commit_id"])) != r["version"]]:
        broken.append(f"commits returned success naming versions that did not publish them: {wrong}")
    others = [r for r in records if r["kind"] in ("redelivered", "watermark")]
    if wrong := [(r["who"], r["commit_id"], r["version"]) for r in others
                 if r["version"] not in {p["version"] for p in published if p["commit_id"] == r["commit_id"]}]:
        broken.append(f"versions with nothing new returned success without being published: {wrong}")
    if broken:
        return broken

    # the store afterwards: every version kept is exactly its commits; the rest retired
    rng = random.Random(seed)
    latest = lateseq.open(path)
    read = roles.read_version(latest, rng)
    if (held := roles.check_read(seed, read, everyone, set())) != everyone:
        broken.append(f"the latest version holds commits {sorted(held - everyone)} nobody made")
    for number in numbers:
        if load_checked(VersionLog(path).manifest_path(number)).get("retired"):
            with pytest.raises(lateseq.VersionNotFound, match="cleaned up"):
                lateseq.open(path, number)
            continue
        for cache in info["caches"]:
            store = lateseq.open(path, number, cache_dir=cache)
            roles.check_read(seed, roles.read_version(store, rng), {c for c, v in version_of.items() if v <= number},
                             {c for c, v in version_of.items() if v > number})
    broken += roles.dangling(path)
    for cache in info["caches"]:
        broken += [f"verify: {p.path}: {p.message}" for p in verify(lateseq.open(path, cache_dir=cache))]
    return broken


def overlaps(a0: float, a1: float, b0: float | None, b1: float | None) -> bool:
    return b0 is not None and a0 <= b1 and b0 <= a1


def interleavings(records: list[dict]) -> Counter:
    """What happened at once, counted from the journals' times."""
    seen: Counter = Counter()
    attempts = [r for r in records if r["kind"] == "attempt"]
    conflicts = [r for r in records if r["kind"] == "conflict"]
    retires = [r for r in records if r["kind"] == "retired" and r["retired"]]
    cleanups = [r for r in records if r["kind"] == "cleanup"]
    deleting = [c for c in cleanups if c["deleted"] or c["deleted_cache"]]
    reads = [r for r in records if r["kind"] == "read" or (r["kind"] == "error" and r["op"] == "read")]
    errors = [r for r in records if r["kind"] == "error"]

    seen["commits retried after a CommitConflict"] = sum(a["outcome"] == "CommitConflict" for a in attempts)
    seen["commit lost its number to a compaction"] = sum(
        c["op"] == "commit" and c["winner_op"] == "compact" for c in conflicts)
    seen["compaction lost its number to a commit"] = sum(
        c["op"] == "compact" and c["winner_op"] == "commit" for c in conflicts)
    seen["compactions lost their number to a compaction"] = sum(
        c["op"] == "compact" and c["winner_op"] == "compact" for c in conflicts)
    seen["writer's number already retired when it tried to publish it"] = sum(c["winner_retired"] for c in conflicts)
    seen["cleanup retired versions while a commit was in flight"] = sum(
        any(a["t0"] <= r["t"] <= a["t"] for a in attempts) for r in retires)
    seen["cleanup retired the base of a commit in flight"] = sum(
        any(a["t0"] <= r["t"] <= a["t"] and a.get("parent") in r["retired"] for r in retires) for a in attempts)
    seen["cleanups that deleted files"] = len(deleting)
    seen["reads while a cleanup deleted files"] = sum(
        any(overlaps(r["t0"], r["t1"], c["first_delete"], c["last_delete"]) for c in deleting) for r in reads)
    seen["reads whose own segments a cleanup deleted during the read"] = sum(
        any(overlaps(r["t0"], r["t1"], c["first_delete"], c["last_delete"])
            and {n.split(".")[0] for n in c["deleted"] + c["deleted_cache"]} & set(r["segments"])
            for c in deleting) for r in reads)
    seen["reads that succeeded on a version retired before they ended"] = sum(
        r["kind"] == "read" and r["retired_after"] for r in reads)
    seen["reads of older pointers through a newer version"] = sum(
        r["kind"] == "read" and r["repeated"] is not None and r["repeated"] < r["version"] for r in reads)
    seen["idempotent reruns of a successful commit"] = sum(r["kind"] == "rerun" for r in records)
    seen["commits whose id another process had published first"] = sum(
        r["kind"] == "committed" and not r.get("published", True) for r in records)
    seen["versions with nothing new (published without the lock)"] = sum(
        r["kind"] in ("redelivered", "watermark") for r in records)
    lockfree = {r["version"] for r in records if r["kind"] in ("redelivered", "watermark") and r["published"]}
    lockfree_published = [p for p in records if p["kind"] == "published" and p["version"] in lockfree]
    seen["a cleanup held the lock while a version with nothing new was published and another retired its parent"] = sum(
        any(c["locked"][0] <= p["t"] <= c["locked"][1] and any(
            r["who"] != c["who"] and p["t"] <= r["t"] <= c["locked"][1] and p["parent"] in r["retired"]
            for r in retires) for p in lockfree_published)
        for c in cleanups if c["locked"] and c["locked"][1])
    seen["cleanups running at once"] = sum(
        a["who"] < b["who"] and overlaps(a["t0"], a["t1"], b["t0"], b["t1"]) for a in cleanups for b in cleanups)
    seen[LONGEST_WAIT] = max((round(1000 * c["lock_wait"]) for c in cleanups if c["lock_wait"] is not None),
                             default=0)
    seen["successful reads"] = sum(r["kind"] == "read" for r in reads)
    for e in errors:
        seen[f"{e['op']} raised {e['type']}"] += 1
    return seen


LONGEST_WAIT = "longest wait of a cleanup for the store lock (ms, not summed)"


def bad_errors(records: list[dict]) -> list[str]:
    """LateseqErrors a role got that nothing excuses: a reader's on a version still
    kept (its files must all be there), anything but a conflict from a commit."""
    bad = []
    for e in records:
        if e["kind"] != "error":
            continue
        if e["op"] == "read" and not e["retired_now"]:
            bad.append(f"{e['who']} could not read version {e['version']}, which is still kept: "
                       f"{e['type']}: {e['message']}")
    return bad


# what the default run must have seen at least once (over all its rounds)
MUST_SEE = [
    "commits retried after a CommitConflict",
    "commit lost its number to a compaction",
    "compaction lost its number to a commit",
    "cleanup retired versions while a commit was in flight",
    "cleanup retired the base of a commit in flight",
    "reads while a cleanup deleted files",
    "reads that succeeded on a version retired before they ended",
    "reads of older pointers through a newer version",
    "idempotent reruns of a successful commit",
]


def run_rounds(tmp_path: Path, seeds: list[int], extra: Iterable[int] = ()) -> Counter:
    """Runs a round per seed, then rounds of ``extra`` seeds while an interleaving of
    MUST_SEE is still missing: which races a round meets depends on timing (a busy
    machine, a faster read path), what each round must uphold does not."""
    seen: Counter = Counter()
    broken: list[str] = []
    t0 = time.time()

    def schedule() -> Iterator[int]:
        yield from seeds
        for seed in extra:
            if all(seen[what] for what in MUST_SEE):
                return
            yield seed

    for n, seed in enumerate(schedule()):
        config = round_config(seed, first=n == 0)
        records, info = run_round(tmp_path, config)
        found = check_round(records, info) + bad_errors(records)
        broken += [f"round {seed} {config}: {b}" for b in found]
        found = interleavings(records)
        found[LONGEST_WAIT] = max(found[LONGEST_WAIT], seen.pop(LONGEST_WAIT, 0))
        seen += found
        seen["rounds"] += 1
        print(f"round {seed}: {time.time() - t0:.1f} s so far, {config}")
    print(f"{seen['rounds']} rounds in {time.time() - t0:.1f} s:")
    for what, n in sorted(seen.items()):
        print(f"  {n:6d}  {what}")
    assert not broken, "\n\n".join(broken)
    return seen


def test_concurrent_commits_compactions_cleanups_and_reads(tmp_path):
    # a mix (see round_config); extra rounds only while an interleaving is missing: on a machine
    # busy with other work, 15 rounds once met no cleanup retiring a commit's base (5 do, idle),
    # and 30 rounds of a quiet one beside the rest of the suite no read while a cleanup deleted
    seen = run_rounds(tmp_path, [101, 102, 103, 106, 110], extra=range(200, 250))
    assert not [what for what in MUST_SEE if not seen[what]], f"interleavings never seen; saw {dict(seen)}"


@pytest.mark.slow
def test_concurrent_commits_compactions_cleanups_and_reads_many_rounds(tmp_path):
    seen = run_rounds(tmp_path, list(range(1000, 1040)))
    assert not [what for what in MUST_SEE if not seen[what]], f"interleavings never seen; saw {dict(seen)}"


# ---------------------------------------------------------------- the races, one at a time
#
# Each test below stops a real process at one moment (``roles.paused``) and makes other
# processes act right then: the interleavings the randomized rounds only hit by chance.
# The other processes' actions run in processes too, waited for only a while: where
# lateseq makes them wait for the paused one (a lock), the race cannot happen, and the
# test goes on without it instead of waiting forever.


def _start(target, args=()) -> multiprocessing.Process:
    child = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    return child


def _pause(tmp_path: Path, point: str, path: Path, cache: Path | None = None, table=None):
    """A process running one operation on ``path``, stopped at ``point``."""
    context = multiprocessing.get_context("fork")
    arrived, resume = context.Event(), context.Event()
    out = tmp_path / f"{point}.json"
    child = _start(roles.paused, (point, str(path), None if cache is None else str(cache), arrived, resume,
                                  str(out), table))
    if not arrived.wait(60):
        child.kill()
        pytest.fail(f"the child never reached the pause point {point!r} (did the library change?)")
    return child, resume, out


def _finish(child, resume, out: Path) -> dict:
    resume.set()
    child.join(60)
    assert not child.is_alive(), "the paused process hung after it was resumed"
    return json.loads(out.read_text())


def _act(tmp_path: Path, name: str, action):
    """Runs ``action()`` (returning something JSON can hold) in another process."""
    out = tmp_path / f"{name}.json"

    def body():
        try:
            outcome = {"outcome": "ok", "value": action()}
        except lateseq.LateseqError as exc:
            outcome = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to fail on
            import traceback

            outcome = {"outcome": "raw", "type": type(exc).__name__, "message": str(exc),
                       "traceback": traceback.format_exc()}
        out.write_text(json.dumps(outcome))
        os._exit(0)

    return _start(body), out


def _outcome(child, out: Path) -> dict:
    child.join(60)
    assert not child.is_alive(), f"{out.stem} hung"
    return json.loads(out.read_text())


def _until(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.005)
    return True


def _cleanup(path: Path, cache: Path | None = None) -> list[int]:
    store = lateseq.open(path, cache_dir=cache)
    return store.cleanup(before=store.version, grace_s=0)


def _store(tmp_path: Path, event_ids: bool = False, commits: int = 2) -> lateseq.Store:
    store = lateseq.create(tmp_path / "store", roles.schema(1, event_ids))
    for k in range(commits):
        store = store.commit(roles.commit_table(0, 0, k, event_ids), commit_id=roles.commit_id(0, k))
    return store


def _retired(path: Path, version: int) -> bool:
    return bool(load_checked(VersionLog(path).manifest_path(version)).get("retired"))


@pytest.mark.parametrize("nothing_new", ["watermark", "redelivery"])
def test_two_cleanups_and_a_version_with_nothing_new_keep_the_latest_versions_files(tmp_path, nothing_new):
    """Cleanup A, holding the exclusive lock, lists the versions (n is the latest); a
    commit with nothing new publishes n+1 without taking the lock (it writes no file: it
    names n's segments); cleanup B retires n (it may: n+1 is the latest) and waits for
    the lock; A reads n's manifest, finds a tombstone, never saw n+1, and deletes n's
    segments, which the latest version names."""
    store = _store(tmp_path, event_ids=nothing_new == "redelivery")
    store.cleanup(before=store.version, grace_s=0)
    n = store.version
    a, resume, out = _pause(tmp_path, "cleanup-listing", store.path)

    def publish():
        if nothing_new == "watermark":
            return lateseq.open(store.path).commit(roles._EMPTY, watermark=1).version
        return lateseq.open(store.path).commit(roles.commit_table(0, 0, 0, True), commit_id="redelivered").version

    publisher, publisher_out = _act(tmp_path, "publish", publish)
    published = _until(lambda: VersionLog(store.path).latest == n + 1, 2)
    b, b_out = _act(tmp_path, "cleanup-b", lambda: _cleanup(store.path))
    if published:  # it did not wait for A's lock: B retires n under A
        assert _until(lambda: _retired(store.path, n), 30), "cleanup B never retired version n"
    outcomes = [_finish(a, resume, out), _outcome(publisher, publisher_out), _outcome(b, b_out)]
    assert all(o["outcome"] != "raw" for o in outcomes), outcomes
    assert outcomes[1] == {"outcome": "ok", "value": n + 1}
    assert not (problems := roles.dangling(store.path)), "\n".join(problems)
    assert verify(lateseq.open(store.path)) == []
    everything = {(0, k) for k in range(2)}
    roles.check_read(0, roles.read_version(lateseq.open(store.path), random.Random(0)), everything, set())


def test_a_reader_decoding_into_its_cache_survives_a_cleanup_of_that_cache(tmp_path):
    """A reader decodes a segment into its read cache (local disk, say) under a
    temporary name; a cleanup of that cache, meanwhile, deletes every ``.tmp-`` file it
    finds (no grace), and the reader's rename into place fails."""
    store = _store(tmp_path)
    cache = tmp_path / "local-cache"
    reader, resume, out = _pause(tmp_path, "decode-rename", store.path, cache)
    cleaner, cleaner_out = _act(tmp_path, "cleanup", lambda: _cleanup(store.path, cache))
    _until(lambda: not cleaner.is_alive(), 2)
    outcome = _finish(reader, resume, out)
    assert _outcome(cleaner, cleaner_out) == {"outcome": "ok", "value": [1]}
    assert outcome["outcome"] == "ok", (  # the version it reads is kept: nothing excuses an error
        f"reading a kept version failed: {outcome['type']}: {outcome['message']}\n{outcome.get('traceback')}")
    assert outcome["events"] == store.num_events


@pytest.mark.parametrize("point", ["commit-latest", "commit-dedup"])
def test_a_commit_that_loses_a_race_to_a_cleanup_raises_commit_conflict(tmp_path, point):
    dedup = point == "commit-dedup"
    store = _store(tmp_path, event_ids=dedup, commits=3 if dedup else 2)
    child, resume, out = _pause(tmp_path, point, store.path, table=roles.commit_table(0, 1, 0, dedup))

    def race():
        if dedup:  # a compaction, then a cleanup, delete the segments it is about to read
            other = lateseq.open(store.path).compact()
        else:  # another commit, then a cleanup, retire the version it read
            other = lateseq.open(store.path).commit(roles.commit_table(0, 0, 5, False), commit_id="other")
        return [other.version, other.cleanup(before=other.version, grace_s=0)]

    other, other_out = _act(tmp_path, "race", race)
    _until(lambda: not other.is_alive(), 2)
    outcome = _finish(child, resume, out)
    expected = {"outcome": "ok", "value": [store.version + 1, list(range(1, store.version + 1))]}
    assert _outcome(other, other_out) == expected
    assert outcome["paused"]
    assert outcome["outcome"] != "raw", outcome["traceback"]
    if outcome["outcome"] == "error":
        assert outcome["type"] == "CommitConflict", f"{outcome['type']}: {outcome['message']}"
