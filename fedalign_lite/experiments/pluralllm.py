"""The grid notebook 01 measures: PluralLLM (FedAvg of GPO) against the authors' centralized baseline
and a compute-matched one; convergence and alignment summaries, and the results table."""
from __future__ import annotations

import numpy as np

from fedalign_lite.algorithms import pluralllm
from fedalign_lite.algorithms.pluralllm import GroupData, PluralConfig, build_model, eval_splits, load_data, run_centralized
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid
from fedalign_lite.objectives.metrics import area_under_curve, js_distance, mean_std, steps_to_fraction

METHODS = {"fl": "federated (FedAvg)", "central": "centralized (1 step / epoch)",
           "matched": "centralized, compute-matched"}
VARIANTS = {m: (m, {}) for m in METHODS}
AXIS = {"fl": "rounds", "central": "epochs", "matched": "epochs"}


def run_method(method: str, cfg: PluralConfig) -> dict:
    """One run of ``method`` (``fl``, ``central``: one Adam step per epoch as the authors' code,
    ``matched``: ``local_steps`` steps per epoch): ``{"history", "client_log", "server", "state"}``."""
    data = load_data(cfg)
    if method == "fl":
        run = pluralllm.run(cfg, data, progress=False)
        return {"history": run.history, "client_log": run.client_log, "server": {},
                "state": run.artifacts["model"].state_dict()}
    history, model = run_centralized(cfg, data, 1 if method == "central" else cfg.local_steps, progress=False)
    return {"history": history, "client_log": [], "server": {}, "state": model.state_dict()}


def summarize(history: list[dict]) -> dict:
    """Scalars of one run's evaluation curve (row 0 = the initial model).

    ``to_95``: first round/epoch whose AS reaches 95% of the run's best; ``to_95_gain``: first
    reaching 95% of the run's gain over the initial model, which separates runs whose curves start
    near their best; ``auc``: mean AS over the curve; final values are the last row.
    """
    curve = [h["as"] for h in history]
    last = history[-1]
    return {"alignment": last["as"], "best_alignment": max(curve), "fairness": last["fi_cv"], "jain": last["jain"],
            "worst_group": last["worst"], "to_95": steps_to_fraction(curve, 0.95),
            "to_95_gain": steps_to_fraction(curve, 0.95, relative_to_start=True), "auc": area_under_curve(curve)}


