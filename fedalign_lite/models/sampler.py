"""A sampler for small Llama-family models: ``generate``'s tokens with a fraction of its Python per token.

At our sizes (4 layers, width 256, 16 rows) a decoding step is a few hundred microseconds of arithmetic
and several milliseconds of framework code: ``generate``'s logits processors and stopping criteria, the
cache object, mask construction, and PEFT's LoRA wrappers around every projection. This sampler
decodes with plain tensor ops:

* the LoRA update is merged into each projection's weight once per call (``W + scaling * B @ A``), and
  q, k, v (and gate, up) are fused into one matmul each;
* keys and values go into a cache preallocated for prompt + ``max_new_tokens`` columns, and each step
  attends over a view of it (scaled dot-product attention, GQA where the model has it);
* rotary cos/sin come from the model's own rotary module, for every position at once;
* decoding stops when every row has emitted EOS; finished rows emit padding, as ``generate`` does.

Under greedy decoding its tokens equal ``generate``'s (tests/test_sampler.py). Sampling at temperature
T draws from softmax(logits / T), the distribution ``generate`` samples with top-k and top-p off, by
inverting the CDF with one uniform per row: the same distribution, not the same draws
(:func:`draw`). Models it does not cover (:func:`supports`) go through ``generate`` in :mod:`.rollout`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _base(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    """True for the Llama architecture without projection biases (fedalign-base, random-tiny, SmolLM2)."""
    c = _base(model).config
    return (c.model_type == "llama" and c.hidden_act == "silu" and not c.attention_bias and not c.mlp_bias
            and getattr(c, "pretraining_tp", 1) == 1)


def effective_weight(linear) -> torch.Tensor:
    """(out, in) weight a projection applies: a PEFT LoRA layer's base weight plus its active adapters'
    ``scaling * B @ A`` (none while adapters are disabled or already merged); a plain Linear's weight."""
    if not hasattr(linear, "get_delta_weight"):
        return linear.weight
    w = linear.get_base_layer().weight
    if linear.disable_adapters or linear.merged:
        return w
    for name in linear.active_adapters:
        if name in linear.lora_A:
            w = w + linear.get_delta_weight(name)
    return w


def draw(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of ``logits`` (B, V) from softmax(logits / temperature), (B,) ids.

    Inverse-CDF sampling with one uniform per row (torch's global RNG): the distribution
    ``torch.multinomial`` draws from, at about 1/40 of its cost for a 4,096-token vocabulary on CPU.
    """
    cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
    u = torch.rand(logits.shape[0], 1) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=logits.shape[1] - 1)


@dataclass
class _Layer:
    norm1: torch.Tensor   # (H,)
    qkv: torch.Tensor     # ((heads + 2 kv_heads) * head_dim, H)
    o: torch.Tensor       # (H, heads * head_dim)
    norm2: torch.Tensor   # (H,)
    gate_up: torch.Tensor # (2 I, H)
    down: torch.Tensor    # (H, I)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
           eos_token_id: int, pad_token_id: int, temperature: float = 1.0, greedy: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue left-padded prompts ``input_ids`` (B, P) with up to ``max_new_tokens`` tokens.

    Returns ``(tokens, token_logps)``: (B, P + N) ids, N <= ``max_new_tokens`` (fewer when every row
    finished early; after its EOS a row holds ``pad_token_id``), and (B, N) log pi(y_t | x, y_<t) in nats
    under the untempered policy for each generated token (0 after a row's EOS).
    """
    base = _base(model)
    cfg, core = base.config, base.model
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    eps = cfg.rms_norm_eps
    layers = [_Layer(blk.input_layernorm.weight,
                     torch.cat([effective_weight(getattr(blk.self_attn, p)) for p in ("q_proj", "k_proj", "v_proj")]),
                     effective_weight(blk.self_attn.o_proj), blk.post_attention_layernorm.weight,
                     torch.cat([effective_weight(blk.mlp.gate_proj), effective_weight(blk.mlp.up_proj)]),
                     effective_weight(blk.mlp.down_proj)) for blk in core.layers]
    embed, head = core.embed_tokens.weight, effective_weight(base.lm_head)
    splits = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)

    B, P = input_ids.shape
    L = P + max_new_tokens
    key_valid = torch.ones(B, L, dtype=torch.bool)
    key_valid[:, :P] = attention_mask.bool()
    # positions count real tokens, as generate's under left padding (pads get 1; they are never attended)
    positions = key_valid.long().cumsum(-1) - 1
    positions[:, :P].masked_fill_(~key_valid[:, :P], 1)
    cos, sin = core.rotary_emb(embed[:1], positions)          # (B, L, head_dim) each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)               # broadcast over heads
    k_cache = [torch.zeros(B, kv_heads, L, head_dim, dtype=embed.dtype) for _ in layers]
    v_cache = [torch.zeros(B, kv_heads, L, head_dim, dtype=embed.dtype) for _ in layers]
    gqa = {"enable_gqa": True} if kv_heads != heads else {}

    def forward(ids: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the last position, for ``ids`` (B, S) at columns start..start+S-1."""
        S, end = ids.shape[1], start + ids.shape[1]
        x = F.embedding(ids, embed)
        c, s = cos[:, :, start:end], sin[:, :, start:end]
        for i, lyr in enumerate(layers):
            q, k, v = F.linear(_rms_norm(x, lyr.norm1, eps), lyr.qkv).split(splits, -1)
            q = _rotate(q.view(B, S, heads, head_dim).transpose(1, 2), c, s)
            k_cache[i][:, :, start:end] = _rotate(k.view(B, S, kv_heads, head_dim).transpose(1, 2), c, s)
            v_cache[i][:, :, start:end] = v.view(B, S, kv_heads, head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k_cache[i][:, :, :end], v_cache[i][:, :, :end], attn_mask=mask,
                                               **gqa)
            x = x + F.linear(a.transpose(1, 2).reshape(B, S, heads * head_dim), lyr.o)
            g, u = F.linear(_rms_norm(x, lyr.norm2, eps), lyr.gate_up).chunk(2, -1)
            x = x + F.linear(F.silu(g) * u, lyr.down)
        return F.linear(_rms_norm(x[:, -1], core.norm.weight, eps), head).float()

    # prompt: causal over real keys; a pad query also sees itself, so no attention row is empty
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    prompt_mask = (causal & key_valid[:, None, None, :P]) | torch.eye(P, dtype=torch.bool)
    logits = forward(input_ids, 0, prompt_mask)
    tokens, logps = [], []
    unfinished = torch.ones(B, dtype=torch.bool)
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1) if greedy else draw(logits, temperature)
        logp = torch.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1)
        nxt = torch.where(unfinished, nxt, pad_token_id)
        tokens.append(nxt)
        logps.append(torch.where(unfinished, logp, 0.0))
        unfinished &= nxt != eos_token_id
        if not unfinished.any() or step == max_new_tokens - 1:
            break
        col = P + step
        logits = forward(nxt[:, None], col, key_valid[:, None, None, :col + 1])
    return torch.cat([input_ids, torch.stack(tokens, 1)], 1), torch.stack(logps, 1)
