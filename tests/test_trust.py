"""Trust: damaged files, names from outside, racing cleanup, idempotent commits, deletion.

Every test here attacks the store the way a user's disk, a careless script or another
process would, and checks that lateseq returns the right bytes or a clear error naming
the file, never silently wrong output, and never loses a commit that returned success.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import mmap
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import Oracle, Request, assert_batch_equal, edit_in_place, oracle_requests, referenced_files
from typer.testing import CliRunner

import lateseq
import lateseq._events
import lateseq._format
import lateseq._gather
import lateseq._locate
import lateseq._merge
import lateseq._projection
import lateseq._segments
import lateseq._select
import lateseq._store
import lateseq._versions
import lateseq._watch
from lateseq._derived import DERIVED_DIR
from lateseq._examplelog import ExampleLog
from lateseq._versions import dump_checked, load_checked
from lateseq.audit import audit, verify
from lateseq.cli import app

PROJECTION = lateseq.Projection(10, ("ts", "item", "rating"))


def events(users, ts, items) -> pa.Table:
    return pa.table({"user_id": pa.array(users, pa.int64()), "ts": pa.array(ts, pa.int64()),
                     "item": pa.array(items, pa.int64()), "rating": pa.array([1] * len(users), pa.int8())})


@pytest.fixture
def store(make_store):
    """Three commits over two partitions, compacted, then one more commit: several
    segments, old and new, and pointers into every version."""
    s = make_store({"item": "int64", "rating": "int8"}, partitions=2)
    rng = np.random.default_rng(7)
    for k in range(3):
        users = rng.integers(1, 30, 200)
        s = s.commit(events(users, rng.integers(0, 1000, 200), rng.integers(0, 10**6, 200)))
    s = s.compact()
    s.tag("good")
    return s.commit(events([1, 2, 3], [5, 500, 999], [7, 8, 9]))


@pytest.fixture
def log(store):
    requests = pa.table({"user_id": np.arange(1, 31, dtype=np.int64), "request_ts": np.full(30, 2000, np.int64)})
    return lateseq.log_examples(store, requests)


def output(store_path: Path, log: pa.Table, cache: Path | None = None) -> lateseq.JaggedBatch:
    """The log read segment by segment: through the decoded copies these tests damage (merged
    copies, which "auto" would switch to after enough reads, get the same attacks in test_derived)."""
    handle = lateseq.open(store_path, cache_dir=cache, merged_reads=False)
    return lateseq.materialize(handle, log, PROJECTION)


def same(a: lateseq.JaggedBatch, b: lateseq.JaggedBatch) -> bool:
    return not a.rows_differ(b).any()


def flip(path: Path, at: int, mask: int = 0x20) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= mask
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- damaged files


def test_every_flipped_byte_of_a_decoded_copy_gives_the_right_output(store, log):
    """The decoded copies are what materialize maps: a flip anywhere (data, Arrow
    metadata, system columns) must be caught by the digests and the copy decoded again."""
    expected = output(store.path, log)
    rng = np.random.default_rng(0)
    repaired = 0
    for info in store.segment_infos:
        path = store.cache_dir / f"{info.name}.arrow"
        pristine = path.read_bytes()
        for at in rng.integers(0, len(pristine), 25):
            flip(path, int(at), int(rng.integers(1, 256)))
            assert same(output(store.path, log), expected), f"flip at {at} of {path.name}"
            repaired += path.read_bytes() == pristine  # decoded again from the durable files
            path.write_bytes(pristine)  # (a flip in padding changes no column and is left alone)
    assert repaired > 0.5 * 25 * len(store.segment_infos)


def test_a_decoded_copy_replaced_under_an_open_handle_is_checked_again(store, log):
    expected = output(store.path, log)
    handle = lateseq.open(store.path)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    info = store.segment_infos[0]
    path = store.cache_dir / f"{info.name}.arrow"
    damaged = bytearray(path.read_bytes())
    column = handle._segments.get(info).stored("item").tobytes()
    damaged[damaged.find(column) + len(column) // 2] ^= 0xFF  # inside a column the batch reads
    tmp = path.with_name("replacement")
    tmp.write_bytes(bytes(damaged))
    os.replace(tmp, path)  # a new file at the same name, as another process would leave
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)


@pytest.mark.parametrize("kind", ["parquet", "index.arrow"])
def test_a_damaged_durable_file_is_named_and_never_used(store, log, tmp_path, kind):
    info = store.segment_infos[0]
    flip(store.path / "segments" / f"{info.name}.{kind}", 40)
    with pytest.raises(lateseq.StoreError, match=rf"{info.name}.*(CRC-32|damaged)|{info.name}\.{kind}"):
        output(store.path, log, tmp_path / "empty-cache")  # nothing decoded yet: the durable files are read
    assert not list((tmp_path / "empty-cache").glob("*.arrow"))
    problems = verify(lateseq.open(store.path))
    assert any(p.path.endswith(f"{info.name}.{kind}") for p in problems)


def test_a_damaged_index_is_caught_even_with_a_decoded_copy(store, log):
    info = store.segment_infos[0]
    flip(store.path / "segments" / f"{info.name}.index.arrow", 200)
    with pytest.raises(lateseq.StoreError, match=f"{info.name}.index.arrow"):
        output(store.path, log)


def first_entry(manifest: dict) -> dict:
    """A manifest's first segment entry, whether it lists every segment or a commit's."""
    return (manifest.get("segments") or manifest["added"])[0]


@pytest.mark.parametrize("edit", [
    lambda m: first_entry(m)["bases"].update(item=first_entry(m)["bases"]["item"] + 1),
    lambda m: first_entry(m)["bases"].update(itme=first_entry(m)["bases"].pop("item")),
    lambda m: m.update(events=m["events"] + 1),
])
def test_an_edited_manifest_is_refused(store, log, edit):
    path = store.path / "versions" / f"{store.version:08d}.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))  # edited by hand: the checksum no longer fits
    with pytest.raises(lateseq.StoreError, match=f"{path.name}.*damaged"):
        output(store.path, log)


def test_files_written_indented_by_earlier_lateseq_still_read(store, log):
    """Manifests, tags and the schema are written on one line now (json encodes an indent
    in Python, 6x slower); their checksum is of the content, so the indented files of
    earlier stores read the same."""
    before = output(store.path, log)
    for path in [store.path / "schema.json", *store.path.glob("versions/*.json"), *store.path.glob("tags/*.json")]:
        assert path.read_text().count("\n") == 1  # one line
        path.write_text(json.dumps(json.loads(path.read_text()), indent=1))
    assert same(output(store.path, log), before) and lateseq.open(store.path, "good").version >= 1


@pytest.mark.parametrize("name", ["schema.json", "tags/good.json"])
def test_damaged_schema_and_tags_are_named(store, name):
    path = store.path / name
    text = path.read_text()
    path.write_text(text.replace('"int8"', '"int16"') if name == "schema.json" else text.replace("4", "3"))
    assert path.read_text() != text
    with pytest.raises(lateseq.StoreError, match=f"{path.name}.*damaged"):
        lateseq.open(store.path, "good")


def test_verify_finds_nothing_in_a_sound_store_and_each_damaged_file(store):
    assert verify(store, deep=True) == []
    damaged = [store.path / "versions" / f"{store.version:08d}.json", store.path / "tags" / "good.json",
               store.cache_dir / f"{store.checkout('good').segment_infos[0].name}.arrow"]
    for path in damaged:
        flip(path, path.stat().st_size // 2)
    found = {Path(p.path).name for p in verify(store)}
    assert {p.name for p in damaged} <= found


@pytest.mark.parametrize("damage", ["emptied", "flipped"])
def test_verify_removes_a_damaged_decoded_copy_a_host_reading_merged_copies_never_decodes_again(store, log, damage):
    """A decoded copy a power loss emptied (the read cache is not synced) failed every verify
    after, on a host whose reads go through merged copies and so never decode the segment
    again (s62P): verify now removes it, and says so."""
    want = lateseq.materialize(lateseq.open(store.path, merged_reads=False), log, PROJECTION)
    assert same(lateseq.materialize(lateseq.open(store.path, merged_reads=True), log, PROJECTION), want)  # built
    copy = store.cache_dir / f"{store.segment_infos[0].name}.arrow"
    assert copy.exists()
    copy.write_bytes(b"") if damage == "emptied" else flip(copy, copy.stat().st_size // 2)
    assert same(lateseq.materialize(lateseq.open(store.path, merged_reads=True), log, PROJECTION), want)
    assert copy.exists()  # (not decoded again: the merged copies hold its events)
    (problem,) = verify(store)
    assert problem.path == str(copy) and problem.message.endswith(
        "removed, it is decoded again from the durable files when a read needs it"), problem.message
    assert not copy.exists()
    assert same(lateseq.materialize(lateseq.open(store.path, merged_reads=True), log, PROJECTION), want)
    assert verify(store) == []
    assert same(output(store.path, log), want) and copy.exists()


def test_a_lost_version_file_fails_verify_stops_cleanup_and_is_named_to_its_pointers(store, log, dir_snapshot):
    """A version's manifest deleted by hand passed verify ("every file sound"), and the next
    cleanup deleted the segments only it named, the last copy of its events; pointers into a
    lost latest version were told to open "a version >= every pointer's", which none is (s61A)."""
    latest = store.commit(pa.table({"user_id": [4], "ts": [3000], "item": [1], "rating": [1]}))
    middle = latest.path / "versions" / f"{store.version:08d}.json"  # the version before the latest
    assert verify(latest) == []
    middle.unlink()
    problems = verify(latest)
    assert len(problems) == 1 and f"{store.version:08d}.json is missing" in problems[0].message
    before = dir_snapshot(latest.path)
    with pytest.raises(lateseq.StoreError, match=f"{store.version:08d}.json is missing.*cleanup refused"):
        lateseq.open(latest.path).cleanup(before=latest.version, grace_s=0)
    assert dir_snapshot(latest.path) == before
    later = lateseq.log_examples(latest, pa.table({"user_id": [4], "request_ts": [4000]}))
    (latest.path / "versions" / f"{latest.version:08d}.json").unlink()
    with pytest.raises(lateseq.PointerError, match=f"latest is {store.version - 1}.*{latest.version:08d}.json was"):
        lateseq.materialize(lateseq.open(latest.path), later, PROJECTION)


def test_verify_names_a_damaged_commit_id_file_once(store):
    """It named the damaged file, then said its version "has no file commit-*" (s35B)."""
    first = store.commit(pa.table({"user_id": [3], "ts": [5000], "item": [1], "rating": [1]}), commit_id="day-1")
    stored = first.commit(pa.table({"user_id": [3], "ts": [5001], "item": [1], "rating": [1]}), commit_id="day-2")
    path = next(stored.path.glob(f"versions/commit-*-{first.version:08d}.json"))
    flip(path, path.stat().st_size // 2)
    assert [(Path(p.path).name, "damaged" in p.message) for p in verify(stored)] == [(path.name, True)]


def test_verify_names_no_file_a_cleanup_deleted_meanwhile_but_those_kept_versions_lack(store, monkeypatch):
    """A cleanup retiring versions while verify ran deleted segments verify had listed, and
    verify named them missing in a sound store (s35D)."""
    from lateseq._format import SegmentInfo
    old = store.checkout("good")
    compacted = store.compact()
    retired = {i.name for i in old.segment_infos} - {i.name for i in compacted.segment_infos}
    lacking = compacted.path / "segments" / f"{compacted.segment_infos[0].name}.index.arrow"
    lacking.unlink()  # a kept version's file: always named
    store.untag("good")
    checked, cleaned = SegmentInfo.corrupt_files, []
    assert retired

    def cleaned_first(self, directory):
        if self.name in retired and not cleaned:  # verify listed it; a cleanup retires its versions now
            cleaned.extend(compacted.cleanup("latest", grace_s=0))
        return checked(self, directory)

    monkeypatch.setattr(SegmentInfo, "corrupt_files", cleaned_first)
    # the file lost after the cleanup had looked (it refuses a store that lacks a kept version's file)
    monkeypatch.setattr(lateseq.Store, "_refuse_missing_segments", lambda self, before: None)
    found = verify(compacted)
    assert {Path(p.path).name for p in found} == {lacking.name}, found
    assert not any((compacted.path / "segments" / f"{name}.parquet").exists() for name in retired)


def test_verify_names_no_tag_another_process_removed_meanwhile(store, monkeypatch):
    """A tag untagged between verify's listing and its read was 'no tag ...': 381 of 9,142
    runs beside a tag/untag loop said so of a sound store (s35G)."""
    from lateseq._versions import VersionLog
    read = VersionLog.tags_of

    def untagged_first(self, name):
        (self.tags_dir / f"{name}.json").unlink(missing_ok=True)
        return read(self, name)

    monkeypatch.setattr(VersionLog, "tags_of", untagged_first)
    assert verify(store) == []


def test_verify_names_no_tag_another_process_moved_and_cleaned_meanwhile(store, monkeypatch):
    """A tag moved to the latest version and the one it named retired, between verify's
    read of the tag and of the version: 'version 1 was cleaned up' of a sound store (s35I)."""
    from lateseq._versions import VersionLog
    read, moved = VersionLog.tags_of, []

    def moved_first(self, name):
        version = read(self, name)
        if not moved:
            other = lateseq.open(store.path)
            other.tag(name, other.version)
            moved.extend(other.cleanup("latest", grace_s=0))
        return version

    monkeypatch.setattr(VersionLog, "tags_of", moved_first)
    assert verify(store) == [] and moved


def test_verify_and_audit_name_what_they_take(store, log):
    for call, pattern in ((lambda: verify(store.path), "verify checks a lateseq Store"),
                          (lambda: verify(store, deep="no"), "deep must be True or False"),
                          (lambda: audit(store, log, sample=0), "sample must be a positive integer"),
                          (lambda: audit(store, log, sample="1"), "sample must be a positive integer"),
                          (lambda: audit(str(store.path), log), "audit reads a lateseq Store"),
                          (lambda: audit(store, "log.parquet"), "an example log is a pyarrow Table")):
        with pytest.raises(lateseq.SchemaError, match=pattern):
            call()


def test_audit_blames_a_cleaned_up_version_only_where_it_could_explain_the_record(make_store):
    """A retired version's pointers still rebuild; named before every other cause, "version
    no longer kept" took every mismatch of a cleaned-up store's log (s47B). A record counting
    fewer events than its version shows now was changed: a rewrite of stored events drops
    or changes events, never adds one to an old version."""
    store = make_store({"item": "int64", "rating": "int8"})
    store = store.commit(events([1, 1, 2], [10, 20, 15], [10, 11, 20]))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [25, 25]}))
    store = store.commit(events([1], [12], [12])).compact()
    changed = {}
    for name, lengths in (("fewer", [1, 1]), ("more", [3, 1])):
        column = log.schema.get_field_index("uih_length")
        changed[name] = log.set_column(column, log.schema.field(column),
                                       pa.array(lengths, log.schema.field(column).type))
    assert audit(store, changed["fewer"]).mismatches == {0: "unknown"}
    assert audit(store, changed["more"]).mismatches == {0: "unknown"}
    assert store.cleanup(before=store.version, grace_s=0) == [1, 2]
    assert audit(store, log).mismatches == {}
    assert audit(store, changed["fewer"]).mismatches == {0: "unknown"}
    assert audit(store, changed["more"]).mismatches == {0: "version no longer kept"}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_audit_names_a_changed_request_time(data):
    """A record whose request_ts was edited (a unit shifted, a row joined to another's time)
    was "unknown" (s50A): its count and checksum are its user's history at its version for
    a request at another time. A change that moves the request past none of the user's
    events leaves the history as it was and is no mismatch; a changed checksum stays
    "unknown". Expected from the oracle: ties in time, late events, several versions."""
    oracle = Oracle({"item": "int64", "rating": "int8"})
    with tempfile.TemporaryDirectory() as folder:
        store = lateseq.create(Path(folder) / "s", lateseq.Schema({"item": "int64", "rating": "int8"},
                                                                 partitions=data.draw(st.sampled_from([1, 2]))))
        logs = []
        for commit in range(data.draw(st.integers(1, 4))):
            n = data.draw(st.integers(1, 12))
            users = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
            ts = data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))  # late and tied times alike
            store = store.commit(events(users, ts, list(range(100 * commit, 100 * commit + n))))
            oracle.commit(users, ts, {"item": list(range(100 * commit, 100 * commit + n)), "rating": [1] * n})
            if data.draw(st.booleans()):
                compacted = store.compact()
                if compacted.version != store.version:  # (a store of one segment a partition is left as it is)
                    oracle.compact()
                store = compacted
            requests = data.draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 40)), min_size=1, max_size=6))
            logs.append(lateseq.log_examples(store, pa.table({"user_id": [u for u, _ in requests],
                                                               "request_ts": [t for _, t in requests]})))
        log = pa.concat_tables(logs)
        moved = data.draw(st.lists(st.integers(0, 45), min_size=log.num_rows, max_size=log.num_rows))
        tampered = log.set_column(log.schema.get_field_index("request_ts"), "request_ts",
                                  pa.array(moved, log.schema.field("request_ts").type))
        before = oracle_requests(log)
        after = oracle_requests(tampered)

        def cause(old: Request, new: Request) -> str:
            """Named only where the record counted a history (every user has an empty one)
            and its own time shows it at no other version (an edited version, s50B)."""
            counted = oracle.pointer(old)
            elsewhere = any(oracle.pointer(Request(old.user, new.request_ts, v)) == counted
                            for v in range(store.version + 1))
            return "request time changed" if counted[0] and not elsewhere else "unknown"

        expected = {row: cause(old, new) for row, (old, new) in enumerate(zip(before, after, strict=True))
                    if oracle.pointer(old) != oracle.pointer(new)}
        assert audit(store, tampered).mismatches == expected
        versions = data.draw(st.lists(st.integers(0, store.version), min_size=log.num_rows, max_size=log.num_rows))
        users = data.draw(st.lists(st.integers(0, 4), min_size=log.num_rows, max_size=log.num_rows))
        for column, values in (("uih_version", versions), ("user_id", users)):  # never a changed time
            edited = log.set_column(log.schema.get_field_index(column), column,
                                    pa.array(values, log.schema.field(column).type))
            assert "request time changed" not in audit(store, edited).mismatches.values(), column
        column = log.schema.get_field_index("uih_checksum")
        forged = log.set_column(column, "uih_checksum", pa.compute.bit_wise_xor(log["uih_checksum"],
                                                                                 pa.scalar(1, pa.uint32())))
        assert audit(store, forged).mismatches == dict.fromkeys(range(log.num_rows), "unknown")


def test_verify_needs_no_temporary_directory_but_deep(store, monkeypatch):
    """A read-only container: verify made a scratch folder even where only ``deep`` uses
    one, and raised a bare FileNotFoundError (a stranger's)."""
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/lateseq-tmp")
    assert verify(store) == []
    with pytest.raises(lateseq.StoreError, match="verify.deep=True. decodes every segment into a scratch folder, and "
                                                 "cannot make one .*set TMPDIR to a writable folder"):
        verify(store, deep=True)


def test_verify_and_reads_name_a_file_they_may_not_read_as_unreadable(store, monkeypatch):
    """A segment file of mode 000 was said to fail its CRC-32 (restore from a backup, when
    its permissions were the matter), and a read blamed symbolic links (a stranger's)."""
    target = next(p for p in store.segment_infos[0].files(store.path / "segments") if p.name.endswith(".parquet"))
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if Path(path) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    assert [(Path(p.path), p.message) for p in verify(store)] == [
        (target, f"segment {store.segment_infos[0].name}: {target.name} cannot be read (Permission denied)")]
    with pytest.raises(lateseq.StoreError, match=r"cannot read .*: Permission denied$"):
        lateseq._format.read_regular(target)
    parquet, target = target, target.with_name(target.name.replace(".parquet", ".index.arrow"))
    assert [p.message for p in verify(store)] == [  # named once, not again by the index's own check
        f"segment {store.segment_infos[0].name}: {target.name} cannot be read (Permission denied)"]
    target = parquet
    monkeypatch.setattr(os, "open", real_open)
    moved = target.with_name("elsewhere")
    target.rename(moved)
    target.symlink_to(moved)
    assert [p.message for p in verify(store)] == [f"segment {store.segment_infos[0].name}: {target.name} is a "
                                                  "symbolic link (lateseq never follows links inside a store)"]


def test_verify_passes_a_store_where_a_tag_write_was_killed(store):
    """A tag written is a temporary renamed into place: one killed before the rename left
    tags/.tmp-*.json, which verify called a bad tag name (for the hour before cleanup
    removes it) while the store was sound."""
    leftover = store.path / "tags" / ".tmp-bac04c02-t1.json"
    leftover.write_bytes((store.path / "tags" / "good.json").read_bytes())
    assert verify(store) == []
    assert store.tags() == {"good": store.checkout("good").version}


def test_verify_finds_tag_files_swapped(store):
    store.tag("other", store.version)
    tags = store.path / "tags"
    good, other = (tags / "good.json").read_bytes(), (tags / "other.json").read_bytes()
    (tags / "good.json").write_bytes(other)
    (tags / "other.json").write_bytes(good)  # each file sound, but the other tag's
    found = {Path(p.path).name: p.message for p in verify(store)}
    assert set(found) == {"good.json", "other.json"} and "is the file of tag 'other', not of 'good'" in found["good.json"]


# ---------------------------------------------------------------- names and paths


def test_a_cache_dir_inside_another_store_is_refused(store, make_store, tmp_path):
    other = make_store({"item": "int64"})
    before = sorted(other.path.rglob("*"))
    for inside in (other.path / "segments", other.path / "segments" / "new", other.path, other.path / "mine"):
        with pytest.raises(lateseq.SchemaError, match=f"inside another store, {other.path.resolve()}"):
            lateseq.open(store.path, cache_dir=inside)
    assert sorted(other.path.rglob("*")) == before  # refused before a folder is made there
    # a folder planted in the segments (nothing lateseq writes), and a file whose name is too long to move aside:
    # cleanup leaves both, and finishes
    (other.path / "segments" / "foreign").mkdir()
    (other.path / "segments" / ("x" * 250)).write_bytes(b"not lateseq's")
    os.utime(other.path / "segments" / ("x" * 250), (time.time() - 7200,) * 2)
    other.commit(pa.table({"user_id": [1], "ts": [1], "item": [1]})).cleanup(before="latest", grace_s=0)
    assert (other.path / "segments" / "foreign").is_dir() and (other.path / "segments" / ("x" * 250)).is_file()


def test_a_handle_opened_by_a_relative_path_stays_on_its_store(store, log, tmp_path, monkeypatch):
    monkeypatch.chdir(store.path.parent)
    handle = lateseq.open(store.path.name)
    before = lateseq.materialize(handle, log, PROJECTION)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / store.path.name).mkdir(parents=True)  # the same relative name, not a store
    monkeypatch.chdir(elsewhere)
    assert handle.latest().path == store.path and same(lateseq.materialize(handle, log, PROJECTION), before)


@pytest.mark.parametrize("name", ["../schema", "/abs/x", "a/b", "..", ".hidden", "x\x00y", "a\nb", "x" * 300,
                                  "", "123", " space"])
def test_tag_names_from_outside_never_touch_a_file(store, name, dir_snapshot):
    before = dir_snapshot(store.path)
    for action in (lambda: store.tag(name), lambda: store.untag(name), lambda: lateseq.open(store.path, name)):
        with pytest.raises((lateseq.SchemaError, lateseq.VersionNotFound)):
            action()
    assert dir_snapshot(store.path) == before


@pytest.mark.parametrize("version", ["../versions/00000001", -1, 1.5, True, "1e3"])
def test_versions_from_outside_are_refused(store, version):
    with pytest.raises(lateseq.LateseqError):
        lateseq.open(store.path, version)


@pytest.mark.parametrize("name", ["../../outside", "/etc/passwd", "p00000-" + "0" * 31 + "/", "p00001-" + "a" * 32])
def test_a_manifest_cannot_name_a_file_outside_the_store(store, name):
    """Even a manifest with a valid checksum (forged by a script) is refused when it
    names a segment that is not a well-formed name of its own partition."""
    path = store.path / "versions" / f"{store.version:08d}.json"
    manifest = json.loads(path.read_text())
    first_entry(manifest)["name"] = name
    path.write_bytes(dump_checked(manifest))
    with pytest.raises(lateseq.StoreError, match="malformed segment entry"):
        lateseq.open(store.path)


def test_symlinks_planted_in_a_store_are_not_followed(store, log, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    info = store.segment_infos[0]
    index = store.path / "segments" / f"{info.name}.index.arrow"
    index.unlink()
    index.symlink_to(secret)
    with pytest.raises(lateseq.StoreError, match="symbolic link"):
        output(store.path, log)


@pytest.mark.parametrize("lock", [".lock", ".gate.lock", "tags/.lock"])
@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_lock_file_that_is_a_link_or_fifo_is_refused_not_followed_or_waited_on(store, tmp_path, lock, plant):
    path = store.path / lock
    path.unlink(missing_ok=True)
    os.symlink(tmp_path / "outside", path) if plant == "symlink" else os.mkfifo(path)
    with pytest.raises(lateseq.StoreError, match=f"cannot lock .*{lock}.*must be a regular file"):
        store.tag("new", store.version) if lock.startswith("tags") else store.commit(
            pa.table({"user_id": [1], "ts": [1], "item": [1], "rating": [1]}))
    assert not (tmp_path / "outside").exists()


def test_a_store_this_user_cannot_write_says_so_when_a_writer_locks_it(store, monkeypatch):
    """A read-only store's cleanup said 'Permission denied ... (a lock file must be a
    regular file: ... no symbolic link ... no FIFO)': a permission problem read as a link."""
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(lateseq._versions, "open_lock_file", denied)
    with pytest.raises(lateseq.StoreError, match="Permission denied .*may not write there") as caught:
        store.cleanup(before=store.version)
    assert "symbolic link" not in str(caught.value)


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "its disk is full"), (errno.EDQUOT, "its disk is full"),
                                        (errno.EROFS, "its file system is mounted read-only"),
                                        (errno.ENOTDIR, "Not a directory at .*writers need a store they can write to")])
