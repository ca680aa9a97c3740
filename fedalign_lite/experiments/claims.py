"""Claims as data: each paper's claims and the signal checks its experiment must pass, evaluated on
per-seed values of paired runs (the same evaluation set for every seed and method), with intervals.

A **claim** is a statement the paper makes, tested on a per-seed difference whose sign the paper
predicts (e.g. accuracy of FedPDPO minus accuracy of FedAvg-DPO, final round, one value per seed).
A **signal check** is a statement that must hold for the experiment to mean anything at all (e.g.
"FedAvg's accuracy rises above its round-0 value"); it holds when its 95% interval excludes 0 in the
stated direction. Verdicts:

* ``reproduced``: the 95% t-interval of the mean excludes 0 on the paper's side;
* ``direction only``: the mean has the paper's sign, but the interval includes 0;
* ``not reproduced``: the mean has the other sign (or is 0), or the interval excludes 0 on the other side;
* ``by construction``: the claim follows from what is sent or computed (bytes, say); it holds on every
  seed, whatever the signal checks say;
* ``no signal``: a signal check of the experiment failed, so the numbers test nothing, whatever they are.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fedalign_lite.errors import ConfigError

VERDICTS = ("reproduced", "direction only", "not reproduced", "by construction", "no signal")
CLAIMS_KEYS = ("paper", "preset", "seeds", "wall_s", "commit", "signal", "claims")
"""The top-level keys of every ``figures/<paper>/claims.json``."""
BOOTSTRAP_MIN_N = 5
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Claim:
    """One claim of a paper. ``metric`` says what the per-seed values are; ``direction`` is +1 when the
    paper predicts them > 0 and -1 when < 0."""

    id: str
    statement: str
    paper_value: str
    metric: str
    direction: int = 1
    by_construction: bool = False

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ConfigError(f"claim {self.id!r}: direction must be 1 or -1, got {self.direction!r}")


@dataclass(frozen=True)
class SignalCheck:
    """A precondition of the experiment, on per-seed values that must be > 0 (``direction`` 1), < 0
    (-1), or different from 0 on either side (0: "A differs from B")."""

    id: str
    statement: str
    direction: int = 1

    def __post_init__(self) -> None:
        if self.direction not in (1, -1, 0):
            raise ConfigError(f"signal check {self.id!r}: direction must be 1, -1 or 0, got {self.direction!r}")


def interval(values, level: float = 0.95) -> dict:
    """``{"per_seed", "n", "mean", "std", "ci95", "bootstrap95"?}`` of per-seed values.

    ``std`` is the sample standard deviation (ddof 1); ``ci95`` the two-sided t-interval of the mean,
    mean -+ t_{(1+level)/2, n-1} * std / sqrt(n) (``[nan, nan]`` for n < 2); ``bootstrap95`` the
    percentile interval of 10,000 resampled means (seeded, so reproducible), given when n >= 5.
    Non-finite values are an error: a run that produced NaN must be fixed, not averaged away.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ConfigError("interval needs at least one per-seed value, got none")
    if not np.all(np.isfinite(v)):
        raise ConfigError(f"per-seed values must be finite, got {v.tolist()}")
    n, mean = int(v.size), float(v.mean())
    out = {"per_seed": v.tolist(), "n": n, "mean": mean}
    if n < 2:
        return {**out, "std": float("nan"), "ci95": [float("nan"), float("nan")]}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, ci95=[mean - half, mean + half])
    if n >= BOOTSTRAP_MIN_N:
        rng = np.random.default_rng(0)
        means = v[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(1)
        out["bootstrap95"] = [float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))]
    return out


def excludes_zero(ci: list, direction: int) -> bool:
    """Whether the interval lies entirely on the ``direction`` side of 0 (False for an undefined one)."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return False
    return lo > 0 if direction > 0 else hi < 0


def verdict(stat: dict, direction: int, *, by_construction: bool = False, signal_ok: bool = True) -> str:
    """The graded verdict (module docstring) of per-seed statistics from :func:`interval`. A claim that
    holds by construction (what is sent, say) does not depend on training, so failed signal checks do
    not make it ``no signal``."""
    values = np.asarray(stat["per_seed"])
    if by_construction:
        return "by construction" if np.all(direction * values > 0) else "not reproduced"
    if not signal_ok:
        return "no signal"
    if excludes_zero(stat["ci95"], direction):
        return "reproduced"
    if direction * stat["mean"] <= 0 or excludes_zero(stat["ci95"], -direction):
        return "not reproduced"
    return "direction only"


def check_signal(check: SignalCheck, values) -> dict:
    """A signal check's row of ``claims.json``: ``{"id", "statement", "per_seed", "mean", "ci95", "holds"}``."""
    stat = interval(values)
    sides = (1, -1) if check.direction == 0 else (check.direction,)
    return {"id": check.id, "statement": check.statement, "per_seed": stat["per_seed"], "mean": stat["mean"],
            "ci95": stat["ci95"], "holds": any(excludes_zero(stat["ci95"], side) for side in sides)}


