"""The performance tables of README.md and docs/performance.md, rendered from the results
files in benchmarks/results/.

    python benchmarks/report.py            # print every results file's section as Markdown
    python benchmarks/report.py --write    # rewrite those sections in README.md and docs/performance.md
    python benchmarks/report.py --check    # exit 1 when either differs from the results files
    python benchmarks/report.py --plot out.png benchmarks/results/materialize.json   # or a tenants-*.json

A results file ``benchmarks/results/NAME.json`` fills the section between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` (``summary``, every run's
targets, is the README's; the rest are docs/performance.md's). The tables here are also what
``benchmarks/materialize.py`` and ``benchmarks/tenants.py`` print on the console
(``tables``), so the two never differ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = (ROOT / "README.md", ROOT / "docs" / "performance.md")  # where the sections go
FORM_SHORT = {"arrow-ipc": "IPC mmap", "flat-npy": "flat mmap", "parquet-smallest": "PQ smallest",
              "parquet-default": "PQ default"}
FORM_ORDER = ("arrow-ipc", "flat-npy", "parquet-smallest", "parquet-default")
FORM_TEXT = {
    "arrow-ipc": "an Arrow IPC file, one record batch per 1024 examples, memory-mapped once and kept (as lateseq's "
                 "handle is), each batch's columns viewed as numpy once; a batch's offsets and values copied out",
    "flat-npy": "no Arrow at all: a .npy file per column, every example's values end to end, and one of offsets, "
                "memory-mapped once and kept; a batch is a slice of the offsets and a copy per column (the fastest "
                "Fat Row reader we know)",
    "parquet-smallest": "Parquet sorted by user then time, zstd; the smallest of several encodings and page sizes "
                        "on a trial slice (settings)",
    "parquet-default": "Parquet with pyarrow's defaults (dictionary, snappy), in log order",
}
VISIBILITY = {"all": "every event before the request", "daily": "events of days before the request's",
              "daily-late": "events that arrived on days before the request's"}


def _forms(work: dict) -> list[str]:
    """The Fat Row forms a workload's results hold (runs before the flat form have none of it)."""
    held = {form for at in work["n"].values() for fat in at["fat_rows"].values() for form in fat}
    return [form for form in FORM_ORDER if form in held]


@dataclass
class TableSpec:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- formatting