def test_a_lock_file_a_full_or_read_only_disk_cannot_hold_is_said_to_be_that(store, tmp_path, monkeypatch, code, said):
    """A tag on a disk out of inodes said '[Errno 28] ... (a lock file must be a regular file:
    lateseq follows no symbolic link and opens no FIFO)', and a read-only mount 'this user may
    not write there' (s49A, on real file systems)."""
    def failing(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(lateseq._versions, "open_lock_file", failing)
    for write in (lambda: store.tag("t", store.version), lambda: store.cleanup(before=store.version)):
        with pytest.raises(lateseq.StoreError, match=said) as caught:
            write()
        assert "symbolic link" not in str(caught.value) and "may not write" not in str(caught.value)
        assert ("disk" in str(caught.value)) == (code in (errno.ENOSPC, errno.EDQUOT))  # (s49C: ENOTDIR was "full")
    if code == errno.ENOTDIR:
        return
    monkeypatch.setattr(lateseq._segments, "open_lock_file", failing)  # the read goes on, from memory
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [10**6]}))
    with pytest.warns(RuntimeWarning, match=f"cannot write in the read cache .*; {said}"):
        got = lateseq.materialize(lateseq.open(store.path, cache_dir=tmp_path / "cache"), log, lateseq.Projection(3))
    assert got.lengths.tolist() == lateseq.materialize(store, log, lateseq.Projection(3)).lengths.tolist() != [0]


