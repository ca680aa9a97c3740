"""GRPO advantages against TRL's formula, the clipped loss by hand, the hypergradient on a quadratic."""
import math

import pytest
import torch
from trl.trainer.utils import nanstd

from fedalign_lite.objectives.grpo import group_advantages, grpo_loss, hypergradient_step


def _trl_advantages(rewards, G):
    """TRL GRPOTrainer, multi_objective_aggregation='sum_then_normalize', scale_rewards='group' (one reward)."""
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    return (rewards - mean) / (std + 1e-4)


def test_group_advantages_match_trl_including_a_saturated_group():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5,     # a mixed group
                            1.0, 1.0, 1.0, 1.0,     # saturated: every sample at the maximum
                            0.2, 0.9, 0.4, 0.0])
    ours = group_advantages(rewards, 4)
    torch.testing.assert_close(ours, _trl_advantages(rewards, 4))
    assert torch.equal(ours[4:8], torch.zeros(4))
    # per objective: each column is normalised on its own, so the saturated column is all zero
    both = torch.stack([rewards, torch.ones(12)], 1)
    adv = group_advantages(both, 4)
    torch.testing.assert_close(adv[:, 0], ours)
    assert torch.equal(adv[:, 1], torch.zeros(12))


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 3.0]), 2)
    std = math.sqrt(2.0)                                  # unbiased std of (1, 3)
    torch.testing.assert_close(adv, torch.tensor([-1 / (std + 1e-4), 1 / (std + 1e-4)]))


def test_grpo_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.4], [0.3, 0.2]]))
    old = torch.log(torch.tensor([[0.25, 0.4], [0.3, 0.4]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    # row 0: ratios (2.0 -> clipped to 1.2, 1.0); row 1: ratio 1.0 (second token masked)
    expected = -((min(2.0, 1.2) * 1 + 1.0) / 2 + (-2.0)) / 2
    assert grpo_loss(logp, old, None, mask, adv).item() == pytest.approx(expected)
    # k3 KL: with ref = old, token 0 of row 0 has r = 0.5: KL = 0.5 - log 0.5 - 1
    kl = 0.5 - math.log(0.5) - 1
    with_kl = grpo_loss(logp, old, old, mask, adv, beta_kl=0.1).item()
    assert with_kl == pytest.approx(expected + 0.1 * (kl + 0.0) / 2 / 2, rel=1e-6)   # row 1 has ref = pi: no KL


def test_hypergradient_matches_autograd_on_a_quadratic():
    # J_p(theta) = -||theta - a||^2 (primary), J_2 = -||theta - b||^2; one ascent step theta' = theta + eta sum w_m g_m
    a, b, theta, eta = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([0.5, 0.5]), 0.1
    g = lambda t, c: -2 * (t - c)  # noqa: E731  gradient of J = -||t - c||^2
    s = torch.tensor([0.3, -0.2], requires_grad=True)
    w = torch.softmax(s, 0)
    theta_next = theta + eta * (w[0] * g(theta, a) + w[1] * g(theta, b))
    J_next = -((theta_next - a) ** 2).sum()
    (exact,) = torch.autograd.grad(J_next, s)
    # ours: h_m = eta <grad J_p(theta'), g_m(theta)>, then the softmax chain rule
    with torch.no_grad():
        h = eta * torch.stack([g(theta_next, a) @ g(theta, a), g(theta_next, a) @ g(theta, b)])
        new = hypergradient_step(s.detach(), h, lr=1.0)
    torch.testing.assert_close(new - s.detach(), exact)
    assert new[0] > s[0]          # the weight of the primary objective rises while it improves
