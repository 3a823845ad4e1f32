"""CLI outputs are never overwritten without --force, never written over an input or into
the store even with it, and are written whole or not at all; and ``lateseq cleanup``."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import lateseq
from lateseq._loader import materialize_log, materialize_log_tenants
from lateseq.cli import app
from tests.test_twotier import serve_one_scenario

runner = CliRunner()
OLD = b"an older output that must survive"


def cli(*args) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], stderr


def no_temporaries(directory: Path) -> bool:
    return not [p for p in directory.rglob(".tmp-*") if "cache" not in p.parts]


@pytest.fixture
def plain(tmp_path):
    """A store, its requests and an example log, all through the CLI."""
    tmp_path = tmp_path / "plain"
    tmp_path.mkdir()
    rng = np.random.default_rng(5)
    pq.write_table(pa.table({"user_id": rng.integers(0, 5, 40), "ts": rng.integers(0, 50, 40),
                             "item_id": rng.integers(0, 99, 40)}), tmp_path / "events.parquet")
    pq.write_table(pa.table({"user_id": rng.integers(0, 5, 20), "request_ts": rng.integers(0, 60, 20)}),
                   tmp_path / "requests.parquet")
    assert cli("ingest", tmp_path / "store", tmp_path / "events.parquet")[0] == 0
    assert cli("pointers", tmp_path / "store", tmp_path / "requests.parquet", "--out", tmp_path / "ex.parquet")[0] == 0
    return tmp_path


@pytest.fixture
def two_tier(world, tmp_path):
    store, log, _ = serve_one_scenario(*world)
    pq.write_table(log, tmp_path / "log.parquet")
    return store, tmp_path


def commands(d: Path, store: Path, out: Path) -> dict[str, list]:
    return {
        "pointers": ["pointers", store, d / "requests.parquet", "--out", out],
        "materialize": ["materialize", store, d / "ex.parquet", "--max-len", 5, "--out", out],
    }


@pytest.mark.parametrize("command", ["pointers", "materialize"])
def test_an_existing_output_needs_force(plain, dir_snapshot, command):
    d = plain
    out = d / "out.parquet"
    args = commands(d, d / "store", out)[command]
    assert cli(*args)[0] == 0
    fresh = pq.read_table(out)
    out.write_bytes(OLD)
    before = dir_snapshot(d)
    one_line_error(*cli(*args)[::2], str(out), "--force")
    assert dir_snapshot(d) == before
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    assert pq.read_table(out).equals(fresh)
    assert no_temporaries(d)


def test_strip_and_simulate_outputs_need_force(two_tier, dir_snapshot):
    store, d = two_tier
    out = d / "stripped.parquet"
    out.write_bytes(OLD)
    before = dir_snapshot(d)
    one_line_error(*cli("strip", store.path, d / "log.parquet", "--out", out)[::2], str(out), "--force")
    sim = d / "sim.json"
    sim.write_bytes(OLD)
    before = dir_snapshot(d)
    one_line_error(*cli("simulate", "--users", 5, "--days", 0.5, "--json", sim)[::2], str(sim), "--force")
    assert dir_snapshot(d) == before
    code, _, err = cli("strip", store.path, d / "log.parquet", "--out", out, "--force")
    assert code == 0, err
    assert pq.read_table(out).column("tail_item_id").to_pylist() == [[], [], []]
    code, _, err = cli("simulate", "--users", 5, "--days", 0.5, "--json", sim, "--force")
    assert code == 0, err
    assert b"streaming_match_rate" in sim.read_bytes()
    assert no_temporaries(d)


def test_a_missing_extra_is_named_with_its_install_line_not_as_a_bug(monkeypatch):
    """simulate without pandas said 'internal error: ImportError ... please report it' (s38A)."""
    from lateseq.cli import simulate

    def without_pandas(*args, **kwargs):  # what simulate raises where pandas is not installed
        raise ImportError("the simulation's brute-force checks need pandas: pip install 'lateseq[demo]'")

    monkeypatch.setattr(simulate, "simulate", without_pandas)
    one_line_error(*cli("simulate", "--users", 5, "--days", 0.5)[::2], "need pandas: pip install 'lateseq[demo]'")
    assert "internal error" not in cli("simulate", "--users", 5, "--days", 0.5)[2]

    def a_bug(*args, **kwargs):  # any other ImportError stays a bug to report
        raise ImportError("cannot import name 'x' from 'y'")

    monkeypatch.setattr(simulate, "simulate", a_bug)
    one_line_error(*cli("simulate", "--users", 5, "--days", 0.5)[::2], "internal error: ImportError")


def test_running_out_of_memory_is_said_as_such_not_as_a_bug(monkeypatch):
    """A 1.1 MB events file of 64M events said 'internal error: MemoryError ... please report
    it' (s62T): the input is too big for the machine, and the message says what to do."""
    from lateseq.cli import simulate

    for error in (MemoryError(), pa.lib.ArrowMemoryError("malloc of size 64 failed")):  # (pyarrow's: an
        def too_big(*args, error=error, **kwargs):  # ArrowException too, which was said bare, a review found)
            raise error

        monkeypatch.setattr(simulate, "simulate", too_big)
        one_line_error(*cli("simulate", "--users", 5, "--days", 0.5)[::2], "out of memory: the command needs more")