@pytest.mark.parametrize("holder", ["the forking thread", "another thread"])
@pytest.mark.parametrize("lock", ["writing", "tagging"])
def test_a_process_forked_while_a_lock_is_held_does_not_keep_it(store, lock, holder):
    """A lock belongs to the open file, and a child forked without exec kept the parent's
    descriptor: a DataLoader worker forked during a commit held the store's lock for its
    whole life, after the commit was done, and cleanup waited on it without a word. A
    lock another thread held is closed in the child (that thread is not there to)."""
    started, ready = os.pipe()
    held, done = threading.Event(), threading.Event()

    def hold():
        with getattr(store._log, lock)():
            held.set()
            done.wait()

    def fork():
        pid = os.fork()
        if pid == 0:  # the child lives on, as a worker would, and never leaves the block
            os.write(ready, b"1" if (holder == "another thread") == bool(lateseq._format._OPEN_LOCKS) else b"0")
            time.sleep(30)
            os._exit(0)
        return pid

    if holder == "another thread":
        thread = threading.Thread(target=hold)
        thread.start()
        held.wait()
        pid = fork()
        done.set()
        thread.join()
    else:
        with getattr(store._log, lock)():
            pid = fork()
    assert os.read(started, 1) == b"0"  # the child runs, and lists no lock it cannot close
    os.close(started)
    os.close(ready)
    try:
        path = store.path / ("tags" if lock == "tagging" else "") / ".lock"
        fd = os.open(path, os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # cleanup's lock: free at once
        finally:
            os.close(fd)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_fork_while_another_thread_opens_or_closes_a_lock_file_leaves_the_child_none(tmp_path, monkeypatch):
    """A fork between a lock file's open and its listing among the locks held (or between
    its unlisting and its close) gave the child a descriptor it kept, and with it the
    lock (a stranger's trainer: 1 fork in about 150 while a thread committed and cleaned
    up). Opening, closing and forking now take turns."""
    path = tmp_path / ".lock"
    real_fstat = os.fstat

    def slow_fstat(fd):  # widens the window between the open and the listing
        time.sleep(0.001)
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", slow_fstat)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            lateseq._format.close_lock_file(lateseq._format.open_lock_file(path))

    thread = threading.Thread(target=churn)
    thread.start()
    kept = 0
    try:
        for _ in range(150):
            answer, told = os.pipe()
            pid = os.fork()
            if pid == 0:
                links = []
                for fd in os.listdir("/proc/self/fd"):
                    with contextlib.suppress(OSError):
                        links.append(os.readlink(f"/proc/self/fd/{fd}"))
                os.write(told, b"1" if str(path) in links else b"0")
                os._exit(0)
            os.close(told)
            kept += os.read(answer, 1) == b"1"
            os.close(answer)
            os.waitpid(pid, 0)
    finally:
        stop.set()
        thread.join()
    assert kept == 0


def test_a_long_wait_for_the_store_lock_is_reported(store, monkeypatch):
    """Waiting for the store's lock has no end of its own (a process holding it may live
    on): after ``LOCK_NOTICE_S`` a warning names the lock file, and the wait goes on."""
    monkeypatch.setattr(lateseq._versions, "LOCK_NOTICE_S", 0.2)
    monkeypatch.setattr(lateseq._versions, "GATE_AFTER_S", 0.0)  # cleanup's wait before it closes the gate
    for _ in range(2):  # each wait is told (a warning's own filter showed one per process)
        held = os.open(store.path / ".lock", os.O_WRONLY)
        fcntl.flock(held, fcntl.LOCK_SH)  # as a writer midway holds it
        release = threading.Timer(0.6, os.close, [held])
        release.start()
        with pytest.warns(UserWarning, match=r"waiting since .* for .*\.lock, which another process or thread has "
                                             r"held for 0 s"):
            store.cleanup(before=store.version)
        release.join()


def test_a_dangling_manifest_names_the_missing_file(store, log, tmp_path):
    info = store.segment_infos[0]
    (store.path / "segments" / f"{info.name}.parquet").unlink()
    with pytest.raises(lateseq.StoreError, match=f"{info.name}.parquet.*missing|missing.*{info.name}"):
        output(store.path, log, tmp_path / "empty-cache")


# ---------------------------------------------------------------- versions are never reused


def test_a_slow_commit_cannot_take_a_number_that_cleanup_retired(store, monkeypatch):
    """The lost update: a commit starts at version n, others publish n+1 and n+2, cleanup
    retires n+1, and the slow commit then tries to publish n+1."""
    base = store.version
    real_write = lateseq._store.write_segment
    raced = []

    def slow_write(*args, **kwargs):
        info = real_write(*args, **kwargs)
        if not raced:
            monkeypatch.setattr(lateseq._store, "write_segment", real_write)
            other = lateseq.open(store.path).commit(events([50], [1], [1])).commit(events([51], [1], [1]))
            # cleanup retires at once, then waits for this writer before deleting files
            raced.append(threading.Thread(target=lambda: raced.append(
                other.cleanup(before=other.version, grace_s=0))))
            raced[0].start()
            manifest = store.path / "versions" / f"{base + 1:08d}.json"
            while b'"retired"' not in manifest.read_bytes():
                raced[0].join(0.01)
        return info

    monkeypatch.setattr(lateseq._store, "write_segment", slow_write)
    with pytest.raises(lateseq.CommitConflict):
        store.commit(events([52], [1], [1]))
    raced[0].join()
    assert base + 1 in raced[1]
    latest = lateseq.open(store.path)
    assert latest.version == base + 2
    assert referenced_files(latest) <= {p.name for p in (store.path / "segments").iterdir()}
    with pytest.raises(lateseq.VersionNotFound, match="cleaned up"):
        lateseq.open(store.path, base + 1)
    again = latest.commit(events([52], [1], [1]))
    assert again.version == base + 3 and again.num_events == latest.num_events + 1


def test_cleanup_waits_for_a_writer_between_its_segments_and_its_manifest(store, monkeypatch):
    real_publish = lateseq._versions.VersionLog.publish
    cleaned = []

    def publish_while_cleanup_runs(self, version, manifest):
        cleaner = threading.Thread(target=lambda: cleaned.append(
            lateseq.open(store.path).cleanup(before="latest", grace_s=0)))
        cleaner.start()
        cleaner.join(0.5)  # cleanup must be blocked by our lock, not delete our files
        assert cleaner.is_alive()
        real_publish(self, version, manifest)
        cleaned.append(cleaner)

    monkeypatch.setattr(lateseq._versions.VersionLog, "publish", publish_while_cleanup_runs)
    new = store.commit(events([60], [1], [1]))
    cleaned[0].join()
    assert all((store.path / "segments" / f).exists() for f in referenced_files(new))
    assert lateseq.materialize(lateseq.open(store.path), lateseq.log_examples(
        new, pa.table({"user_id": [60], "request_ts": [2]})), PROJECTION).values["item"].tolist() == [1]


# ---------------------------------------------------------------- idempotent commits


def test_a_rerun_with_rows_in_another_order_is_the_same_commit(store):
    """A retry that reads the same files in another order stores the same version: a
    no-op; rows tied in time in another order would be stored in that order: refused."""
    table = events([70, 71, 70], [1, 2, 5], [3, 4, 6])
    first = store.commit(table, commit_id="reordered")
    again = first.commit(table.take([2, 0, 1]), commit_id="reordered")
    assert again.version == first.version
    tied = store.commit(events([80, 80], [1, 1], [1, 2]), commit_id="tied")
    assert tied.commit(events([80, 80], [1, 1], [1, 2]), commit_id="tied").version == tied.version
    with pytest.raises(lateseq.SchemaError, match="used by version .* for other events .*tie in time in another order"):
        tied.commit(events([80, 80], [1, 1], [2, 1]), commit_id="tied")


def test_a_commit_id_makes_a_rerun_a_no_op(store):
    table = events([70, 71], [1, 2], [3, 4])
    first = store.commit(table, commit_id="ingest-2026-11-30")
    again = first.commit(table, commit_id="ingest-2026-11-30")
    assert again.version == first.version and again.num_events == first.num_events
    with pytest.raises(lateseq.SchemaError, match="used by version .* for other events"):
        first.commit(events([70], [1], [3]), commit_id="ingest-2026-11-30")
    first.commit(events([72], [1], [1])).cleanup(before="latest", grace_s=0)  # retires the first commit
    assert lateseq.open(store.path).commit(table, commit_id="ingest-2026-11-30").version == first.version + 1
    for bad in ["", "has space", "x" * 300, 12]:
        with pytest.raises(lateseq.SchemaError, match="commit id"):
            store.commit(table, commit_id=bad)


def test_commit_ids_are_found_by_their_marker_in_every_state_a_commit_leaves(store):
    """An id's marker is written before its version is published: a crash in between, or
    a version published by another commit, leaves a marker that finds nothing, and the
    rerun commits; a published one is found whatever else the store holds."""
    log = store._log
    table = events([90], [1], [3])
    done = store.commit(table, commit_id="job-1")
    log.mark_commit("job-1", done.version - 1)  # a stale writer's attempt, marked after the publish (no lock
    assert log.find_commit("job-1") == (done.version, log.published(done.version)["content"])  # across hosts)
    for number in range(1, done.version):  # other versions' files are not read to find it
        log.manifest_path(number).write_bytes(b"garbage")
    assert lateseq.open(store.path).commit(table, commit_id="job-1").version == done.version
    log.mark_commit("job-2", done.version + 1)  # a crash after the marker, before the publish
    assert log.find_commit("job-2") is None
    plain = lateseq.open(store.path).commit(events([91], [1], [4]))  # that version, published without the id
    assert plain.version == done.version + 1 and log.find_commit("job-2") is None
    again = plain.commit(table, commit_id="job-2")
    assert again.version == plain.version + 1 and log.find_commit("job-2")[0] == again.version
    assert len(log.commit_markers("job-2")) == 2  # the crashed attempt's and the published one's
    marker = log.commit_markers("job-2")[-1]
    marker.write_bytes(marker.read_bytes().replace(b"job-2", b"job-3"))
    with pytest.raises(lateseq.StoreError, match="damaged"):
        again.commit(table, commit_id="job-2")
    assert str(marker) in [p.path for p in verify(again)]


def test_commit_ids_of_a_store_from_before_markers_are_still_found(store):
    table = events([92], [1], [3])
    old = store.commit(table, commit_id="old-job")
    index = old._log.versions_dir / "commit-index.json"
    index.unlink(missing_ok=True)
    for marker in old._log.commit_markers("old-job"):  # as an earlier lateseq left it
        marker.unlink()
    assert lateseq.open(store.path).commit(table, commit_id="old-job").version == old.version
    new = old.commit(events([93], [1], [4]), commit_id="new-job")  # the first id this lateseq marks
    assert load_checked(index) == {"marked_through": old.version}  # the older ids got theirs first
    assert [old._log.marker(p) for p in old._log.commit_markers("old-job")] == [("old-job", old.version)]
    for cid, version in (("old-job", old.version), ("new-job", new.version)):
        assert lateseq.open(store.path).commit(table if cid == "old-job" else events([93], [1], [4]),
                                               commit_id=cid).version == version
    assert verify(new) == []


def test_commit_ids_without_their_file_are_found_or_reported(store):
    """An older lateseq (another host, mid-upgrade) publishes ids without their files: a
    rerun searches the versions after the index's, and the next commit with an id gives
    them theirs. Up to the index's version a lost file (a partial restore) is verify's to
    report; a file copied over another id's is refused."""
    log = store._log
    first = store.commit(events([94], [1], [3]), commit_id="a")
    second = first.commit(events([95], [1], [4]), commit_id="b")
    for marker in log.commit_markers("b"):
        marker.unlink()  # as an older lateseq published it
    assert log.marked_through() < second.version
    assert lateseq.open(store.path).commit(events([95], [1], [4]), commit_id="b").version == second.version
    third = second.commit(events([96], [1], [5]), commit_id="c")  # gives b its file
    assert log.marked_through() == second.version and log.commit_markers("b")
    for marker in log.commit_markers("b"):
        marker.unlink()  # lost below the index's version
    assert [p.path for p in verify(third)] == [str(log.manifest_path(second.version))]
    (log.versions_dir / "commit-index.json").unlink()  # what verify advises
    assert lateseq.open(store.path).commit(events([95], [1], [4]), commit_id="b").version == second.version
    a, c = log.commit_markers("a")[-1], log.commit_markers("c")[-1]
    a.write_bytes(c.read_bytes())  # c's file copied over a's
    with pytest.raises(lateseq.StoreError, match="not the file of the commit id"):
        lateseq.open(store.path).commit(events([94], [1], [3]), commit_id="a")
    assert str(a) in [p.path for p in verify(third)]


def test_a_json_file_without_its_checksum_is_blamed_on_lateseq_0_1_only_where_0_1_wrote_such_files(store):
    """lateseq 0.1 wrote manifests and the schema without a checksum; it never wrote a
    commit id's file, so such a file without one is damaged, not old."""
    done = store.commit(events([98], [1], [3]), commit_id="job-x")
    log = done._log

    def unsign(path: Path) -> None:
        content = json.loads(path.read_bytes())
        content.pop("crc32", None)
        content.pop("crc32_format2", None)  # a manifest's
        path.write_text(json.dumps(content))

    unsign(log.commit_markers("job-x")[-1])
    with pytest.raises(lateseq.StoreError, match=r"commit-.* is damaged \(it has no checksum\)") as caught:
        done.commit(events([98], [1], [3]), commit_id="job-x")
    assert "0.1" not in str(caught.value)
    unsign(log.manifest_path(done.version))
    with pytest.raises(lateseq.StoreError, match=r"\.json is damaged or was written by lateseq 0\.1"):
        lateseq.open(done.path, done.version)
    unsign(done.path / "schema.json")
    with pytest.raises(lateseq.StoreError, match=r"schema\.json is damaged or was written by lateseq 0\.1"):
        lateseq.open(done.path)
    for garbage in (b'{"version": ' + b"9" * 5000 + b"}", b"[" * 100_000):  # past json's limits: not a bare
        (done.path / "schema.json").write_bytes(garbage)  # ValueError or RecursionError ("internal error")
        with pytest.raises(lateseq.StoreError, match=r"schema\.json is damaged"):
            lateseq.open(done.path)


def test_a_commit_that_only_moves_the_watermark_is_idempotent_too(store):
    empty = events([], [], [])
    first = store.commit(empty, watermark=500, commit_id="tick-1")
    later = first.commit(events([97], [1], [3]), watermark=900)
    assert lateseq.open(store.path).commit(empty, watermark=500, commit_id="tick-1").version == first.version
    assert lateseq.open(store.path).latest_version == later.version  # a rerun after the watermark moved on
    with pytest.raises(lateseq.SchemaError, match="used by version .* for other events"):
        lateseq.open(store.path).commit(empty, watermark=600, commit_id="tick-1")
    with pytest.raises(lateseq.SchemaError, match="older than the store's"):
        lateseq.open(store.path).commit(empty, watermark=600, commit_id="tick-2")


def test_a_rerun_that_cannot_read_every_commit_id_refuses_rather_than_commit_twice(store):
    """A damaged version file may hide the id a rerun looks for (a tombstone keeps it):
    the rerun refuses; it never stores the events a second time."""
    table = events([80], [1], [3])
    first = store.commit(table, commit_id="job-A")
    first.commit(events([81], [1], [1])).cleanup(before=first.version + 1, grace_s=0)
    path = first._log.manifest_path(first.version)
    path.write_bytes(path.read_bytes().replace(b'"job-A"', b'"job-B"'))
    latest = lateseq.open(store.path).version
    with pytest.raises(lateseq.StoreError, match="damaged"):
        lateseq.open(store.path).commit(table, commit_id="job-A")
    assert lateseq.open(store.path).version == latest


# ---------------------------------------------------------------- deletion


def test_delete_removes_every_byte_of_a_user_once_cleaned_up(store, log):
    before = output(store.path, log)
    deleted = [3, 7]
    new = store.delete(deleted)
    assert new.version == store.version + 1
    after = lateseq.materialize(new, log, PROJECTION, on_mismatch="flag")
    users = log.column("user_id").to_numpy()
    gone = np.isin(users, deleted)
    assert after.mismatched.tolist() == gone.tolist()  # their pointers no longer verify
    assert (after.lengths[gone] == 0).all()
    assert not before.rows_differ(after)[~gone].any()  # nobody else changed
    report = audit(new, log)
    assert set(report.mismatches) == set(np.flatnonzero(gone).tolist())
    assert set(report.causes) == {"deleted"}

    new.untag("good")
    new.cleanup(before=new.version, grace_s=0)
    files = list((store.path / "segments").iterdir()) + list(store.cache_dir.glob("*.arrow"))
    assert {p.name.split(".")[0] for p in files} == {i.name for i in lateseq.open(store.path).segment_infos}
    for info in lateseq.open(store.path).segment_infos:
        segment = lateseq.open(store.path)._segments.get(info)
        assert not np.isin(segment.user_ids, deleted).any()
    latest = lateseq.open(store.path)
    assert latest.delete([]).version == latest.version  # nobody to delete: no version
    absent = latest.delete([999])  # no event stored, yet recorded: a two-tier log may hold its tier events
    assert absent.version == latest.version + 1 and absent.deleted_after(np.array([999]), np.array([latest.version]))
    assert [i.name for i in absent.segment_infos] == [i.name for i in latest.segment_infos]


def test_a_deletion_leaves_every_other_history_in_its_order(make_store):
    """Ties in time are ordered by commit (segment order): a deletion rewrites the segments
    holding the user, and each rewritten segment must keep its place."""
    store = make_store({"item": "int64"})
    oracle = Oracle.for_schema(store.schema)
    rng = np.random.default_rng(4)
    for k in range(4):  # user 1 in the first commit only: one segment of four is rewritten
        users, ts = rng.integers(1 if k == 0 else 2, 6, 40).tolist(), rng.integers(0, 4, 40).tolist()  # ties
        items = rng.integers(0, 10**6, 40).tolist()
        oracle.commit(users, ts, {"item": items})
        store = store.commit(pa.table({"user_id": users, "ts": ts, "item": items}))
    kept = pa.table({"user_id": [2, 3, 4, 5], "request_ts": [9, 9, 9, 9]})
    examples = lateseq.log_examples(store, kept)
    requests = [Request(u, 9, store.version) for u in (2, 3, 4, 5)]
    offsets, values = oracle.expected(requests, 100, ("ts", "item"))
    projection = lateseq.Projection(100, ("ts", "item"))
    for handle in (store, store.delete([1]), store.delete([1]).compact()):
        assert_batch_equal(lateseq.materialize(handle, examples, projection), offsets, values, f"v{handle.version}")


# ---------------------------------------------------------------- durability
# ---------------------------------------------------------------- durability


def test_published_files_and_their_directories_are_fsynced_in_order(store, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    store.commit(events([80], [1], [1]))
    segments, versions = str(store.path / "segments"), str(store.path / "versions")
    last_file = max(i for i, p in enumerate(synced) if p.startswith(segments + "/"))
    directory = synced.index(segments, last_file)  # the renamed files' directory entries
    manifest = next(i for i, p in enumerate(synced) if p.startswith(versions + "/"))
    assert last_file < directory < manifest < synced.index(versions) == len(synced) - 1


@pytest.mark.parametrize("mtime", ["moved on", "set back"])
def test_a_decoded_copy_changed_in_place_under_an_open_handle_is_checked_again(store, log, mtime):
    """lateseq only ever replaces files, but another program might write into the cache:
    a changed file (a new change time, whatever its modification time says) is mapped
    and checked again before the next batch."""
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    for info in handle.segment_infos:
        path = store.cache_dir / f"{info.name}.arrow"
        before = os.stat(path)
        edit_in_place(path, 1 / 3, 0x01)
        if mtime == "set back":
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)


@pytest.mark.parametrize("every_read", [False, True])
@pytest.mark.parametrize("copies", ["decoded", "filtered"])
def test_a_decoded_copy_written_in_place_during_a_batch_is_never_returned(store, log, monkeypatch, every_read, copies):
    """The read cache is checked before each batch; a program writing into a copy while
    the batch is copied out (after that check) changed the bytes returned, with nothing
    flagged (a stranger's concurrent writer: 3 of 35 batches; into a filtered copy, 24 of
    14,047). The batch is read again, through the copy checked and made anew; a copy
    written during every read is an error."""
    projection = PROJECTION if copies == "decoded" else lateseq.Projection(
        10, ("ts", "item", "rating"), where=lateseq.Filter("rating", isin=list(range(1, 10))))
    handle = lateseq.open(store.path, merged_reads=False)
    expected = lateseq.materialize(lateseq.open(store.path, cache_dir=store.path.parent / "clean", merged_reads=False),
                                   log, projection)
    assert same(lateseq.materialize(handle, log, projection), expected)
    read = sorted((store.cache_dir / ("derived" if copies == "filtered" else "")).glob("[!.]*.arrow"))
    read = [path for path in read if not path.name.endswith(".index.arrow")]
    real, writes = lateseq._gather.copy_runs, []

    def written_meanwhile(*args):
        if every_read or not writes:
            writes.append(1)
            for path in read:
                edit_in_place(path, 1 / 3, 0x01)
        return real(*args)

    monkeypatch.setattr(lateseq._gather, "copy_runs", written_meanwhile)
    monkeypatch.setattr(lateseq._select, "copy_runs", written_meanwhile)
    if every_read:
        with pytest.raises(lateseq.StoreError, match="written in place during 3 reads in a row"):
            lateseq.materialize(handle, log, projection)
        return
    assert same(lateseq.materialize(handle, log, projection), expected)
    assert len(writes) == 1


def test_a_read_that_raised_leaves_no_stale_look_at_the_read_cache(store, log, monkeypatch):
    """A read looks at the read cache once, as it begins, and its lookups reuse that look;
    one that raised (out of memory, interrupted) must not leave it behind: a later lookup
    outside a read (logging pointers) would take it, and miss a decoded copy written in
    place since."""
    requests = pa.table({"user_id": np.arange(1, 31, dtype=np.int64), "request_ts": np.full(30, 500, np.int64)})
    handle = lateseq.open(store.path, merged_reads=False)
    expected = lateseq.log_examples(handle, requests)  # each cut searched for in the time column
    assert same(lateseq.materialize(handle, log, PROJECTION), output(store.path, log))

    def out_of_memory(*args):
        raise MemoryError

    with monkeypatch.context() as patch:
        patch.setattr(lateseq._gather, "copy_runs", out_of_memory)
        with pytest.raises(MemoryError):
            lateseq.materialize(handle, log, PROJECTION)
    for info in handle.segment_infos:
        path = store.cache_dir / f"{info.name}.arrow"
        _damage_in_place(path, path.stat().st_size // 8, path.stat().st_size * 7 // 8, through_a_map=False)
    assert lateseq.log_examples(handle, requests).equals(expected)


@pytest.mark.parametrize("when, what", [("as the read begins", "its middle"), ("during the copy", "its middle"),
                                        ("during the copy", "the new column alone")])
def test_a_copy_written_in_place_during_a_read_that_checks_a_new_column_is_never_returned(store, log, monkeypatch,
                                                                                            when, what):
    """A read whose projection uses a column for the first time checks it, and finds the
    copy written in place: the segment is decoded again, which reset what the end-of-read
    check compares with, so the columns copied before from the map written into came out
    (garbage item ids, nothing flagged), and the view kept pointing into that map (a
    stranger's review: a regression where the write came as the read began, and as old as
    the check where it came during the copy)."""
    monkeypatch.setattr(lateseq._watch, "SWEEP_S", 600.0)  # no look at every file unless a change is heard
    known, new = lateseq.Projection(10, ("ts", "item")), lateseq.Projection(10, ("ts", "item", "rating"))
    expected = lateseq.materialize(lateseq.open(store.path, cache_dir=store.path.parent / "clean", merged_reads=False),
                                   log, new)
    handle = lateseq.open(store.path, merged_reads=False)
    for _ in range(2):
        lateseq.materialize(handle, log, known)  # the views checked, "rating" never read
    def write(path):
        if what == "its middle":
            _damage_in_place(path, path.stat().st_size // 8, path.stat().st_size * 7 // 8, through_a_map=False)
        else:  # the file still maps: the one written into was "decoded again" as it was (an error)
            _damage_columns(path, ["rating"], footer=False)

    written, write_once = _write_once(store, write)

    if when == "as the read begins":
        begin = handle._read_cache_generation
        monkeypatch.setattr(handle, "_read_cache_generation", lambda: (begin(), write_once())[0])
    else:
        copy = lateseq._gather.copy_runs
        monkeypatch.setattr(lateseq._gather, "copy_runs", lambda *args: (write_once(), copy(*args))[1])
    assert same(lateseq.materialize(handle, log, new), expected)
    assert written


@pytest.mark.parametrize("verify", [True, False])
def test_a_copy_written_in_place_then_decoded_again_by_another_reader_during_a_read_is_never_returned(
        store, log, monkeypatch, verify):
    """A copy written in place during a read, which another handle then found damaged and
    decoded again (renaming the sound copy over it) before the read ended: the read's end
    check saw another file at the path, took it for a plain replacement (which leaves the
    map holding the bytes checked), and returned the bytes written into the map, with
    verify too (s54A)."""
    expected = lateseq.materialize(lateseq.open(store.path, cache_dir=store.path.parent / "clean",
                                                merged_reads=False), log, PROJECTION)
    handle = lateseq.open(store.path, merged_reads=False)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)  # every copy mapped and checked
    copies = [p for p in sorted(store.cache_dir.glob("[!.]*.arrow")) if not p.name.endswith(".index.arrow")]
    copy, written = lateseq._gather.copy_runs, []

    def written_then_decoded_again(*args):
        if not written:
            written.append(1)
            for path in copies:
                _damage_columns(path, ["item"], footer=False)  # another program
            assert same(output(store.path, log), expected)  # another reader: decoded again, renamed into place
        return copy(*args)

    monkeypatch.setattr(lateseq._gather, "copy_runs", written_then_decoded_again)
    assert same(lateseq.materialize(handle, log, PROJECTION, verify=verify), expected)
    assert written


def test_late_rows_found_while_the_copy_is_decoded_again_are_found_again(make_store, monkeypatch):
    """A thread finding a segment's late rows from its map while another thread decoded
    the copy again (a column written in place failed its digest) stored them after that
    thread had dropped the old ones: every view made since read the sound map through the
    damaged map's late rows (a stranger saw the race, s53C)."""
    store = make_store({"item": "int64", "rating": "int8"})
    store = store.commit(events([1] * 5 + [2] * 5, [10, 20, 30, 40, 50] * 2, range(10)))
    store = store.commit(events([1, 2], [15, 25], [98, 99])).compact()  # late rows: before older versions' rows
    segment = lateseq.open(store.path, merged_reads=False).segments(0)[0]
    columns = ("_version", "_vmax", "_vmin", "_hcum")
    for name in columns:
        segment.stored(name)  # checked: what the other thread finds written in place next
    find = lateseq._segments.late_rows
    found = []

    def decoded_again_meanwhile(*arguments):
        _damage_columns(segment.path, ["_vmin"], footer=False)
        segment.recheck()  # the other thread: the copy fails its digest, and is decoded again
        found.append(find(*arguments))  # from the map written into
        return found[-1]

    monkeypatch.setattr(lateseq._segments, "late_rows", decoded_again_meanwhile)
    segment.late
    monkeypatch.undo()
    sound = find(*(segment.stored(name) for name in columns[:3]), segment.base("_version"), segment.stored("_hcum"))
    assert segment.remaps == 1 and len(sound) and not np.array_equal(found[0], sound)
    assert np.array_equal(segment.late, sound)
    assert np.array_equal(segment.late_index, lateseq._kernels.late_index(sound, len(segment.stored("_version"))))


def _write_once(store: lateseq.Store, write) -> tuple[list, object]:
    """(a list that says whether it wrote, a hook that writes into every decoded copy of
    ``store``'s read cache the first time it is called), as another program would."""
    copies = [p for p in sorted(store.cache_dir.glob("[!.]*.arrow")) if not p.name.endswith(".index.arrow")]
    written = []

    def hook():
        if not written:
            written.append(1)
            for path in copies:
                write(path)

    return written, hook


def _damage_columns(path: Path, names: list[str], footer: bool = True) -> None:
    """Flips every byte of each named column's values in a decoded copy, and of its last
    bytes (its footer: mapping it again fails, so it is decoded again) unless not ``footer``."""
    whole = pa.memory_map(str(path), "r").read_buffer()
    batch = pa.ipc.open_file(whole).get_batch(0)
    spans = [(b.address - whole.address, b.address - whole.address + b.size)
             for b in (batch.column(name).buffers()[-1] for name in names)]
    del batch, whole
    for start, end in [*spans, (path.stat().st_size - 10, path.stat().st_size)][:len(spans) + footer]:
        _damage_in_place(path, start, end, through_a_map=False)


@pytest.mark.parametrize("copy", ["merged", "filtered"])
def test_a_copy_built_while_its_decoded_copies_are_written_in_place_is_never_kept(store, log, monkeypatch, copy):
    """A merged or filtered copy built while another program wrote into the decoded copies
    it reads, where the build checks a column for the first time: that column failed its
    digest and the segment was decoded again, but the columns read before came from the
    map written into, and the copy kept them under digests of its own, for every later
    reader of the host (a stranger's review). Such a build is made again."""
    known = lateseq.Projection(10, ("ts", "item"))
    wanted = known if copy == "merged" else lateseq.Projection(10, ("ts", "item", "rating"),
                                                                 where=lateseq.Filter("item", any_bits=1))
    expected = lateseq.materialize(lateseq.open(store.path, cache_dir=store.path.parent / "clean", merged_reads=False),
                                   log, wanted)
    # "auto" merges after a read or two: only users 1-3, with events in both the compacted segments and the
    # last commit's, pay (a few events a read, against the 600 held)
    monkeypatch.setattr(lateseq._store, "AUTO_MERGE_RENT", 0.05)
    handle = lateseq.open(store.path, merged_reads="auto" if copy == "merged" else False)
    lateseq.materialize(handle, log, known)  # "ts" and "item" checked, "rating" never read
    written, write_once = _write_once(store, lambda path: _damage_columns(path, ["item", "rating"]))

    hook = (lateseq._merge, "merge_runs") if copy == "merged" else (lateseq._projection.Filter, "keeps")
    real = getattr(*hook)
    monkeypatch.setattr(*hook, (lambda *args: (write_once(), real(*args))[1]))
    for _ in range(4):
        assert same(lateseq.materialize(handle, log, wanted), expected)
    assert written and (handle._merged if copy == "merged" else True)
    fresh = lateseq.open(store.path, merged_reads=copy == "merged")  # what the host's cache holds now
    assert same(lateseq.materialize(fresh, log, wanted), expected)


def test_late_rows_found_in_a_copy_written_into_are_found_again(make_store, monkeypatch):
    """A segment's late rows, found once from its map, outlived the segment being decoded
    again (a column failed its digest): pointers into older versions then read events
    their version never held (verify=False, as loaders may) or blamed the store."""
    store = make_store({"item": "int64", "rating": "int8"})
    rng = np.random.default_rng(7)
    requests = pa.table({"user_id": np.arange(1, 31, dtype=np.int64), "request_ts": np.full(30, 2000, np.int64)})
    for k in range(3):
        store = store.commit(events(rng.integers(1, 30, 200), rng.integers(0, 1000, 200), rng.integers(0, 10**6, 200)))
        if k == 0:
            old = lateseq.log_examples(store, requests)  # pointers into version 1
    store = store.compact()
    latest = lateseq.log_examples(store, requests)
    clean = lateseq.open(store.path, cache_dir=store.path.parent / "clean", merged_reads=False)
    handle = lateseq.open(store.path, merged_reads=False)
    real = lateseq._segments.late_rows
    written, write_once = _write_once(store, lambda path: _damage_columns(path, ["_vmin", "item"]))
    monkeypatch.setattr(lateseq._segments, "late_rows", lambda *args: (write_once(), real(*args))[1])
    assert same(lateseq.materialize(handle, latest, PROJECTION), lateseq.materialize(clean, latest, PROJECTION))
    assert written
    for verified in (True, False):
        assert same(lateseq.materialize(handle, old, PROJECTION, verify=verified),
                    lateseq.materialize(clean, old, PROJECTION, verify=verified))


def test_a_filtered_copy_written_through_another_name_during_a_read_is_never_returned(store, log, tmp_path,
                                                                                       monkeypatch):
    """Filtered copies were opened outside the segment cache, so no watch followed their
    files: one written through a hard link elsewhere while a batch was copied came out."""
    monkeypatch.setattr(lateseq._watch, "SWEEP_S", 600.0)  # no look at every file unless a change is heard
    wanted = lateseq.Projection(10, ("ts", "item", "rating"), where=lateseq.Filter("rating", isin=list(range(1, 10))))
    expected = lateseq.materialize(lateseq.open(store.path, cache_dir=tmp_path / "clean", merged_reads=False),
                                   log, wanted)
    handle = lateseq.open(store.path, merged_reads=False)
    for _ in range(2):
        assert same(lateseq.materialize(handle, log, wanted), expected)
    links = []
    for path in sorted((store.cache_dir / "derived").glob("[!.]*.arrow")):
        if not path.name.endswith(".index.arrow"):
            links.append(tmp_path / f"link-{path.name}")
            os.link(path, links[-1])
    assert links
    real, written = lateseq._select.copy_runs, []

    def copy_runs(*args):
        if not written:
            written.append(1)
            for link in links:
                whole = pa.memory_map(str(link), "r").read_buffer()
                buffer = pa.ipc.open_file(whole).get_batch(0).column("item").buffers()[-1]
                start = buffer.address - whole.address
                del whole
                _damage_in_place(link, start, start + buffer.size, through_a_map=False)
        return real(*args)

    monkeypatch.setattr(lateseq._select, "copy_runs", copy_runs)
    assert same(lateseq.materialize(handle, log, wanted), expected)
    assert written


def _damage_in_place(path: Path, start: int, end: int, through_a_map: bool) -> mmap.mmap | None:
    """Flips every byte of [start, end) of ``path`` in place; through a shared map, kept
    open (closing it would tell inotify), which is returned."""
    if not through_a_map:
        with open(path, "r+b") as f:
            f.seek(start)
            data = bytes(b ^ 0xFF for b in f.read(end - start))
            f.seek(start)
            f.write(data)
        return None
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
    mapped[start:end] = bytes(b ^ 0xFF for b in mapped[start:end])
    return mapped


@pytest.mark.parametrize("watched", [True, False], ids=["inotify", "a stat per file"])
@pytest.mark.parametrize("change", ["written in place", "replaced", "written through a map",
                                    "written through a hard link elsewhere", "truncated through a hard link"])
def test_a_batch_over_many_partitions_notices_a_changed_decoded_copy(make_store, tmp_path, monkeypatch, watched,
                                                                      change):
    """A batch over many partitions reads through one view of them all, given as it is
    while the read cache's watch hears of no change (no stat per file). A decoded copy
    written in place, replaced, or written or cut through another name of it (which the
    cache folder's watch does not hear: each mapped file is watched itself) is checked
    again before the next batch; one written through a shared map, which inotify does not
    report, within the watch's SWEEP_S."""
    monkeypatch.setattr(lateseq._watch, "SWEEP_S", 600.0)  # no look at every file unless a change is heard
    if not watched:
        monkeypatch.setattr(lateseq._watch, "_inotify", lambda: None)
    store = make_store({"item": "int64", "rating": "int8"}, partitions=8)
    rng = np.random.default_rng(3)
    for _ in range(2):
        users = rng.integers(0, 200, 2000)
        store = store.commit(events(users, rng.integers(0, 1000, 2000), rng.integers(0, 10**6, 2000)))
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(200), "request_ts": np.full(200, 2000)}))
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    for _ in range(3):  # the joined view is built, then given as it is
        assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    assert handle._join[1] is not None and len(handle._join[0]) == 8
    stats = []
    monkeypatch.setattr(lateseq._segments.Segment, "changed",
                        lambda self, real=lateseq._segments.Segment.changed: stats.append(self) or real(self))
    lateseq.materialize(handle, log, PROJECTION)
    trusted = (lateseq._watch._inotify() is not None
               and lateseq._watch._filesystem(store.cache_dir) in lateseq._watch._LOCAL_FILESYSTEMS)
    if watched and trusted:  # (elsewhere: a stat per file per batch)
        assert handle._segments.watch._active and stats == []  # nothing changed: nothing looked at
    maps = []
    for info in store.segment_infos:
        path = store.cache_dir / f"{info.name}.arrow"
        column = handle._segments.get(info).stored("item").tobytes()
        start = path.read_bytes().find(column)
        if change == "replaced":
            damaged = bytearray(path.read_bytes())
            damaged[start:start + len(column)] = bytes(b ^ 0xFF for b in column)
            path.with_name("replacement").write_bytes(bytes(damaged))
            os.replace(path.with_name("replacement"), path)
        elif "hard link" in change:
            link = tmp_path / f"link-{info.name}"
            os.link(path, link)
            if change.startswith("truncated"):
                os.truncate(link, 0)  # a read of the old map would die of SIGBUS
            else:
                _damage_in_place(link, start, start + len(column), through_a_map=False)
        else:
            maps.append(_damage_in_place(path, start, start + len(column), change == "written through a map"))
    if change == "written through a map":
        monkeypatch.setattr(lateseq._watch, "SWEEP_S", 0.2)
        time.sleep(0.3)  # past SWEEP_S: every file is looked at again
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    assert stats  # looked at once the change could be
    for mapped in maps:
        if mapped is not None:
            mapped.close()


