"""Preference pairs ``{"prompt", "chosen", "rejected"}``: building them and tokenizing them as TRL does."""
from __future__ import annotations

import functools
import random
import zlib

import numpy as np
import torch

from fedalign_lite.data import assets
from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.partition import partition_dirichlet, partition_iid, partition_natural
from fedalign_lite.data.tasks import code_task
from fedalign_lite.errors import ConfigError


def review_pairs(seed: int = 0) -> list[dict]:
    """Sentiment preference pairs from Rotten Tomatoes: for one movie, a fresh snippet is chosen
    over a rotten one (like FedPDPO's IMDB triple). ``movie`` is kept for partitioning."""
    return [dict(p) for p in _review_pairs(seed)]


@functools.lru_cache(maxsize=4)
def _review_pairs(seed: int) -> tuple:
    rt = assets.rotten_tomatoes()
    rt = rt[rt.kind == "review"]
    rng = random.Random(seed)
    pairs = []
    for movie, g in sorted(rt.groupby("movie"), key=lambda kv: kv[0]):
        fresh, rotten = g.text[g.label == 1].tolist(), g.text[g.label == 0].tolist()
        rng.shuffle(fresh)
        rng.shuffle(rotten)
        for c, r in zip(fresh, rotten):
            pairs.append({"prompt": f"Write a review of the movie {movie}.", "chosen": c, "rejected": r,
                          "movie": movie})
    rng.shuffle(pairs)
    return tuple(pairs)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_pair(tok, pair: dict) -> dict:
    """``{"prompt_ids", "chosen_ids", "rejected_ids"}`` exactly as TRL's DPOTrainer builds them:
    EOS text appended to both responses; the completion starts where the tokenized prompt and the
    tokenized prompt+response first differ."""
    prompt = format_prompt(pair["prompt"], tok)
    ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    p, pc, pr = ids(prompt), ids(prompt + pair["chosen"] + tok.eos_token), ids(prompt + pair["rejected"] + tok.eos_token)
    n = min(_common_prefix(p, pc), _common_prefix(p, pr))
    return {"prompt_ids": p[:n], "chosen_ids": pc[n:], "rejected_ids": pr[n:]}


def collate(tokenized: list[dict], pad_id: int, max_length: int | None = None) -> dict:
    """Stack B tokenized pairs into (2B, T) tensors: rows [chosen_1..chosen_B, rejected_1..rejected_B],
    right-padded, truncated to ``max_length``. Keys: input_ids, attention_mask, completion_mask."""
    seqs, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for t in tokenized:
            seqs.append(t["prompt_ids"] + t[side])
            masks.append([0] * len(t["prompt_ids"]) + [1] * len(t[side]))
    width = max(len(s) for s in seqs)
    if max_length:
        width = min(width, max_length)
    ids = torch.full((len(seqs), width), pad_id)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        s, m = s[:width], m[:width]
        ids[i, : len(s)], att[i, : len(s)], comp[i, : len(m)] = torch.tensor(s), 1, torch.tensor(m)
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


def _broken_code(solution: str, rng: random.Random) -> str:
    """A subtly wrong variant of a one-line solution: an off-by-one constant or a swapped operator."""
    head, body = solution.rsplit("\n", 1)
    swaps = [(" + ", " - "), (" - ", " + "), (" * ", " + "), (" > ", " >= "), (" % ", " // ")]
    for a, b in swaps:
        if a in body and rng.random() < 0.5:
            return f"{head}\n{body.replace(a, b, 1)}"
    k = body.rstrip().split()[-1]
    return f"{head}\n{body[: len(body) - len(k)]}{int(k) + rng.choice([-1, 1])}"


def code_pairs(n: int, seed: int = 0) -> list[dict]:
    """Code preference pairs: a correct one-line function is chosen over a subtly broken one."""
    rng = random.Random(seed)
    tasks = [code_task(rng) for _ in range(n)]
    return [{"prompt": t["prompt"], "chosen": t["solution"], "rejected": _broken_code(t["solution"], rng)}
            for t in tasks]


def pair_group(pair: dict, groups: int = 5) -> int:
    """A stable pseudo-category of a review pair (a hash of its movie into ``groups`` buckets); the
    label that the Dirichlet and natural partitions of review pairs split on."""
    return zlib.crc32(pair["movie"].encode()) % groups


def split_clients(pairs: list[dict], cfg) -> list[np.ndarray]:
    """Client index lists for ``pairs`` according to ``cfg.partition`` (``iid``, ``dirichlet`` over
    :func:`pair_group` with ``cfg.alpha``, or one client per group), ``cfg.num_clients`` and ``cfg.data_seed``."""
    labels = [pair_group(p) for p in pairs]
    if cfg.partition == "iid":
        return partition_iid(len(pairs), cfg.num_clients, cfg.data_seed)
    if cfg.partition == "dirichlet":
        return partition_dirichlet(labels, cfg.num_clients, cfg.alpha, cfg.data_seed)
    names, parts = partition_natural(labels)
    if len(parts) != cfg.num_clients:
        raise ConfigError(f"partition={cfg.partition!r} gives one client per group: num_clients must be "
                          f"{len(parts)}, got {cfg.num_clients}")
    return parts
