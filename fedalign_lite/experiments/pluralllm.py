"""The grid notebook 01 measures: PluralLLM (FedAvg of GPO) against the authors' centralized baseline
and a compute-matched one; convergence and alignment summaries, and the results table."""
from __future__ import annotations

from fedalign_lite.algorithms import pluralllm
from fedalign_lite.algorithms.pluralllm import PluralConfig, build_model, load_data, run_centralized
from fedalign_lite.experiments.grid import run_grid
from fedalign_lite.objectives.metrics import area_under_curve, mean_std, steps_to_fraction

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