def run_experiment(cfg: PluralConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """Every method for each seed (:func:`~fedalign_lite.experiments.grid.run_grid`).

    Returns ``{"data", "records": {method: [record per seed]}, "histories": {method: [history per
    seed]}, "models": {method: model of the first seed}, "summary": {method: [summarize(history) per seed]}}``.
    """
    data = load_data(cfg)            # computes the embedding cache once, before any worker reads it
    records = run_grid(cfg, VARIANTS, seeds, run_one=run_method, workers=workers, progress=progress)
    out = {"data": data, "records": records, "histories": {}, "models": {}, "summary": {}}
    for method, runs in records.items():
        out["histories"][method] = [r["history"] for r in runs]
        out["summary"][method] = [summarize(r["history"]) for r in runs]
        model = build_model(cfg, data.x[0].shape[1])
        model.load_state_dict(runs[0]["state"])
        out["models"][method] = model
    return out


def metrics_table(summary: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    out = {}
    for method, rows in summary.items():
        for key in ("to_95", "to_95_gain"):
            out[f"{AXIS[method]}_{key}_{method}"] = mean_std([r[key] for r in rows])
        for key in ("alignment", "best_alignment", "fairness", "jain", "worst_group", "auc"):
            out[f"{key}_{method}"] = mean_std([r[key] for r in rows])
    return out


# ------------------------------------------------------------------------- claims and signal --

def prior_alignment(data: GroupData, cfg: PluralConfig, kind: str) -> float:
    """The alignment score of a predictor that needs no training, on the evaluation draws every method
    is scored on (:func:`~fedalign_lite.algorithms.pluralllm.eval_splits`):

    * ``"mean"``: every target gets the mean distribution of the training groups (no conditioning);
    * ``"nearest"``: the training group whose answers are closest (mean JS distance) to the held-out
      group's on the draw's context questions answers for it (conditioning by lookup).

    ``nearest - mean`` is what conditioning on a group can be worth on this data.
    """
    train = data.train_groups
    distances = []
    for group, context, targets in eval_splits(cfg, data.eval_groups, len(data.records)):
        if kind == "mean":
            def predict(q):
                return np.mean([data.y[g][q].numpy() for g in train], 0)
        elif kind == "nearest":
            gaps = [np.mean([js_distance(data.y[g][q].numpy(), data.y[group][q].numpy())[0] for q in context])
                    for g in train]
            nearest = train[int(np.argmin(gaps))]

            def predict(q, nearest=nearest):
                return data.y[nearest][q].numpy()
        else:
            raise ValueError(f"kind must be 'mean' or 'nearest', got {kind!r}")
        distances += [js_distance(predict(q), data.y[group][q].numpy())[0] for q in targets]
    return 1.0 - float(np.mean(distances))


CONDITIONING_HEADROOM = 0.05
"""Signal: conditioning on the group must be worth at least this much alignment (nearest - mean prior)."""
FAIRNESS_MARGIN = 0.01
"""[choice] "about the same fairness" is tested as FI(FL) > FI(centralized) - 0.01 (a one-sided margin)."""

SIGNAL = [SignalCheck("fl_learns", "Federated GPO's alignment rises above its initial model's"),
          SignalCheck("conditioning_matters", f"Conditioning is worth >= {CONDITIONING_HEADROOM} alignment on this "
                                              f"data (nearest training group minus the mean of the training groups)"),
          SignalCheck("fl_beats_prior", "Federated GPO beats the mean-of-training-groups prior")]
CLAIMS = [Claim("fl_vs_central", "FL aligns better than centralized (the authors' baseline)", "+4%",
                "AS(FL) - AS(centralized, 1 step/epoch), final"),
          Claim("fl_vs_matched", "FL aligns better than centralized (compute-matched)", "+4%",
                "AS(FL) - AS(centralized, 6 steps/epoch), final"),
          Claim("faster_than_central", "FL converges in fewer rounds than centralized epochs (authors' baseline)",
                "46% faster", "epochs - rounds to 95% of the run's best AS"),
          Claim("faster_than_matched", "FL converges in fewer rounds than centralized epochs (compute-matched)",
                "46% faster", "epochs - rounds to 95% of the run's best AS"),
          Claim("fairness_equal", "Fairness about equal to centralized", "nearly the same",
                f"FI(FL) - FI(centralized) + {FAIRNESS_MARGIN}")]


def claims_document(exp: dict, cfg: PluralConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` (:mod:`~fedalign_lite.experiments.claims`) from
    :func:`run_experiment`'s output; per-seed values are paired (same evaluation draws)."""
    summary, histories = exp["summary"], exp["histories"]
    mean_prior, nearest_prior = prior_alignment(exp["data"], cfg, "mean"), prior_alignment(exp["data"], cfg, "nearest")

    def fl_minus(other, key, sign=1.0, shift=0.0):
        return [sign * (a[key] - b[key]) + shift for a, b in zip(summary["fl"], summary[other])]

    signal = [(SIGNAL[0], [h[-1]["as"] - h[0]["as"] for h in histories["fl"]]),
              (SIGNAL[1], [nearest_prior - mean_prior - CONDITIONING_HEADROOM] * len(seeds)),
              (SIGNAL[2], [s["alignment"] - mean_prior for s in summary["fl"]])]
    values = [fl_minus("central", "alignment"), fl_minus("matched", "alignment"),
              fl_minus("central", "to_95", -1.0), fl_minus("matched", "to_95", -1.0),
              fl_minus("central", "fairness", 1.0, FAIRNESS_MARGIN)]
    doc = evaluate("pluralllm", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
    doc["priors"] = {"mean_of_groups": mean_prior, "nearest_group": nearest_prior}
    return doc
