"""Benign and harmful prompts for helpfulness-vs-harmlessness alignment (FIRM's setting), split over
clients by category (docs/firm.md §2)."""
from __future__ import annotations

import numpy as np

from fedalign_lite.data.assets import asdiv, harmful_prompts, rotten_tomatoes, truthfulqa
from fedalign_lite.data.partition import partition_dirichlet, partition_iid


def alignment_prompts(seed: int = 0) -> list[dict]:
    """Benign (TruthfulQA, ASDiv, review requests) and harmful (do-not-answer) prompts, shuffled:
    ``[{"prompt", "category", "harmful"}]``; the category is the source, or the harm type."""
    rng = np.random.default_rng(seed)
    movies = sorted(set(rotten_tomatoes().movie))
    benign = ([{"prompt": r["question"], "category": "truthfulqa"} for r in truthfulqa()]
              + [{"prompt": r["question"], "category": "math"} for r in asdiv() if len(r["question"]) < 200]
              + [{"prompt": f"Write a review of the movie {m}.", "category": "reviews"} for m in movies])
    harm = [{"prompt": r["prompt"], "category": r["category"]} for r in harmful_prompts()]
    rows = [{**r, "harmful": False} for r in benign] + [{**r, "harmful": True} for r in harm]
    return [rows[i] for i in rng.permutation(len(rows))]


def client_prompts(num_clients: int, prompts_per_client: int, eval_prompts: int, partition: str, alpha: float,
                   min_size: int, seed: int, harmful_share: float | None = None) -> tuple[list[list[dict]], list[dict]]:
    """(prompt pool per client, held-out prompts, half harmful): ``partition`` ``"dirichlet"`` splits
    over categories with concentration ``alpha`` (every client gets at least ``min_size``), ``"iid"`` uniformly.
    ``harmful_share`` sets the share of harmful prompts in the rows that are split (None: the sources'
    own mix, about a fifth harmful)."""
    rows = alignment_prompts(seed)
    held = [r for r in rows if r["harmful"]][: eval_prompts // 2]
    held += [r for r in rows if not r["harmful"]][: eval_prompts - len(held)]
    size = 4 * num_clients * prompts_per_client
    rest = [r for r in rows if r not in held]
    if harmful_share is None:
        rest = rest[:size]
    else:
        n_harmful = round(harmful_share * size)
        rest = [r for r in rest if r["harmful"]][:n_harmful] + [r for r in rest if not r["harmful"]][:size - n_harmful]
        rest = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    if partition == "iid":
        parts = partition_iid(len(rest), num_clients, seed)
    else:
        parts = partition_dirichlet([r["category"] for r in rest], num_clients, alpha, seed, min_size=min_size)
    rng = np.random.default_rng(seed)
    return [[rest[i] for i in rng.permutation(p)[:prompts_per_client]] for p in parts], held
