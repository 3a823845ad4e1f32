"""Training and full-ranking evaluation of ``hstu_model.HSTU`` on ``seqdata.SeqBatch`` batches.

Shared by ``hstu_ml1m.py``, ``long_range.py`` and ``benchmarks/gpu_train.py``. A batch
is split into chunks of rows of similar length whose padded attention fits a budget, so
one batch may hold a 2,000-event history next to 20-event ones without padding all to
the longest; gradients are summed over chunks (loss divided by the batch's positions),
so a step is the same whatever the budget, up to dropout draws.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from hstu_model import HSTU, rank_targets, ranking_metrics, sampled_softmax_loss
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from seqdata import SeqBatch


@dataclass(frozen=True)
class TrainConfig:
    """The public ML-1M recipe: batch 128, AdamW lr 1e-3 (no weight decay, as published),
    128 uniform negatives, temperature 0.05."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    negatives: int = 128
    temperature: float = 0.05
    attention_budget: int = 1 << 21  # padded attention entries (rows x width^2) per chunk
    length_spread: float = 1.5  # a chunk's rows are longer than its longest / length_spread
    seed: int = 0


def chunks(lengths: torch.Tensor, budget: int, spread: float = 1.5) -> Iterator[torch.Tensor]:
    """Row indices, longest first, in groups of similar length (each row longer than the
    group's longest / ``spread``) whose rows x longest^2 stays within ``budget``: padding
    every row to the batch's longest would waste most of the attention on ML-1M."""
    order = torch.argsort(lengths, descending=True, stable=True)
    descending = lengths[order]
    start = 0
    while start < len(order):
        longest = int(descending[start])
        similar = int(torch.searchsorted(-descending.double(), -longest / spread))  # longer than longest/spread
        count = max(1, min(budget // max(1, longest) ** 2, similar - start))
        yield order[start:start + count]
        start += count


def _query_ts(batch: SeqBatch) -> torch.Tensor:
    """The time each position predicts: the next event's, and the target's at the last."""
    q = torch.cat([batch.ts[:, 1:], torch.zeros_like(batch.ts[:, :1])], dim=1)
    if batch.target_ts is not None:
        q.scatter_(1, (batch.lengths - 1)[:, None], batch.target_ts[:, None])
    return q


def train_step(model: HSTU, batch: SeqBatch, optimizer: torch.optim.Optimizer, pool: torch.Tensor,
               generator: torch.Generator, cfg: TrainConfig) -> float:
    """One optimizer step; returns the mean loss per predicted position.

    A training batch predicts every next event of each sequence; a request batch (with
    ``target``) predicts the target from the whole history, at the last position only.
    """
    optimizer.zero_grad(set_to_none=True)
    draw = torch.randint(len(pool), (len(batch), cfg.negatives), generator=generator)
    negatives = pool[draw.to(pool.device)]
    if batch.target is None:
        lengths, loss_of = batch.lengths - 1, _next_item_loss  # the last event is only a target
    else:
        lengths, loss_of = batch.lengths, _target_loss
    total = int(lengths.sum()) if batch.target is None else len(batch)
    loss_sum = 0.0
    for idx in chunks(lengths, cfg.attention_budget, cfg.length_spread):
        loss = loss_of(model, batch, idx, negatives[idx], cfg.temperature)
        (loss / total).backward()
        loss_sum += loss.item()
    optimizer.step()
    return loss_sum / max(total, 1)


def _next_item_loss(model: HSTU, batch: SeqBatch, idx: torch.Tensor, negatives: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Summed loss of rows ``idx``, every position predicting the next event."""
    lengths = batch.lengths[idx] - 1
    n = int(lengths.max())
    ids, ts = batch.ids[idx, :n + 1], batch.ts[idx, :n + 1]
    valid = torch.arange(n, device=ids.device)[None, :] < lengths[:, None]
    out = model(ids[:, :-1] * valid, ts[:, :-1], lengths, ts[:, 1:])
    return sampled_softmax_loss(model, out, ids[:, 1:], valid, negatives, temperature)


def _target_loss(model: HSTU, batch: SeqBatch, idx: torch.Tensor, negatives: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Summed loss of rows ``idx`` predicting their targets from the last position."""
    n = int(batch.lengths[idx].max())
    out = model(batch.ids[idx, :n], batch.ts[idx, :n], batch.lengths[idx], _query_ts(batch)[idx, :n],
                last_only=True)
    ones = torch.ones(len(idx), 1, dtype=torch.bool, device=out.device)
    return sampled_softmax_loss(model, out[:, None], batch.target[idx, None], ones, negatives, temperature)


@torch.no_grad()
def rank_batch(model: HSTU, batch: SeqBatch, not_items: torch.Tensor, budget: int) -> torch.Tensor:
    """0-based full-ranking rank of each example's target (in ``chunks`` order).

    ``not_items`` (num_items + 1,) bool marks ids never to rank; with ``batch.seen``,
    every item the user rated before the target is left out too.
    """
    exclude = not_items[None, :].repeat(len(batch), 1)
    if batch.seen is not None:
        rows = torch.repeat_interleave(torch.arange(len(batch), device=exclude.device),
                                       batch.seen_offsets.diff())
        exclude[rows, batch.seen] = True
    query_ts = _query_ts(batch)
    ranks = []
    for idx in chunks(batch.lengths, budget):
        n = int(batch.lengths[idx].max())
        q = model(batch.ids[idx, :n], batch.ts[idx, :n], batch.lengths[idx], query_ts[idx, :n], last_only=True)
        ranks.append(rank_targets(model, q, batch.target[idx], exclude[idx]))
    return torch.cat(ranks)


def evaluate(model: HSTU, batches: Iterable[SeqBatch], not_items: torch.Tensor, budget: int,
             device: torch.device, progress: Progress | None = None, label: str = "eval"
             ) -> tuple[dict[str, float], list[str]]:
    """Ranking metrics over every example of ``batches``, and each batch's checksum."""
    model.eval()
    ranks, sums = [], []
    task = progress.add_task(label, total=None, info="") if progress else None
    for batch in batches:
        sums.append(batch.checksum())
        ranks.append(rank_batch(model, batch.to(device), not_items, budget).cpu())
        if progress:
            progress.advance(task)
    if progress:
        progress.remove_task(task)
    model.train()
    return ranking_metrics(torch.cat(ranks)), sums


def digest(checksums: list[str]) -> str:
    """One sha256 over a list of batch checksums (an epoch's, in order)."""
    return hashlib.sha256("".join(checksums).encode()).hexdigest()


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val: dict[str, float]
    train_s: float  # wall time of the epoch's steps, data included
    data_s: float  # of which blocked waiting for the next batch
    eval_s: float
    steps: int
    examples: int
    train_digest: str  # sha256 of the epoch's batch checksums
    val_digest: str


@dataclass
class FitResult:
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    test: dict[str, float] = field(default_factory=dict)
    test_digest: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _timed(batches: Iterable[SeqBatch]) -> Iterator[tuple[SeqBatch, float]]:
    """Each batch with the seconds spent waiting for it."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, transient=True)


def epoch_table(title: str, epochs: list[EpochStats], metric: str) -> Table:
    table = Table(title=title)
    for name in ("epoch", "train loss", f"val HR@{metric}", f"val NDCG@{metric}", "s/epoch", "s/step", "data wait"):
        table.add_column(name, justify="right")
    for e in epochs:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", f"{e.val[f'hr@{metric}']:.4f}",
                      f"{e.val[f'ndcg@{metric}']:.4f}", f"{e.train_s:.1f}", f"{e.train_s / e.steps:.3f}",
                      f"{e.data_s / e.train_s:.1%}")
    return table


def fit(model: HSTU, train: Callable[[int], Iterable[SeqBatch]], val: Callable[[], Iterable[SeqBatch]],
        test: Callable[[], Iterable[SeqBatch]], pool: torch.Tensor, not_items: torch.Tensor, cfg: TrainConfig,
        device: torch.device, console: Console, steps_per_epoch: int | None = None,
        select: str = "ndcg@10") -> FitResult:
    """Trains ``cfg.epochs`` epochs, validating after each; tests the best-validation state.

    ``train(epoch)`` yields that epoch's batches; ``pool`` holds the item ids negatives
    are drawn from; ``not_items`` marks ids never ranked.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    result, best, best_state = FitResult(), -1.0, None
    with progress_bar(console) as progress:
        epochs = progress.add_task("epochs", total=cfg.epochs, info="")
        for epoch in range(cfg.epochs):
            steps = progress.add_task(f"epoch {epoch}", total=steps_per_epoch, info="")
            loss_sum = positions = data_s = 0.0
            sums, examples, t0 = [], 0, time.perf_counter()
            for batch, waited in _timed(train(epoch)):
                sums.append(batch.checksum())
                loss = train_step(model, batch.to(device), optimizer, pool, generator, cfg)
                weight = len(batch) if batch.target is not None else int((batch.lengths - 1).sum())
                loss_sum, positions = loss_sum + loss * weight, positions + weight
                data_s, examples = data_s + waited, examples + len(batch)
                progress.update(steps, advance=1, info=f"loss {loss:.4f}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_s = time.perf_counter() - t0
            progress.remove_task(steps)
            t1 = time.perf_counter()
            metrics, val_sums = evaluate(model, val(), not_items, cfg.attention_budget, device, progress, "val")
            stats = EpochStats(epoch, loss_sum / max(positions, 1), metrics, train_s, data_s,
                               time.perf_counter() - t1, len(sums), examples, digest(sums), digest(val_sums))
            result.epochs.append(stats)
            if metrics[select] > best:
                best, result.best_epoch = metrics[select], epoch
                best_state = copy.deepcopy(model.state_dict())
            k = select.split("@")[1] if "@" in select else "10"
            console.print(f"epoch {epoch:3d}  loss {stats.train_loss:.4f}  val HR@{k} {metrics[f'hr@{k}']:.4f}  "
                          f"NDCG@{k} {metrics[f'ndcg@{k}']:.4f}  {train_s:.1f} s/epoch "
                          f"({train_s / max(len(sums), 1):.3f} s/step, data wait {data_s / train_s:.1%})")
            progress.update(epochs, advance=1, info=f"best {select} {best:.4f} @ {result.best_epoch}")
        if best_state is not None:
            model.load_state_dict(best_state)
        result.test, test_sums = evaluate(model, test(), not_items, cfg.attention_budget, device, progress, "test")
        result.test_digest = digest(test_sums)
    return result
