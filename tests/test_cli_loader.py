"""`lateseq loader`: the PyTorch loader driven from the command line, its metrics checked
against a pandas brute force of the histories it must have copied out."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_cli import assert_one_line_error, brute_force, files, lateseq  # noqa: F401  (files: a fixture)


@pytest.fixture
def logged(files):  # noqa: F811
    store, d = files["store"], files["dir"]
    for name in ("e1", "e2"):
        assert lateseq("ingest", store, files[name])[0] == 0
    assert lateseq("pointers", store, files["req"], "--out", d / "ex.parquet")[0] == 0
    events = pd.concat([pd.read_parquet(files[f"e{i}"]).assign(commit=i) for i in (1, 2)], ignore_index=True)
    events["row"] = range(len(events))
    return store, d, events, pd.read_parquet(d / "ex.parquet")


@pytest.mark.parametrize("workers, prefetch", [(0, False), (2, True)])
def test_loader_reads_every_example_and_reports_what_it_copied(logged, workers, prefetch):
    store, d, events, examples = logged
    code, out, err = lateseq("loader", store, d / "ex.parquet", "--max-len", 3, "--columns", "item_id,rating",
                             "--batch-size", 7, "--workers", workers, "--affinity", "--json", d / "m.json",
                             *(["--prefetch"] if prefetch else []))
    assert code == 0, err
    assert "time the trainer waited" in out and "read from storage" in out
    assert "examples sharing a history in their batch" in out
    got = json.loads((d / "m.json").read_text())
    assert 0 <= got["shared_histories"] < got["examples"]
    assert got["shared_share"] == pytest.approx(got["shared_histories"] / got["examples"])
    want = brute_force(events, examples, 3, ["item_id", "rating"])
    assert got["examples"] == len(examples) and got["batches"] >= len(examples) // 7
    # item_id is int64, rating int8: the bytes of exactly the histories online saw
    assert got["history_bytes"] == sum(len(h) for h in want.item_id) * (8 + 1) > 0
    assert 0 < got["waited_s"] <= got["seconds"] and got["columns"] == ["item_id", "rating"]
    assert 0 < got["first_batch_s"] <= got["seconds"]


def test_loader_takes_a_tenant_and_stops_at_the_limit(logged):
    store, d, events, examples = logged
    config = d / "tenants.toml"
    config.write_text('[tenants.short]\ncolumns = ["item_id"]\nmax_len = 2\n')
    code, _, err = lateseq("loader", store, d / "ex.parquet", "--tenants", config, "--tenant", "short",
                           "--batch-size", 5, "--no-shuffle", "--json", d / "m.json")
    assert code == 0, err
    got = json.loads((d / "m.json").read_text())
    assert got["history_bytes"] == sum(len(h) for h in brute_force(events, examples, 2, ["item_id"]).item_id) * 8
    code, _, err = lateseq("loader", store, d / "ex.parquet", "--max-len", 2, "--limit", 2, "--batch-size", 5,
                           "--json", d / "m2.json")
    assert code == 0, err
    assert json.loads((d / "m2.json").read_text())["batches"] == 2


def test_loader_drops_the_examples_of_deleted_users_when_asked(logged):
    store, d, events, examples = logged
    pd.DataFrame({"user_id": [2, 5]}).to_parquet(d / "gone.parquet")
    assert lateseq("delete", store, d / "gone.parquet")[0] == 0
    code, _, err = lateseq("loader", store, d / "ex.parquet", "--max-len", 3)
    assert code != 0 and "deleted" in err
    code, out, err = lateseq("loader", store, d / "ex.parquet", "--max-len", 3, "--drop-deleted", "--json",
                             d / "m.json")
    assert code == 0, err
    gone = int(examples.user_id.isin([2, 5]).sum())
    got = json.loads((d / "m.json").read_text())
    assert gone and (got["examples"], got["deleted_dropped"]) == (len(examples) - gone, gone)
    assert "examples of deleted users left out" in out
    # and a training set rebuilt after the deletion (s40C: materialize had no --drop-deleted)
    code, _, err = lateseq("materialize", store, d / "ex.parquet", "--max-len", 3, "--keep", "user_id",
                           "--out", d / "seqs.parquet")
    assert code != 0 and "--drop-deleted" in err
    code, _, err = lateseq("materialize", store, d / "ex.parquet", "--max-len", 3, "--keep", "user_id",
                           "--out", d / "seqs.parquet", "--drop-deleted")
    assert code == 0, err
    assert f"wrote {len(examples) - gone:,} histories" in err and f"left out the {gone:,} examples" in err
    kept = examples[~examples.user_id.isin([2, 5])]
    assert pd.read_parquet(d / "seqs.parquet").user_id.tolist() == kept.user_id.tolist()
    code, _, err = lateseq("materialize", store, d / "ex.parquet", "--max-len", 3, "--out", d / "all.parquet",
                           "--no-verify")  # unchecked: every example, and a note of the deleted users (s40D)
    assert code == 0 and f"wrote {len(examples):,} histories" in err and "2 users were deleted" in err, err


@pytest.mark.parametrize("args, match", [
    (["--max-len", 3, "--tenants", "T"], "either --max-len"),
    (["--tenants", "T"], "either --max-len"),
    (["--tenants", "T", "--tenant", "nope"], "no tenant 'nope'"),
    (["--max-len", 3, "--workers", -1], "--workers"),
    (["--max-len", 3, "--limit", 0], "--limit"),
    (["--max-len", 3, "--columns", "zz"], "zz"),
    (["--max-len", 3, "--json", "EX"], "input"),
])
def test_loader_bad_input_is_one_line(logged, args, match):
    store, d, _, _ = logged
    config = d / "T"
    config.write_text('[tenants.short]\ncolumns = ["item_id"]\nmax_len = 2\n')
    args = [config if a == "T" else d / "ex.parquet" if a == "EX" else a for a in args]
    code, _, err = lateseq("loader", store, d / "ex.parquet", *args)
    assert_one_line_error(code, err, match)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_workers_error_is_one_line_too(logged, workers):
    """With workers, torch raises a worker's error again with its traceback for text: the
    CLI printed all 18 lines of it (s35E)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, d, _, examples = logged
    log = pq.read_table(d / "ex.parquet")
    broken = log.set_column(log.schema.get_field_index("uih_checksum"), "uih_checksum",
                            pa.array(range(1, log.num_rows + 1), log.schema.field("uih_checksum").type))
    pq.write_table(broken, d / "bad.parquet")
    code, _, err = lateseq("loader", store, d / "bad.parquet", "--max-len", 3, "--workers", workers)
    assert_one_line_error(code, err, "rebuilt histories differ from what online saw")
    assert "Traceback" not in err and "worker process" not in err