def test_an_input_is_never_overwritten_even_with_force(plain, two_tier, dir_snapshot):
    """An in-place rewrite would lose the only copy of what the command reads (an example
    log records what online served) if the output is wrong; write elsewhere, then move."""
    d = plain
    store, d2 = two_tier
    os.link(d / "ex.parquet", d / "alias.parquet")  # the same file under another name
    (d / "link.parquet").symlink_to(d / "requests.parquet")
    cases = [
        ["pointers", d / "store", d / "requests.parquet", "--out", d / "requests.parquet"],
        ["pointers", d / "store", d / "requests.parquet", "--out", d / "link.parquet"],
        ["materialize", d / "store", d / "ex.parquet", "--max-len", 5, "--out", d / "ex.parquet"],
        ["materialize", d / "store", d / "ex.parquet", "--max-len", 5, "--out", d / "alias.parquet"],
        ["strip", store.path, d2 / "log.parquet", "--out", d2 / "log.parquet"],
    ]
    before = dir_snapshot(d), dir_snapshot(d2)
    for args in cases:
        for force in ([], ["--force"]):
            one_line_error(*cli(*args, *force)[::2], str(args[args.index("--out") + 1]), "input")
    assert (dir_snapshot(d), dir_snapshot(d2)) == before


def test_outputs_never_go_into_the_store(plain, dir_snapshot):
    d = plain
    store = d / "store"
    manifest = max((store / "versions").glob("*.json"))
    before = dir_snapshot(d)
    for out in (manifest, store / "schema.json", store / "new.parquet"):
        for force in ([], ["--force"]):
            args = commands(d, store, out)
            for command in args.values():
                one_line_error(*cli(*command, *force)[::2], "inside the store")
    (d / "tenants.toml").write_text('[tenants.a]\nmax_len = 3\n')
    before = dir_snapshot(d)
    one_line_error(*cli("materialize", store, d / "ex.parquet", "--tenants", d / "tenants.toml", "--out",
                        store / "new-folder")[::2], "inside the store")
    assert dir_snapshot(d) == before and not (store / "new-folder").exists()  # not even a folder made
    assert lateseq.open(store).num_events == 40


def test_bad_output_paths(plain, dir_snapshot):
    d = plain
    (d / "a-dir").mkdir()
    before = dir_snapshot(d)
    for args in commands(d, d / "store", d / "a-dir").values():
        one_line_error(*cli(*args, "--force")[::2], "is a directory")
    for args in commands(d, d / "store", d / "missing" / "o.parquet").values():
        one_line_error(*cli(*args)[::2], "does not exist")
    one_line_error(*cli("simulate", "--json", d / "missing" / "sim.json")[::2], "does not exist")
    assert dir_snapshot(d) == before and not (d / "missing").exists()


def test_a_failed_forced_run_leaves_the_old_output(plain, dir_snapshot):
    """materialize fails midway (the histories no longer match their checksums): the old
    output stays whole and no temporary file is left behind."""
    d = plain
    table = pq.read_table(d / "events.parquet")
    changed = table.set_column(2, "item_id", pc.add(table.column("item_id"), 1))
    pq.write_table(changed, d / "changed.parquet")
    assert cli("ingest", d / "other", d / "changed.parquet")[0] == 0
    out = d / "out.parquet"
    out.write_bytes(OLD)
    before = dir_snapshot(d)
    code, _, err = cli("materialize", d / "other", d / "ex.parquet", "--max-len", 5, "--out", out, "--force")
    one_line_error(code, err, "differ")
    assert "lateseq audit STORE EXAMPLES" in err and "on_mismatch" not in err  # the CLI's hint, not the API's
    assert out.read_bytes() == OLD
    assert dir_snapshot(d) == before


def test_demo_workdir_that_is_not_empty_needs_force(tmp_path, dir_snapshot):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "examples.parquet").write_bytes(OLD)
    before = dir_snapshot(tmp_path)
    one_line_error(*cli("demo", "--dataset", "synthetic", "--users", 50, "--workdir", work)[::2],
                   str(work), "--force")
    assert dir_snapshot(tmp_path) == before
    code, _, err = cli("demo", "--dataset", "synthetic", "--users", 50, "--examples", 300, "--workdir", work,
                       "--force")
    assert code == 0, err
    assert (work / "notes.txt").read_text() == "mine"  # only the demo's own files are replaced
    assert pq.read_table(work / "examples.parquet").num_rows == 300


# ---------------------------------------------------------------- cleanup


@pytest.fixture
def history(tmp_path):
    """Versions 1-4: three commits and a compaction; version 1 tagged "first", 3 "third"."""
    store = lateseq.create(tmp_path / "store", lateseq.Schema({"item_id": "int64"}))
    for i in range(3):
        store = store.commit(pa.table({"user_id": [1, 2], "ts": [i, i], "item_id": [i, i]}))
    store = store.compact()
    store.tag("first", 1)
    store.tag("third", 3)
    log = lateseq.log_examples(store.checkout(2), pa.table({"user_id": [1], "request_ts": [10]}))
    return store.path, log


