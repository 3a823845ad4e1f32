"""The CLI of the two-tier protocol: simulate, strip, audit."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import lateseq
from lateseq.cli import app
from lateseq.twotier import strip_tails
from tests.test_twotier import PROJECTION, serve_one_scenario

runner = CliRunner()


def test_simulate_writes_the_figures(tmp_path):
    out = tmp_path / "sim.json"
    result = runner.invoke(app, ["simulate", "--users", "20", "--days", "1", "--late-share", "0.2",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert {"streaming_match_rate", "batch_match_rate", "leaked_events", "naive_match_rate",
            "naive_leaked_events", "examples"} <= set(figures)
    assert figures["streaming_match_rate"] == figures["batch_match_rate"] == 1.0
    assert figures["leaked_events"] == 0 and figures["naive_leaked_events"] > 0
    assert "naive join" in result.output
    assert re.search(r"[\d.]+ bytes/example with tails inline, [\d.]+ bytes/example after stripping [\d,]+ tails",
                     result.output), result.output


def test_strip_then_audit(world, tmp_path):
    store, log, _ = serve_one_scenario(*world)
    pq.write_table(log, tmp_path / "log.parquet")
    result = runner.invoke(app, ["strip", str(store.path), str(tmp_path / "log.parquet"),
                                 "--out", str(tmp_path / "stripped.parquet")])
    assert result.exit_code == 0, result.output
    stripped = pq.read_table(tmp_path / "stripped.parquet")
    assert stripped.column("tail_item_id").to_pylist() == [[], [], []]
    result = runner.invoke(app, ["audit", str(store.path), str(tmp_path / "stripped.parquet")])
    assert result.exit_code == 0, result.output
    assert "matched" in result.output


def test_audit_fails_with_the_cause(world, tmp_path):
    store, log, _ = serve_one_scenario(*world)
    index = log.schema.get_field_index("tail_item_id")
    bad = log.set_column(index, "tail_item_id", pa.array([[40, 51], [], []], pa.list_(pa.int64())))
    pq.write_table(bad, tmp_path / "bad.parquet")
    result = runner.invoke(app, ["audit", str(store.path), str(tmp_path / "bad.parquet"), "--sample", "3"])
    assert result.exit_code == 1
    assert "corrupt data" in result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_strip_rejects_plain_logs(world, tmp_path):
    store, log, _ = serve_one_scenario(*world)
    plain = log.select(["user_id", "request_ts", "uih_version", "uih_length", "uih_checksum"])
    pq.write_table(plain, tmp_path / "plain.parquet")
    result = runner.invoke(app, ["strip", str(store.path), str(tmp_path / "plain.parquet"),
                                 "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code != 0 and "plain pointers" in result.output
    assert not (tmp_path / "x.parquet").exists()


def test_materialize_rebuilds_two_tier_records_on_every_path(world, tmp_path):
    """Inline and stripped records rebuild to what online served through the CLI and
    ``iter_batches(columns=...)`` too: they read only the pointer columns and those asked
    for, so the record's own columns were left out and the records rebuilt as plain
    pointers (the store part alone, which its checksum matched: no error)."""
    store, log, served = serve_one_scenario(*world)
    log = log.append_column("label", pa.array([1, 0, 1]))
    stripped, _ = strip_tails(store, log)
    want = served.values["item_id"].tolist()
    for name, records in (("inline", log), ("stripped", stripped)):
        pq.write_table(records, tmp_path / f"{name}.parquet")
        out = tmp_path / f"{name}-seqs.parquet"
        result = runner.invoke(app, ["materialize", str(store.path), str(tmp_path / f"{name}.parquet"),
                                     "--max-len", "10", "--columns", "item_id", "--keep", "label", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert [v for row in pq.read_table(out).column("item_id").to_pylist() for v in row] == want, name
        batches = lateseq.iter_batches(store, tmp_path / f"{name}.parquet", PROJECTION, columns=["label"])
        assert [v for _, seqs in batches for v in seqs.values["item_id"].tolist()] == want, name


@pytest.mark.parametrize("args, needle", [
    (["--lag", "-1"], "--lag must be a number at least 0 and at most 3,600"),
    (["--lag", "inf"], "--lag must be"),
    (["--events-per-day", "-1"], "--events-per-day must be a number more than 0, got -1"),
    (["--events-per-day", "0"], "--events-per-day must be a number more than 0, got 0"),
    (["--requests-per-day", "nan"], "--requests-per-day must be a number more than 0, got nan"),
    (["--days", "nan"], "--days must be a number at least 0.001 (86 seconds), got nan"),
    (["--users", "99999999999"], "--users must be a number at least 1 and at most 5,000,000"),
    (["--users", "0"], "--users must be"),
    (["--days", "1e12"], "--days 1e+12 x --events-per-day 30 makes about 9,000,000,000,000,000 events"),
    (["--users", "100000"], "--users 100000 x --days 4 x --events-per-day 30 makes about 12,000,000 events"),
    (["--requests-per-day", "1000"], "makes about 1,200,000 requests"),
    (["--compaction-hours", "0.0001"], "--compaction-hours 0.0001 makes about 1,680,000 folds"),
    (["--late-share", "2"], "--late-share must be a number at least 0 and at most 1, got 2"),
    (["--tie-share", "-0.1"], "--tie-share must be"),
    (["--max-len", "0"], "--max-len must be a number at least 1"),
    (["--seed", "-1"], "--seed must be a number at least 0, got -1"),
    (["--users", "1", "--days", "0.01", "--events-per-day", "0.001"], "the scenario makes no events"),
])
def test_simulate_refuses_a_bad_number_by_its_option(args, needle):
    result = runner.invoke(app, ["simulate", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0] and "internal error" not in lines[0], result.stderr


@pytest.mark.filterwarnings("default::UserWarning")  # shown, as outside the tests
def test_strip_warns_of_a_deleted_users_record_as_one_line_naming_drop_deleted(world, tmp_path):
    """A record of a user deleted since: the warning blamed online ("what online served
    differs"), and the CLI printed Python's form of it, a source path and a line of its
    own code (s36E)."""
    from lateseq.twotier import OnlineReader, fold
    from tests.test_twotier import events, requests

    store, tier = world
    tier.append(events((2, 5, 6, 1)))
    store = fold(store, tier, 10)
    tier.append(events((2, 11, 11, 2)))
    log, _ = OnlineReader(store, tier, PROJECTION).serve(requests((2, 15)))
    store = fold(store, tier, 20).delete([2])
    pq.write_table(log, tmp_path / "log.parquet")
    result = runner.invoke(app, ["strip", str(store.path), str(tmp_path / "log.parquet"),
                                 "--out", str(tmp_path / "out.parquet")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "kept the tails" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: kept the tails of 1 records"), result.output
    assert "users deleted since (Store.delete)" in warned[0] and "--drop-deleted" in warned[0]
    assert "online served differs" not in warned[0] and "UserWarning" not in result.output


def test_versions_lists_each_folded_versions_watermark(world):
    """A folded version holds every event that arrived before its watermark: the table shows
    it beside the rest (only ``--json`` did), and a store never folded has no such column."""
    store, _, _ = serve_one_scenario(*world)
    marks = {v.version: v.watermark for v in store.versions()}
    assert any(mark is not None for mark in marks.values())
    result = runner.invoke(app, ["versions", str(store.path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "watermark" in result.output
    rows = {int(line.split("│")[1]): line.split("│")[-2].strip()
            for line in result.output.splitlines() if re.match(r"^│\s+\d+ │", line)}
    assert rows == {version: "" if mark is None else str(mark) for version, mark in marks.items()}
    plain = lateseq.create(store.path.parent / "plain", lateseq.Schema({"item": "int64"}))
    plain.commit(pa.table({"user_id": [1], "ts": [1], "item": [1]}))
    result = runner.invoke(app, ["versions", str(plain.path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "watermark" not in result.output