def test_a_forked_reader_does_not_take_the_changes_its_parent_waits_for(make_store, monkeypatch):
    """A loader's forked workers inherit the trainer's inotify instance: a worker that read
    its events would leave the trainer deaf to a change; each process watches for itself."""
    if lateseq._watch._inotify() is None:
        pytest.skip("no inotify here: every batch looks at every file")
    monkeypatch.setattr(lateseq._watch, "SWEEP_S", 600.0)  # only inotify can tell the parent
    store = make_store({"item": "int64", "rating": "int8"}, partitions=4)
    rng = np.random.default_rng(4)
    store = store.commit(events(rng.integers(0, 50, 500), rng.integers(0, 1000, 500), rng.integers(0, 10**6, 500)))
    log = lateseq.log_examples(store, pa.table({"user_id": np.arange(50), "request_ts": np.full(50, 2000)}))
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    for _ in range(2):
        assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    context = multiprocessing.get_context("fork")
    ready, damaged = context.Event(), context.Event()

    def worker() -> None:
        lateseq.materialize(handle, log, PROJECTION)
        ready.set()
        damaged.wait(60)
        handle._segments.watch.generation()  # hears of the change: in its own instance only

    child = context.Process(target=worker)
    child.start()
    assert ready.wait(60)
    for info in store.segment_infos:
        path = store.cache_dir / f"{info.name}.arrow"
        column = handle._segments.get(info).stored("item").tobytes()
        start = path.read_bytes().find(column)
        _damage_in_place(path, start, start + len(column), through_a_map=False)
    damaged.set()
    child.join(60)
    assert child.exitcode == 0
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)