def kept(path: Path) -> list[int]:
    out = []
    for v in range(1, lateseq.open(path).latest_version + 1):
        try:
            lateseq.open(path, v)
        except lateseq.VersionNotFound:
            continue
        out.append(v)
    return out


@pytest.mark.parametrize("latest", [[], ["--before", "latest"]])  # as --help names the default
def test_cleanup_retires_untagged_versions_before_the_latest(history, latest):
    path, log = history
    code, out, err = cli("cleanup", path, *latest)
    assert code == 0, err
    assert out.split() == ["2"]
    assert kept(path) == [1, 3, 4]
    assert len(err.strip().splitlines()) == 1 and "retired 1 version older than 4" in err
    assert "kept tagged versions 1, 3" in err
    assert re.search(r"; freed [\d,.]+ k?B \(files younger than --grace 3600 s stay until a later cleanup\)", err)
    code, out, err = cli("cleanup", path, "--grace", "0")
    assert code == 0 and out == "" and re.search(r"; freed [\d,.]+ k?B$", err.strip()), err
    # pointers into the retired version still rebuild, checked by their checksums
    assert lateseq.materialize(lateseq.open(path), log, lateseq.Projection(5, ("item_id",))).values[
        "item_id"].tolist() == [0, 1]
    code, out, _ = cli("cleanup", path)
    assert (code, out) == (0, "")


@pytest.mark.parametrize("before", ["3", "third"])  # a number or a tag, as tag and checkout take
def test_cleanup_no_keep_tags_removes_older_tags_first(history, before):
    path, _ = history
    code, out, err = cli("cleanup", path, "--before", before, "--no-keep-tags")
    assert code == 0, err
    assert out.split() == ["1", "2"]
    assert lateseq.open(path).tags() == {"third": 3}  # a tag at --before or later stays
    assert kept(path) == [3, 4]
    assert "removed tags first" in err


def test_cleanup_no_keep_tags_that_fails_keeps_its_tags(history):
    """A damaged manifest fails cleanup: the tags --no-keep-tags would have removed stay,
    and no version is retired (a failed command changes nothing)."""
    path, _ = history
    manifest = path / "versions" / "00000002.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"compact"', b'"kompact"').replace(b'"commit"', b'"kommit"'))
    code, _, err = cli("cleanup", path, "--before", 3, "--no-keep-tags")
    one_line_error(code, err, "00000002.json is damaged")
    assert lateseq.open(path).tags() == {"first": 1, "third": 3}
    assert lateseq.open(path, 1).version == 1


def test_cleanup_grace_spares_young_files(history):
    path, _ = history
    segments = path / "segments"
    count = len(list(segments.iterdir()))
    assert cli("cleanup", path, "--no-keep-tags")[0] == 0  # every file is seconds old: spared
    assert len(list(segments.iterdir())) == count
    code, _, err = cli("cleanup", path, "--grace", 0)
    assert code == 0, err
    left = len(list(segments.iterdir()))
    assert left < count
    live = {s.name for s in lateseq.open(path).segment_infos}
    assert {p.name.split(".")[0] for p in segments.iterdir()} == live
    assert lateseq.open(path).num_events == 6


@pytest.mark.parametrize("args, needle", [
    (["--grace", "-1"], "--grace"),
    (["--grace", "nan"], "--grace"),
    (["--grace", "inf"], "--grace"),
    (["--grace", "soon"], "--grace"),
    (["--before", "x"], "--before"),
    (["--before", "nope"], "nor one of its tags (first, third)"),
    (["--before", "1.5"], "--before"),
    (["--before", "-1"], "--before"),
    (["--before", "99"], "--before 99"),
    (["--before", "\uff13"], "--before \uff13"),  # a full-width 3: a digit to Python, not a version number
])
def test_cleanup_bad_input_changes_nothing(history, dir_snapshot, args, needle):
    path, _ = history
    before = dir_snapshot(path)
    one_line_error(*cli("cleanup", path, "--no-keep-tags", *args)[::2], needle)
    assert dir_snapshot(path) == before


def test_a_refused_untag_leaves_the_store_as_it_was(tmp_path, dir_snapshot):
    path = tmp_path / "store"
    lateseq.create(path, lateseq.Schema({"item": "int64"})).commit(pa.table({"user_id": [1], "ts": [1], "item": [1]}))
    before = dir_snapshot(path)
    one_line_error(*cli("untag", path, "nope")[::2], "nope")
    assert dir_snapshot(path) == before  # not even a lock file


def test_cleanup_of_a_missing_store(tmp_path):
    one_line_error(*cli("cleanup", tmp_path / "nope")[::2], "not a lateseq store")
    assert not (tmp_path / "nope").exists()


def test_no_output_is_written_over_an_input(plain):
    """Not the tenant config (CLI), nor the example log the library reads."""
    config = plain / "tenants.toml"
    config.write_text('[tenants.a]\nmax_len = 3\ncolumns = ["item_id"]\n')
    before = config.read_bytes()
    code, _, err = cli("loader", plain / "store", plain / "ex.parquet", "--tenants", config, "--tenant", "a",
                       "--json", config, "--force", "--shuffle")
    one_line_error(code, err, "is also this command's input")
    assert config.read_bytes() == before
    log = plain / "ex.parquet"
    before = log.read_bytes()
    with pytest.raises(lateseq.SchemaError, match="is the example log this reads"):
        materialize_log(lateseq.open(plain / "store"), log, lateseq.Projection(3), log)
    assert log.read_bytes() == before
    with pytest.raises(FileNotFoundError, match=r"directory .*missing/out does not exist"):  # (out is made, s48B)
        materialize_log_tenants(lateseq.open(plain / "store"), log, {"a": lateseq.Projection(3)},
                                plain / "missing" / "out")


