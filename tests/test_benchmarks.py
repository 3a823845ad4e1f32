"""The materialize benchmark runs end to end at its smoke scale, checks both sides equal
in every store state and Fat Row form, and its report renders (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
FORMS = {"parquet-default", "parquet-smallest", "arrow-ipc", "flat-npy"}
NS = {"256", "1024", "4096"}


def _module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (and numba's cache) look the module up by its name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "materialize.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "materialize.py"), "--tiny", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=300, capture_output=True)
    return json.loads(out.read_text())


def test_tiny_run_reports_every_state_and_form(tiny_results):
    r = tiny_results
    assert r["benchmark"] == "materialize" and r["scale"] == "tiny"
    assert r["command"].startswith("python benchmarks/materialize.py --tiny") and r["date"]
    assert {"cpu", "cores", "memcpy_gb_s", "load_average_start", "load_average_end", "git"} <= r["machine"].keys()
    assert set(r["workloads"]) == {"realistic", "sparse"}
    realistic = r["workloads"]["realistic"]
    expected = {"compacted-latest", "daily-30", "late-daily-32", "late-compacted"}
    if realistic["tiered_compaction"] == "measured":
        expected.add("late-tiered")
    merged = {f"{name}+merged" for name in expected if realistic["states"][name]["segments"] > 1}
    assert merged >= {"daily-30+merged", "late-daily-32+merged"}
    assert set(realistic["states"]) == expected | merged
    for name in merged:  # read through merged copies built on the reading host, timed apart
        assert realistic["states"][name]["merged_reads"] and realistic["states"][name]["merge_s"] > 0
        assert realistic["states"][name]["read_cache_bytes"] > realistic["states"][name[:-7]]["read_cache_bytes"]
    assert set(r["workloads"]["sparse"]["states"]) == {"compacted-latest"}
    for work in r["workloads"].values():
        assert work["workload"]["examples"] > 0
        assert set(work["n"]) == NS
        for at in work["n"].values():
            assert set(at["lateseq"]) == set(work["states"])
            visibilities = {s["visibility"] for s in work["states"].values()}
            assert set(at["fat_rows"]) == visibilities
            for forms in at["fat_rows"].values():
                assert set(forms) == FORMS
                for form in forms.values():
                    assert form["ex_s"] > 0 and form["bytes"] > 0 and form["file_bytes"] > 0
            for name, s in at["lateseq"].items():
                # the untimed pass compared every timed example with every form, batch by batch (and with
                # the events table, where it is exact)
                table = {"events-table"} if name == "compacted-latest" else set()
                assert s["checked"] == {form: at["timed_examples"] for form in FORMS | table}
                assert at["timed_examples"] > 0
                assert {"ex_s", "gb_s", "memcpy_fraction", "vs_compacted_latest", "bytes"} <= s.keys()
                # against compacted-latest timed in the state's own passes: not the quotient of two groups' figures
                own = s["ex_s"] / at["lateseq"]["compacted-latest"]["ex_s"]
                assert s["vs_compacted_latest"] > 0
                assert (name == "compacted-latest") == (s["vs_compacted_latest"] == own)
                assert set(s["vs_fat_row"]) == set(s["bytes_vs_fat_row"]) == FORMS
                assert set(s["written_per_day"]["fat_rows"]) == FORMS
            for name, s in at["lateseq"].items():  # a first epoch with the default reads, every example
                if work["states"][name]["merged_reads"]:
                    assert "epoch" not in s
                    continue
                assert s["epoch"]["examples"] == work["workload"]["examples"] and s["epoch"]["ex_s"] > 0
                # timed in rounds beside compacted-latest: its median round, its ratio the median of the rounds'
                rounds, base = s["epoch"]["rounds_ex_s"], s["epoch"]["compacted_latest_rounds_ex_s"]
                assert len(rounds) == len(base) == 3 and s["epoch"]["ex_s"] == sorted(rounds)[1]
                assert s["epoch"]["vs_compacted_latest"] == pytest.approx(np.median(np.divide(rounds, base)))
                assert name != "compacted-latest" or s["epoch"]["vs_compacted_latest"] == 1
                assert s["epoch"]["merged_copies"] == 0 or work["states"][name]["segments"] > 1
                new_host = s["epoch"]["new_host"]  # the same pass decoding every segment into an empty cache
                assert new_host["examples"] == s["epoch"]["examples"] and new_host["ex_s"] > 0
            t = at["events_table"]  # timed beside the compacted-latest state, on its examples
            assert t["state"] == "compacted-latest" and t["ex_s"] > 0 and "cold" not in t
            assert t["lateseq_vs_events_table"] == pytest.approx(at["lateseq"]["compacted-latest"]["ex_s"] / t["ex_s"])
            if "daily-30" in at["lateseq"]:  # an epoch reads each event far more than 32 times: "auto" merged
                assert at["lateseq"]["daily-30"]["epoch"]["merged_copies"] > 0
                # a day on, the version before's copy built: read through it, pointers each in it build none
                day = at["lateseq"]["daily-30"]["epoch"]["next_day"]
                assert day["examples"] == work["workload"]["examples"] and day["vs_compacted_latest"] > 0
                assert day["merged_copies"] == 0 and day["version_before"] == work["states"]["daily-30"]["version"] - 1
            if "compacted-latest" in at["lateseq"]:  # a compaction since every version before
                assert "next_day" not in at["lateseq"]["compacted-latest"]["epoch"]
    assert r["targets"] and all({"target", "value", "threshold", "met"} <= t.keys() for t in r["targets"])
    names = {t["target"] for t in r["targets"]}
    assert any("smallest Parquet" in n for n in names) and any("Arrow IPC" in n for n in names)
    assert any("flat .npy" in n for n in names)  # the fastest Fat Row form too


def test_the_equality_check_catches_a_fat_row_that_differs(tmp_path):
    workload = _module("workload")
    work = workload.realistic(12)
    states = workload.build_states(work, tmp_path / "stores", progress=lambda _: None)
    latest = next(s for s in states if s.name == "compacted-latest")
    daily = next(s for s in states if s.visibility == "daily")
    histories = workload.Histories(work.events, workload.readable_days(work, "all"))
    rows = np.arange(work.requests.num_rows)
    read_day = workload.read_days("all", work.requests)
    smallest, candidates = workload.smallest_settings(histories, work.requests, read_day, rows, 64)
    assert set(candidates) == set(workload.SMALLEST_CANDIDATES) and candidates[smallest] == min(candidates.values())
    forms = workload.build_forms(histories, work.requests, read_day, rows, 64, tmp_path / "fat", "t", smallest,
                                 workload.FORMS + workload.MORE_FORMS)
    in_log_order = [f for f in forms.values() if f.form not in workload.BY_USER]
    by_user = [forms[form] for form in workload.BY_USER]
    assert all(np.array_equal(f.rows, workload.by_user(work.requests, rows)) for f in by_user)
    for files in (in_log_order, by_user):
        assert workload.check_equal(files, latest.open(), latest.log, 64) == len(rows)
    # pointers into the daily versions saw fewer events than these Fat Rows hold: every form's reader says so
    for form in ("arrow-ipc", *workload.MORE_FORMS):
        with pytest.raises(workload.FatRowMismatch, match=f"differ in batch 0.*{form}|{form}.*differ in batch 0"):
            workload.check_equal([forms[form]], daily.open(), daily.log, 64)
    # the events table: equal where it is exact, caught where it is not (it has no versions)
    materialize = _module("materialize")
    table = workload.EventsTable(work.events, tmp_path / "events.arrow")
    stored = pa.ipc.open_file(pa.memory_map(str(tmp_path / "events.arrow"))).schema  # its strongest form: narrow
    assert all(pa.types.is_unsigned_integer(stored.field(name).type) and stored.field(name).type.bit_width <= 32
               for name in ("item_id", "action", "ts"))
    narrow, base = workload._narrowed(np.array([-100, 100, 27], np.int8))  # offsets past the type's own range
    assert narrow.dtype == np.uint8 and narrow.tolist() == [0, 200, 127] and base == -100
    late = next(s for s in states if s.visibility == "daily-late")
    for state in (latest, daily, late):  # exact where no event came late (it follows the logged lengths)
        log = tmp_path / f"{state.name}.parquet"
        pq.write_table(state.log, log)
        if state is not late:
            assert materialize.check_table(table, state.open(), log, 64, state.name) == len(rows)
        else:
            with pytest.raises(workload.FatRowMismatch, match="events table differ in batch 0"):
                materialize.check_table(table, state.open(), log, 64, state.name)


def _hand_made() -> dict:
    fat = {form: {"ex_s": 100_000.0, "gb_s": 1.0, "memcpy_fraction": 0.1, "events_per_example": 200.0,
                  "file_bytes": 5_000_000, "bytes": 50_000_000.0, "extrapolated": True, "settings": "",
                  "candidates": {}} for form in FORMS}
    state = {"ex_s": 800_000.0, "gb_s": 2.5, "memcpy_fraction": 0.25, "events_per_example": 180.0,
             "vs_compacted_latest": 1.0, "vs_fat_row": {form: 8.0 for form in FORMS},
             "checked": {form: 4096 for form in FORMS}, "bytes": 4_000_000,
             "bytes_vs_fat_row": {form: 12.5 for form in FORMS},
             "written_per_day": {"lateseq": 200_000.0, "fat_rows": {form: 1_000_000.0 for form in FORMS}}}
    return {
        "benchmark": "materialize", "command": "python benchmarks/materialize.py --small --json x.json",
        "date": "2026-12-01 10:00 UTC", "seconds": 321.0,
        "settings": {"batch": 1024, "repeat": 3},
        "machine": {"cpu": "Test CPU", "cores": 2, "memory_gb": 25.0, "memcpy_gb_s": 10.0, "lateseq": "0.1.0",
                    "git": "abc1234", "load_average_start": "0.50 0.40 0.30", "load_average_end": "0.60 0.50 0.40"},
        "workloads": {"realistic": {
            "workload": {"events": 1000, "users": 10, "examples": 1100, "examples_per_event": 1.1, "days": 30.0,
                         "history_mean": 100.0, "history_p50": 50, "history_p99": 900, "history_max": 12_000,
                         "users_10k_plus": 1, "notes": ["hand-made"]},
            "tiered_compaction": "not measured: no policy",
            "states": {"compacted-latest": {"title": "one segment", "visibility": "all", "segments": 1,
                                            "durable_bytes": 3_000_000, "example_log_bytes": 1_000_000,
                                            "read_cache_bytes": 8_000_000, "written_bytes": 6_000_000,
                                            "days": 30}},
            "n": {"1024": {"timed_examples": 4096, "sample": "every example", "fat_rows": {"all": fat},
                           "lateseq": {"compacted-latest": state}}},
        }},
        "targets": [{"target": "warm ex/s vs smallest Parquet Fat Row", "workload": "realistic", "n": 1024,
                     "state": "compacted-latest", "value": 8.0, "threshold": 10.0, "met": False}],
    }


def test_report_renders_the_tables_with_command_and_date():
    report = _module("report")
    text = report.markdown(_hand_made(), "`benchmarks/results/materialize.json`")
    assert "`python benchmarks/materialize.py --small --json x.json`" in text
    assert "2026-12-01 10:00 UTC" in text and "Test CPU" in text
    assert "| N | state | examples timed |" in text
    # (a run before s48D: no median, no events/s ratio)
    row = ("| 1024 | compacted-latest | 4,096 | 180 | 800,000 | – | 2.50 | 25% | – | – | 1.00× | – | 8.00× | 8.00× "
           "| 8.00× |")
    assert row in text
    assert "MISSED" in text and "0 of 1 met" in text
    assert "extrapolated" in text  # the bytes table says where Fat Row bytes were scaled up
    assert "not measured: no policy" in text


def test_report_sets_runs_on_several_machines_side_by_side_target_by_target():
    report = _module("report")
    later, earlier = _hand_made(), _hand_made()
    later["date"], later["machine"] = "2026-12-02 09:00 UTC", {**later["machine"], "cpu": "Other CPU"}
    later["targets"] = [{**later["targets"][0], "value": 12.0, "met": True},
                        {"target": "cold ex/s vs Arrow IPC mmap Fat Row", "workload": "realistic", "n": 1024,
                         "state": "compacted-latest", "value": 2.5, "threshold": 2.0, "met": True}]
    text = report.machines_markdown({"`later.json`": later, "`earlier.json`": earlier})
    assert text.index("A: `earlier.json`, Test CPU") < text.index("B: `later.json`, Other CPU")  # by date
    assert ("| warm ex/s vs smallest Parquet Fat Row | realistic | 1024 | compacted-latest | >= 10× | 8.00× MISSED "
            "| 12.0× met |") in text
    assert ("| cold ex/s vs Arrow IPC mmap Fat Row | realistic | 1024 | compacted-latest | >= 2× | - "
            "| 2.50× met |") in text
    assert "A 0 of 1, B 2 of 2" in text


def test_report_summary_counts_a_target_met_only_where_every_run_meets_it():
    """The README's summary: a target checked in several states is one row with the range
    of its values over every run, and a state counts as met only if every run met it."""
    report = _module("report")
    later, earlier = _hand_made(), _hand_made()  # the earlier run: compacted-latest at 8.0, missed
    later["date"] = "2026-12-02 09:00 UTC"
    later["machine"] = {"cpu": "Other CPU"}
    later["targets"] = [{**later["targets"][0], "state": state, "value": value, "met": value >= 10}
                        for state, value in (("compacted-latest", 12.0), ("daily-30", 4.0), ("late", 10.0))]
    loader = {"benchmark": "loader", "date": "2026-12-01 08:00 UTC", "machine": {"cpu": "Test CPU"},
              "targets": [{"target": "affinity (batch): disk bytes read, less than off by", "n": 256,
                           "threshold": 0.6, "value": 0.9, "met": True}]}
    text = report.summary_markdown({"`old.json`": earlier, "`new.json`": later, "`loader.json`": loader})
    # compacted-latest met on one machine (12.0) and missed on the other (8.0): only "late" is met
    assert "| materialize | warm ex/s vs smallest Parquet Fat Row (realistic) | 1024 | >= 10.0× | 4.00× – 12.0× " \
           "| 1 of 3 |" in text
    assert "| loader | affinity (batch): disk bytes read, less than off by | 256 | >= 60% | 90% | 1 of 1 |" in text
    assert "`new.json`" in text and "`old.json`" in text and "Other CPU" in text
    assert text.count("| materialize |") == 1


def test_report_rewrites_only_between_markers():
    report = _module("report")
    readme = "intro\n<!-- results:materialize -->\nold\n<!-- /results:materialize -->\nend\n"
    updated, missing = report.rewrite(readme, {"materialize": "new table\n", "other": "x\n"})
    assert updated == "intro\n<!-- results:materialize -->\nnew table\n<!-- /results:materialize -->\nend\n"
    assert missing == ["other"]
    assert report.rewrite(updated, {"materialize": "new table\n"}) == (updated, [])


def test_partitions_benchmark_checks_every_layout_reads_the_same(tmp_path):
    out = tmp_path / "partitions.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "partitions.py"), "--users", "300", "--events", "6000",
                           "--requests", "2000", "--repeat", "1", "--json", str(out)],
                          cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())["partitions"]
    assert set(r) == {"1", "16", "256", "1024"} and r["1"]["vs_one_partition"] == 1.0
    assert r["1024"]["partitions_per_batch"] > r["16"]["partitions_per_batch"] > 1  # batches span partitions


def test_fat_row_forms_benchmark_checks_and_reports_every_form(tmp_path):
    out = tmp_path / "fatrow-forms.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fatrow_forms.py"), "--tiny", "--repeat", "1",
                           "--json", str(out)], cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    forms = set(r["settings"]["forms"])
    assert {"arrow-ipc", "flat-npy", "arrow-ipc-lz4", "arrow-ipc-zstd", "zstd-frames-by-user",
            "lz4-frames-by-user"} <= forms
    for work in r["workloads"].values():
        for at in work["n"].values():
            assert set(at["forms"]) == forms and at["lateseq"]["ex_s"] > 0
            for f in at["forms"].values():
                assert f["ex_s"] > 0 and f["bytes"] > 0 and f["lateseq_speedup"] > 0
            # compressed Fat Rows are smaller than the uncompressed ones, and sorted by user smaller still
            assert at["forms"]["arrow-ipc-zstd"]["bytes"] < at["forms"]["arrow-ipc"]["bytes"]
            assert at["forms"]["arrow-ipc-zstd-by-user"]["bytes"] < at["forms"]["arrow-ipc-zstd"]["bytes"]
            assert at["forms"]["zstd-frames-by-user"]["bytes"] < at["forms"]["arrow-ipc-zstd"]["bytes"]
            assert at["lateseq_by_user"]["ex_s"] > 0
    text = _module("report").forms_markdown(r, "`x.json`")
    assert "flat .npy memmaps" in text and "IPC zstd" in text and "zstd frames" in text and r["command"] in text


@pytest.mark.parametrize("name", sorted(p.name for p in (BENCHMARKS / "results").glob("materialize-*.json")))
def test_committed_targets_follow_from_their_runs_figures(name):
    """Each target's value is its run's own ratio, unrounded: rounded to 3 places and then
    to 2 in the README, 9 targets showed other figures than the tables they come from."""
    results = json.loads((BENCHMARKS / "results" / name).read_text())
    assert results["targets"] == _module("materialize").targets(results)
    assert any(t["value"] != round(t["value"], 3) for t in results["targets"])  # ratios, not rounded ones


def test_join_benchmark_checks_both_engines_against_lateseq(tmp_path):
    """The point-in-time join baselines (DuckDB, polars) return lateseq's histories bit for
    bit before they are timed, and a join that ignores the pointers' versions is caught."""
    out = tmp_path / "join.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "join.py"), "--tiny", "--repeat", "1", "--json", str(out)],
                          cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert set(r["n"]) == {"256", "4096"} and r["state"] == "late-compacted"
    for at in r["n"].values():
        assert set(at) == {"lateseq", "duckdb", "polars"}
        assert all(side["ex_s"] > 0 and side["checked"] == r["sample"]["timed_examples"] > 0 for side in at.values())
    unversioned = "import join; join.DUCKDB_QUERY = join.DUCKDB_QUERY.replace('AND e.version <= b.uih_version', '')"
    done = subprocess.run([sys.executable, "-c", f"{unversioned}; join.main(['--tiny', '--repeat', '1'])"],
                          cwd=BENCHMARKS, timeout=300, capture_output=True, text=True)
    assert done.returncode != 0 and "lateseq and a join disagree: N=256: lateseq and duckdb differ" in done.stderr, (
        done.stderr[-2000:])