def _partitioned(make_store, partitions: int) -> tuple[lateseq.Store, pa.Table]:
    store = make_store({"item": "int64", "rating": "int8"}, partitions=partitions)
    rng = np.random.default_rng(5)
    for _ in range(2):
        store = store.commit(events(rng.integers(0, 100, 1000), rng.integers(0, 1000, 1000),
                                    rng.integers(0, 10**6, 1000)))
    return store, lateseq.log_examples(store, pa.table({"user_id": np.arange(100), "request_ts": np.full(100, 2000)}))


def _damage_every_copy(handle: lateseq.Store) -> None:
    for info in handle.segment_infos:
        path = handle.cache_dir / f"{info.name}.arrow"
        column = handle._segments.get(info).stored("item").tobytes()
        start = path.read_bytes().find(column)
        _damage_in_place(path, start, start + len(column), through_a_map=False)


@pytest.mark.parametrize("why", ["no inotify instance left", "a parent thread held the watch's lock"])
def test_a_forked_reader_that_cannot_watch_still_reads_right(make_store, monkeypatch, why):
    """A forked loader worker gets no inotify instance of its own (128 per user by
    default), or is forked while a thread of its parent held the watch's lock: it reads,
    and notices changes, by a stat per file, and never hangs."""
    store, log = _partitioned(make_store, 8)
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)  # watching, in the parent
    if why.startswith("no inotify"):
        monkeypatch.setattr(lateseq._watch.LIBC, "inotify_init1", lambda flags: -1)
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def worker() -> None:
        first = same(lateseq.materialize(handle, log, PROJECTION), expected)
        _damage_every_copy(handle)
        results.put((first, same(lateseq.materialize(handle, log, PROJECTION), expected)))

    with contextlib.ExitStack() as stack:
        if why.startswith("a parent thread"):
            stack.enter_context(lateseq._watch._lock)  # held across the fork, as by a reading thread
        child = context.Process(target=worker)
        child.start()
    assert results.get(timeout=60) == (True, True)
    child.join(60)
    assert child.exitcode == 0