@pytest.mark.parametrize("kill_at", [1, 2])
def test_outputs_killed_while_put_in_place_are_each_old_or_new(plain, kill_at):
    """A kill between the renames of a multi-tenant run: every output is still there,
    old or new, never missing (the old ones are not moved aside first)."""
    import subprocess
    import sys
    config = plain / "tenants.toml"
    config.write_text('[tenants.a]\nmax_len = 3\n[tenants.b]\nmax_len = 5\n')
    out = plain / "out"
    out.mkdir()
    for name in "ab":
        (out / f"{name}.parquet").write_bytes(OLD)
    script = f"""
import os
from pathlib import Path
real, seen = os.replace, []
def replace(src, dst):
    if Path(dst).parent == Path({str(out)!r}) and not Path(dst).name.startswith(".tmp-"):
        seen.append(dst)
        if len(seen) == {kill_at}:
            os._exit(9)
    return real(src, dst)
os.replace = replace
from lateseq.cli import main
main()
"""
    done = subprocess.run([sys.executable, "-c", script, "materialize", str(plain / "store"), str(plain / "ex.parquet"),
                           "--tenants", str(config), "--out", str(out), "--force"], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    contents = [(out / f"{name}.parquet").read_bytes() for name in "ab"]
    assert [c == OLD for c in contents] == [kill_at == 1, True], "each output is its old or its new file"
    if kill_at == 2:
        assert pq.read_table(out / "a.parquet").num_rows == 20  # the new one


# a materialize whose every batch takes a while, so that a signal lands while it writes
SLOW_MATERIALIZE = """
import time
import lateseq.cli._app as cli
real = cli.materialize_log
def slow(*args, progress, **kwargs):
    def written(rows):
        time.sleep(0.2)
        progress(rows)
    return real(*args, progress=written, **kwargs)
cli.materialize_log = slow
from lateseq.cli import main
main()
"""


def obeying_sigint() -> None:
    """A child's SIGINT back to its default (``preexec_fn``): a suite run as a background job
    (nohup, a script's ``cmd &``) passes it on ignored, and lateseq leaves an ignored one so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def writing_slowly(plain: Path, out: Path, **popen):
    """``lateseq materialize`` of ``plain``'s store into ``out`` (made), in a process of its
    own, once its temporary output is there (or it ended)."""
    import subprocess
    import sys
    import time
    out.mkdir()
    run = subprocess.Popen([sys.executable, "-c", SLOW_MATERIALIZE, "materialize", str(plain / "store"),
                            str(plain / "ex.parquet"), "--max-len", "5", "--batch-size", "2", "--out",
                            str(out / "seq.parquet")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           **popen)
    deadline = time.monotonic() + 120
    while not list(out.glob(".tmp-*")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return run


@pytest.mark.parametrize("signum, code, message", [(15, 143, "error: terminated (SIGTERM)"),
                                                   (2, 130, "error: interrupted")])
def test_a_signal_ends_a_command_with_one_line_and_removes_what_it_was_writing(plain, signum, code, message):
    """SIGTERM (what Airflow, Kubernetes and `timeout` send) ended the process at once: no
    message, and the partial temporary output stayed in the folder for good. SIGINT exited
    130 without the promised `error:` line (typer answered it before the command could)."""
    out = plain / "out"
    run = writing_slowly(plain, out, preexec_fn=obeying_sigint)
    assert run.poll() is None, run.communicate()
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code and stderr.strip() == message, (run.returncode, stderr)
    assert not list(out.iterdir())  # neither the output nor its temporary
    again = cli("materialize", plain / "store", plain / "ex.parquet", "--max-len", 5, "--out", out / "seq.parquet")
    assert again[0] == 0


def test_ingest_takes_what_exports_are(tmp_path):
    """A Spark folder (part files and _SUCCESS) was refused ("is not a file") though the
    library reads it; a pandas export's unnamed index was refused as a reserved name; a
    quiet hour's empty export failed the pipeline with no way to accept it."""
    spark = tmp_path / "spark"
    spark.mkdir()
    for k in range(2):
        pq.write_table(pa.table({"user_id": [k, k], "ts": [1, 2], "item": [10 + k, 20 + k]}),
                       spark / f"part-{k:05d}.parquet")
    (spark / "_SUCCESS").write_text("")
    code, out, err = cli("ingest", tmp_path / "store", spark)
    assert (code, out.strip()) == (0, "1"), err
    import pandas as pd
    frame = pd.DataFrame({"user_id": [5, 6, 7, 8], "ts": [3, 4, 5, 6], "item": [1, 2, 3, 4]})
    frame[frame.ts != 5].to_parquet(tmp_path / "pandas.parquet")  # its index (0, 1, 3): __index_level_0__
    assert "__index_level_0__" in pq.read_schema(tmp_path / "pandas.parquet").names
    assert cli("ingest", tmp_path / "store", tmp_path / "pandas.parquet")[:2] == (0, "2\n")
    store = lateseq.open(tmp_path / "store")
    assert list(store.schema.columns) == ["item"] and store.num_events == 7
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "ts": pa.array([], pa.int64()),
                             "item": pa.array([], pa.int64())}), empty)
    code, _, err = cli("ingest", tmp_path / "store", empty)
    one_line_error(code, err, str(empty), "--allow-empty")
    assert cli("ingest", tmp_path / "store", empty, "--allow-empty")[:2] == (0, "2\n")  # the latest, unchanged
    broken = tmp_path / "broken-export.parquet"  # no rows, but strings where the store holds integers
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "ts": pa.array([], pa.int64()),
                             "item": pa.array([], pa.int64())}), broken)
    code, _, err = cli("ingest", tmp_path / "store", broken, "--allow-empty")
    one_line_error(code, err, "column 'user_id' has type string, expected int64")
    untyped = tmp_path / "untyped.parquet"  # an empty DataFrame's columns: of no type, nothing in them wrong
    pq.write_table(pa.table({"user_id": pa.array([]), "ts": pa.array([]), "item": pa.array([])}), untyped)
    assert cli("ingest", tmp_path / "store", untyped, "--allow-empty")[:2] == (0, "2\n")
    (tmp_path / "quiet-hour").mkdir()  # Spark's export of no rows: _SUCCESS alone
    (tmp_path / "quiet-hour" / "_SUCCESS").write_text("")
    assert cli("ingest", tmp_path / "store", tmp_path / "quiet-hour", "--allow-empty")[:2] == (0, "2\n")
    assert lateseq.open(tmp_path / "store").latest_version == 2
    code, out, _ = cli("ingest", tmp_path / "new", empty, "--allow-empty")  # a store made, nothing committed
    assert (code, out) == (0, "0\n") and lateseq.open(tmp_path / "new").schema.columns == {"item": "int64"}


