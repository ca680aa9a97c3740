"""GPO, the group-preference predictor PluralLLM trains (docs/foundations.md §4; Zhao, Dang & Grover 2024).

One token per (question, option): its embedding x and the group's probability mass y on that
option. The sequence is [context tokens (x, y)] ++ [target tokens (x, 0)]; every token attends only
to the context tokens, so a target's prediction depends on the group's known answers and never on
other targets. A Gaussian head predicts (mean, log std) per token; the means of one target question's
options are softmax-normalised into a distribution, and training minimises the Gaussian negative
log-likelihood of the true shares.

Shapes: B groups in a batch, Nc context tokens, Nt target tokens, D embedding width.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GPOBatch:
    xc: torch.Tensor        # (B, Nc, D) context option embeddings; padding rows are all zero
    yc: torch.Tensor        # (B, Nc, 1) the group's share of each context option
    xt: torch.Tensor        # (B, Nt, D) target option embeddings
    yt: torch.Tensor        # (B, Nt, 1) true shares of the target options (the labels)
    tar_q: torch.Tensor     # (B, Nt) long: which target question each target token belongs to; -1 = padding
    ctx_pad: torch.Tensor   # (B, Nc) bool, True = padding
    ctx_options: torch.Tensor | None = None   # (B, Nc, 1) options of each context token's question; 0 = padding

    @property
    def tar_pad(self) -> torch.Tensor:
        return self.tar_q < 0


def build_mlp(dim_in: int, dim_hidden: int, dim_out: int, depth: int) -> nn.Sequential:
    """``depth`` Linear layers with ReLU between them (GPO's ``build_mlp``)."""
    layers = [nn.Linear(dim_in, dim_hidden), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(dim_hidden, dim_hidden), nn.ReLU()]
    layers.append(nn.Linear(dim_hidden, dim_out))
    return nn.Sequential(*layers)


def context_only_mask(num_ctx: int, num_tar: int) -> torch.Tensor:
    """(Nc+Nt, Nc+Nt) bool attention mask, True = may not attend: every query sees the context keys only.

    GPO writes the same mask additively (0 / -inf); bool matches the bool key-padding mask.
    """
    mask = torch.ones(num_ctx + num_tar, num_ctx + num_tar, dtype=torch.bool)
    mask[:, :num_ctx] = False
    return mask


def segment_softmax(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Softmax of ``values`` (B, N) within each (row, segment id); entries with segment -1 give 0."""
    B, N = values.shape
    valid = segments >= 0
    num_seg = int(segments.max().item()) + 1 if valid.any() else 1
    flat = (torch.arange(B).unsqueeze(1) * num_seg + segments.clamp(min=0)).reshape(-1)
    v = values.masked_fill(~valid, float("-inf")).reshape(-1)
    seg_max = torch.full((B * num_seg,), float("-inf")).scatter_reduce(0, flat, v, "amax")
    e = torch.exp(v - seg_max[flat]).masked_fill(~valid.reshape(-1), 0.0)
    seg_sum = torch.zeros(B * num_seg).index_add(0, flat, e)
    return (e / seg_sum[flat].clamp(min=1e-30)).reshape(B, N)


CONTEXT_INPUTS = ("share", "relative")


class GPO(nn.Module):
    """GPO's transformer (``models/tnp.py``): embedder MLP, encoder, Gaussian head.

    ``context_input`` is what a context token carries beside its option embedding: ``"share"``, the group's
    share y (GPO's code), or ``"relative"`` [our fix], K y - 1 for a question with K options: 0 when the
    group answers like a uniform distribution, so that what sets a group apart is what the token carries.
    """

    def __init__(self, dim_x: int, d_model: int = 128, emb_depth: int = 4, dim_feedforward: int = 128,
                 nhead: int = 4, num_layers: int = 6, dropout: float = 0.0, context_input: str = "share"):
        super().__init__()
        if context_input not in CONTEXT_INPUTS:
            raise ValueError(f"context_input={context_input!r} is not allowed; choose one of {list(CONTEXT_INPUTS)}")
        self.context_input = context_input
        self.embedder = build_mlp(dim_x + 1, d_model, d_model, emb_depth)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, 2))

    def forward(self, batch: GPOBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, std), each (B, Nt): per-question softmax of the predicted means, and exp(log std)."""
        num_ctx, num_tar = batch.xc.shape[1], batch.xt.shape[1]
        yc = batch.yc
        if self.context_input == "relative":
            yc = (batch.yc * batch.ctx_options - 1).masked_fill(batch.ctx_pad.unsqueeze(-1), 0.0)
        tokens = torch.cat([torch.cat([batch.xc, yc], -1),
                            torch.cat([batch.xt, torch.zeros_like(batch.yt)], -1)], 1)
        padding = torch.cat([batch.ctx_pad, batch.tar_pad], 1)
        h = self.encoder(self.embedder(tokens), mask=context_only_mask(num_ctx, num_tar),
                         src_key_padding_mask=padding)
        mean, log_std = self.head(h[:, num_ctx:]).unbind(-1)
        return segment_softmax(mean, batch.tar_q), torch.exp(log_std)


LOSS_NORMS = ("authors", "per-group-sum")


def gpo_loss(probs: torch.Tensor, std: torch.Tensor, batch: GPOBatch, norm: str = "authors") -> torch.Tensor:
    """-log N(y | softmax mean, std) over the target tokens (B, Nt), padded tokens counting as 0.

    ``norm="authors"``: the mean over all B x Nt slots, padded ones included (PluralLLM's and GPO's code);
    ``"per-group-sum"``: the sum over each group's real targets, averaged over the B groups (Nt times the
    first when nothing is padded, so its scale moves with the batch's target count).
    """
    log_lik = torch.distributions.Normal(probs, std).log_prob(batch.yt.squeeze(-1)).masked_fill(batch.tar_pad, 0.0)
    if norm == "authors":
        return -log_lik.mean()
    if norm == "per-group-sum":
        return -log_lik.sum(1).mean()
    raise ValueError(f"norm={norm!r} is not allowed; choose one of {list(LOSS_NORMS)}")


def _pad(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    return torch.stack([torch.cat([r, r.new_zeros((length - len(r),) + r.shape[1:])]) for r in rows])


def make_batch(groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]],
               ctx_questions: list[list[int]], tar_questions: list[list[int]]) -> GPOBatch:
    """Stack B groups into one padded batch.

    Args:
        groups: per group, (x, y) lists indexed by question: x[q] (options, D), y[q] (options,).
        ctx_questions, tar_questions: per group, the question indices used as context and as targets.
    """
    xc, yc, kc, xt, yt, tq = [], [], [], [], [], []
    for (x, y), ctx, tar in zip(groups, ctx_questions, tar_questions):
        xc.append(torch.cat([x[q] for q in ctx]) if ctx else x[0][:0])
        yc.append(torch.cat([y[q] for q in ctx]) if ctx else y[0][:0])
        kc.append(torch.cat([torch.full((len(y[q]),), float(len(y[q]))) for q in ctx]) if ctx else y[0][:0])
        xt.append(torch.cat([x[q] for q in tar]))
        yt.append(torch.cat([y[q] for q in tar]))
        tq.append(torch.cat([torch.full((len(y[q]),), i, dtype=torch.long) for i, q in enumerate(tar)]))
    nc, nt = max(len(r) for r in xc), max(len(r) for r in xt)
    ctx_pad = torch.stack([torch.arange(nc) >= len(r) for r in xc])
    tar_q = torch.stack([torch.cat([r, torch.full((nt - len(r),), -1, dtype=torch.long)]) for r in tq])
    return GPOBatch(_pad(xc, nc), _pad(yc, nc).unsqueeze(-1), _pad(xt, nt), _pad(yt, nt).unsqueeze(-1),
                    tar_q, ctx_pad, _pad(kc, nc).unsqueeze(-1))


def sample_context_targets(questions: list[int], num_ctx: int, num_tar: int,
                           rng: random.Random) -> tuple[list[int], list[int]]:
    """A random permutation of ``questions`` split into disjoint context and target sets (GPO's collate)."""
    perm = list(questions)
    rng.shuffle(perm)
    return perm[:num_ctx], perm[num_ctx:num_ctx + num_tar]