def evaluate_claim(claim: Claim, values, *, signal_ok: bool = True) -> dict:
    """A claim's row of ``claims.json``: ``{"id", "statement", "paper_value", "metric", "per_seed", "mean",
    "ci95", "n", "verdict"}`` (plus ``std`` and, for n >= 5, ``bootstrap95``)."""
    stat = interval(values)
    return {"id": claim.id, "statement": claim.statement, "paper_value": claim.paper_value, "metric": claim.metric,
            "direction": claim.direction, "by_construction": claim.by_construction, **stat,
            "verdict": verdict(stat, claim.direction, by_construction=claim.by_construction, signal_ok=signal_ok)}


def seeds_to_resolve(stat: dict, level: float = 0.95) -> int | None:
    """Seeds for the t-interval to exclude 0 if the mean and std stayed as measured (None when the mean
    is 0 or the std undefined): the smallest n with t_{n-1} * std / sqrt(n) < |mean|."""
    mean, std = abs(stat["mean"]), stat.get("std", float("nan"))
    if mean == 0 or math.isnan(std):
        return None
    for n in range(2, 10_001):
        if stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n) < mean:
            return n
    return None


def claims_file(paper: str, cfg, seeds: list[int], wall_s: float, commit: str, signal: list[dict],
                claims: list[dict], setting: str | None = None) -> dict:
    """The ``claims.json`` document (:data:`CLAIMS_KEYS`, plus the ``model``: the config's model, or
    PluralLLM's embedder). Its ``preset`` is ``cfg.preset``, or ``setting`` for a run that is not a preset
    (a longer budget, say). A claim evaluated while a signal check fails must say ``no signal``."""
    failing = [s["id"] for s in signal if not s["holds"]]
    if failing and any(c["verdict"] != "no signal" and not c.get("by_construction") for c in claims):
        raise ConfigError(f"signal checks {failing} fail, so every claim's verdict must be 'no signal'; "
                          f"evaluate them with signal_ok=False")
    return {"paper": paper, "preset": setting or cfg.preset, "model": getattr(cfg, "model", getattr(cfg, "embedder", "")),
            "seeds": list(seeds), "wall_s": round(float(wall_s), 1), "commit": commit, "signal": signal,
            "claims": claims}


def evaluate(paper: str, cfg, seeds: list[int], wall_s: float, commit: str, signal: list[tuple],
             claims: list[tuple], setting: str | None = None) -> dict:
    """The ``claims.json`` document from ``[(SignalCheck, per-seed values)]`` and ``[(Claim, per-seed
    values)]``: every claim is ``no signal`` unless every signal check holds (``setting``: as
    :func:`claims_file`)."""
    rows = [check_signal(check, values) for check, values in signal]
    ok = all(r["holds"] for r in rows)
    return claims_file(paper, cfg, seeds, wall_s, commit, rows,
                       [evaluate_claim(claim, values, signal_ok=ok) for claim, values in claims], setting)


def write_claims(path: str | Path, document: dict) -> None:
    """Write a ``claims.json`` document atomically, after checking its keys and verdicts."""
    missing = [k for k in CLAIMS_KEYS if k not in document]
    if missing:
        raise ConfigError(f"claims document lacks {missing}; required keys: {list(CLAIMS_KEYS)}")
    bad = [c["id"] for c in document["claims"] if c.get("verdict") not in VERDICTS]
    if bad:
        raise ConfigError(f"claims {bad} have no verdict in {list(VERDICTS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)


def claims_table(document: dict) -> pd.DataFrame:
    """What a notebook shows of its claims file: one row per claim (the paper's value, our mean with
    its 95% interval and n, the verdict), then one per signal check. Numbers come from the file only."""
    def interval_text(row):
        lo, hi = row["ci95"]
        ci = "n/a" if math.isnan(lo) else f"[{lo:.3g}, {hi:.3g}]"
        return f"{row['mean']:.3g} {ci}"

    rows = [{"kind": "claim", "statement": c["statement"], "the paper": c["paper_value"], "metric": c["metric"],
             "ours: mean [95% CI]": interval_text(c), "n": c["n"], "verdict": c["verdict"]} for c in document["claims"]]
    rows += [{"kind": "signal check", "statement": s["statement"], "the paper": "", "metric": "",
              "ours: mean [95% CI]": interval_text(s), "n": len(s["per_seed"]),
              "verdict": "holds" if s["holds"] else "FAILS"} for s in document["signal"]]
    return pd.DataFrame(rows)