def test_a_url_is_refused_as_one_by_the_commands(tmp_path, monkeypatch):
    """`ingest s3:// events` made the store ./s3:, `materialize --out s3://` wrote the file
    ./s3:, and `--out s3://b/o.parquet` was "directory s3:/b does not exist" (s49C)."""
    events = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": [1], "ts": [1], "item": [1]}), events)
    assert cli("ingest", tmp_path / "store", events)[0] == 0
    log = tmp_path / "log.parquet"
    lateseq.log_examples(lateseq.open(tmp_path / "store"), pa.table({"user_id": [1], "request_ts": [5]}), log)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for args in (("ingest", "s3://", events), ("ingest", "s3://b/s", events), ("ingest", tmp_path / "store", "s3://b/e"),
                 ("materialize", tmp_path / "store", log, "--out", "s3://", "--max-len", 5),
                 ("materialize", tmp_path / "store", log, "--out", "s3://b/o.parquet", "--max-len", 5)):
        code, _, err = cli(*args)
        one_line_error(code, err, "is a URL: lateseq reads and writes files on a file system")
    assert list((tmp_path / "work").iterdir()) == []


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    """Path("") is ".": an unset variable's "" made the current folder a store, or put a
    read cache in it (s35F)."""
    events = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": [1], "ts": [1], "item": [1]}), events)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for args, name in ((("ingest", "", events), "'store'"), (("--cache-dir", "", "verify", tmp_path), "'--cache-dir'")):
        code, _, err = cli(*args)
        one_line_error(code, err, f"Invalid value for {name}: is empty; name a file or folder")
    assert list((tmp_path / "work").iterdir()) == []


def test_an_output_name_of_no_utf8_is_one_line(tmp_path):
    """pointers --out with a name of no UTF-8 (valid on Linux) said 'internal error:
    UnicodeEncodeError' (s35I)."""
    pq.write_table(pa.table({"user_id": [1], "ts": [1], "item": [1]}), tmp_path / "e.parquet")
    pq.write_table(pa.table({"user_id": [1], "request_ts": [5]}), tmp_path / "r.parquet")
    assert cli("ingest", tmp_path / "store", tmp_path / "e.parquet")[0] == 0
    out = tmp_path / os.fsdecode(b"log-\xff.parquet")
    code, _, err = cli("pointers", tmp_path / "store", tmp_path / "r.parquet", "--out", out)
    one_line_error(code, err, "pyarrow reads and writes only UTF-8 file names")
    assert not any(tmp_path.glob("log-*"))


def test_piped_tables_keep_their_title_on_one_line_and_a_moved_tag_is_said(tmp_path):
    store = tmp_path / ("a-store-with-a-long-name-" + "x" * 60)
    pq.write_table(pa.table({"user_id": [1], "ts": [1], "item": [1]}), tmp_path / "e.parquet")
    for _ in range(2):
        assert cli("ingest", store, tmp_path / "e.parquet")[0] == 0
    code, out, _ = cli("versions", store)
    assert code == 0 and any(line.strip() == f"versions of {store}" for line in out.splitlines()), out
    assert cli("tag", store, 1, "run")[0] == 0
    code, _, err = cli("tag", store, 2, "run")
    assert code == 0 and "moved from version 1" in err, err


