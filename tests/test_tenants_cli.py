"""`lateseq tenants check` and `lateseq materialize --tenants`: one pass, a file per
tenant, each equal to materialize for that tenant alone; bad configs change nothing."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import lateseq

import lateseq as ls

CONFIG = """
[tenants.recent]
columns = ["item_id"]
max_len = 2

[tenants.engaged]
columns = ["item_id", "ts"]
max_len = 5
window = 25
where = { column = "action", isin = [1, 3] }
transforms = { ts = "age" }
"""


@pytest.fixture
def world(tmp_path):
    events = pa.table({"user_id": [1, 1, 1, 1, 2, 2], "ts": [10, 20, 30, 40, 5, 6],
                       "item_id": [1, 2, 3, 4, 5, 6], "action": pa.array([0, 1, 3, 1, 1, 0], pa.int8())})
    store = ls.create(tmp_path / "store", ls.Schema.infer(events.schema)).commit(events)
    log = tmp_path / "log.parquet"
    ls.log_examples(store, pa.table({"user_id": [1, 2, 1], "request_ts": [41, 7, 31], "label": [1, 0, 1]}), log)
    config = tmp_path / "tenants.toml"
    config.write_text(CONFIG)
    return store, log, config


def test_materialize_tenants_writes_each_tenant_as_materialize_would(world, tmp_path):
    store, log, config = world
    out = tmp_path / "out"
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out, "--keep", "label")
    assert code == 0, stderr
    table = pq.read_table(log)
    for name, projection in ls.load_tenants(config, store.schema).items():
        written = pq.read_table(out / f"{name}.parquet")
        expected = ls.materialize(store, table, projection)
        assert written.column("label").to_pylist() == [1, 0, 1]
        for column, values in expected.values.items():
            rows = [values[a:b].tolist() for a, b in zip(expected.offsets, expected.offsets[1:], strict=False)]
            assert written.column(column).to_pylist() == rows, (name, column)
    assert pq.read_table(out / "engaged.parquet").column("item_id").to_pylist() == [[2, 3, 4], [5], [2, 3]]
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out)
    assert code != 0 and "--force" in stderr  # nothing overwritten without --force
    config.write_text(CONFIG.replace("tenants.engaged", "tenants.engaged_v2"))  # an old output stays, and is named
    (out / ".tmp-a422862e-a.parquet").write_bytes(b"")  # a killed run's temporary: no tenant (s36F)
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out, "--force")
    assert code == 0, stderr
    assert "also holds ['engaged.parquet'], which this run did not write" in " ".join(stderr.split())
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "engaged.parquet", "engaged_v2.parquet", "recent.parquet"]


@pytest.mark.parametrize("text, match", [
    ('[tenants."../x"]\nmax_len = 2\n', "'../x'"),
    ("[tenants.a]\nmax_len = 2\ncolumns = [\"nope\"]\n", "tenant 'a': columns"),
    ("[tenants.a]\nmax_len = 2\nwhere = { column = \"item_id\", isin = [] }\n", "tenant 'a': where"),
    ("[tenants.Ranking]\nmax_len = 2\n[tenants.ranking]\nmax_len = 3\n",
     "'ranking': differs from tenant 'Ranking' only"),
])
def test_bad_configs_are_refused_before_anything_is_written(world, tmp_path, text, match):
    store, log, config = world
    config.write_text(text)
    out = tmp_path / "out"
    code, _, stderr = lateseq("tenants", "check", config, store.path)
    assert code != 0 and match in stderr and "Traceback" not in stderr
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out)
    assert code != 0 and match in stderr
    assert not out.exists()  # not even the folder


def test_a_run_that_fails_leaves_no_folder_and_every_old_output(world, tmp_path):
    store, log, config = world
    out = tmp_path / "out"
    table = pq.read_table(log)
    tampered = table.set_column(table.column_names.index("uih_checksum"), "uih_checksum",
                                pa.array([1, 2, 3], pa.uint32()))
    pq.write_table(tampered, tmp_path / "tampered.parquet")
    code, _, stderr = lateseq("materialize", store.path, tmp_path / "tampered.parquet", "--tenants", config,
                              "--out", out)
    assert code != 0 and "differ" in stderr and not out.exists()
    out.mkdir()
    (out / "recent.parquet").write_text("old")
    (out / "engaged.parquet").mkdir()  # cannot be replaced: nothing is
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out, "--force")
    assert code != 0 and (out / "recent.parquet").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["engaged.parquet", "recent.parquet"]


def test_a_link_at_an_old_temporary_name_is_never_written_through(world, tmp_path):
    store, log, config = world
    out = tmp_path / "out"
    out.mkdir()
    schema = (store.path / "schema.json").read_bytes()
    (out / ".tmp-recent.parquet").symlink_to(store.path / "schema.json")  # where earlier versions wrote
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out)
    assert code == 0, stderr
    assert (store.path / "schema.json").read_bytes() == schema
    assert not (out / "recent.parquet").is_symlink() and pq.read_table(out / "recent.parquet").num_rows == 3


def test_temporaries_of_a_killed_run_are_removed_by_the_next_one(world, tmp_path):
    """A run killed (kill -9) leaves its hidden temporaries in --out; they stayed through
    every later run. The next run removes those untouched for an hour, only those."""
    store, log, config = world
    out = tmp_path / "out"
    out.mkdir()
    abandoned, live = out / ".tmp-0123abcd-recent.parquet", out / ".tmp-4567abcd-recent.parquet"
    others = [out / ".tmp-89abcdef-notes.parquet", out / ".tmp-someone-recent.parquet"]
    for path in (abandoned, live, *others):
        path.write_bytes(b"half a file")
    old = time.time() - 7200
    for path in (abandoned, *others):
        os.utime(path, (old, old))
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out)
    assert code == 0, stderr
    assert not abandoned.exists() and live.exists() and all(path.exists() for path in others)


def test_tenants_check_lists_a_good_config(world):
    store, _, config = world
    code, stdout, stderr = lateseq("tenants", "check", config, store.path)
    assert code == 0, stderr
    assert "recent" in stdout and "engaged" in stdout and "action in {1, 3}" in stdout


def test_tenants_check_says_what_span_an_integer_window_is(tmp_path):
    """An integer window counts the store's unit: 259200 in a milliseconds store is 4.3
    minutes, not the 3 days its writer meant. ``tenants check`` shows the span."""
    events = pa.table({"user_id": [1], "ts": pa.array([1_000], pa.timestamp("ms")), "item_id": [1]})
    store = ls.create(tmp_path / "store", ls.Schema.infer(events.schema)).commit(events)
    config = tmp_path / "tenants.toml"
    config.write_text('[tenants.ints]\nmax_len = 5\nwindow = 259200\n[tenants.days]\nmax_len = 5\nwindow = "3d"\n'
                      '[tenants.one]\nmax_len = 5\nwindow = "1d"\n')
    code, stdout, stderr = lateseq("tenants", "check", config, store.path)
    assert code == 0, stderr
    assert "259200 (4.32 minutes)" in stdout and "3d (3 days)" in stdout and "1d (1 day)" in stdout


def test_an_out_folder_that_is_a_dangling_link_is_named(world, tmp_path):
    """It said "[Errno 17] File exists: 'out'" about a folder the user could not see."""
    store, log, config = world
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "missing")
    code, _, stderr = lateseq("materialize", store.path, log, "--tenants", config, "--out", out)
    assert code != 0 and "is a symbolic link to" in stderr and "does not exist" in stderr and "Errno" not in stderr
    assert out.is_symlink() and not (tmp_path / "missing").exists()