def _n(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _gb(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1e9:.3f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB" if x >= 1e5 else f"{x / 1e3:.1f} kB"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


# ---------------------------------------------------------------- tables


def tables(results: dict) -> list[TableSpec]:
    """Every table of a materialize (or tenants) results dict, in reading order."""
    if results.get("benchmark") == "tenants":
        return tenant_tables(results)
    out = [_workloads(results)]
    for name, work in results["workloads"].items():
        out += [_states(name, work, results["settings"].get("example_log_written_by", "pyarrow's defaults")),
                _speed(name, work, results)]
        if len(work["states"]) > 1 and any("epoch" in s for n in work["n"].values() for s in n["lateseq"].values()):
            out.append(_epoch(name, work, results["settings"].get("auto_merge_rent"),
                              results["settings"].get("auto_merge_foresees_the_pass", False)))
        out.append(_fat_speed(name, work))
        if any("events_table" in at for at in work["n"].values()):
            out.append(_events_table(name, work))
        if any("cold" in s for n in work["n"].values() for s in n["lateseq"].values()):
            lazily = results["settings"].get("ipc_cold_viewed_lazily", False)
            out.append(_cold(name, work, results.get("eviction"), lazily))
        out += [_bytes(name, work), _written(name, work)]
    out.append(_targets(results))
    return out


def _workloads(results: dict) -> TableSpec:
    spec = TableSpec("workloads", ["workload", "events", "users", "examples", "examples/event", "days",
                                   "history mean / p50 / p99 / max", "users with 10k+"])
    for name, work in results["workloads"].items():
        w = work["workload"]
        spec.rows.append([name, _n(w["events"]), _n(w["users"]), _n(w["examples"]), f"{w['examples_per_event']:.2f}",
                          f"{w['days']:.0f}", (f"{w['history_mean']:.0f} / {w['history_p50']:,} / "
                                                  f"{w['history_p99']:,} / {w['history_max']:,}"),
                          _n(w["users_10k_plus"])])
        spec.notes += [f"{name}: {note}" for note in w["notes"]]
    return spec


def _states(name: str, work: dict, log_writer: str) -> TableSpec:
    spec = TableSpec(f"{name}: store states", ["state", "segments read", "durable store", "example log",
                                               "read cache", "merge s", "written (durable)", "what it is"])
    for state, s in work["states"].items():
        merge = s.get("merge_s")
        spec.rows.append([state, "1 merged per partition" if s.get("merged_reads") else _n(s["segments"]),
                          _gb(s["durable_bytes"]), _gb(s["example_log_bytes"]), _gb(s["read_cache_bytes"]),
                          "-" if merge is None else f"{merge:.1f}", _gb(s["written_bytes"]), s["title"]])
    spec.notes.append("durable store: the version's packed segment files; read cache: their decoded copies, "
                      "per reading host (and, for +merged states, the merged copies built from them); merge s: "
                      "building those merged copies on the reading host, once per version; written: every "
                      f"segment file ingestion and compaction wrote; example log: Parquet written by {log_writer}")
    if len(work["states"]) > 1:
        spec.notes.append("a state without +merged is read segment by segment (merged_reads=False); by default "
                          "(merged_reads='auto') a handle reads it so until its reads of a partition paid for the "
                          "partition's merged copy, then as +merged (see the first epoch below)")
    if work.get("tiered_compaction", "measured") != "measured":
        spec.notes.append(f"daily commits + tiered compaction: {work.get('tiered_compaction')}")
    return spec


def _speed(name: str, work: dict, results: dict) -> TableSpec:
    order = _forms(work)
    repeat = results["settings"]["repeat"]
    spec = TableSpec(f"{name}: lateseq, warm (one core, batches of {results['settings']['batch']}, "
                     + (f"best of {repeat} passes)" if repeat > 1 else "one pass)"),
                     ["N", "state", "examples timed", "events/ex", "ex/s", "median ex/s", "GB/s", "% memcpy",
                      "CPU share", "passes", "vs compacted-latest: ex/s", "events/s",
                      *[f"÷ {FORM_SHORT[f]}" for f in order]])
    for n, at in work["n"].items():
        for state, s in at["lateseq"].items():
            spec.rows.append([n, state, _n(at["timed_examples"]), f"{s['events_per_example']:.0f}", _n(s["ex_s"]),
                              _n(s.get("ex_s_median")), f"{s['gb_s']:.2f}", _pct(s["memcpy_fraction"]),
                              _pct(s.get("cpu_share")), _n(s.get("passes")), _x(s["vs_compacted_latest"]),
                              _x(s.get("events_vs_compacted_latest")), *[_x(s["vs_fat_row"].get(f)) for f in order]])
        spec.notes.append(f"N={n}: timed on {at['sample']}")
    spec.notes.append("÷ form: lateseq ex/s over that Fat Row form's, on the same examples, after checking every "
                      "batch equal (offsets and values, bit for bit)")
    spec.notes.append("vs compacted-latest, events/s: the same over events copied out; compacted-latest's pointers "
                      "see their own day's events, the other states' (against the version online read) do not, so "
                      "their histories are shorter and ex/s flatters them")
    if results["settings"].get("reference_timed_alongside"):
        spec.notes.append("vs compacted-latest: over compacted-latest's ex/s on the same requests, timed in the same "
                          "interleaved passes as the state (not in its own passes, minutes apart)")
    spec.notes.append("CPU share: the process's CPU time over the wall time of the pass counted (below 100%: other "
                      "processes took the core for part of it); passes: how many were made, the fastest counts "
                      f"(fewer than {results['settings']['repeat']} where a side's passes took over "
                      f"{results['settings'].get('patience_s', '–')} s in all)"
                      + (f", each draining its side until it took {results['settings']['min_pass_s']:g} s"
                         if results["settings"].get("min_pass_s") else "") + "; median ex/s: of those passes")
    return spec


def _epoch(name: str, work: dict, rent: int | None, foresees: bool) -> TableSpec:
    spec = TableSpec(f"{name}: first epoch, default reads (one pass over every example, one core, a new handle "
                     "with merged_reads='auto' and no merged copy built yet)",
                     ["N", "state", "examples", "seconds", "ex/s", "vs compacted-latest", "merged copies built",
                      "vs the same state's warm ex/s", "new host: ex/s", "new host: vs this epoch",
                      "a day on: ex/s", "a day on: vs compacted-latest"])
    for n, at in work["n"].items():
        for state, s in at["lateseq"].items():
            if "epoch" in s:
                e = s["epoch"]
                new = e.get("new_host", {}).get("ex_s")
                day = e.get("next_day", {})
                spec.rows.append([n, state, _n(e["examples"]), f"{e['seconds']:.1f}", _n(e["ex_s"]),
                                  _x(e["vs_compacted_latest"]), _n(e["merged_copies"]), _x(e["ex_s"] / s["ex_s"]),
                                  _n(new), _x(new and new / e["ex_s"]), _n(day.get("ex_s")),
                                  _x(day.get("vs_compacted_latest"))])
    rounds = {len(s["epoch"].get("rounds_ex_s", [])) for at in work["n"].values() for s in at["lateseq"].values()
              if "epoch" in s}
    if rounds != {0}:  # (runs before s59 timed one pass)
        spec.notes.append(f"each state's first epoch was timed in {max(rounds)} rounds, each over every state of "
                          "its group and compacted-latest in turn: its figures are its median round's, its ratio to "
                          "compacted-latest the median of the rounds' own ratios (a single pass moved 25-50% "
                          "between runs); 'a day on' and 'new host' are one pass each")
    spec.notes.append("a partition is read segment by segment until the events read from it "
                      + ("and those the rest of the pass would read (at the rate of the read just made: after "
                         "its first read, in an epoch) " if foresees else "")
                      + f"reach AUTO_MERGE_RENT ({rent}) times the events it holds, then its merged copy is built "
                      "(timed here, in the epoch) and read; later epochs read as the +merged state above")
    spec.notes.append("a day on: the same pass where the version a day's commit before this one (its segments "
                      "this version's oldest) has its merged copies built on this host and this version has none, "
                      "as on the next day of training: 'auto' reads the older segments through that copy, the "
                      "newer beside it; a state a compaction made has no such version (–)")
    spec.notes.append("new host: the same pass where the store was never read (an empty read cache, the durable "
                      "files and example log evicted from the page cache): every segment is decoded from disk by "
                      "its first read, timed; the cold passes above read a host's built cache")
    return spec


def _fat_speed(name: str, work: dict) -> TableSpec:
    order = _forms(work)
    spec = TableSpec(f"{name}: Fat Rows, warm", ["N", "history", "form", "ex/s", "GB/s", "% memcpy", "CPU share",
                                                 "passes", "settings"])
    for n, at in work["n"].items():
        for visibility, forms in at["fat_rows"].items():
            for form in order:
                f = forms[form]
                spec.rows.append([n, visibility, FORM_SHORT[form], _n(f["ex_s"]), f"{f['gb_s']:.2f}",
                                  _pct(f["memcpy_fraction"]), _pct(f.get("cpu_share")), _n(f.get("passes")),
                                  f.get("settings", "")])
    spec.notes += [f"{FORM_SHORT[form]}: {FORM_TEXT[form]}" for form in order]
    spec.notes += [f"history {k}: {v}" for k, v in VISIBILITY.items()]
    return spec


def _events_table(name: str, work: dict) -> TableSpec:
    spec = TableSpec(f"{name}: lateseq against an events table built by hand", [
        "N", "state", "lateseq ex/s", "events table ex/s", "lateseq ÷ table, warm", "lateseq ÷ table, cold",
        "events table", "lateseq durable store"])
    for n, at in work["n"].items():
        t = at.get("events_table")
        if t is None:
            continue
        cold = t.get("cold")
        spec.rows.append([n, t["state"], _n(t["lateseq_ex_s"]), _n(t["ex_s"]), _x(t["lateseq_vs_events_table"]),
                          _x(cold["lateseq_vs_events_table"]) if cold else "–", _gb(work.get("events_table_bytes")),
                          _gb(work["states"][t["state"]]["durable_bytes"])])
    form = work.get("events_table_form")
    narrow, logged = form in ("narrow", "logged-lengths"), form == "logged-lengths"
    spec.notes.append("events table: what a skeptic builds instead (the brief's reference design): every event once, "
                      "sorted by user and time, in one uncompressed Arrow IPC file read through a memory map"
                      + (", integer columns stored as offsets in the narrowest unsigned type that holds them (as "
                         "lateseq stores them)" if narrow else "")
                      + ("; its user index stored beside it (dense ids looked up by slot); each example's newest N "
                         "events found from the history length its log row records (the pointer's uih_length, what "
                         "an online service logs), no search; a numba kernel copies them" if logged else
                         "; a CSR user index; a numba kernel that binary-searches each request's cut and copies the "
                         "newest N")
                      + (", widening as it copies, in a loop LLVM vectorizes" if narrow else
                         " (this run's table: int64 columns copied by slice assignment, a form a later review "
                         "measured 1.3-1.5x slower than it need be)") + ". "
                      "It reads the same example log; it has no versions, late events or checksums, so it is timed "
                      "only where it is exact (pointers at the latest version, no late events), after checking "
                      "every batch equal to lateseq's, bit for bit")
    return spec


def _cold(name: str, work: dict, eviction: dict | None, lazily: bool = False) -> TableSpec:
    order = _forms(work)
    spec = TableSpec(f"{name}: cold (every file of both sides evicted from the page cache before each pass)",
                     ["N", "state", "lateseq ex/s", *[f"{FORM_SHORT[f]} ex/s" for f in order],
                      *[f"÷ {FORM_SHORT[f]}" for f in order], "lateseq read from disk",
                      "IPC read from disk", "left cached after eviction"])
    for n, at in work["n"].items():
        for state, s in at["lateseq"].items():
            cold = s.get("cold")
            if not cold:
                continue
            fat = at["fat_rows"][work["states"][state]["visibility"]]
            spec.rows.append([n, state, _n(cold["ex_s"]), *[_n(fat[f]["cold"]["ex_s"]) for f in order],
                              *[_x(cold["vs_fat_row"].get(f)) for f in order], _gb(cold["disk_read_bytes"]),
                              _gb(fat["arrow-ipc"]["cold"]["disk_read_bytes"]), _pct(cold["resident_after_evict"])])
    spec.notes.append("lateseq's cold pass includes opening the store, as a new process does (each projected "
                      "column is checked against its digest on first use, which reads it whole: the whole store "
                      "is read even for a sample of the examples, so this understates lateseq on a sample); not "
                      "what a new process pays before that, importing lateseq and loading its compiled kernels "
                      "(about 0.7 s on an idle AMD VM with numba's cache filled, 4 s with it empty, as in a new "
                      "container), once per process: a loader's worker pays it each epoch unless its workers persist")
    spec.notes.append("IPC mmap, cold: each record batch viewed as the pass reaches it" if lazily else
                      "IPC mmap, cold: every record batch viewed before the first is copied, which reads the whole "
                      "file first (a skeptic's find: a lazy reader is faster cold; the runs since view them lazily)")
    if eviction:
        spec.notes.append(f"eviction {'worked' if eviction['worked'] else 'DID NOT WORK'}: at most "
                          f"{_pct(eviction['max_resident_after_evict'])} of the evicted bytes stayed cached "
                          "(mincore, every side and pass); read from disk: /proc/self/io read_bytes during the pass")
    return spec


def _bytes(name: str, work: dict) -> TableSpec:
    order = _forms(work)
    spec = TableSpec(f"{name}: bytes on disk (all examples)",
                     ["N", "state", "lateseq: durable store + example log", "read cache",
                      *[FORM_SHORT[f] for f in order], *[f"{FORM_SHORT[f]} ÷ lateseq" for f in order]])
    extrapolated = False
    for n, at in work["n"].items():
        for state, s in at["lateseq"].items():
            fat = at["fat_rows"][work["states"][state]["visibility"]]
            extrapolated |= any(f["extrapolated"] for f in fat.values())
            spec.rows.append([n, state, _gb(s["bytes"]), _gb(work["states"][state]["read_cache_bytes"]),
                              *[_gb(fat[f]["bytes"]) for f in order],
                              *[_x(s["bytes_vs_fat_row"].get(f)) for f in order]])
    if extrapolated:
        spec.notes.append("Fat Row bytes for all examples are extrapolated from samples: IPC and default Parquet "
                          "from the timed sample's files by output events; the smallest Parquet from the file of "
                          "every example of random whole users (its compression feeds on a user's consecutive "
                          "examples) by examples (an estimate: no whole file of every example is written)")
    return spec


def _written(name: str, work: dict) -> TableSpec:
    order = _forms(work)
    spec = TableSpec(f"{name}: bytes written per day of data",
                     ["N", "state", "lateseq: segments (compactions included) + example log",
                      "+ read cache", *[FORM_SHORT[f] for f in order],
                      *[f"{FORM_SHORT[f]} ÷ lateseq (+ read cache)" for f in order]])
    for n, at in work["n"].items():
        for state, s in at["lateseq"].items():
            w = s["written_per_day"]
            cached = w.get("lateseq_with_read_cache")
            spec.rows.append([n, state, _gb(w["lateseq"]), _gb(cached), *[_gb(w["fat_rows"].get(f)) for f in order],
                              *[(_x(w["fat_rows"][f] / w["lateseq"]) + (f" ({_x(w['fat_rows'][f] / cached)})"
                                                                       if cached else ""))
                                if f in w["fat_rows"] else "–" for f in order]])
    days = {s["days"] for s in work["states"].values()}
    spec.notes.append(f"everything written over the {'/'.join(map(str, sorted(days)))} days of data, divided by "
                      "the days; + read cache: with the decoded copies the writing host puts in its read cache at "
                      "each commit and compaction (every reading host makes its own once); Fat Rows: the file for "
                      "all examples (written as their day's examples come)")
    return spec


def _targets(results: dict) -> TableSpec:
    spec = TableSpec("targets", ["target", "workload", "N", "state", "value", "needed", "verdict"])
    for t in results["targets"]:
        spec.rows.append([t["target"], t["workload"], str(t["n"]), t["state"], _x(t["value"]),
                          f">= {t['threshold']:g}×", "met" if t["met"] else "MISSED"])
    met = sum(t["met"] for t in results["targets"])
    spec.notes.append(f"{met} of {len(results['targets'])} met")
    return spec


# ---------------------------------------------------------------- tenants (benchmarks/tenants.py)

UNION_FORMS = ("parquet-smallest", "arrow-ipc")


def tenant_tables(results: dict) -> list[TableSpec]:
    """Every table of a tenants results dict (benchmarks/tenants.py), in reading order."""
    return [_tenant_config(results), _tenant_speed(results), _tenant_reads(results), _tenant_bytes(results),
            _tenant_build(results), _tenant_targets(results)]


def _projection_text(p: dict) -> tuple[str, str, str]:
    window = "–" if p["window"] is None else f"{p['window']:,} s ({p['window'] / 86_400:.3g} days)"
    where = p["where"]
    rule = "–" if where is None else f"{where['column']} " + (
        f"in {{{', '.join(map(str, where['isin']))}}}" if "isin" in where
        else ", ".join(f"{k} {v:#x}" for k, v in where.items() if k != "column"))
    return ", ".join(p["columns"]), window, rule


def _tenant_config(results: dict) -> TableSpec:
    w, union, sample = results["workload"], results["union"], results["sample"]
    spec = TableSpec("tenants (benchmarks/tenants.toml) and the Fat Row union",
                     ["tenant", "columns", "last N", "window", "filter", "events/example"])
    for name, t in results["tenants"].items():
        columns, window, rule = _projection_text(t["projection"])
        spec.rows.append([name, columns, _n(t["projection"]["max_len"]), window, rule,
                          f"{t['lateseq']['events_per_example']:.0f}"])
    spec.rows.append(["Fat Row union", ", ".join(union["columns"]), _n(union["max_len"]), "–", "–",
                      f"{union['events_per_example']:.0f}"])
    spec.notes.append(f"workload: {w['events']:,} events of {w['users']:,} users over {w['days']:.0f} days, "
                      f"{w['examples']:,} examples ({w['examples_per_event']:.2f} per event), histories "
                      f"{w['history_mean']:.0f} / {w['history_p50']:,} / {w['history_p99']:,} / {w['history_max']:,} "
                      f"events (mean / p50 / p99 / max); {'; '.join(w['notes'])}")
    spec.notes.append(f"lateseq: {results['build']['lateseq']['commits']} daily commits, compacted once; every "
                      "example's pointer at the latest version")
    for name, sel in results.get("selection", {}).items():
        if "window_drops_share" in sel:
            spec.notes.append(f"{name}: its window drops {_pct(sel['window_drops_share'])} of the events the same "
                              f"tenant reads without it ({sel['events_kept']:,} of {sel['events_without_window']:,} "
                              f"kept); the issue's 180-day window would drop none (the workload spans "
                              f"{sel['workload_span_days']:g} days)")
        if "filter_share_of_events" in sel:
            spec.notes.append(f"{name}: its filter keeps {_pct(sel['filter_share_of_events'])} of the workload's "
                              "events")
    if sample["sampled"]:
        spec.notes.append(f"timed on {sample['timed_examples']:,} of {sample['examples']:,} examples (uniform random "
                          f"requests, all their examples): every example's Fat Row union at N={union['max_len']} "
                          "would not fit the budget; Fat Row bytes and build time are extrapolated (IPC by events, "
                          f"the smallest form from every example of {sample['sized_users']:,} random users, "
                          f"{sample['sized_examples']:,} examples, by examples)")
    return spec


def _tenant_speed(results: dict) -> TableSpec:
    repeat = results["settings"]["repeat"]
    spec = TableSpec("examples/s per tenant (one core, CPU time, "
                     + (f"best of {repeat} passes)" if repeat > 1 else "one pass)"),
                     ["tenant", "lateseq ex/s", *[f"{FORM_SHORT[f]} ex/s" for f in UNION_FORMS],
                      *[f"÷ {FORM_SHORT[f]}" for f in UNION_FORMS], "lateseq % memcpy",
                      *[f"{FORM_SHORT[f]} % memcpy" for f in UNION_FORMS], "lateseq CPU share"])
    for name, t in results["tenants"].items():
        fat = t["fat_rows"]
        spec.rows.append([name, _n(t["lateseq"]["ex_s"]), *[_n(fat[f]["ex_s"]) for f in UNION_FORMS],
                          *[_x(t["speedup"][f]) for f in UNION_FORMS], _pct(t["memcpy_fraction"]),
                          *[_pct(fat[f]["memcpy_fraction"]) for f in UNION_FORMS], _pct(t["lateseq"]["cpu_share"])])
    one = results.get("one_pass")
    if one:
        spec.rows.append([f"all {one['tenants']}, one pass", _n(one["ex_s"]), "–", "–", "–", "–",
                          _pct(one["memcpy_fraction"]), "–", "–", _pct(one["cpu_share"])])
        spec.notes.append(f"all {one['tenants']}, one pass: lateseq.materialize_tenants, each history located once "
                          f"for every tenant: {_x(one['vs_separate'])} the speed of the tenants read one by one")
    for name, pair in results.get("twins", {}).items():
        spec.notes.append(f"{name} takes {_x(pair['time_ratio'])} the time per example of its unfiltered twin "
                          f"{pair['twin']} in lateseq; reading the union, " + ", ".join(
                              f"{_x(pair['fat_row_time_ratio'][f])} ({FORM_SHORT[f]})" for f in UNION_FORMS))
    spec.notes.append("÷ form: lateseq ex/s over the Fat Row union's, the same examples, every tenant's output "
                      "checked equal first (offsets and values, bit for bit); each tenant reads the union itself: "
                      "only its columns; with a filter, a compiled kernel walks each row back from its newest "
                      "event to N kept or the window's edge, without one each row's part is copied as one slice; "
                      "the mapped union's numpy views made once and kept")
    spec.notes.append(f"ex/s and % memcpy on the process's CPU time (time.process_time), pinned to one core; % "
                      f"memcpy: output bytes (values + offsets) per CPU second over single-core memcpy "
                      f"({results['machine']['memcpy_gb_s']:.1f} GB/s); CPU share: CPU over wall time of the pass")
    spec.notes += [f"{FORM_SHORT[f]}: {FORM_TEXT[f]}" for f in UNION_FORMS]
    return spec


def _tenant_reads(results: dict) -> TableSpec:
    spec = TableSpec("bytes read per example", [
        "tenant", "lateseq: pages", *[f"{FORM_SHORT[f]}: {'pages' if f == 'arrow-ipc' else 'chunks'}"
                                      for f in UNION_FORMS],
        *[f"lateseq ÷ {FORM_SHORT[f]}" for f in UNION_FORMS], "lateseq: copied", "IPC mmap: buffers",
        "copied ÷ buffers", "union columns read"])
    timed = results["sample"]["timed_examples"]
    for name, t in results["tenants"].items():
        paged = t["pages_read_per_example"]
        spec.rows.append([name, _b(paged["lateseq"]), *[_b(paged[f]) for f in UNION_FORMS],
                          *[_x(t["read_bytes_ratio_by_form"][f]) for f in UNION_FORMS],
                          _b(t["lateseq"]["read"]["total"] / timed),
                          _b(t["fat_rows"]["arrow-ipc"]["read_bytes_per_example"]),
                          _x(t["copied_bytes_ratio_by_form"]["arrow-ipc"]),
                          ", ".join(t["fat_rows"]["arrow-ipc"]["columns_read"])])
    cold = results["paged"]
    spec.notes.append(f"pages: bytes of the files' pages in the page cache after one pass over every example of "
                      f"{cold['users']:,} whole users ({cold['examples']:,} examples, in log order), the files "
                      f"evicted before it, this process's maps of them included (mincore; at most "
                      f"{_pct(cold['max_resident_after_evict'])} stayed cached): what a reader reads from disk, whole "
                      "pages and the kernel's readahead included; the target rows use these")
    spec.notes.append("lateseq: the store's files and the example log; the fewer of readahead on (\"auto\" at this "
                      "size) and off; a handle's first pass checks each column it reads against its digest, whole, "
                      "once per handle, which every example of an epoch shares (per example: the first pass over "
                      "all examples + the second, pages dropped again, over the users' examples); IPC mmap: the "
                      "fewer of readahead on and MADV_RANDOM; PQ smallest: the compressed column chunks of the "
                      "columns read (Parquet metadata), a lower bound on what any reader of it reads")
    spec.notes.append("copied: bytes lateseq's kernels copy or scan from the store's columns (lateseq.Touched: each "
                      "example's own rows, so an event is counted once per example that reads it) plus the example "
                      "log's pointer columns, over the timed examples; buffers: the whole buffers of the union "
                      "columns the tenant reads")
    return spec


def _b(x: float) -> str:
    return f"{x / 1e3:,.1f} kB" if x >= 1e4 else f"{x:,.0f} B"


def _tenant_bytes(results: dict) -> TableSpec:
    ours = results["bytes"]["lateseq"]
    spec = TableSpec("bytes kept on disk (all examples)", ["dataset", "bytes", "Fat Row ÷ lateseq", "what it is"])
    spec.rows.append(["lateseq", _gb(ours["total"]), "",
                      f"durable store {_gb(ours['durable_store'])} + example log {_gb(ours['example_log'])}"])
    for f in UNION_FORMS:
        fat = results["bytes"]["fat_rows"][f]
        spec.rows.append([f"Fat Row union, {FORM_SHORT[f]}", _gb(fat["bytes"]),
                          _x(results["bytes_written_ratio_by_form"][f]),
                          fat["settings"] + (" (extrapolated)" if fat["extrapolated"] else "")])
    spec.notes.append(f"lateseq wrote {_gb(ours['written_with_compaction'])} in all (every daily segment and the "
                      f"compaction's, plus the example log: the smallest union is "
                      f"{_x(results['bytes_written_ratio_with_compaction'])} that"
                      + (f"; {_gb(ours['written_with_read_cache'])} with the decoded copies the writing host put in "
                         f"its read cache at each commit and compaction: "
                         f"{_x(results['bytes_written_ratio_with_read_cache'])}" if "written_with_read_cache" in ours
                         else "")
                      + f"); its read cache (decoded, per reading host, not durable) is {_gb(ours['read_cache'])}"
                      + (f", and the filtered copies its filtered tenants read {_gb(ours['read_cache_filtered'])}"
                         if ours.get("read_cache_filtered") else ""))
    return spec


def _tenant_build(results: dict) -> TableSpec:
    build = results["build"]
    ours = build["lateseq"]
    spec = TableSpec("build cost from the same events (CPU seconds, one core)", ["build", "CPU s", "÷ lateseq",
                                                                                 "what it is"])
    what = (f"{ours['commits']} daily commits {ours['ingest_cpu_s']:.1f} s, compaction {ours['compact_cpu_s']:.1f} s, "
            f"every example's pointer {ours['log_cpu_s']:.1f} s")
    copies = {k.split(":", 1)[1]: v for k, v in ours.items() if k.startswith("filtered_copy_s:")}
    what += "".join(f"; then, on the reading host, {name}'s filtered copy {s:.1f} s" for name, s in copies.items())
    spec.rows.append(["lateseq", f"{ours['cpu_s']:.1f}", "", what])
    for f in UNION_FORMS:
        spec.rows.append([f"Fat Row union, {FORM_SHORT[f]}", f"{build['fat_rows'][f]:.1f}", _x(build["ratio"][f]),
                          f"index of every history {build['fat_rows']['oracle_cpu_s']:.1f} s + every example's "
                          "union row written" + (" (extrapolated)" if results["sample"]["sampled"] else "")])
    spec.notes.append("the Fat Row builder is the benchmarks' oracle (one sort of the events, numba walks): a lower "
                      "bound on a join in a data pipeline; the smallest form's choice of encoding is not counted")
    return spec


def _tenant_targets(results: dict) -> TableSpec:
    spec = TableSpec("targets", ["target", "tenant", "value", "needed", "verdict"])
    for t in results["targets"]:
        spec.rows.append([t["target"], t["tenant"], _x(t["value"]), f"{t['direction']} {t['threshold']:.3g}×",
                          "met" if t["met"] else "MISSED"])
    spec.notes.append(f"{sum(t['met'] for t in results['targets'])} of {len(results['targets'])} met")
    users = results.get("scale_settings", {}).get("users", 0)
    if users < 20_000:  # below --scale small, the reference workload's: a new user read "11 of 19" as a verdict
        spec.notes.append(f"a run of {users:,} users (--scale {results.get('scale')}): the targets are set for the "
                          "reference workload (--scale small, 20,000 users, or more), so this run says little about "
                          "them; it checks that every part works")
    return spec


def tenant_plot(results: dict, path: Path, plt) -> None:
    """ex/s and bytes read per example per tenant, and bytes written, lateseq beside the union's forms."""
    names = list(results["tenants"])
    sides = [("lateseq", "#1f77b4", None)] + [(f, c, "//") for f, c in zip(UNION_FORMS, ("#ff7f0e", "#d62728"),
                                                                           strict=True)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [3, 3, 1.3]})
    width = 0.8 / len(sides)
    for k, (side, color, hatch) in enumerate(sides):
        label = "lateseq" if side == "lateseq" else f"Fat Row union, {FORM_SHORT[side]}"
        xs = [i + (k - len(sides) / 2 + 0.5) * width for i in range(len(names))]
        t = results["tenants"]
        speed = [t[n]["lateseq"]["ex_s"] if side == "lateseq" else t[n]["fat_rows"][side]["ex_s"] for n in names]
        read = [t[n]["pages_read_per_example"][side] for n in names]
        axes[0].bar(xs, speed, width, label=label, color=color, hatch=hatch, edgecolor="white")
        axes[1].bar(xs, read, width, label=label, color=color, hatch=hatch, edgecolor="white")
        written = (results["bytes"]["lateseq"]["total"] if side == "lateseq"
                   else results["bytes"]["fat_rows"][side]["bytes"])
        axes[2].bar([k], [written], 0.7, color=color, hatch=hatch, edgecolor="white")
    for ax, title in zip(axes[:2], ("examples/s per tenant (one core, CPU time)",
                                      "bytes read per example (pages, cold; PQ: chunks)"),
                         strict=True):
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(title)
    axes[2].set_xticks(range(len(sides)), ["lateseq", *[FORM_SHORT[f] for f in UNION_FORMS]], fontsize=8)
    axes[2].set_title("bytes kept on disk (all examples)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper right", ncols=len(sides))
    fig.suptitle(f"{results['command']}  ({results['date']})", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- Markdown and the pages


def markdown(results: dict, source: str) -> str:
    """A results file as a page section: how it was made, then every table."""
    m = results["machine"]
    made = (f"Made by `{results['command']}` on {results['date']} ({source}): {m['cpu']}, "
            f"{m['cores']} cores, {m['memory_gb']} GB, single-core memcpy {m['memcpy_gb_s']:.1f} GB/s, "
            f"load average {m['load_average_start']} at the start and {m['load_average_end']} at the end; "
            f"lateseq {m['lateseq']} at {m.get('git', 'unknown')}; {results['seconds']:.0f} s in all.")
    lines = [made, ""]
    for spec in tables(results):
        lines += [f"**{spec.title}**", "", "| " + " | ".join(spec.headers) + " |",
                  "|" + "|".join("---" for _ in spec.headers) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in spec.rows]
        lines += [""] + [f"- {note}" for note in spec.notes] + ([""] if spec.notes else [])
    return "\n".join(lines).rstrip() + "\n"


def machines_markdown(runs: dict[str, dict]) -> str:
    """Several materialize runs (source -> results) side by side, target by target: the
    same code meets or misses a target depending on the machine it runs on."""
    runs = dict(sorted(runs.items(), key=lambda item: item[1]["date"]))
    names = list(runs)
    lines = [f"- {chr(65 + k)}: {source}, {r['machine']['cpu']}, single-core memcpy "
             f"{r['machine']['memcpy_gb_s']:.1f} GB/s, on {r['date']}, lateseq at {r['machine'].get('git', 'unknown')}"
             for k, (source, r) in enumerate(runs.items())]
    headers = ["target", "workload", "N", "state", "needed"] + [f"{chr(65 + k)}" for k in range(len(names))]
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    found: dict[tuple, list[str]] = {}
    for k, results in enumerate(runs.values()):
        for t in results["targets"]:
            key = (t["target"], t["workload"], str(t["n"]), t["state"], f">= {t['threshold']:g}×")
            cells = found.setdefault(key, ["-"] * len(names))
            cells[k] = f"{_x(t['value'])} {'met' if t['met'] else 'MISSED'}"
    lines += ["| " + " | ".join([*key, *cells]) + " |" for key, cells in found.items()]
    met = [sum(t["met"] for t in r["targets"]) for r in runs.values()]
    lines += ["", "- met: " + ", ".join(f"{chr(65 + k)} {m} of {len(r['targets'])}"
                                       for k, (m, r) in enumerate(zip(met, runs.values(), strict=True)))]
    return "\n".join(lines) + "\n"


def summary_markdown(runs: dict[str, dict]) -> str:
    """Every target of every run (source -> results) in one short table: a target checked
    in several states, tenants or forms is one row, with the range of its values over
    every run and how many of them met it in every run that checked them (a target met on
    one machine and missed on another is missed; each run's own section has every
    value)."""
    lines = ["| benchmark | target | N | needed | lateseq | met |", "|---|---|---|---|---|---|"]
    made = []
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    # the newest run first: its order of targets is the table's
    for source, results in sorted(runs.items(), key=lambda item: (item[1]["benchmark"], item[1]["date"]), reverse=True):
        made.append(f"{results['benchmark']}: {source}, {results['date']}, {results['machine']['cpu']}")
        for t in results["targets"]:
            target = t["target"] + (f" ({t['workload']})" if t.get("workload") else "")
            row = (results["benchmark"], target, str(t.get("n") or "-"), f"{t.get('direction', '>=')} {t['threshold']}")
            cell = tuple(sorted((k, str(v)) for k, v in t.items() if k not in ("value", "met")))
            groups.setdefault(row, {}).setdefault(cell, []).append(t)
    for (benchmark, target, n, needed), cells in sorted(groups.items(), key=lambda item: item[0][0]):
        found = [t for runs_of_cell in cells.values() for t in runs_of_cell]
        show = _pct if target.endswith("less than off by") else _x  # a share of the bytes, not a ratio
        low, high = (show(f(t["value"] for t in found)) for f in (min, max))
        needed = f"{needed.split()[0]} {show(found[0]['threshold'])}"
        value = low if low == high else f"{low} – {high}"
        met = sum(all(t["met"] for t in runs_of_cell) for runs_of_cell in cells.values())
        lines.append(f"| {benchmark} | {target} | {n} | {needed} | {value} | {met} of {len(cells)} |")
    return "\n".join(lines + ["", *(f"- {line}" for line in made)]) + "\n"


def sections(folder: Path = RESULTS) -> dict[str, str]:
    """NAME -> rendered section, for every results file in ``folder``; ``summary``, every
    benchmark's targets in one table; and, where several materialize runs are there,
    ``materialize-machines``: their targets side by side."""
    out = {}
    machines = {}
    targeted = {}
    for path in sorted(folder.glob("*.json")):
        results = json.loads(path.read_text())
        source = f"`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`"
        if results.get("benchmark") == "materialize":
            machines[source] = results
        if results.get("targets") and results.get("benchmark"):
            targeted[source] = results
        if results.get("benchmark") in ("materialize", "tenants"):
            out[path.stem] = markdown(results, source)
        elif results.get("benchmark") == "loader":  # its renderer lives with it (it needs torch)
            import loader

            out[path.stem] = loader.markdown(results) + f"\n(from {source})\n"
        elif "trials_per_kind" in results:  # benchmarks/faults.py
            out[path.stem] = faults_markdown(results, source)
        elif results.get("benchmark") == "fatrow-forms":
            out[path.stem] = forms_markdown(results, source)
        elif results.get("benchmark") == "join":
            out[path.stem] = join_markdown(results, source)
        elif results.get("benchmark") == "scale":
            out[path.stem] = scale_markdown(results, source)
    if len(machines) > 1:
        out["materialize-machines"] = machines_markdown(machines)
    if targeted:
        out["summary"] = summary_markdown(targeted)
    return out


FORMS_TEXT = {"arrow-ipc": "IPC mmap (materialize.py's)", "flat-npy": "flat .npy memmaps",
              "arrow-ipc-lz4": "IPC lz4", "arrow-ipc-zstd": "IPC zstd", "arrow-ipc-lz4-by-user": "IPC lz4, by user",
              "arrow-ipc-zstd-by-user": "IPC zstd, by user",
              "parquet-flat-by-user": "PQ zstd, flat columns + offsets, by user",
              "zstd-frames-by-user": "zstd frames of flat columns, 8 batches each, by user",
              "lz4-frames-by-user": "LZ4 HC frames of flat columns, 8 batches each, by user",
              "parquet-smallest": "PQ zstd, nested lists, by user (materialize.py's smallest)"}


def forms_markdown(results: dict, source: str) -> str:
    """A Fat Row forms run (benchmarks/fatrow_forms.py) as a page section."""
    m = results["machine"]
    ns = [str(n) for n in results["settings"]["n"]]
    lines = [f"Made by `{results['command']}` on {results['date']} ({source}): {m['cpu']}, {m['cores']} cores, "
             f"single-core memcpy {m['memcpy_gb_s']:.1f} GB/s, load average {m['load_average_start']} at the start "
             f"and {m['load_average_end']} at the end; lateseq {m['lateseq']} at {m.get('git', 'unknown')}; "
             f"{results['seconds']:.0f} s in all.", "",
             "| workload | side | " + " | ".join(f"N={n} ex/s | lateseq ÷ it | N={n} bytes" for n in ns) + " |",
             "|" + "|".join("---" for _ in range(2 + 3 * len(ns))) + "|"]
    for name, work in results["workloads"].items():
        for form in results["settings"]["forms"]:
            cells = []
            for n in ns:
                f = work["n"][n]["forms"][form]
                cells += [_n(f["ex_s"]), _x(f["lateseq_speedup"]),
                          f"{_gb(f['bytes'])} ({_x(f['bytes_vs_lateseq'])})" + ("¹" if f["extrapolated"] else "")]
            lines.append(f"| {name} | {FORMS_TEXT.get(form, form)} | " + " | ".join(cells) + " |")
        for side, text in (("lateseq", "lateseq (store + example log)"), ("lateseq_by_user", "lateseq, by user")):
            if side in work["n"][ns[0]]:
                cells = []
                for n in ns:
                    ours = work["n"][n][side]
                    cells += [_n(ours["ex_s"]), "1.00×", _gb(ours["bytes"])]
                lines.append(f"| {name} | {text} | " + " | ".join(cells) + " |")
    lines += ["", "¹ timed on a uniform sample of requests (all their examples); bytes scaled to every example by "
              "output events, those of a form by user from every example of random whole users (a uniform sample "
              "parts a user's examples, which such a form compresses away), scaled by examples. Bytes in brackets: "
              "the form's bytes ÷ lateseq's durable store + example log.",
              "", "by user: the examples sorted by user, then request time (the form's rows, and lateseq's side "
              "it is divided by: lateseq reading the same examples in the same order); the others in log order."]
    return "\n".join(lines) + "\n"


def join_markdown(results: dict, source: str) -> str:
    """A point-in-time join run (benchmarks/join.py) as a page section."""
    m, sample, b = results["machine"], results["sample"], results["bytes"]
    lines = [f"Made by `{results['command']}` on {results['date']} ({source}): {m['cpu']}, {m['cores']} cores, "
             f"DuckDB {m['duckdb']} and polars {m['polars']} on one thread each, load average "
             f"{m['load_average_start']} at the start and {m['load_average_end']} at the end; lateseq {m['lateseq']} "
             f"at {m.get('git', 'unknown')}; {results['seconds']:.0f} s in all.", "",
             "| N | side | ex/s | lateseq ÷ it | a pass over the whole log |", "|---|---|---|---|---|"]
    for n, at in results["n"].items():
        for side, text in (("lateseq", "lateseq (iter_batches)"), ("duckdb", "DuckDB join"),
                           ("polars", "polars join")):
            lines.append(f"| {n} | {text} | {_n(at[side]['ex_s'])} | {_x(at['lateseq']['ex_s'] / at[side]['ex_s'])} "
                         f"| {at[side]['whole_log_s']:,.0f} s |")
    lines += ["", f"- {results['state']} store state; timed on {sample['timed_examples']:,} of {sample['examples']:,} "
              "examples (uniform random requests, all their examples; a join reads "
              f"{sample['join_rows_per_example']:,} events an example there), each checked equal on all three sides, "
              "bit for bit, before timing; a whole pass is extrapolated from the rate",
              f"- bytes on disk: the joins' events file {_gb(b['events_parquet'])}, lateseq's durable store "
              f"{_gb(b['lateseq_durable'])}; both read the example log, {_gb(b['example_log'])}"]
    return "\n".join(lines) + "\n"


def scale_markdown(results: dict, source: str) -> str:
    """A store-size run (benchmarks/scale.py) as a page section."""
    m = results["machine"]
    forms = results["settings"]["forms"]
    lines = [f"Made by `{results['command']}` on {results['date']} ({source}): {m['cpu']}, last-level cache "
             f"{m['llc']}, single-core memcpy {m['memcpy_gb_s']:.1f} GB/s, load average {m['load_average_start']} "
             f"at the start and {m['load_average_end']} at the end; lateseq {m['lateseq']} at "
             f"{m.get('git', 'unknown')}; {results['seconds']:.0f} s in all.", "",
             "| users | events | read cache | examples timed | N | lateseq ex/s | "
             + " | ".join(f"{FORM_SHORT[f]} ex/s | lateseq ÷ it" for f in forms) + " |",
             "|" + "|".join("---" for _ in range(6 + 2 * len(forms))) + "|"]
    for size in results["sizes"].values():
        for n, at in size["n"].items():
            cells = [f"{_n(at[f]['ex_s'])} | {_x(at[f'vs_{f}'])}" for f in forms]
            lines.append(f"| {size['users']:,} | {size['events']:,} | {_gb(size['read_cache_bytes'])} | "
                         f"{size['timed_examples']:,} | {n} | {_n(at['lateseq']['ex_s'])} | "
                         + " | ".join(cells) + " |")
    low, high = results["settings"].get("history_lengths", (60, 50_000))  # (runs before the option: the default)
    lines += ["", "- compacted store, pointers at the latest version; the examples timed: a uniform random sample of "
              "requests with all their examples, in log order, checked equal on every side bit for bit before timing; "
              f"best of {results['settings']['repeat']} interleaved passes on one core, warm",
              f"- history lengths Pareto(1.4) from {low:,} to {high:,} events; "
              + ", ".join(f"{size['users']:,} users: {size['events'] / size['users']:.1f} events a user"
                          for size in results["sizes"].values())]
    return "\n".join(lines) + "\n"


def faults_markdown(results: dict, source: str) -> str:
    """A fault-injection run (benchmarks/faults.py) as a page section."""
    m = results["machine"]
    columns = ["correct", "clear error", "unclear error", "raw exception", "silently wrong", "crash"]
    lines = [f"Made by `{results['command']}` on {results['date']} ({source}): {m['cpu']}, {m['cores']} cores; "
             f"{results['trials_per_kind']} trials per kind of file, {results['wall_s']:.0f} s in all.", "",
             "| file | trials | " + " | ".join(columns) + " | verify found |",
             "|" + "|".join("---" for _ in range(len(columns) + 3)) + "|"]
    for kind, counts in results["kinds"].items():
        found = counts.get("verify found", counts.get("verify_found", ""))
        lines.append(f"| {kind} | {counts['trials']} | " + " | ".join(str(counts.get(c, 0)) for c in columns)
                     + f" | {found} |")
    return "\n".join(lines) + "\n"


def rewrite(readme: str, rendered: dict[str, str]) -> tuple[str, list[str]]:
    """``readme`` with every section that has markers replaced; and the names without markers."""
    missing = []
    for name, body in rendered.items():
        key = re.escape(name)
        pattern = re.compile(rf"(<!-- results:{key} -->\n).*?(<!-- /results:{key} -->)", re.DOTALL)
        if not pattern.search(readme):
            missing.append(name)
            continue
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), readme)
    return readme, missing


