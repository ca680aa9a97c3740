"""One embedding per (question, option), computed once and cached (GPO's ``get_embeds``, docs/foundations.md §4).

GPO embeds the Alpaca prompt "Answer the following question by picking ONE of the given options",
the question, the lettered options and the chosen option, mean-pooling the last hidden layer of the
base LLM. We embed the same text with MiniLM (``embedder="minilm"``, 384-d, default) or with any
model :func:`~fedalign_lite.models.load_model` knows, mean-pooled as GPO does (``"fedalign-base"``,
256-d; ``"smollm2-135m"``, 576-d; ``"hub:<id>"``).

The cache is a safetensors file under ``$FEDALIGN_CACHE/embeddings`` named by a hash of the texts
and the embedder, so changed data or another embedder never reads a stale cache.
"""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file, save_file

from fedalign_lite.data.assets import minilm_embedder
from fedalign_lite.models.causal_lm import cache_dir, load_model

OPTION_TEXTS = ("gpo", "option")


def option_prompts(record: dict, style: str = "gpo") -> list[str]:
    """The text embedded for each option of ``record``.

    ``"gpo"`` (faithful): GPO's prompt, the instruction, the question, the lettered listing of every
    option, then the option. Mean-pooled, the options of one question then embed almost alike.
    ``"option"`` [fix]: the question and this option only, so options differ in what is embedded.
    """
    if style == "option":
        return [f"{record['question']} Answer: {o}" for o in record["options"]]
    if style != "gpo":
        raise ValueError(f"option text style={style!r} is not allowed; choose one of {list(OPTION_TEXTS)}")
    letters = [chr(ord("A") + i) for i in range(len(record["options"]))]
    listing = "\n".join(f"{a}. {o}" for a, o in zip(letters, record["options"]))
    head = (f"Answer the following question by picking ONE of the given options\n\n"
            f"{record['question']}\n\nOptions:\n{listing}\n\nAnswer: ")
    return [f"{head}{a}. {o}" for a, o in zip(letters, record["options"])]


@torch.no_grad()
def _embed_lm(texts: list[str], name: str) -> torch.Tensor:
    model, tok = load_model(name)
    out = []
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], return_tensors="pt", padding=True)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1))          # attention-masked mean, as GPO
    return torch.cat(out)


def option_embeddings(records: list[dict], embedder: str = "minilm", cache: bool = True,
                      style: str = "gpo") -> list[torch.Tensor]:
    """Per record, a float32 tensor (options, D): the embedding of each option's text (:func:`option_prompts`)."""
    texts = [t for r in records for t in option_prompts(r, style)]
    key = hashlib.sha256(json.dumps([embedder, texts]).encode()).hexdigest()[:20]
    path = cache_dir() / "embeddings" / f"{key}.safetensors"
    if cache and path.exists():
        flat = load_file(str(path))["embeddings"]
    else:
        if embedder == "minilm":
            flat = torch.from_numpy(minilm_embedder().encode(texts, batch_size=64, convert_to_numpy=True))
        else:
            flat = _embed_lm(texts, embedder)
        flat = flat.float().contiguous()
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"embeddings": flat}, str(tmp))
            tmp.replace(path)
    sizes = [len(r["options"]) for r in records]
    return list(torch.split(flat, sizes))
