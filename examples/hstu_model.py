"""A compact HSTU (Zhai et al. 2024, "Actions speak louder than words") for next-item prediction.

Written from the paper's equations, in plain PyTorch (padded dense tensors, no custom
kernels), small enough to read in one sitting. Per layer, for a causal sequence x:

    U, V, Q, K = SiLU(f1(LayerNorm(x)))                      # one fused projection
    A          = SiLU(Q K^T + rab) / n,  masked causal         # pointwise, no softmax
    x'         = x + f2(Dropout(LayerNorm(A V) * U))

``rab`` is a relative attention bias: a learned bias per position distance plus a
learned bias per bucket of the log time gap between the event being predicted and the
key event. ``n`` is the configured maximum length (not the batch's width), so a
sequence's output does not depend on what else is in its batch. Outputs and item
embeddings are L2-normalised and compared by dot product; training uses a sampled
softmax over uniformly drawn negatives.

Every layer can evaluate only some query positions (``rows``): the output at position
i depends on the layers below at positions <= i only, so ranking from the last
position needs the full attention below the top layer but one row of it at the top
(and a one-layer model is then O(length), which ``long_range.py`` relies on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TIME_BUCKETS = 64  # half-octaves of seconds: bucket 63 is ~68 years, past any gap in practice


@dataclass(frozen=True)
class HSTUConfig:
    """The public ML-1M configuration by default (generative-recommenders' hstu-*-final.gin)."""

    num_items: int  # largest item id; id 0 is padding
    max_len: int  # longest input sequence; the attention normaliser n
    dim: int = 50
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    absolute_positions: bool = True  # a learned embedding per position, as published for ML-1M


def time_buckets(query_ts: torch.Tensor, key_ts: torch.Tensor) -> torch.Tensor:
    """Bucket of |query_ts - key_ts| (seconds) on a log scale: two buckets per doubling."""
    gap = (query_ts - key_ts).abs().to(torch.float32)
    return torch.log2(gap + 1).mul_(2).to(torch.int64).clamp_(max=TIME_BUCKETS - 1)


class HSTULayer(nn.Module):
    """One HSTU block with its own relative attention bias tables."""

    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.heads, self.head_dim, self.n = cfg.heads, cfg.dim // cfg.heads, cfg.max_len
        self.f1 = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.f2 = nn.Linear(cfg.dim, cfg.dim)
        self.pos_bias = nn.Parameter(torch.zeros(cfg.max_len))  # by distance i - j >= 0
        self.time_bias = nn.Parameter(torch.zeros(TIME_BUCKETS))
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.f1.weight, std=0.02)
        nn.init.zeros_(self.f1.bias)
        nn.init.xavier_uniform_(self.f2.weight)
        nn.init.normal_(self.pos_bias, std=0.02)
        nn.init.normal_(self.time_bias, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor, buckets: torch.Tensor,
                rows: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, W, D) -> (B, Q, D) at query positions ``rows`` (B, Q), all W when None.

        ``mask`` (B, Q, W) says which keys each query may see; ``distance`` (B or 1, Q, W)
        and ``buckets`` (B, Q, W) index the bias tables.
        """
        b, w, d = x.shape
        u, v, q, k = F.silu(self.f1(F.layer_norm(x, (d,)))).chunk(4, dim=-1)
        if rows is not None:
            u, q, x = (t.gather(1, rows[..., None].expand(-1, -1, d)) for t in (u, q, x))
        bias = self.pos_bias[distance] + self.time_bias[buckets]  # (B, Q, W)
        h, e = self.heads, self.head_dim
        qh = q.view(b, -1, h, e).transpose(1, 2)  # (B, H, Q, E)
        kh = k.view(b, w, h, e).transpose(1, 2)
        vh = v.view(b, w, h, e).transpose(1, 2)
        attn = F.silu(qh @ kh.transpose(-1, -2) + bias[:, None]) / self.n
        attn = attn.masked_fill(~mask[:, None], 0.0)
        av = (attn @ vh).transpose(1, 2).reshape(b, -1, d)
        return x + self.f2(self.dropout(F.layer_norm(av, (d,)) * u))


class HSTU(nn.Module):
    """Item + position embeddings, HSTU layers, L2-normalised outputs."""

    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.items = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim) if cfg.absolute_positions else None
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.layers))
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.trunc_normal_(self.items.weight, std=0.02)
        if self.positions is not None:
            nn.init.trunc_normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of item ``ids`` (the output side of the dot product)."""
        return F.normalize(self.items(ids), dim=-1, eps=1e-6)

    def forward(self, ids: torch.Tensor, ts: torch.Tensor, lengths: torch.Tensor, query_ts: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        """Normalised outputs: (B, W, D) at every position, or (B, D) at each row's last one.

        ``ids``/``ts`` (B, W) are right-padded inputs (times in seconds), ``lengths`` (B,)
        their valid lengths (>= 1), ``query_ts`` (B, W) the time of the event each position
        predicts (the request time at the last position): the time bias measures gaps from
        it, as the request time is known when serving.
        """
        w = ids.shape[1]
        if w > self.cfg.max_len:
            raise ValueError(f"inputs of width {w} exceed max_len {self.cfg.max_len}")
        pos = torch.arange(w, device=ids.device)
        valid = pos[None, :] < lengths[:, None]  # (B, W)
        x = self.items(ids) * math.sqrt(self.cfg.dim)
        if self.positions is not None:
            x = x + self.positions(pos)[None]
        x = self.dropout(x) * valid[..., None]
        if len(self.layers) > 1 or not last_only:  # a one-layer model ranking needs no full attention
            full = self._geometry(pos[None, :], pos, valid, ts, query_ts)
        for layer in self.layers[:-1]:
            x = layer(x, *full, rows=None)
        if last_only:
            rows = (lengths - 1)[:, None]  # (B, 1)
            top = self._geometry(rows, pos, valid, ts, query_ts.gather(1, rows))
            return F.normalize(self.layers[-1](x, *top, rows=rows)[:, 0], dim=-1, eps=1e-6)
        return F.normalize(self.layers[-1](x, *full, rows=None), dim=-1, eps=1e-6)

    @staticmethod
    def _geometry(rows: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, ts: torch.Tensor,
                  query_ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask, distance, time buckets) of queries at ``rows`` (B or 1, Q) against every key."""
        distance = rows[..., None] - pos  # (B, Q, W)
        mask = (distance >= 0) & valid[:, None, :]
        buckets = time_buckets(query_ts[..., None], ts[:, None, :])
        return mask, distance.clamp(min=0), buckets


def sampled_softmax_loss(model: HSTU, out: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                         negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over ``valid`` positions of the softmax loss of each target against ``negatives``.

    ``out`` (B, P, D) normalised outputs, ``targets`` (B, P) ids, ``negatives`` (B, M) ids
    drawn per row and shared by its positions (one batched matmul, no per-position draw);
    a negative equal to the position's target is masked out.
    """
    pos_logit = (out * model.item_vectors(targets)).sum(-1, keepdim=True)  # (B, P, 1)
    neg_logit = out @ model.item_vectors(negatives).transpose(1, 2)  # (B, P, M)
    neg_logit = neg_logit.masked_fill(negatives[:, None, :] == targets[..., None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=-1) / temperature
    loss = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    return loss[valid].sum()


@torch.no_grad()
def rank_targets(model: HSTU, query: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all items by score (full ranking, no sampling).

    ``query`` (B, D) normalised, ``exclude`` (B, num_items + 1) bool: items not to rank
    (padding id 0, ids that are not items, items already rated); a target is never excluded.
    """
    ids = torch.arange(model.cfg.num_items + 1, device=query.device)
    scores = query @ model.item_vectors(ids).T  # (B, I)
    target_score = scores.gather(1, targets[:, None])
    beaten = (scores > target_score) & ~exclude
    return beaten.sum(1)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 50)) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item: 1/log2(rank + 2) inside the top k) and MRR."""
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1 / torch.log2(ranks + 2), 0.0).mean().item()
    out["mrr"] = (1 / (ranks + 1)).mean().item()
    return out