def test_scale_benchmark_checks_each_size_and_reports_it(tmp_path):
    """The store-size benchmark times lateseq against the mapped Fat Rows at each size only
    after checking every example equal, and its section renders; Fat Rows one event
    shorter than the N timed stop it."""
    out = tmp_path / "scale.json"
    tiny = ["--users", "60", "120", "--examples", "500", "--n", "16", "64", "--repeat", "1", "--min-pass-s", "0",
            "--min-len", "20", "--max-len", "300"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "scale.py"), *tiny, "--json", str(out)],
                          cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert list(r["sizes"]) == ["60", "120"] and r["machine"]["llc"]
    for size in r["sizes"].values():
        assert size["read_cache_bytes"] > 0 and set(size["n"]) == {"16", "64"}
        for at in size["n"].values():
            assert at["checked_examples"] == size["timed_examples"] > 300
            assert all(at[side]["ex_s"] > 0 for side in ("lateseq", "arrow-ipc", "flat-npy"))
    assert r["settings"]["history_lengths"] == [20, 300]
    assert all(20 <= size["events"] / size["users"] <= 100 for size in r["sizes"].values())  # (60 to 50,000: ~170)
    section = _module("report").scale_markdown(r, "x")
    assert "| 120 |" in section and "from 20 to 300 events" in section
    wrong = ("import scale; build = scale.build_forms; "
             "scale.build_forms = lambda h, r, d, rows, n, *rest: build(h, r, d, rows, n - 1, *rest)")
    done = subprocess.run([sys.executable, "-c", f"{wrong}; scale.main({tiny!r})"],
                          cwd=BENCHMARKS, timeout=300, capture_output=True, text=True)
    assert done.returncode != 0 and "FatRowMismatch" in done.stderr and "60 users, N=16" in done.stderr, (
        done.stderr[-2000:])