# ---------------------------------------------------------------- chart


def plot(results: dict, path: Path) -> bool:
    """A PNG chart: ex/s and bytes per N, lateseq states beside the Fat Row forms, one row
    per workload. Returns False (and writes nothing) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if results.get("benchmark") == "tenants":
        tenant_plot(results, path, plt)
        return True
    works = results["workloads"]
    fig, axes = plt.subplots(len(works), 2, figsize=(14, 4.5 * len(works)), squeeze=False)
    for row, (name, work) in zip(axes, works.items(), strict=True):
        ns = list(work["n"])
        states = list(work["states"])
        bars = [(f"lateseq {s}", [work["n"][n]["lateseq"][s]["ex_s"] for n in ns],
                 [work["n"][n]["lateseq"][s]["bytes"] for n in ns]) for s in states]
        first = work["states"][states[0]]["visibility"]
        bars += [(f"Fat Row {FORM_SHORT[f]}", [work["n"][n]["fat_rows"][first][f]["ex_s"] for n in ns],
                  [work["n"][n]["fat_rows"][first][f]["bytes"] for n in ns]) for f in _forms(work)]
        width = 0.8 / len(bars)
        blues = plt.get_cmap("Blues")
        colors = [blues(0.45 + 0.5 * k / max(len(states) - 1, 1)) for k in range(len(states))]
        colors += ["#d62728", "#9467bd", "#ff7f0e", "#8c564b"]  # the Fat Row forms
        for k, (label, speed, size) in enumerate(bars):
            xs = [i + (k - len(bars) / 2 + 0.5) * width for i in range(len(ns))]
            hatch = "//" if label.startswith("Fat Row") else None
            row[0].bar(xs, speed, width, label=label, hatch=hatch, color=colors[k], edgecolor="white")
            row[1].bar(xs, size, width, label=label, hatch=hatch, color=colors[k], edgecolor="white")
        for ax, what in zip(row, ("examples/s (warm, one core)", "bytes on disk (all examples)"), strict=True):
            ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
            ax.set_yscale("log")
            ax.set_title(f"{name}: {what}")
            ax.grid(axis="y", alpha=0.3)
        row[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{results['command']}  ({results['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the results sections of the pages")
    action.add_argument("--check", action="store_true", help="exit 1 when a page differs from the results")
    action.add_argument("--plot", type=Path, metavar="PNG", help="chart one results file (given after)")
    parser.add_argument("results", nargs="?", type=Path, help="the results file for --plot")
    args = parser.parse_args()
    if args.plot:
        if args.results is None:
            parser.error("--plot needs a results file")
        if not plot(json.loads(args.results.read_text()), args.plot):
            sys.exit("matplotlib is not installed: pip install matplotlib")
        return
    rendered = sections()
    if not args.write and not args.check:
        for name, body in rendered.items():
            print(f"<!-- results:{name} -->\n{body}<!-- /results:{name} -->\n")
        return
    placed: set[str] = set()
    stale = []
    for page in PAGES:
        current = page.read_text()
        updated, missing = rewrite(current, rendered)
        placed |= set(rendered) - set(missing)
        if args.write and updated != current:
            page.write_text(updated)
        elif updated != current:
            stale.append(page.relative_to(ROOT))
    for name in sorted(set(rendered) - placed):
        print(f"no page has <!-- results:{name} --> ... <!-- /results:{name} --> markers", file=sys.stderr)
    if args.write:
        print(f"{len(placed)} section(s) rendered")
    elif stale or placed != set(rendered):
        sys.exit(f"{', '.join(map(str, stale)) or 'a section'} differs from benchmarks/results/: run "
                 "python benchmarks/report.py --write")

if __name__ == "__main__":
    main()