def test_a_file_let_go_by_the_garbage_collector_inside_a_locked_watch_call_does_not_wait(make_store):
    """A segment's finalizer lets its file's watch go; the collector may run it inside a
    call that holds the watch's lock, in the same thread (the whole test suite once hung
    there): it must return at once, and the watch go on."""
    store, log = _partitioned(make_store, 4)
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    watch, done = handle._segments.watch, threading.Event()

    def collected_inside_a_locked_call() -> None:
        with lateseq._watch._lock:
            watch.untrack(next(iter(watch._files)))
        done.set()

    threading.Thread(target=collected_inside_a_locked_call, daemon=True).start()
    assert done.wait(10)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_the_watch_keeps_no_record_of_watches_let_go(tmp_path):
    """Ended watches were kept (their descriptors) until the process ended, also the
    ones a reader let go (removing a watch ends it too): a long-running reader grew by a
    record per segment file it had mapped."""
    watcher = lateseq._watch._Inotify()
    try:
        for gone in (False, True):
            path = tmp_path / f"segment-{gone}.arrow"
            path.write_bytes(b"x")
            wd = watcher.add(path, folder=False)
            if wd is None:
                pytest.skip(f"{tmp_path} is on a filesystem the watch does not trust")
            if gone:  # deleted while held: the holder must learn it
                path.unlink()
                watcher.poll()
                assert wd in watcher.gone
            watcher.release(wd)
            watcher.poll()
            assert not watcher.gone, (gone, watcher.gone)
    finally:
        os.close(watcher.fd)


def test_threads_racing_the_joined_view_never_keep_a_stale_one(make_store, monkeypatch):
    """Thread A builds the joined view from views it took as checked; meanwhile a copy is
    written and thread B's batch notices it and makes that partition a new view. A's view,
    which holds the old map, must not then be taken as current."""
    store, log = _partitioned(make_store, 16)
    expected = output(store.path, log)
    handle = lateseq.open(store.path, merged_reads=False)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)
    partitions = lateseq._events.partition_of(log.column("user_id").to_numpy(), 16)
    first_half = log.take(pa.array(np.flatnonzero(partitions < 8)))
    expected_half = output(store.path, first_half)
    building, resume = threading.Event(), threading.Event()
    build = lateseq._locate.PartitionView.__init__

    def paused(view, segments, schema):
        build(view, segments, schema)
        if threading.current_thread().name == "A" and len(segments) > 4 and not building.is_set():
            building.set()
            resume.wait(30)

    monkeypatch.setattr(lateseq._locate.PartitionView, "__init__", paused)
    for info in store.segment_infos:  # A's next batch finds every copy replaced (by an equal file): it rebuilds
        path = store.cache_dir / f"{info.name}.arrow"
        shutil.copyfile(path, path.with_name("copy"))
        os.replace(path.with_name("copy"), path)
    a = threading.Thread(target=lateseq.materialize, args=(handle, log, PROJECTION), name="A")
    a.start()
    assert building.wait(30)
    _damage_every_copy(handle)  # while A builds
    b = threading.Thread(target=lateseq.materialize, args=(handle, first_half, PROJECTION), name="B")
    b.start()
    b.join(0.5)
    resume.set()
    a.join(30)
    b.join(30)
    for _ in range(2):  # batches of the partitions B looked at: the joined view is taken as it is
        assert same(lateseq.materialize(handle, first_half, PROJECTION), expected_half)
    assert same(lateseq.materialize(handle, log, PROJECTION), expected)


