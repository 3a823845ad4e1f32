"""Every Fat Row form a skeptic might pick, read as a loader would, against lateseq on the
same examples in one process: which one is the strongest baseline, and what each costs
on disk. Compacted store, pointers at the latest version, both workloads of
``benchmarks/materialize.py`` at its --small scale, one core, warm, best of 5 interleaved.

    python benchmarks/fatrow_forms.py [--tiny] [--json PATH]

Forms: the memory-mapped Arrow IPC file that materialize.py compares against (each
batch's columns viewed once, offsets and values copied out); flat ``.npy`` memmaps (one
array per column, every row's values end to end: no Arrow at all); IPC compressed with
lz4 and with zstd (each batch decompressed into its own buffers), in log order and sorted
by user (a compressor then finds each row's history in the row before; lateseq is timed
reading the examples in that order too, its own side).
The smallest Parquet form (nested lists, with the settings it usually picks) sits beside
the same settings over flat columns, and beside those flat columns as plain zstd frames of
8 loader batches each (by user: the smallest form a skeptic has found, no Parquet pages or
levels to decode); its choice of settings and the states of many
segments are materialize.py's. Every
form is checked equal to lateseq's rebuild before timing. Where the Fat Rows of every
example would not fit, both sides are timed on the same uniform sample of requests (all
examples of a request kept together, in log order) and the bytes are scaled by output
events, as in materialize.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import materialize  # noqa: I001  (first: it sets one thread per process before numpy and numba load)

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from materialize import SCALES, best_of, lateseq_batches, load_average, machine, memcpy_gb_s, pin_one_core
from workload import (
    BY_USER,
    FLAT_PARQUET,
    MORE_FORMS,
    Histories,
    build_forms,
    build_states,
    by_user,
    check_equal,
    read_days,
    read_fat_rows,
    readable_days,
    realistic,
    request_sample,
    sparse,
    store_files,
    user_sample,
)

FORMS = ("arrow-ipc", "flat-npy", *MORE_FORMS, "parquet-smallest")  # the last: beside the flat ones, its usual settings
NS = (256, 4096)
EVENT_BYTES = materialize.EVENT_BYTES


def measure(work, root: Path, scale, repeat: int, memcpy: float) -> dict:
    # the compacted state only: the workload's events in 4 commits, compacted
    state = build_states(replace(work, arrival=None), root / "stores")[0]
    histories = Histories(work.events, readable_days(work, "all"))
    read_day = read_days("all", work.requests)
    lengths = state.log.column("uih_length").to_numpy().astype(np.int64)
    store = state.open()
    pq.write_table(state.log, root / "log.parquet")  # the example log as materialize.py sizes it
    durable, _ = store_files(state)  # the files of the version read (not those compaction replaced)
    ours = sum(p.stat().st_size for p in durable) + (root / "log.parquet").stat().st_size
    out = {"workload": work.describe(), "examples": work.requests.num_rows, "n": {}}
    for n in NS:
        cost = np.minimum(lengths, n) * EVENT_BYTES + 8.0
        rows = request_sample(work.requests, cost, scale.fat_budget, scale.max_timed)
        forms = build_forms(histories, work.requests, read_day, rows, n, root / "fat", f"{work.name}-n{n}",
                            FLAT_PARQUET, FORMS)
        # lateseq reads the examples in each order a form holds them: its own side for each
        logs = {"lateseq": (rows, root / f"{work.name}-n{n}-examples.parquet"),
                "lateseq_by_user": (by_user(work.requests, rows), root / f"{work.name}-n{n}-by-user.parquet")}
        side_of = {form: "lateseq_by_user" if form in BY_USER else "lateseq" for form in forms}
        sides = {form: (lambda file=file: read_fat_rows(file)) for form, file in forms.items()}
        for side, (order, log) in logs.items():
            pq.write_table(state.log.take(pa.array(order)), log)
            check_equal([f for form, f in forms.items() if side_of[form] == side], store, state.log, n,
                        f"{work.name} N={n}")
            sides[side] = lambda log=log: lateseq_batches(lambda: store, log, n)
        runs = best_of(repeat, sides, patience=60.0)
        events_all = int(np.minimum(lengths, n).sum())
        at = {"timed_examples": len(rows), "forms": {},
              **{side: {**runs[side].figures(memcpy), "bytes": ours} for side in logs}}
        sized = sorted_sizes(work, histories, read_day, cost, n, scale, root / "sized",
                             tuple(form for form in forms if form in BY_USER))
        for form, file in forms.items():
            scaled = sized[form] if form in sized else file.bytes * events_all / max(file.events, 1)
            at["forms"][form] = {**runs[form].figures(memcpy), "bytes": scaled, "by_user": form in BY_USER,
                                 "extrapolated": len(rows) < work.requests.num_rows,
                                 "lateseq_speedup": runs[side_of[form]].ex_s / runs[form].ex_s,
                                 "bytes_vs_lateseq": scaled / ours}
            print(f"{work.name} N={n} {form:>17}: {runs[form].ex_s:>12,.0f} ex/s, {scaled / 1e6:>9,.1f} MB; "
                  f"lateseq {at['forms'][form]['lateseq_speedup']:.2f}x as fast", flush=True)
        for side in logs:
            print(f"{work.name} N={n} {side:>17}: {runs[side].ex_s:>12,.0f} ex/s, {ours / 1e6:>9,.1f} MB "
                  "(durable store + example log)", flush=True)
        out["n"][str(n)] = at
        for file in forms.values():
            shutil.rmtree(file.path) if file.path.is_dir() else file.path.unlink()
        for _, log in logs.values():
            log.unlink()
    return out


def sorted_sizes(work, histories: Histories, read_day: np.ndarray, cost: np.ndarray, n: int, scale, folder: Path,
                 forms: tuple[str, ...]) -> dict[str, float]:
    """The bytes of each form ordered by user, written from every example of random whole
    users (as materialize.py sizes its smallest form) and scaled by examples: a uniform
    sample of requests parts a user's examples, which is what such a form compresses
    away, and sized from it the zstd frames took 5.0x lateseq's bytes, not 0.76x (s35H)."""
    rows = user_sample(work.requests, cost, scale.fat_budget, work.requests.num_rows)
    files = build_forms(histories, work.requests, read_day, rows, n, folder, f"{work.name}-n{n}-sized",
                        FLAT_PARQUET, forms)
    sizes = {form: file.bytes * work.requests.num_rows / max(len(file.rows), 1) for form, file in files.items()}
    shutil.rmtree(folder)
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else "small"]
    cpu = pin_one_core(None)
    info, load_start = machine(), load_average()
    memcpy = memcpy_gb_s(64 if args.tiny else 512)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="lateseq-forms-"))
    results = {}
    try:
        for make in (lambda: realistic(scale.realistic_users), lambda: sparse(scale.sparse_users,
                                                                              scale.sparse_pointers)):
            work = make()
            results[work.name] = measure(work, root / work.name, scale, args.repeat, memcpy)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"benchmark": "fatrow-forms", "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python", "benchmarks/fatrow_forms.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": {**info, "pinned_cpu": cpu, "memcpy_gb_s": round(memcpy, 2), "load_average_start": load_start,
                          "load_average_end": load_average()},
              "settings": {"n": list(NS), "repeat": args.repeat, "forms": list(FORMS)},
              "workloads": results, "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