def test_a_signal_the_parent_ignored_stays_ignored(plain):
    """A script's background job (and nohup) starts with SIGINT ignored: the CLI put its own
    handler in, so the same SIGINT was ignored before that and ended the command after
    (an ingest committed or not by a tenth of a second). Ignored throughout now."""
    out = plain / "out"
    run = writing_slowly(plain, out, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    run.send_signal(signal.SIGINT)  # while it writes
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, (run.returncode, stderr)
    assert [p.name for p in out.iterdir()] == ["seq.parquet"]


def test_a_signal_held_while_the_handlers_go_in_or_repeated_during_cleanup_still_ends_with_one_line(plain, tmp_path):
    """A signal that arrived while the CLI installed its handlers (they are held around
    pyarrow's lazy pandas import) was released before the command's handling began: a
    traceback (SIGINT) or a bare kill (SIGTERM). A second signal during the first's
    cleanup cut that cleanup short: a compaction's temporary segment stayed in the store."""
    import subprocess
    import sys
    early = """
import os, sys
import pyarrow as pa
import lateseq.cli._app  # loaded first: the next array made is the one made while the signals are held
real = pa.array
def array(*args, **kwargs):
    pa.array = real
    os.kill(os.getpid(), 15)  # while the signals are held
    return real(*args, **kwargs)
pa.array = array
from lateseq.cli import main
main()
"""
    store = plain / "store"
    assert cli("ingest", store, plain / "events.parquet")[0] == 0  # two segments: something to compact
    before = {p.name for p in (store / "versions").iterdir()}
    done = subprocess.run([sys.executable, "-c", early, "compact", str(store)], capture_output=True, text=True)
    assert (done.returncode, done.stderr.strip()) == (143, "error: terminated (SIGTERM)"), done.stderr
    assert {p.name for p in (store / "versions").iterdir()} == before
    twice = """
import os, sys
import lateseq._store as store
real = store.Store._write
def write(self, *args, **kwargs):
    info = real(self, *args, **kwargs)
    os.kill(os.getpid(), 2)  # the first: raised here
    os.kill(os.getpid(), 15)  # the second, while the first's way out removes the segment just written
    return info
store.Store._write = write
from lateseq.cli import main
main()
"""
    done = subprocess.run([sys.executable, "-c", twice, "compact", str(store)], capture_output=True, text=True,
                          preexec_fn=obeying_sigint)
    assert (done.returncode, done.stderr.strip()) == (130, "error: interrupted"), done.stderr
    assert no_temporaries(store) and not [p for p in (store / "segments").iterdir() if p.name.startswith(".")]
    assert {p.name for p in (store / "versions").iterdir()} == before


def test_ingest_reads_a_named_range_index_as_pandas_does(tmp_path):
    """pandas keeps a RangeIndex in its metadata only (``set_index("user_id")`` of ids 1..N
    makes one): ingest dropped a named one silently, or failed 'input has no column user_id'."""
    import pandas as pd
    frame = pd.DataFrame({"ts": [5, 6, 7], "item": [7, 8, 9]}, index=pd.RangeIndex(1, 4, name="user_id"))  # (pandas 3
    # makes one of set_index("user_id"), 2.x an index of its values)
    frame.to_parquet(tmp_path / "by-user.parquet")
    assert "user_id" not in pq.read_schema(tmp_path / "by-user.parquet").names  # in the metadata only
    assert cli("ingest", tmp_path / "store", tmp_path / "by-user.parquet")[:2] == (0, "1\n")
    store = lateseq.open(tmp_path / "store")
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2, 3], "request_ts": [9] * 3}))
    got = lateseq.materialize(store, log, lateseq.Projection(5, ("item",)))
    assert got.values["item"].tolist() == [7, 8, 9] and got.offsets.tolist() == [0, 1, 2, 3]


def test_an_interrupted_first_ingest_leaves_no_store_and_an_int_named_index_is_read(tmp_path):
    """An ingest into a new path interrupted after it created the store left that store
    (its schema inferred from this input), and a rerun with other options was refused as
    disagreeing with it. A RangeIndex named 5 (pandas allows any name) was an internal error."""
    import subprocess
    import sys
    pq.write_table(pa.table({"user_id": [1, 2], "ts": [1, 2], "item": [3, 4]}), tmp_path / "ev.parquet")
    hooked = """
import os, signal, lateseq.cli._app as app
real = app._open
def opened(*args, **kwargs):
    handle = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)  # the store made, its first commit not begun
    return handle
app._open = opened
from lateseq.cli import main
main()
"""
    new = tmp_path / "new"
    done = subprocess.run([sys.executable, "-c", hooked, "ingest", str(new), str(tmp_path / "ev.parquet")],
                          capture_output=True, text=True, preexec_fn=obeying_sigint)
    assert (done.returncode, done.stderr.strip()) == (130, "error: interrupted") and not new.exists()
    assert cli("ingest", new, tmp_path / "ev.parquet", "--partitions", 4)[:2] == (0, "1\n")
    import pandas as pd
    frame = pd.DataFrame({"user_id": [1, 2], "ts": [3, 4], "item": [5, 6]})
    frame.index = pd.RangeIndex(0, 2, name=5)
    frame.to_parquet(tmp_path / "named.parquet")
    code, _, err = cli("ingest", tmp_path / "other", tmp_path / "named.parquet")
    assert code == 0, err
    assert lateseq.open(tmp_path / "other").schema.columns == {"item": "int64", "5": "int64"}


