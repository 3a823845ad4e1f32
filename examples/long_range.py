"""Does quality rise with history length? A synthetic log with a planted long-range dependency.

    python examples/long_range.py --json examples/results/long-range.json
    options: --lengths 128,512,2048,8192  --epochs E  --users U  --keys K  --seed S  --threads T

Each user has ``history`` (8,192) events. One of them, at a distance d before the user's
next pick, is a *key* item (one of K); every other event is filler (random items that
are never keys). The next pick is the key's *answer* item (key + K, "the accessory of
the device bought long ago"). d is log-uniform in [1, history], so a model that reads
the newest L events can see the key with probability P(d <= L) = log(L) / log(history),
and otherwise can only guess among the K answers (HR@10 = 10 / K by chance).
HR@10 should therefore rise with L up to the full 8k, towards
``P(d <= L) + (1 - P(d <= L)) * 10 / K``, which the output prints beside it.

Data go through lateseq: a store of every event, one example per user (a pointer at the
pick's time, the answer as ``target``), ``lateseq.torch.ExampleDataset`` batches of the
newest L events. The model is ``hstu_model.HSTU`` with one layer, trained on the pick
only (the filler is unpredictable by construction): one query row per example, so a
step costs O(L), and 8k histories train on one CPU core in minutes. It relies on HSTU's
relative attention bias for order, without the learned embedding per absolute position
(``--absolute-positions`` adds it): with 2,000 users, positions thousands of events back
are each seen a few times in training, and their embeddings overfit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from hstu_ml1m import provenance, save_json
from hstu_model import HSTU, HSTUConfig
from hstu_train import TrainConfig, fit
from rich.console import Console
from rich.table import Table
from seqdata import LateseqSource

import lateseq


def planted_log(users: int, history: int, keys: int, filler: int, burst: int, seed: int
                ) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """(events, requests with ``target``, each user's key distance d).

    Items 1..K are keys, K+1..2K their answers, 2K+1.. filler. A user's key is a burst
    of ``burst`` consecutive events of one key item whose newest is d events before the
    pick. Events are a minute apart on average (distinct seconds: no ties); the pick
    comes a minute after the last event.
    """
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users, dtype=np.int64), history)
    items = rng.integers(2 * keys + 1, 2 * keys + 1 + filler, (users, history))
    distance = np.exp(rng.uniform(0, np.log(history - burst + 1), users)).astype(np.int64).clip(1, history - burst + 1)
    key = rng.integers(1, keys + 1, users)
    newest = history - distance  # column of the burst's newest event
    cols = newest[:, None] - np.arange(burst)[None, :]
    items[np.arange(users)[:, None], cols] = key[:, None]
    gaps = 1 + rng.exponential(60, (users, history)).astype(np.int64)
    ts = 1_600_000_000 + np.cumsum(gaps, axis=1)
    events = pa.table({"user_id": user, "ts": ts.reshape(-1), "item_id": items.reshape(-1)})
    requests = pa.table({"user_id": np.arange(users, dtype=np.int64), "request_ts": ts[:, -1] + 60,
                         "target": key + keys})
    return events, requests, distance


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="128,512,2048,8192")
    p.add_argument("--history", type=int, default=8192)
    p.add_argument("--users", type=int, default=2000, help="training users (plus a quarter each for val and test)")
    p.add_argument("--keys", type=int, default=100)
    p.add_argument("--filler", type=int, default=50, help="filler items")
    p.add_argument("--burst", type=int, default=32, help="consecutive events of the key")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--absolute-positions", action="store_true",
                   help="add HSTU's learned per-position embedding (rare far positions then overfit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    lengths = [int(x) for x in args.lengths.split(",")]
    started = time.time()
    num_items = 2 * args.keys + args.filler
    pool = torch.arange(1, num_items + 1)
    not_items = torch.zeros(num_items + 1, dtype=torch.bool)
    not_items[0] = True
    held_out = args.users // 4
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)

    rows = []
    with tempfile.TemporaryDirectory(prefix="long-range-") as tmp:
        t0 = time.perf_counter()
        parts = {}
        for name, users, seed in (("train", args.users, 1), ("val", held_out, 2), ("test", held_out, 3)):
            events, requests, distance = planted_log(users, args.history, args.keys, args.filler, args.burst,
                                                    args.seed * 10 + seed)
            store = lateseq.create(Path(tmp) / name, lateseq.Schema.infer(events.schema))
            store = store.commit(events)
            lateseq.log_examples(store, requests, Path(tmp) / f"{name}.parquet")
            parts[name] = (store, Path(tmp) / f"{name}.parquet", distance)
        console.print(f"data: {args.users + 2 * held_out:,} users x {args.history:,} events, built in "
                      f"{time.perf_counter() - t0:.1f} s")
        for length in lengths:
            torch.manual_seed(args.seed)
            model = HSTU(HSTUConfig(num_items=num_items, max_len=length, dim=args.dim, layers=1, dropout=0.0,
                                    absolute_positions=args.absolute_positions))

            def source(name: str, shuffle: bool, length: int = length) -> LateseqSource:
                store, log, _ = parts[name]
                return LateseqSource(store, log, length, length, cfg.batch_size, shuffle=shuffle, seed=cfg.seed)
            train, val, test = source("train", True), source("val", False), source("test", False)
            console.rule(f"max length {length}")
            t1 = time.perf_counter()
            result = fit(model, train.epoch, lambda v=val: v.epoch(0), lambda t=test: t.epoch(0), pool,
                         not_items, cfg, torch.device("cpu"), console,
                         steps_per_epoch=-(-args.users // cfg.batch_size), select="hr@10")
            visible = float(np.mean(parts["test"][2] <= length))
            rows.append({"max_len": length, "test": result.test, "best_epoch": result.best_epoch,
                         "key_visible": visible, "ceiling_hr@10": visible + (1 - visible) * min(1, 10 / args.keys),
                         "chance_hr@10": min(1.0, 10 / args.keys), "wall_s": round(time.perf_counter() - t1, 1),
                         "s_per_epoch": float(np.mean([e.train_s for e in result.epochs])),
                         "epochs": [{"epoch": e.epoch, "train_loss": e.train_loss, "val": e.val}
                                    for e in result.epochs]})

    table = Table(title=f"planted dependency at log-uniform distance in [1, {args.history}]: test users")
    for col in ("max length", "key visible", "HR@10", "ideal HR@10", "NDCG@10", "MRR", "s/epoch"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['max_len']:,}", f"{r['key_visible']:.3f}", f"{r['test']['hr@10']:.3f}",
                      f"{r['ceiling_hr@10']:.3f}", f"{r['test']['ndcg@10']:.3f}", f"{r['test']['mrr']:.3f}",
                      f"{r['s_per_epoch']:.1f}")
    console.print(table)
    out = {**provenance("examples/long_range.py", argv, started),
           "config": {k: v for k, v in vars(args).items() if k != "json"}, "results": rows}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
