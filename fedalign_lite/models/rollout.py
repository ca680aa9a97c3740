"""Sampling responses for on-policy RL, and their log-probabilities under the policy.

Generation batches every prompt (left padding, KV cache) through :mod:`.sampler` for Llama-family
models and ``generate`` for any other. The sampled token ids are kept, so the log-probs are taken on
exactly what was sampled (re-tokenizing the text can split it differently).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedalign_lite.data.chat import format_prompt
from fedalign_lite.models import sampler


@dataclass
class Rollout:
    input_ids: torch.Tensor        # (B, T) left-padded prompt, then the response, then padding
    attention_mask: torch.Tensor   # (B, T) 1 on prompt and response tokens (the response up to its EOS)
    completion_mask: torch.Tensor  # (B, T) 1 on response tokens only
    texts: list                    # B decoded responses (special tokens dropped)
    prompt_width: int              # responses start at this column
    sampled_logps: torch.Tensor | None = None   # (B, T - prompt_width) log pi(y_t) as the sampler saw it
                                                # (nats, untempered; 0 after EOS); None from ``generate``

    @property
    def response_mask(self) -> torch.Tensor:
        """(B, T - prompt_width): the completion mask over the response columns only."""
        return self.completion_mask[:, self.prompt_width:]

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from each row's first real token, as ``generate`` uses under left padding."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


@torch.no_grad()
def sample(model, tok, prompts: list[str], max_new_tokens: int = 24, temperature: float = 1.0,
           greedy: bool = False, response_prefix: str = "") -> Rollout:
    """One response per prompt (repeat a prompt G times for a group); RNG state comes from the caller.
    ``response_prefix`` is written for the model as the start of every response (it is part of the prompt,
    so not of the returned texts): what the model says once an answer has begun that way."""
    tok.padding_side = "left"
    try:
        enc = tok([format_prompt(p, tok) + response_prefix for p in prompts], return_tensors="pt", padding=True,
                  add_special_tokens=False)
    finally:
        tok.padding_side = "right"
    sampled_logps = None
    if sampler.supports(model):
        out, sampled_logps = sampler.decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                            temperature=temperature, greedy=greedy)
    else:
        was_training = model.training
        model.eval()
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             **({} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}))
        model.train(was_training)
    width = enc["input_ids"].shape[1]
    response = out[:, width:]
    # a response ends at its first EOS (kept: the policy chose to stop); what follows is padding
    is_eos = response == tok.eos_token_id
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0
    completion = (~after).long()
    attention = torch.cat([enc["attention_mask"], completion], 1)
    zeros = torch.zeros_like(enc["attention_mask"])
    texts = tok.batch_decode(response * completion + tok.pad_token_id * (1 - completion), skip_special_tokens=True)
    return Rollout(out, attention, torch.cat([zeros, completion], 1), [t.strip() for t in texts], width,
                   sampled_logps)


def rollout_logps(model, r: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Sum of log pi(response tokens) per row, (B,) in nats (of the tempered policy, as TRL takes them)."""
    return (rollout_token_logps(model, r, temperature) * r.response_mask).sum(-1)


def rollout_token_logps(model, r: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """log pi_T(y_t | x, y_<t) for every response column, (B, T - prompt_width); multiply by
    ``response_mask``. pi_T = softmax(logits / T), the distribution sampled at temperature T.

    Only the response positions go through the LM head (``logits_to_keep``), and the log-softmax is taken
    at the sampled token only (logit - logsumexp), never materialised over the vocabulary.
    """
    keep = r.input_ids.shape[1] - r.prompt_width + 1
    logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=r.position_ids,
                   use_cache=False, logits_to_keep=keep).logits[:, :-1].float() / temperature
    targets = r.input_ids[:, r.prompt_width:].unsqueeze(-1)
    return (torch.gather(logits, 2, targets).squeeze(-1) - torch.logsumexp(logits, -1))
