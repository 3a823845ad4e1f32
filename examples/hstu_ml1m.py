"""Train HSTU on MovieLens-1M from a lateseq store and example log (or from Fat Rows).

    python examples/hstu_ml1m.py                                   # 100 epochs, max length 200, lateseq
    python examples/hstu_ml1m.py --source both --json examples/results/hstu-ml1m-200.json
    options: --epochs E  --max-len N|all  --device cpu|cuda  --source lateseq|fatrow|both
             --json PATH  --plot PATH  --seed S  --workdir DIR  --users U  --threads T

Protocol (docs/hstu.md): one history per user (ratings in stable time order), leave one
out by position (last rating: test target, the one before: validation), next-item
prediction at every position of the newest ``max_len + 1`` ratings before the
validation target, full ranking over all items from the newest ``max_len`` ratings
before the target, every item the user rated before it left out of the ranking.
The best epoch by validation NDCG@10 is tested.

``--source both`` trains from each source in turn with the same seed, checks that every
batch (training, validation, test) is bit-identical across the two, and that the
metrics are then equal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hstu_model import HSTU, HSTUConfig
from hstu_train import FitResult, TrainConfig, epoch_table, fit
from ml1m_data import TIE_SCALE, build_fat_rows, build_lateseq, item_ids, longest_history, subset_users
from rich.console import Console
from rich.table import Table
from seqdata import FatRowSource, LateseqSource

import lateseq
import lateseq.datasets

METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")


def machine() -> dict:
    """Where a result was measured (for the docs' tables)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "lateseq": lateseq.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def provenance(script: str, argv: list[str] | None, started: float) -> dict:
    """What a results file records first: the command that made it, when, where, how long."""
    return {"command": f"python {script} " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(), "wall_s": round(time.time() - started, 1)}


def save_json(path: Path | None, out: dict) -> None:
    """Writes a results file (when ``--json`` names one)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


def run_source(source: str, files: dict, max_len: int, history: int, num_items: int, pool: torch.Tensor,
               not_items: torch.Tensor, cfg: TrainConfig, device: torch.device, console: Console) -> FitResult:
    """One training run from ``source``, from a freshly seeded model."""
    torch.manual_seed(cfg.seed)
    model = HSTU(HSTUConfig(num_items=num_items, max_len=max_len)).to(device)
    if source == "lateseq":
        ls, store = files["lateseq"], lateseq.open(files["lateseq"].store)

        def make(log: Path, shuffle: bool, window: int, hist: int, seen: bool) -> LateseqSource:
            return LateseqSource(store, log, hist, window, cfg.batch_size, shuffle=shuffle, seed=cfg.seed,
                                 time_scale=TIE_SCALE, seen=seen)
        train = make(ls.train, True, max_len + 1, max_len + 1, False)
        val, test = make(ls.val, False, max_len, history, True), make(ls.test, False, max_len, history, True)
    else:
        fr = files["fatrow"]
        train = FatRowSource(fr.train, max_len + 1, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val = FatRowSource(fr.val, max_len, cfg.batch_size, shuffle=False, seen=True)
        test = FatRowSource(fr.test, max_len, cfg.batch_size, shuffle=False, seen=True)
    steps = -(-files["users"] // cfg.batch_size)
    console.rule(f"{source}: max length {max_len}")
    return fit(model, train.epoch, lambda: val.epoch(0), lambda: test.epoch(0), pool, not_items, cfg, device,
               console, steps_per_epoch=steps)


def plot(path: Path, runs: dict[str, dict], title: str) -> None:
    """Learning curves from results (``FitResult.to_json()`` per source): training loss and
    validation NDCG@10 / HR@10 per epoch; one colour per curve, one line style per source."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, r), style in zip(runs.items(), ("-", "--")):
        x = [e["epoch"] for e in r["epochs"]]
        a.plot(x, [e["train_loss"] for e in r["epochs"]], style, color="C0", label=name)
        for metric, color in (("ndcg@10", "C1"), ("hr@10", "C2")):
            b.plot(x, [e["val"][metric] for e in r["epochs"]], style, color=color, label=f"{name} {metric.upper()}")
    a.set(xlabel="epoch", ylabel="train loss (sampled softmax)")
    b.set(xlabel="epoch", ylabel="validation")
    a.legend()
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _max_len(text: str) -> int | str:
    return text if text == "all" else _positive(text)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=_positive, default=100)
    p.add_argument("--max-len", type=_max_len, default="200", help="newest ratings the model reads, or 'all'")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--source", default="lateseq", choices=("lateseq", "fatrow", "both"))
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="where the store, logs and Fat Rows go (default: a temp dir)")
    p.add_argument("--users", type=_positive, help="only the first U users (a quick run; items are still "
                                                   "ranked among all of MovieLens-1M's)")
    p.add_argument("--threads", type=_positive, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.plot:  # said now, not after the hour of training (s61H)
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot needs matplotlib: pip install matplotlib (or 'lateseq[bench]', as `make bench` does)")
    torch.set_num_threads(args.threads)
    console = Console()
    device = torch.device(args.device)
    started = time.time()

    ratings = lateseq.datasets.load_movielens_1m()
    items = item_ids(ratings)  # every item is ranked, a run on some users too (theirs alone made 1 user's HR@10 1.0)
    if args.users:
        ratings = subset_users(ratings, args.users)
    history = longest_history(ratings)
    max_len = history if args.max_len == "all" else args.max_len
    num_items = int(items.max())
    pool = torch.from_numpy(items).to(device)
    not_items = torch.ones(num_items + 1, dtype=torch.bool)
    not_items[pool.cpu()] = False
    not_items = not_items.to(device)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)

    with tempfile.TemporaryDirectory(prefix="hstu-ml1m-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        files = {"users": len(np.unique(ratings.column("user_id").to_numpy())),
                 "lateseq": build_lateseq(ratings, workdir), "fatrow": build_fat_rows(ratings, workdir, max_len)}
        console.print(f"data: {ratings.num_rows:,} ratings, {files['users']:,} users, {len(items):,} items, "
                      f"longest history {history:,}; built in {time.perf_counter() - t0:.1f} s in {workdir}")
        data_bytes = {"lateseq": files["lateseq"].bytes(), "fatrow": files["fatrow"].bytes()}
        sources = ("lateseq", "fatrow") if args.source == "both" else (args.source,)
        runs = {s: run_source(s, files, max_len, history, num_items, pool, not_items, cfg, device, console)
                for s in sources}

    for name, r in runs.items():
        console.print(epoch_table(f"{name}: max length {max_len}", r.epochs, "10"))
    table = Table(title=f"test (best validation epoch), max length {max_len}")
    table.add_column("source")
    table.add_column("best epoch", justify="right")
    for m in METRICS:
        table.add_column(m.upper(), justify="right")
    for name, r in runs.items():
        table.add_row(name, str(r.best_epoch), *(f"{r.test[m]:.4f}" for m in METRICS))
    console.print(table)

    out = {
        **provenance("examples/hstu_ml1m.py", argv, started),
        "config": {"max_len": max_len, "users": files["users"], "ratings": ratings.num_rows,
                   "items": len(items), "model": HSTUConfig(num_items, max_len).__dict__, "train": cfg.__dict__},
        "data_bytes": data_bytes,
        "runs": {name: r.to_json() for name, r in runs.items()},
    }
    if len(runs) == 2:
        a, b = runs["lateseq"], runs["fatrow"]
        same_batches = ([(e.train_digest, e.val_digest) for e in a.epochs]
                        == [(e.train_digest, e.val_digest) for e in b.epochs] and a.test_digest == b.test_digest)
        same_metrics = a.test == b.test and [e.val for e in a.epochs] == [e.val for e in b.epochs]
        out["identical"] = {"batches": same_batches, "metrics": same_metrics}
        console.print(f"batches bit-identical across sources: {same_batches}; metrics identical: {same_metrics}")
        if not (same_batches and same_metrics):
            console.print("[red]the two sources differ[/red]")
    save_json(args.json, out)
    if args.plot:
        plot(args.plot, out["runs"], f"HSTU on ML-1M, max length {max_len}")
    if "identical" in out and not all(out["identical"].values()):
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