def test_a_truncated_json_file_is_called_damaged_not_old(store):
    tag = store.path / "tags" / "good.json"
    tag.write_bytes(tag.read_bytes()[:10])
    with pytest.raises(lateseq.StoreError, match="good.json is damaged"):
        lateseq.open(store.path, "good")


@pytest.mark.parametrize("name", ["index", "manifest", "tag"])
def test_a_store_file_made_a_folder_is_named_and_leaks_nothing(store, log, name):
    files = {"index": store.path / "segments" / f"{store.segment_infos[0].name}.index.arrow",
             "manifest": store.path / "versions" / f"{store.version:08d}.json",
             "tag": store.path / "tags" / "good.json"}
    path = files[name]
    path.unlink()
    path.mkdir()
    shutil.rmtree(store.cache_dir)
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(3):
        with pytest.raises(lateseq.StoreError, match=f"{path.name} is not a regular file"):
            output(store.path, log) if name != "tag" else lateseq.open(store.path, "good")
    assert descriptors is None or len(os.listdir("/proc/self/fd")) == descriptors


@pytest.mark.parametrize("where", ["derived sidecar", "derived temporary", "cache temporary",
                                   "versions temporary", "tags temporary"])
def test_a_folder_where_cleanup_removes_files_is_left_alone_and_cleanup_goes_on(store, log, where):
    """A folder in place of a derived copy's sidecar or of an old temporary stopped every
    cleanup with Python's IsADirectoryError, so nothing after it was ever freed (a stranger's)."""
    lateseq.materialize(lateseq.open(store.path, merged_reads=True), log, PROJECTION)  # a merged copy
    derived = store.cache_dir / DERIVED_DIR
    folder = {"derived sidecar": next(derived.glob("[!.]*.json")), "derived temporary": derived / ".tmp-x",
              "cache temporary": store.cache_dir / ".tmp-x", "versions temporary": store.path / "versions" / ".tmp-x",
              "tags temporary": store.path / "tags" / ".tmp-x"}[where]
    folder.unlink(missing_ok=True)
    folder.mkdir()
    (folder / "someone's").write_bytes(b"")
    old = time.time() - 7200
    os.utime(folder, (old, old))
    store.untag("good")
    unused = {i.name for v in range(1, store.version) for i in lateseq.open(store.path, v).segment_infos}
    unused -= {i.name for i in store.segment_infos}
    assert unused and store.cleanup(before=store.version, grace_s=0)
    assert (folder / "someone's").exists()  # not lateseq's
    assert not any((store.path / "segments" / f"{name}.index.arrow").exists() for name in unused)  # freed
    assert same(output(store.path, log), lateseq.materialize(lateseq.open(store.path), log, PROJECTION))


def test_a_read_cache_entry_made_a_folder_is_built_again_or_named(store, log):
    expected = output(store.path, log)
    entry = store.cache_dir / f"{store.segment_infos[0].name}.arrow"
    entry.unlink()
    entry.mkdir()  # empty: lateseq's own name, nothing of anyone's in it
    assert same(output(store.path, log), expected) and entry.is_file()
    entry.unlink()
    entry.mkdir()
    (entry / "someone's").write_bytes(b"")
    with pytest.raises(lateseq.StoreError, match=f"{entry.name} is a folder where lateseq keeps a file"):
        output(store.path, log)
    assert (entry / "someone's").exists() and not list(store.cache_dir.glob(".tmp-*.arrow"))


def test_a_read_cache_lock_made_a_folder_is_made_again_or_named(store, log):
    """It said 'give the read cache a writable folder' of a writable one (s34B)."""
    expected = output(store.path, log)
    entry = store.cache_dir / f"{store.segment_infos[0].name}.arrow"
    lock = store.cache_dir / f".tmp-lock-{store.segment_infos[0].name}"
    for planted in ([], ["someone's"]):
        entry.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
        lock.mkdir()
        for name in planted:
            (lock / name).write_bytes(b"")
        if planted:
            with pytest.raises(lateseq.StoreError, match=f"{lock.name} is not a regular file, where the read cache "
                                                         "keeps a lock file"):
                output(store.path, log)
            assert (lock / "someone's").exists()
        else:
            assert same(output(store.path, log), expected) and lock.is_file()


def test_a_read_cache_on_a_read_only_disk_is_named_as_such(store, log, monkeypatch):
    """A store copied without its read cache, on a read-only mount: the error said "No such
    file or directory" (of the lock file in the folder it could not make), not why (s35B).
    Since s41 the read goes on, its copies held in memory, and the warning says why."""
    want = output(store.path, log)
    shutil.rmtree(store.cache_dir)
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if Path(path) == store.cache_dir:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.warns(RuntimeWarning, match=f"cannot create the read cache .*{store.cache_dir.name} "
                                            r"\(Read-only file system at cache\).*holds it in memory"):
        assert same(output(store.path, log), want)
    assert not store.cache_dir.exists()


def example_log_reads(store: lateseq.Store, path: Path) -> dict[str, list | None]:
    """The log as each of lateseq's log readers gives it (None: it raised a LateseqError):
    iter_batches, and the PyTorch dataset's (whole row groups, planned from the footer)."""
    def iter_batches() -> list:
        return [(examples, seqs.offsets.tolist(), seqs.values["item"].tolist())
                for examples, seqs in lateseq.iter_batches(store, path, PROJECTION, batch_size=7)]

    def dataset() -> list:
        from lateseq.torch import ExampleDataset
        return [(b.rows.tolist(), {k: v.tolist() for k, v in b.examples.items()}, b.offsets.tolist(),
                 b.values["item"].tolist()) for b in ExampleDataset(store, path, PROJECTION, batch_size=7)]

    readers = {"iter_batches": iter_batches}
    if importlib.util.find_spec("torch") is not None:
        readers["dataset"] = dataset
    out = {}
    for name, read in readers.items():
        try:
            out[name] = read()
        except lateseq.LateseqError:
            out[name] = None
    return out


def row_counts(path: Path) -> list[int] | None:
    try:
        meta = pq.ParquetFile(path).metadata
    except OSError:  # a footer that does not parse at all
        return None
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    return [meta.num_rows, *(g.num_rows for g in groups), *(g.column(i).num_values for g in groups
                                                            for i in range(meta.num_columns))]


def test_a_damaged_example_log_is_an_error_not_another_window(store, tmp_path):
    """The pointer checksum covers a history, not the log's other bytes: a request time
    moved by a flipped bit reads the same history with another window. Logs lateseq
    writes carry a CRC-32 per page, and its readers check them and the footer's counts."""
    requests = pa.table({"user_id": np.arange(1, 31, dtype=np.int64), "request_ts": np.full(30, 2000, np.int64),
                         "label": np.arange(30, dtype=np.float32)})
    path = tmp_path / "log.parquet"
    lateseq.log_examples(store, requests, path)
    good = path.read_bytes()
    expected = example_log_reads(store, path)
    bad = tmp_path / "bad.parquet"
    footer = len(good) - 8 - int.from_bytes(good[-8:-4], "little")
    # every byte of the pages; no checksum covers the footer, but its row counts (30: the
    # byte 60 in thrift's zigzag varints) are checked against each other
    count_at = [i for i in range(footer, len(good) - 8) if good[i] == 60]
    for at in [*range(4, footer), *count_at]:
        damaged = bytearray(good)
        damaged[at] ^= 0x04
        bad.write_bytes(bytes(damaged))
        if at in count_at and row_counts(bad) not in (None, row_counts(path)):  # every reader refuses (Ray's too)
            with pytest.raises(lateseq.SchemaError, match="row counts disagree"):
                ExampleLog(bad)
        for reader, got in example_log_reads(store, bad).items():
            if got is not None:
                assert len(got) == len(expected[reader]) and all(
                    g[0].equals(e[0]) and g[1:] == e[1:] if reader == "iter_batches" else g == e
                    for g, e in zip(got, expected[reader], strict=True)), (reader, at)


def test_a_damaged_column_type_or_name_in_a_log_footer_is_an_error(store, tmp_path):
    """pyarrow takes a column's type from the Arrow schema kept in the footer, and its name
    from the footer's Parquet schema; no checksum covers either: a flipped bit read the
    labels as bytes or durations, or under another name, silently, and a name's byte that
    was not UTF-8 raised a bare UnicodeDecodeError (the CLI: 'internal error'). Logs lateseq
    writes say their columns once more, and every reader compares."""
    requests = pa.table({"user_id": np.arange(1, 31, dtype=np.int64), "request_ts": np.full(30, 2000, np.int64),
                         "label": np.arange(30, dtype=np.int64), "weight": np.arange(30, dtype=np.float32)})
    path, bad = tmp_path / "log.parquet", tmp_path / "bad.parquet"
    lateseq.log_examples(store, requests, path)
    good = path.read_bytes()
    expected = example_log_reads(store, path)
    footer = len(good) - 8 - int.from_bytes(good[-8:-4], "little")  # (pyarrow 16-17 wrote names before it too)
    name = good.index(b"weight", footer)  # the Parquet schema's name, first in the footer
    damages = [(name, ord("w") ^ 0xFF), (name + 1, ord("e") ^ ord("a"))]  # not UTF-8; another valid name
    kept = pq.ParquetFile(path).metadata.metadata[b"ARROW:schema"]  # every bit of the Arrow schema (one read a label
    start = good.index(kept)  # as durations, silently): none makes pyarrow abort
    want = [examples for examples, _ in lateseq.iter_batches(store, path, PROJECTION, batch_size=30)]
    for at, bits in [(at, 1 << bit) for at in range(start, start + len(kept)) for bit in range(8)]:
        damaged = bytearray(good)
        damaged[at] ^= bits
        bad.write_bytes(bytes(damaged))
        try:
            got = [examples for examples, _ in lateseq.iter_batches(store, bad, PROJECTION, batch_size=30)]
        except lateseq.LateseqError:
            continue
        assert len(got) == 1 and got[0].equals(want[0]), (at, bits, got[0].schema)
    refused = 0
    for at, bits in damages:
        damaged = bytearray(good)
        damaged[at] ^= bits
        bad.write_bytes(bytes(damaged))
        for reader, got in example_log_reads(store, bad).items():
            if got is None:
                refused += 1
            else:
                assert len(got) == len(expected[reader]) and all(
                    g[0].equals(e[0]) and g[1:] == e[1:] if reader == "iter_batches" else g == e
                    for g, e in zip(got, expected[reader], strict=True)), (reader, at)
    assert refused == len(damages) * len(expected)
    # a log rewritten by pyarrow (a label cast, a column added) carries lateseq's footer key
    # along with an Arrow schema of its own: not damaged (refused as such before)
    table = pq.read_table(path)
    for rewritten in (table.set_column(table.column_names.index("label"), "label", table["label"].cast(pa.float64())),
                      table.append_column("extra", pa.array(np.arange(30)))):
        pq.write_table(rewritten, bad)
        assert pq.read_schema(bad).metadata.get(b"lateseq:columns") is not None
        got = example_log_reads(store, bad)["iter_batches"]
        assert got is not None and sum(g[0].num_rows for g in got) == 30
    for at, bits in damages:  # and the CLI, which reads logs whole (audit, strip)
        damaged = bytearray(good)
        damaged[at] ^= bits
        bad.write_bytes(bytes(damaged))
        result = CliRunner().invoke(app, ["audit", str(store.path), str(bad)])
        assert result.exit_code == 1 and f"example log file {bad}" in result.output, result.output


