"""Evaluation metrics shared by the notebooks; each is tested against an independent reference."""
from __future__ import annotations

import numpy as np


def js_distance(p, q) -> np.ndarray:
    """Jensen-Shannon distance with natural log, row-wise: sqrt((KL(p||m) + KL(q||m)) / 2), m = (p+q)/2.

    Like ``scipy.spatial.distance.jensenshannon``: rows are renormalised to sum to 1 first; values lie in
    [0, sqrt(ln 2) ~ 0.8326]. A NaN (e.g. an all-zero row) becomes 0, as PluralLLM's ``calculate_JD`` does.
    """
    p, q = np.atleast_2d(np.asarray(p, dtype=np.float64)), np.atleast_2d(np.asarray(q, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    one_segment_per_row = np.zeros(p.shape, dtype=int)
    return np.nan_to_num(js_distance_segments(p, q, one_segment_per_row)[:, 0], nan=0.0)


def js_distance_segments(p, q, segments) -> np.ndarray:
    """JS distances (natural log) between many small distributions packed in rows, in one pass.

    ``p``, ``q`` are (B, N); ``segments`` (B, N) ints say which distribution each entry belongs to
    (-1 = padding). Returns (B, S) with S = max segment + 1, NaN where a row has no such segment.
    Each segment of ``p`` and ``q`` must already sum to 1 (softmax outputs, survey shares).
    """
    p, q, seg = (np.asarray(a) for a in (p, q, segments))
    p, q = p.astype(np.float64), q.astype(np.float64)
    B, S = seg.shape[0], int(seg.max()) + 1
    valid = seg >= 0
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / m), 0.0) + np.where(q > 0, q * np.log(q / m), 0.0)
    flat = (np.arange(B)[:, None] * S + np.where(valid, seg, 0))[valid]
    total, count = np.zeros(B * S), np.zeros(B * S)
    np.add.at(total, flat, terms[valid])
    np.add.at(count, flat, 1)
    out = np.sqrt(np.maximum(total / 2, 0.0))
    out[count == 0] = np.nan
    return out.reshape(B, S)


def fairness(scores) -> dict:
    """Group-fairness summaries of per-group scores (higher score = better for that group).

    ``fi_cv`` = 1 - std/mean (population std), the primary index; ``jain`` = (sum s)^2 / (n sum s^2);
    ``worst`` = min s. [PROPOSAL: PluralLLM's fairness formula is unknown, docs/pluralllm.md §6.]
    """
    s = np.asarray(scores, dtype=np.float64)
    return {"fi_cv": float(1 - s.std() / s.mean()), "jain": float(s.sum() ** 2 / (len(s) * (s ** 2).sum())),
            "worst": float(s.min())}


def steps_to_fraction(curve, fraction: float = 0.95, relative_to_start: bool = False) -> int:
    """Index of the first entry of ``curve`` reaching ``fraction`` of its maximum.

    With ``relative_to_start`` the target is ``curve[0] + fraction * (max - curve[0])``: 95% of the run's
    gain, which stays informative when the starting value is already close to the maximum.
    [PROPOSAL: the paper's convergence definition is unknown, docs/pluralllm.md §6.]
    """
    c = np.asarray(curve, dtype=np.float64)
    target = c[0] + fraction * (c.max() - c[0]) if relative_to_start else fraction * c.max()
    return int(np.argmax(c >= target - 1e-12))


def area_under_curve(curve) -> float:
    """Mean of the curve over its steps (trapezoid rule on unit spacing, divided by the span)."""
    c = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(c) / max(len(c) - 1, 1))


def mean_std(values) -> dict:
    """``{"per_seed", "mean", "std", "n"}`` over seeds (population std, 0 for a single value); the
    per-seed values are kept so that paired comparisons can be made from the results file."""
    v = np.asarray(values, dtype=np.float64)
    return {"per_seed": v.tolist(), "mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def lambda_dispersion(lambdas) -> float:
    """D1 (docs/firm.md §4): (1/N) sum_i ||lambda_i - mean_j lambda_j||^2 over the N clients' weights (N, M)."""
    lam = np.asarray(lambdas, dtype=np.float64)
    return float(((lam - lam.mean(0)) ** 2).sum(1).mean())


def update_dispersion(updates) -> float:
    """D2: (1/N) sum_i ||Delta_i - mean Delta||^2 / ||mean Delta||^2 over client updates (N, d)."""
    u = np.asarray(updates, dtype=np.float64)
    mean = u.mean(0)
    return float(((u - mean) ** 2).sum(1).mean() / max((mean ** 2).sum(), 1e-30))


def cosine_disagreement(updates) -> float:
    """D3: 1 - mean pairwise cosine similarity of the client updates (N, d), N >= 2."""
    u = np.asarray(updates, dtype=np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-30)
    cos = u @ u.T
    n = len(u)
    return float(1 - (cos.sum() - np.trace(cos)) / (n * (n - 1)))


def total_variation(curve) -> float:
    """sum_t |x_{t+1} - x_t|: how much a curve moves, up and down (smoothness of a reward curve)."""
    return float(np.abs(np.diff(np.asarray(curve, dtype=np.float64))).sum())
