"""lateseq against the memory-mapped Fat Rows as the store outgrows the CPU's cache: the
realistic workload's compacted store at several numbers of users, about the same number
of examples timed at each.

    python benchmarks/scale.py                          # 20k and 200k users (about 3 minutes on the Xeon VM)
    python benchmarks/scale.py --users 2000 20000       # other sizes
    python benchmarks/scale.py --users 300000 --min-len 3 --max-len 200 --n 32 256   # short histories
    options: --json PATH  --n N [N ...]  --examples K  --repeat R  --min-pass-s S  --cpu K  --workdir DIR
             --min-len L  --max-len L (the users' history lengths: Pareto(1.4) from L, capped)

``materialize.py --small`` times a store whose read cache (82 MB) a CPU with a large
last-level cache holds whole (the Intel Xeon VM's: 480 MB), where lateseq's copies from
random places of the store cost what a copy from the cache costs; a production store is
far bigger than any cache. Here, for each size: daily commits compacted (pointers at the
latest version, as materialize.py's compacted-latest state), about ``--examples`` examples
in log order (a uniform random sample of requests, all their examples, as materialize.py
samples them), their Fat Rows as the mapped Arrow IPC file and the
flat ``.npy`` memmaps (materialize.py's forms, copying each batch into reused arrays),
checked equal to lateseq bit for bit, then timed as materialize.py times them: one core,
warm, passes of the sides interleaved, the best of ``--repeat`` counts. ``--min-len`` and
``--max-len`` shape the histories (60 to 50,000 events, the realistic workload's, by
default): short ones show the fixed cost of each example lateseq pays (finding its window,
a copy per column from a random place, the pointer log), which a Fat Row of a few events
does not.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from materialize import (  # noqa: E402
    best_of,
    lateseq_batches,
    load_average,
    machine,
    memcpy_gb_s,
    pin_one_core,
    save,
)
from workload import (  # noqa: E402
    Histories,
    State,
    _ingest,
    _log,
    build_forms,
    check_equal,
    day_of,
    read_days,
    read_fat_rows,
    readable_days,
    realistic,
    request_sample,
    store_files,
)

FORMS = ("arrow-ipc", "flat-npy")


def measure_size(users: int, ns: list[int], examples: int, root: Path, repeat: int, min_pass_s: float,
                 memcpy: float, lengths: tuple[int, int] = (60, 50_000)) -> dict:
    """One store size: built, its sample's Fat Rows built and checked, both sides timed."""
    work = realistic(users, min_len=lengths[0], max_len=lengths[1])
    store, _ = _ingest(root / "store", work.events, day_of(work.events.column("ts").to_numpy()))
    store = store.compact()
    log = _log(store, work.requests, root / "log.arrow")
    rows = request_sample(work.requests, np.ones(work.requests.num_rows), float("inf"), examples)
    timed_log = root / "examples.parquet"
    pq.write_table(log.take(pa.array(rows)), timed_log)
    state = State("compacted-latest", "daily commits + compaction; pointers at the latest version", store.path,
                  store.version, log, "all", 0, 0, 0)
    _, cache = store_files(state)
    out = {"users": users, "events": work.events.num_rows, "examples": work.requests.num_rows,
           "timed_examples": len(rows), "read_cache_bytes": sum(p.stat().st_size for p in cache), "n": {}}
    histories = Histories(work.events, readable_days(work, "all"))
    read_day = read_days("all", work.requests)
    for n in ns:
        forms = build_forms(histories, work.requests, read_day, rows, n, root / "fat", f"n{n}", "", FORMS)
        checked = check_equal([forms[f] for f in FORMS], store, log, n, f"{users} users, N={n}")
        handle = state.open()
        sides = {"lateseq": lambda n=n: lateseq_batches(lambda: handle, timed_log, n),
                 **{form: lambda f=forms[form]: read_fat_rows(f) for form in FORMS}}
        runs = best_of(repeat, sides, min_pass_s=min_pass_s)
        at = out["n"][str(n)] = {"checked_examples": checked,
                                 **{side: run.figures(memcpy) for side, run in runs.items()}}
        for form in FORMS:
            at[f"vs_{form}"] = runs["lateseq"].ex_s / runs[form].ex_s
        print(f"{users:,} users, N={n}: lateseq {runs['lateseq'].ex_s / 1e6:.2f}M ex/s, "
              + ", ".join(f"{at[f'vs_{form}']:.2f}x {form}" for form in FORMS), flush=True)
        for file in forms.values():  # a flat form is a folder
            if file.path.is_dir():
                shutil.rmtree(file.path)
            else:
                file.path.unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20_000, 200_000], help="store sizes, in users")
    parser.add_argument("--n", type=int, nargs="+", default=[256, 4096], help="max_len values")
    parser.add_argument("--examples", type=int, default=200_000, help="examples timed at each size (about)")
    parser.add_argument("--min-len", type=int, default=60, help="the shortest history (Pareto(1.4) lengths)")
    parser.add_argument("--max-len", type=int, default=50_000, help="the longest history")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per side, the best counts")
    parser.add_argument("--min-pass-s", type=float, default=0.5, help="a pass drains its side until this long")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--workdir", type=Path, help="parent of the build folder (removed after)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cpu = pin_one_core(args.cpu)
    info = machine()
    load_start = load_average()
    memcpy = memcpy_gb_s(64 if max(args.users) < 10_000 else 512)
    print(f"{info['cpu']}, last-level cache {info['llc']}, pinned to CPU {cpu}; memcpy {memcpy:.1f} GB/s; "
          f"lateseq at {info['git']}", flush=True)
    results = {"benchmark": "scale",
               "command": shlex.join(["python", "benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)]),
               "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "settings": {"n": args.n, "examples": args.examples, "repeat": args.repeat,
                            "history_lengths": [args.min_len, args.max_len],
                            "min_pass_s": args.min_pass_s, "pinned_cpu": cpu, "forms": list(FORMS)},
               "machine": {**info, "memcpy_gb_s": memcpy, "load_average_start": load_start}, "sizes": {}}
    workdir = Path(tempfile.mkdtemp(prefix="lateseq-scale-", dir=args.workdir))
    try:
        for users in args.users:
            folder = workdir / f"u{users}"
            results["sizes"][str(users)] = measure_size(users, args.n, args.examples, folder, args.repeat,
                                                        args.min_pass_s, memcpy, (args.min_len, args.max_len))
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["load_average_end"] = load_average()
    results["seconds"] = time.perf_counter() - started
    save(results, args.json, None)


if __name__ == "__main__":
    main()
