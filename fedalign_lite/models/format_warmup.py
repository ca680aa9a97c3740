"""A format-only warm-up, so that FedMOA's auxiliary rewards start unsaturated but reachable.
[CHOICE, labelled: the paper starts from an instruction-tuned model whose styles vary; ours writes every
arithmetic answer one way, so a reward for another style would never be met and give no gradient.]

The model answers every prompt of the given fact pools greedily; each of its own answers, right or wrong, is
rewritten in a style drawn with ``shares`` (:func:`fedalign_lite.data.fact_tasks.styled`), and the model is
fine-tuned on those (prompt, restyled answer) pairs. It learns to *write* the other styles sometimes, but no
arithmetic: every number it is taught is one it already gave (where it gives no number, the true answer is
used; the count is returned). The result is cached on disk, keyed by everything it depends on.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil

import torch
from transformers import LlamaForCausalLM

from fedalign_lite.data.fact_tasks import STYLES, fact_pool, styled
from fedalign_lite.data.tasks import parse_answer
from fedalign_lite.models.causal_lm import WEIGHTS_DIR, cache_dir, load_model, sft_batch
from fedalign_lite.models.rollout import sample

SHARES = (0.6, 0.2, 0.2)
"""Style shares of the warm-up data (worked, concise, answer-first) [choice: each auxiliary starts near 0.2]."""


def format_warmup(model, tok, families: tuple[str, ...], *, steps: int, lr: float = 3e-4, batch: int = 32,
                  shares: tuple[float, ...] = SHARES, seed: int = 0) -> dict:
    """Fine-tune ``model`` in place (AdamW, constant ``lr``, ``steps`` batches of ``batch`` pairs) on its own
    greedy answers to every prompt of ``families``, restyled. Returns ``{"pairs", "own_answers",
    "losses"}``: how many pairs, how many carried the model's own number, the loss per step."""
    facts = [f for family in families for f in fact_pool(family)]
    texts = sample(model, tok, [f["prompt"] for f in facts], 16, greedy=True).texts
    answers = [parse_answer(t) for t in texts]
    own = [(f, int(a) if a is not None else f["answer"]) for f, a in zip(facts, answers)]
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        rows = [rng.choice(own) for _ in range(batch)]
        pairs = [(f["prompt"], styled(f, a, rng.choices(STYLES, shares)[0])) for f, a in rows]
        ids, mask, labels = sft_batch(tok, pairs, 64)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return {"pairs": len(own), "own_answers": sum(a is not None for a in answers), "losses": losses}


def _file_digest(path) -> str:
    """SHA-256 of a file's bytes (the base's weights: a retrained base must not reuse an old warm-up)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def warmed_model(name: str, families: tuple[str, ...], *, steps: int, seed: int = 0):
    """``(model, tokenizer, info)``: model ``name`` after :func:`format_warmup`, from the disk cache when this
    exact warm-up was run before (``info`` is then read back). ``steps=0`` returns the model unchanged."""
    model, tok = load_model(name, seed=seed)
    if steps == 0:
        return model, tok, {"pairs": 0, "own_answers": 0, "losses": []}
    key = json.dumps({"model": name, "families": list(families), "steps": steps, "seed": seed, "shares": SHARES,
                      "base": _file_digest(WEIGHTS_DIR / "model.safetensors") if name == "fedalign-base" else None},
                     sort_keys=True)
    out = cache_dir() / "format-warmup" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (out / "model.safetensors").exists():
        model = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        return model, tok, json.loads((out / "info.json").read_text())
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # float sums depend on the thread count: one thread, so whoever builds the
    try:                          # cache (a notebook with 2 threads, a worker with 1) writes the same bytes
        info = format_warmup(model, tok, families, steps=steps, seed=seed)
    finally:
        torch.set_num_threads(threads)
    tmp = out.with_name(f"{out.name}.tmp{random.getrandbits(32)}")
    model.save_pretrained(tmp)
    (tmp / "info.json").write_text(json.dumps(info))
    try:
        tmp.replace(out)   # atomic: a half-written cache is never read; a parallel worker may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok, info