def test_logs_with_columns_of_every_kind_are_read_without_a_false_alarm(store, tmp_path):
    """The footer checks compare types up to what Parquet changes in them (seconds stored
    as milliseconds, dates as days): a log lateseq wrote is never refused for that."""
    import datetime
    import decimal
    n = 4
    columns = {
        "int8": pa.array(range(n), pa.int8()), "uint32": pa.array(range(n), pa.uint32()),
        "uint64": pa.array([2**64 - 1] * n, pa.uint64()), "float16": pa.array(np.ones(n, np.float16)),
        "bool": pa.array([True] * n), "string": pa.array(["x"] * n), "large": pa.array(["x"] * n, pa.large_string()),
        "bytes": pa.array([b"x"] * n), "seconds": pa.array(range(n), pa.timestamp("s")),
        "zoned": pa.array(range(n), pa.timestamp("s", "Europe/Paris")), "nanos": pa.array(range(n), pa.timestamp("ns")),
        "dwell": pa.array(range(n), pa.duration("s")), "day": pa.array([datetime.date(2026, 1, 1)] * n, pa.date64()),
        "clock": pa.array(range(n), pa.time32("s")),
        "money": pa.array([decimal.Decimal("1.5")] * n, pa.decimal128(5, 2)), "ids": pa.array([[1, 2]] * n),
        "pairs": pa.array([{"a": 1}] * n), "kind": pa.array(["x"] * n).dictionary_encode(),
        "category": pa.array([33, 49, 33, 49]).dictionary_encode(),  # read back as int64: no dictionary kept
    }
    if hasattr(pa, "uuid"):  # pyarrow 18
        columns["uuid"] = pa.ExtensionArray.from_storage(pa.uuid(), pa.array([b"0123456789abcdef"] * n, pa.binary(16)))
    requests = pa.table({"user_id": np.arange(1, n + 1, dtype=np.int64), "request_ts": np.full(n, 2000, np.int64),
                         **columns})
    path = tmp_path / "log.parquet"
    lateseq.log_examples(store, requests, path)
    (examples, _), = lateseq.iter_batches(store, path, PROJECTION, batch_size=n)
    assert examples.column_names[:2] == ["user_id", "request_ts"] and examples.num_rows == n
    result = CliRunner().invoke(app, ["audit", str(store.path), str(path)])
    assert result.exit_code == 0, result.output


def test_a_tag_written_while_cleanup_runs_pins_its_version(store, monkeypatch):
    """Tagging checks that its version is kept, then writes the tag; a cleanup retiring in
    between would leave a tag naming a deleted version. Retirement waits for the tagger."""
    real_write = lateseq._versions.write_synced
    cleaner = []

    def tag_while_cleanup_runs(path, data):
        if path.name == "pinned.json":  # the tag, checked kept, about to be written
            cleaner.append(threading.Thread(target=lambda: lateseq.open(store.path).cleanup(
                before=store.version, grace_s=0)))
            cleaner[0].start()
            cleaner[0].join(0.5)
            assert cleaner[0].is_alive()  # waiting for this tag, not retiring the version under it
        real_write(path, data)

    monkeypatch.setattr(lateseq._versions, "write_synced", tag_while_cleanup_runs)
    old = store.version - 1
    store.tag("pinned", old)
    cleaner[0].join()
    assert lateseq.open(store.path, "pinned").version == old
    assert lateseq.open(store.path, old).num_events > 0


def test_a_handle_whose_version_was_cleaned_up_says_so_not_that_the_store_is_damaged(store, log):
    reader = lateseq.open(store.path, merged_reads=False)  # nothing opened yet
    other = lateseq.open(store.path).compact()
    other.cleanup(before=other.version, grace_s=0)
    with pytest.raises(lateseq.VersionNotFound, match=f"version {reader.version} .* cleaned up.*still read it") as err:
        lateseq.materialize(reader, log, PROJECTION)
    assert "backup" not in str(err.value) and "lateseq.open" in str(err.value)  # nothing to restore: open it again
    assert same(lateseq.materialize(other, log, PROJECTION), output(other.path, log))  # nothing is damaged


def test_cleanup_removes_the_temporaries_of_crashed_publishes_and_tags(store):
    old = [store.path / "versions" / ".tmp-crashed-publish", store.path / "tags" / ".tmp-crashed-tag"]
    young = store.path / "versions" / ".tmp-someone-publishing"
    for path in [*old, young]:
        path.write_bytes(b"{}")
    for path in old:
        os.utime(path, (0, 0))
    store.cleanup(before=0, grace_s=3600)
    assert not any(p.exists() for p in old) and young.exists()  # one younger than the grace may be under way
    assert lateseq.open(store.path, "good").version < store.version


def test_a_tag_untagged_while_tags_are_listed_is_no_damage(store, monkeypatch):
    store.tag("going", store.version - 1)
    real = lateseq._versions.load_checked

    def untagged_meanwhile(path, **how):
        if path.name == "going.json":
            store.untag("going")  # another process, between the listing and the read
        return real(path, **how)

    monkeypatch.setattr(lateseq._versions, "load_checked", untagged_meanwhile)
    assert "going" not in store.tags() and "good" in store.tags()


def test_a_damaged_file_of_a_cleaned_up_version_is_called_damaged(store):
    """A retired version's segment that the latest still uses, damaged: restore it (a
    retirement is not what is wrong)."""
    store.untag("good")
    reader = lateseq.open(store.path, store.version - 1)  # the compaction, which the latest builds on
    store.cleanup(before=store.version, grace_s=0)
    shared = {i.name for i in reader.segment_infos} & {i.name for i in store.segment_infos}
    flip(store.path / "segments" / f"{min(shared)}.index.arrow", 40)
    with pytest.raises(lateseq.StoreError, match="damaged") as info:
        reader.segments()
    assert not isinstance(info.value, lateseq.VersionNotFound)


@pytest.mark.parametrize("folder", ["segments", "cache"])
def test_a_store_folder_made_a_link_is_refused_and_nothing_is_deleted_through_it(store, log, tmp_path, folder):
    """A link in place of one of the store's folders: cleanup would delete, through it,
    every file there that no version uses (another program's files)."""
    lateseq.materialize(store, log, PROJECTION)  # the read cache exists
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store.path / folder, elsewhere)
    (elsewhere / "notes.txt").write_text("not lateseq's")
    (store.path / folder).symlink_to(elsewhere)
    for attempt in (lambda: lateseq.open(store.path), lambda: lateseq.open(store.path).cleanup(0, grace_s=0)):
        with pytest.raises(lateseq.StoreError, match=rf"{folder} is a symbolic link"):
            attempt()
    assert (elsewhere / "notes.txt").read_text() == "not lateseq's"


def test_a_schema_file_from_another_store_is_refused(store, make_store):
    """Another store's valid schema.json (same columns, a time unit) would change what a
    window means: a version remembers the schema it was written with."""
    other = make_store({"item": "int64", "rating": "int8"}, partitions=2, time_unit="ms")
    shutil.copyfile(other.path / "schema.json", store.path / "schema.json")
    with pytest.raises(lateseq.StoreError, match=r"schema.json is not the schema version \d+ was written with"):
        lateseq.open(store.path)


def test_a_tag_file_copied_over_another_is_refused_and_its_version_stays_pinned(store):
    first = store.version
    store.tag("release", first)
    newer = store.commit(events([1], [99], [7]))
    newer.tag("nightly")
    shutil.copyfile(store.path / "tags" / "nightly.json", store.path / "tags" / "release.json")
    for attempt in (lambda: lateseq.open(store.path, "release"), newer.tags,
                    lambda: newer.cleanup(newer.version, grace_s=0)):
        with pytest.raises(lateseq.StoreError, match=r"release.json is the file of tag 'nightly', not of 'release'"):
            attempt()
    assert lateseq.open(store.path, first).version == first  # nothing was retired


@pytest.mark.parametrize("where", ["tags/t.json", "schema.json", "cache/.lock-x"])
def test_a_fifo_in_the_store_is_refused_not_waited_on(store, log, where):
    """Opening a FIFO for reading waits for a writer forever: lateseq opens without waiting."""
    lateseq.materialize(store, log, PROJECTION)
    path = store.path / where
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    call = (f"from pathlib import Path; from lateseq._segments import cache_lock; "
            f"cache_lock(Path({str(path.parent)!r}), {path.name!r}).__enter__()"
            if where.startswith("cache/") else f"import lateseq; lateseq.open({str(store.path)!r}).tags()")
    script = f"import sys\ntry:\n    {call}\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "StoreError" in done.stdout, (done.stdout, done.stderr)


def test_a_deletions_cleanup_leaves_no_copy_of_its_events_in_either_cache(store, tmp_path):
    """Two places a deleted user's events stayed after ``delete`` and ``cleanup(grace_s=0)``
    (s61G): a decode killed midway (its temporary was kept an hour, whatever the grace),
    and the store's own read cache where the cleanup ran through another (``cache_dir=``)."""
    lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [2000]})),
                        PROJECTION)  # decoded copies in STORE/cache
    store.untag("good")
    before = {info.name for info in store.checkout(store.version - 1).segment_infos} | {
        info.name for info in store.segment_infos}
    for name in before:
        (store.cache_dir / f".tmp-0badc0de-{name}.arrow").write_bytes(b"half a decoded copy")
    under_way = store.cache_dir / f".tmp-1badc0de-{min(before)}.arrow"
    under_way.write_bytes(b"a decode that holds its lock")
    (store.cache_dir / "derived").mkdir(exist_ok=True)
    built = store.cache_dir / "derived" / ".tmp-2badc0de-p00000-0123456789abcdef.arrow"  # a merged copy's,
    built.write_bytes(b"half a merged copy")  # its build killed
    (store.cache_dir / "derived" / ".tmp-build-p00000-0123456789abcdef").touch()
    for path in [*store.cache_dir.glob(".tmp-*"), built]:
        os.utime(path, (time.time() - 10, time.time() - 10))  # older than a grace of 0 s, on any clock
    held = os.open(store.cache_dir / f".tmp-lock-{min(before)}", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        deleted = store.delete(np.arange(1, 30))
        elsewhere = lateseq.open(deleted.path, cache_dir=tmp_path / "host-cache")
        elsewhere.cleanup(before="latest", grace_s=0)
        assert under_way.exists() and not built.exists()  # its decoder holds the lock: left to finish
    finally:
        os.close(held)
    kept = {info.name for info in lateseq.open(store.path).segment_infos}
    assert not kept & before
    left = {p.name for p in store.cache_dir.iterdir() if any(name in p.name for name in before)}
    assert left == {under_way.name, f".tmp-0badc0de-{min(before)}.arrow", f".tmp-lock-{min(before)}"}  # decoded now
    elsewhere.cleanup(before="latest", grace_s=0)
    assert not [p for p in store.cache_dir.iterdir() if any(name in p.name for name in before)]


@pytest.mark.parametrize("planted", ["fifo", "link", "huge"])
def test_an_id_file_that_is_no_small_regular_file_is_damaged_not_waited_on_nor_read_whole(store, planted, tmp_path):
    """The store's id was read with a plain read: a FIFO there hung ``open`` forever, a link
    to /dev/zero ate every byte of memory, and a 3 GiB file was read whole (s62T)."""
    path = store.path / "id"
    path.unlink()
    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "link":
        (tmp_path / "elsewhere").write_text(store._log.store_id)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        with open(path, "wb") as f:
            f.truncate(3 * 2**30)
    assert lateseq.open(store.path).version == store.version
    (problem,) = verify(lateseq.open(store.path))
    assert problem.path == str(path) and "the store's id, is damaged" in problem.message


def test_cleanup_cache_leaves_a_writers_copy_of_its_unpublished_segment_being_written(store):
    """A commit writes its segment's durable files, then its decoded copy under a temporary
    name, then publishes: ``cleanup_cache(grace_s=0)`` in another thread took that
    temporary for a killed decode of a segment no version reads, removed it, and the
    commit failed (s62Q, 274 of 450 commits). Its durable files there, it is a
    temporary like any other (kept an hour); once they are gone, it goes."""
    name = "p00000-" + "ab" * 16
    segments = store.path / "segments"
    for suffix in (".parquet", ".index.arrow"):
        (segments / f"{name}{suffix}").write_bytes(b"an unpublished segment")
    writing = store.cache_dir / f".tmp-0badc0de-{name}.arrow"
    writing.write_bytes(b"its decoded copy, half written")
    os.utime(writing, (time.time() - 10, time.time() - 10))  # older than a grace of 0 s, on any clock
    store.cleanup_cache(grace_s=0)
    assert writing.exists()
    for suffix in (".parquet", ".index.arrow"):
        (segments / f"{name}{suffix}").unlink()
    store.cleanup_cache(grace_s=0)
    assert not writing.exists()
