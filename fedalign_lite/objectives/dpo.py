"""Sequence log-probabilities and the DPO loss (docs/foundations.md §6), checked against TRL in the tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """sum_t log softmax(logits)[y_t] over completion tokens, shape (B,) in nats; logits (B, T, V)."""
    token_logps = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def completion_start(completion_mask: torch.Tensor) -> int:
    """The earliest column of a (B, T) completion mask that holds a response token (1 if none does):
    positions from ``start - 1`` on are all that the sequence log-probs need from the LM head."""
    has = completion_mask.any(1)
    return int(completion_mask[has].argmax(1).min()) if has.any() else 1


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """sum_t log pi(y_t | x, y_<t) over completion tokens, shape (B,) in nats.

    All inputs are (B, T); ``completion_mask`` is 1 on the response tokens. Only the positions that
    predict a completion token go through the LM head (``logits_to_keep``): from the column before
    the earliest response on, which saves the head and the softmax over every row's prompt.
    """
    first = completion_start(completion_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   logits_to_keep=input_ids.shape[1] - first + 1).logits
    return completion_logps(logits, input_ids[:, first - 1:], completion_mask[:, first - 1:])


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float):
    """L = -log sigma(beta[(log pi_w - log ref_w) - (log pi_l - log ref_l)]), mean over pairs.

    Inputs are sequence log-probs of shape (B,). Returns ``(loss, chosen_rewards, rejected_rewards)``
    where the implicit rewards r = beta * log(pi/ref) have shape (B,) and are detached.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio)).mean()
    return loss, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, ties: float = 0.0) -> float:
    """Fraction of pairs whose chosen reward is strictly above the rejected one, a tie scoring ``ties``:
    0 is TRL's ``rewards/accuracies``; 0.5 scores an untrained model (every implicit reward 0) at chance."""
    return ((chosen_rewards > rejected_rewards).float() + ties * (chosen_rewards == rejected_rewards).float()).mean().item()
