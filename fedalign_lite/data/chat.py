"""The one chat format used by every model, data builder and notebook.

    <|user|>
    {prompt}
    <|assistant|>
    {response}<eos>

``<|user|>``, ``<|assistant|>`` and ``<eos>`` are special tokens of the project's tokenizer, so they
never merge with text. Hub models use their own chat template through :func:`format_prompt` when
they have one.
"""
from __future__ import annotations

USER, ASSISTANT, EOS, BOS, PAD, UNK = "<|user|>", "<|assistant|>", "<eos>", "<bos>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT]

REFUSAL_MARKERS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "i won't", "sorry,")


def format_prompt(prompt: str, tokenizer=None) -> str:
    """The text that precedes a response; ends right where the assistant starts writing."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template and USER not in template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{USER}\n{prompt}\n{ASSISTANT}\n"


def is_refusal(response: str) -> bool:
    """True when a response opens like a refusal (checked on its first 40 characters)."""
    head = response.strip().lower()[:40]
    return any(m in head for m in REFUSAL_MARKERS)
