"""Is an HSTU trainer fed by lateseq compute-bound? Examples/s and the share of each step spent
waiting for data, at history lengths 512 to 8192.

    python benchmarks/gpu_train.py --json examples/results/gpu-train.json      # a GPU, about 3-4 minutes
    python benchmarks/gpu_train.py --device cpu --tiny                         # a smoke run (seconds)
    options: --lengths 512,1024,2048,4096,8192  --tokens T  --workers W  --steps S  --warmup S
             --dim D  --layers N  --heads H  --users U  --mean-len M  --requests R

Synthetic histories (``lateseq.datasets.synthetic_events``: lognormal lengths, bursts of
same-second events) are committed to a store; requests at random events become an
example log of pointers (small row groups, so every worker owns some). Each step takes
the next ``lateseq.torch.Batch`` from a ``DataLoader`` over ``ExampleDataset`` (spawned
workers, pinned memory), copies it to the device jagged with ``non_blocking=True``, pads
it there (``Batch.to_hstu``) and runs one HSTU training step (every position predicts the
next, sampled softmax). A batch holds about ``--tokens`` events: fewer, longer examples
as the length grows. Reported per length:

- examples/s and events/s over the timed steps (after ``--warmup`` untimed ones);
- data wait: time blocked in ``next(loader)`` over total step time (0% = compute-bound);
- loader ex/s per worker: examples over the workers' own busy time (``Batch.stats``).

The attention is materialised (B x L x L), not a fused kernel: at 8k this measures a
data pipeline against a deliberately plain trainer, which is what the wait share needs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from hstu_ml1m import provenance, save_json  # noqa: E402
from hstu_model import HSTU, HSTUConfig  # noqa: E402
from hstu_train import TrainConfig, train_step  # noqa: E402
from seqdata import LateseqSource  # noqa: E402

import lateseq  # noqa: E402
import lateseq.datasets  # noqa: E402

TINY = {"lengths": "64,128", "tokens": 2048, "workers": 1, "steps": 6, "warmup": 2, "dim": 32, "layers": 2,
        "heads": 1, "users": 150, "mean_len": 400, "requests": 3000, "items": 5000, "row_group": 256}


def build(workdir: Path, args: argparse.Namespace) -> tuple[lateseq.Store, Path, int]:
    """A store of synthetic events and an example log of requests with 2+ events of history."""
    events = lateseq.datasets.synthetic_events(args.users, mean_len=args.mean_len, items=args.items)
    events = events.select(["user_id", "ts", "item_id"])  # item ids 0..items-1; 0 is HSTU's padding:
    events = events.set_column(2, "item_id", pc.add(events.column("item_id"), 1))
    store = lateseq.create(workdir / "store", lateseq.Schema.infer(events.schema))
    store = store.commit(events)
    requests = lateseq.datasets.synthetic_requests(events, args.requests).select(["user_id", "request_ts"])
    log = lateseq.log_examples(store, requests)
    log = log.filter(np.asarray(log.column("uih_length").to_numpy()) >= 2)
    path = workdir / "examples.parquet"
    pq.write_table(log, path, row_group_size=args.row_group)
    return store, path, events.num_rows


def bench_length(length: int, store: lateseq.Store, log: Path, args: argparse.Namespace,
                 device: torch.device) -> dict:
    """Timed training steps at one maximum length."""
    batch_size = max(1, args.tokens // length)
    source = LateseqSource(store, log, length + 1, length + 1, batch_size, shuffle=True, workers=args.workers,
                           pin_memory=device.type == "cuda", block_rows=args.row_group)
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(num_items=args.items, max_len=length, dim=args.dim, layers=args.layers,
                            heads=args.heads)).to(device)
    cfg = TrainConfig(batch_size=batch_size, attention_budget=args.budget)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    pool = torch.arange(1, args.items + 1, device=device)
    generator = torch.Generator().manual_seed(0)
    epoch, batches = 0, iter(source.batches(0))
    wait = total = loader_busy = 0.0
    examples = events = 0
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(source.batches(epoch))
            batch = next(batches)
        t1 = time.perf_counter()
        seq = source.convert(batch.to(device, non_blocking=True))
        train_step(model, seq, optimizer, pool, generator, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step >= args.warmup:
            wait, total = wait + t1 - t0, total + t2 - t0
            examples, events = examples + len(seq), events + int(seq.lengths.sum())
            loader_busy += batch.stats.busy_s
    out = {"max_len": length, "batch_size": batch_size, "steps": args.steps, "examples_per_s": examples / total,
           "events_per_s": events / total, "s_per_step": total / args.steps, "data_wait": wait / total,
           "mean_events_per_example": events / max(examples, 1),
           "loader_examples_per_s_per_worker": examples / loader_busy if loader_busy else None}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    p.add_argument("--tiny", action="store_true", help="a smoke run of every part")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--tokens", type=int, default=65536, help="events per batch (batch = tokens // length)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--mean-len", type=int, default=6000)
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--row-group", type=int, default=2048, help="example log rows per row group (and block)")
    p.add_argument("--budget", type=int, default=1 << 31, help="attention entries per chunk (see hstu_train)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in the trainer")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.tiny:
        for name, value in TINY.items():
            setattr(args, name, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu (and --tiny for a smoke run)")
    torch.set_num_threads(args.threads)
    device, console, started = torch.device(args.device), Console(), time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        t0 = time.perf_counter()
        store, log, num_events = build(Path(tmp), args)
        console.print(f"data: {num_events:,} events of {args.users:,} users, {pq.read_metadata(log).num_rows:,} "
                      f"examples, built in {time.perf_counter() - t0:.1f} s")
        for length in (int(x) for x in args.lengths.split(",")):
            rows.append(bench_length(length, store, log, args, device))
            r = rows[-1]
            console.print(f"L={length}: {r['examples_per_s']:,.0f} ex/s, data wait {r['data_wait']:.1%}")
    table = Table(title=f"HSTU training through lateseq on {args.device} ({args.workers} loader workers)")
    for col in ("max length", "batch", "events/ex", "ex/s", "events/s", "s/step", "data wait", "loader ex/s/worker"):
        table.add_column(col, justify="right")
    for r in rows:
        per_worker = r["loader_examples_per_s_per_worker"]
        table.add_row(f"{r['max_len']:,}", str(r["batch_size"]), f"{r['mean_events_per_example']:,.0f}",
                      f"{r['examples_per_s']:,.0f}", f"{r['events_per_s']:,.0f}", f"{r['s_per_step']:.3f}",
                      f"{r['data_wait']:.1%}", f"{per_worker:,.0f}" if per_worker else "-")
    console.print(table)
    out = {**provenance("benchmarks/gpu_train.py", argv, started),
           "config": {k: v for k, v in vars(args).items() if k != "json"}, "results": rows}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
