"""GRPO's group-normalized advantages and clipped loss (docs/foundations.md §5), per objective, and the
hypergradient update of objective weights (docs/foundations.md §7, docs/fedmoa.md §2 [PROPOSAL]).

Shapes: N = B prompts x G samples, rows grouped by prompt (the G samples of prompt b are rows
b*G .. b*G+G-1); T response tokens; M objectives.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), as TRL's GRPOTrainer (``scale_rewards="group"``,
    unbiased std). ``rewards`` is (N,) or (N, M) (one column per objective, each normalised on its own).
    A group whose rewards are all equal (a saturated objective) gets advantage 0."""
    shape = rewards.shape
    grouped = rewards.reshape(-1, group_size, *shape[1:]).double()
    mean = grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + eps)).reshape(shape).to(rewards.dtype)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
              advantages: torch.Tensor, clip_eps: float = 0.2, beta_kl: float = 0.0) -> torch.Tensor:
    """-(1/N) sum_j (1/|o_j|) sum_t [min(rho A_j, clip(rho, 1-eps, 1+eps) A_j) - beta KL_t]  (docs/foundations.md §5).

    ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are (N, T) per-token values (mask 1 on response tokens);
    ``advantages`` is (N,). KL_t is the k3 estimator pi_ref/pi - log(pi_ref/pi) - 1.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    per_token = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if beta_kl and ref_logp is not None:
        log_ratio = ref_logp - logp
        per_token = per_token - beta_kl * (torch.exp(log_ratio) - log_ratio - 1)
    per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    return -per_seq.mean()


def hypergradient_step(logits: torch.Tensor, h: torch.Tensor, lr: float) -> torch.Tensor:
    """One ascent step on weight logits s (w = softmax(s)) along dJ_primary/dw = h, through the softmax:
    s_m <- s_m + lr * w_m (h_m - sum_n w_n h_n).

    With theta' = theta + eta sum_m w_m g_m, dJ_p(theta')/dw_m = eta <grad J_p(theta'), g_m(theta)>; the next
    step's primary gradient stands in for grad J_p(theta') (Baydin et al. 2018), so h_m = <g_p^(k), g_m^(k-1)>
    up to the constant eta, which ``lr`` absorbs.
    """
    w = torch.softmax(logits, 0)
    return logits + lr * w * (h - (w * h).sum())