def test_copartition_writes_the_log_grouped_by_partition_for_the_loader(logged):
    """`lateseq copartition` (the API's copartition_log): every example once, each row
    group of one partition as the metadata says; `loader --copartition` reads it whole."""
    import pyarrow.parquet as pq

    from lateseq import open as open_store
    from lateseq._events import partition_of
    from lateseq._pointers import row_group_partitions

    store, d, events, examples = logged
    out = d / "grouped.parquet"
    code, _, err = lateseq("copartition", store, d / "ex.parquet", "--out", out, "--row-group-rows", 3)
    assert code == 0, err
    assert "row groups" in err
    grouped = pq.ParquetFile(out)
    total = open_store(store).schema.partitions
    partitions = row_group_partitions(grouped.schema_arrow.metadata, total, str(out))
    assert len(partitions) == grouped.num_row_groups > 1
    for k, partition in enumerate(partitions):
        group = grouped.read_row_group(k)
        assert 0 < group.num_rows <= 3
        assert set(partition_of(group.column("user_id").to_numpy(), total).tolist()) == {partition}
    key = list(examples.columns)
    got = pd.read_parquet(out).sort_values(key, kind="stable").reset_index(drop=True)
    assert got.equals(examples.sort_values(key, kind="stable").reset_index(drop=True))
    code, _, err = lateseq("loader", store, out, "--max-len", 3, "--copartition", "--workers", 2,
                           "--json", d / "m.json")
    assert code == 0, err
    assert json.loads((d / "m.json").read_text())["examples"] == len(examples)
    code, _, err = lateseq("copartition", store, d / "ex.parquet", "--out", out)
    assert_one_line_error(code, err, "exists; pass --force")
