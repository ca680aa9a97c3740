"""REINFORCE with a baseline, one gradient per objective (FIRM's client, docs/firm.md §3)."""
from __future__ import annotations

import torch


def per_objective_gradients(logp: torch.Tensor, advantages: torch.Tensor, params: list) -> torch.Tensor:
    """(M, d): row m is grad of mean_j A_{j,m} log pi(y_j | x_j) over ``params``, flattened.

    ``logp`` (B,) sequence log-probs with a graph to ``params``; ``advantages`` (B, M), no graph.
    The rows are linear in the advantages, so ``lambda @ grads`` is the gradient of the
    lambda-weighted objective (tested against one autograd call).
    """
    grads = []
    for m in range(advantages.shape[1]):
        g = torch.autograd.grad((advantages[:, m] * logp).mean(), params, retain_graph=m < advantages.shape[1] - 1)
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    return torch.stack(grads)