def test_a_first_ingest_failing_before_it_publishes_leaves_no_store_and_its_errors_name_files(tmp_path,
                                                                                                monkeypatch):
    """A first ingest with a commit id that failed before publishing (EIO syncing segments/,
    stamping a segment file) left the commit id's record in versions/, which kept the store
    with the schema inferred from that input: a rerun with other options was refused. Its
    error was a bare "[Errno 5] Input/output error" (s45D)."""
    import errno

    import lateseq._store
    pq.write_table(pa.table({"user_id": [1, 2], "ts": [1, 2], "item": [3, 4]}), tmp_path / "ev.parquet")
    real_sync, real_utime = lateseq._store.fsync_dir, os.utime

    def sync(path):
        if path.name == "segments" and any(path.iterdir()):  # the commit's files written (not the store made)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_sync(path)

    def utime(path, *args, **kwargs):
        if "segments" in str(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_utime(path, *args, **kwargs)

    new = tmp_path / "new"
    for name, fault, named in (("fsync_dir", sync, new / "segments"), ("utime", utime, new / "segments")):
        with monkeypatch.context() as patch:
            patch.setattr(lateseq._store if name == "fsync_dir" else os, name, fault)
            code, _, err = cli("ingest", new, tmp_path / "ev.parquet", "--commit-id", "first")
        one_line_error(code, err, f"cannot write {named}", "Input/output error")
        assert not new.exists()
    assert cli("ingest", new, tmp_path / "ev.parquet", "--partitions", 4, "--commit-id", "first")[:2] == (0, "1\n")
    assert lateseq.open(new).schema.partitions == 4


def test_cleanup_failing_after_it_removed_tags_says_so(small_store, monkeypatch):
    """--no-keep-tags removes the tags, then retires: a failed retirement said only its own
    error, as if nothing had changed, with the tags gone (s45D)."""
    small_store.tag("first", 1)

    def failing(self, *args, **kwargs):
        raise lateseq.StoreError("cannot write versions/00000001.json (Input/output error)")

    monkeypatch.setattr(lateseq.Store, "cleanup", failing)
    code, _, err = cli("cleanup", small_store.path, "--before", "latest", "--no-keep-tags", "--grace", 0)
    assert code == 1 and "removed tags first before the cleanup failed: run it again" in err, err
    assert small_store.tags() == {}


def test_outputs_all_in_place_are_not_reported_failed_for_a_temporary_left(tmp_path, monkeypatch):
    """Replacing several outputs keeps each old file under a second name until all are in
    place; a failure removing that name after them raised, and materialize --tenants said
    it had failed with every output replaced (s45D)."""
    import errno

    import lateseq._format
    from lateseq._format import all_replaced_when_written
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path in paths:
        path.write_bytes(b"old")
    real = lateseq._format.discard

    def discard(path):
        if path.exists():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(path)

    monkeypatch.setattr(lateseq._format, "discard", discard)
    with all_replaced_when_written(paths) as temporaries:
        for tmp in temporaries:
            tmp.write_bytes(b"new")
    assert [p.read_bytes() for p in paths] == [b"new", b"new"]
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir())  # with the leftovers of the failed removals
    # a writer's EIO was a bare "[Errno 5] Input/output error", naming no file (s45D)
    with pytest.raises(lateseq.StoreError, match=rf"Input/output error while writing {paths[0]}, {paths[1]}, left"):
        with all_replaced_when_written(paths) as temporaries:
            temporaries[0].write_bytes(b"half")
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert [p.read_bytes() for p in paths] == [b"new", b"new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


# ---------------------------------------------------------------- bench and demo: refused before they run


@pytest.fixture
def no_benchmark(monkeypatch):
    """The benchmark's commands, recorded instead of run (minutes each)."""
    import lateseq.cli._app as cli_app

    ran = []
    monkeypatch.setattr(cli_app.subprocess, "call", lambda command: ran.append(command) or 0)
    return ran


def test_bench_checks_its_options_and_outputs_before_running(tmp_path, dir_snapshot, no_benchmark):
    (tmp_path / "a-dir").mkdir()
    figures = tmp_path / "bench.json"
    figures.write_bytes(OLD)
    before = dir_snapshot(tmp_path)
    one_line_error(*cli("bench", "--json", tmp_path / "a-dir")[::2], "--json", "is a directory")
    one_line_error(*cli("bench", "--json", figures)[::2], f"--json {figures} exists", "--force")
    one_line_error(*cli("bench", "--plot", figures)[::2], "--plot", "--force")
    one_line_error(*cli("bench", "--plot", tmp_path / "missing" / "b.png")[::2], "--plot", "does not exist")
    for scale in ("huge", "-5", "0"):
        one_line_error(*cli("bench", "--scale", scale)[::2], f"--scale must be tiny, small, full or a number "
                                                             f"of users (a positive integer), not '{scale}'")
    one_line_error(*cli("bench", "--scale", "99999999999")[::2],  # numpy's MemoryError once running (s34H)
                   "--scale 99,999,999,999 would need about 50,000,000 GB of memory", "more than this machine's")
    assert no_benchmark == [] and dir_snapshot(tmp_path) == before
    code, _, err = cli("bench", "--scale", "500", "--json", figures, "--force")
    assert code == 0, err
    assert no_benchmark[0][-4:] == ["--scale", "500", "--json", str(figures)]


def test_named_and_default_sizes_are_held_to_this_machines_memory(tmp_path, monkeypatch, no_benchmark):
    """--scale small (the default) and a synthetic demo without --users ran unchecked (s38A)."""
    import lateseq.cli._app as cli_app
    from lateseq.cli import demo

    monkeypatch.setattr(cli_app, "physical_memory", lambda: 8e9)
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: pytest.fail("the demo ran"))
    one_line_error(*cli("bench")[::2], "--scale small (20,000 users) would need about 10 GB",
                   "than this machine's 8 GB")
    one_line_error(*cli("bench", "--scale", "full")[::2], "--scale full (200,000 users) would need about 100 GB")
    one_line_error(*cli("demo", "--dataset", "synthetic")[::2],
                   "--dataset synthetic (200,000 users unless --users says) would need about 13 GB")
    assert no_benchmark == []
    code, _, err = cli("bench", "--scale", "tiny")
    assert code == 0 and no_benchmark[0][-2:] == ["--scale", "tiny"], err


def test_demo_refuses_options_of_the_other_dataset_and_a_file_for_workdir(tmp_path, dir_snapshot, monkeypatch):
    from lateseq.cli import demo

    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: pytest.fail("the demo ran"))
    (tmp_path / "a-file").write_bytes(OLD)
    before = dir_snapshot(tmp_path)
    for args, needles in (
            (["--users", 100], ["--users applies to --dataset synthetic only, not movielens"]),
            (["--dataset", "movielens", "--examples", 10], ["--examples applies to --dataset synthetic only"]),
            (["--dataset", "synthetic", "--cadence", "week"], ["--cadence applies to --dataset movielens only"]),
            (["--dataset", "synthetic", "--workdir", tmp_path / "a-file"],
             [f"--workdir {tmp_path / 'a-file'} is a file, not a directory"]),
            (["--dataset", "synthetic", "--workdir", tmp_path / "a-file" / "sub"], ["a-file is a file"]),
            (["--dataset", "synthetic", "--users", 99999999999], ["--users 99,999,999,999 would need about"])):
        one_line_error(*cli("demo", *args)[::2], *needles)
    assert dir_snapshot(tmp_path) == before


def test_an_output_that_is_no_regular_file_is_refused_even_with_force(plain):
    """A write renames a new file over its path: ``--out /dev/null --force`` run as root
    replaced the machine's /dev/null with a Parquet file (s61C), and a pipe or a link was
    replaced in the same way, each reported as written."""
    d = plain
    os.mkfifo(d / "pipe")
    (d / "link.parquet").symlink_to(d / "elsewhere.parquet")
    for out, kind in ((d / "pipe", "named pipe"), (d / "link.parquet", "symbolic link")):
        for args in (["materialize", d / "store", d / "ex.parquet", "--max-len", 5, "--out", out],
                     ["pointers", d / "store", d / "requests.parquet", "--out", out]):
            for force in ([], ["--force"]):
                one_line_error(*cli(*args, *force)[::2], str(out), kind, "regular file")
    store = lateseq.open(d / "store")
    log = pq.read_table(d / "ex.parquet")
    for out in (d / "pipe", d / "link.parquet"):
        with pytest.raises(FileExistsError, match="not a regular file"):
            materialize_log(store, log, lateseq.Projection(5), out)
        with pytest.raises(FileExistsError, match="not a regular file"):
            lateseq.log_examples(store, pq.read_table(d / "requests.parquet"), out, overwrite=True)
    assert (d / "pipe").is_fifo() and (d / "link.parquet").is_symlink() and not (d / "elsewhere.parquet").exists()
    assert no_temporaries(d)


def test_a_first_compile_is_said_on_a_terminal_once_and_never_in_a_pipe(monkeypatch, capsys):
    """A first use on a machine compiled the kernels in silence, 10-50 s (strangers' first
    runs, s61H and s62O): on a terminal it is said, once a process; in a pipe (a script's
    output, these tests) nothing is added."""
    import numba
    from numba.core import event

    from lateseq.cli import _app

    listeners: list = []
    monkeypatch.setattr(event, "register", lambda kind, listener: listeners.append((kind, listener)))

    def compiled(module: str):
        scope = {"__name__": module}
        exec("def twice(x):\n    return 2 * x", scope)
        return numba.njit(scope["twice"])

    _app._say_compiling.cache_clear()
    _app._say_compiling()
    assert listeners == []  # stderr is captured here: no terminal
    _app._say_compiling.cache_clear()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _app._say_compiling()
    _app._say_compiling()  # a second command in the process: no second listener
    ((kind, listener),) = listeners
    assert kind == "numba:compile"
    for module in ("someone.else", "lateseq._kernels", "lateseq._kernels"):
        function = compiled(module)
        listener.on_start(event.Event("numba:compile", event.EventStatus.START, data={"dispatcher": function}))
    assert capsys.readouterr().err.count("compiling lateseq's kernels for this machine") == 1
