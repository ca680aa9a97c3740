"""The grid notebook 03 measures: FIRM against FedCMOO-A and FedAvg with fixed p, the beta ablation,
same vs different reward models, IID vs Dirichlet, and the Pareto front over p; and its results table."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from fedalign_lite import algorithms
from fedalign_lite.algorithms.firm import FIRMConfig
from fedalign_lite.experiments.grid import run_grid, run_record
from fedalign_lite.federated.loop import client_metric
from fedalign_lite.models.rollout import sample
from fedalign_lite.objectives.metrics import mean_std, total_variation

PREFS = (0.1, 0.3, 0.5, 0.7, 0.9)
VARIANTS = {"firm": ("firm", {}), "firm_beta0": ("firm", {"beta": 0.0}), "fedcmoo": ("fedcmoo-a", {}),
            "fedavg": ("fedavg-fixed-p", {}), "same_rms": ("firm", {"same_rms": True}),
            "iid": ("firm", {"partition": "iid"}),
            **{f"pref_{p}": ("firm", {"pref": p}) for p in PREFS if p != 0.5}}
"""Every run the notebook needs: (algorithm, overrides of the preset); ``firm`` is also the p = 0.5 Pareto point."""


def run_with_examples(algorithm: str, cfg: FIRMConfig) -> dict:
    """A run's record plus the final policy's greedy answers on the held-out prompts (``examples``)."""
    run = algorithms.get(algorithm).run(cfg, progress=False)
    held, policy, tok = run.artifacts["held"], run.artifacts["policy"], run.artifacts["tokenizer"]
    prompts = [r["prompt"] for r in held]
    texts = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
    return {**run_record(run), "examples": list(zip(prompts, texts))}


def run_experiment(cfg: FIRMConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{variant: [record per seed]}`` for every entry of :data:`VARIANTS` (:func:`~fedalign_lite.experiments.grid.run_grid`)."""
    return run_grid(cfg, VARIANTS, seeds, run_one=run_with_examples, workers=workers, progress=progress)


def lambdas(record: dict) -> np.ndarray:
    """(rounds, clients) helpfulness weight of each client, mean over its local steps."""
    return client_metric(record["client_log"], "lambda_help")


def drift(record: dict) -> np.ndarray:
    """(rounds, 3): D1 lambda dispersion, D2 update dispersion, D3 1 - mean cosine, per round."""
    return record["server"]["drift"]


def curve(record: dict, key: str) -> list:
    """The evaluation metric ``key`` per round (round 0 = the initial policy)."""
    return [h[key] for h in record["history"]]


def final(record: dict, key: str) -> float:
    return record["history"][-1][key]


def reward_tv(record: dict) -> float:
    """Total variation of the helpfulness curve plus that of the harmlessness curve."""
    return total_variation(curve(record, "help")) + total_variation(curve(record, "harm"))


def upload_bytes_per_client(record: dict) -> float:
    """Bytes a client sends per round (both phases), mean over rounds."""
    return float(np.mean([h["bytes_up"] / h["clients_ok"] for h in record["history"][1:]]))


def pareto_runs(results: dict) -> dict:
    """``{p: [record per seed]}`` over :data:`PREFS`."""
    return {p: results["firm" if p == 0.5 else f"pref_{p}"] for p in PREFS}


def metrics_table(results: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    def over_seeds(variant, f):
        return mean_std([f(r) for r in results[variant]])

    table = {}
    for d, name in enumerate(("", "_d2", "_d3")):
        table[f"drift{name}_beta0"] = mean_std([drift(r)[:, d].mean() for r in results["firm_beta0"]])
        table[f"drift{name}_beta005"] = mean_std([drift(r)[:, d].mean() for r in results["firm"]])
    table.update(reward_tv_firm=over_seeds("firm", reward_tv), reward_tv_fedcmoo=over_seeds("fedcmoo", reward_tv),
                 weight_std_firm=over_seeds("firm", lambda r: np.nanstd(lambdas(r))),
                 weight_std_fedcmoo=over_seeds("fedcmoo", lambda r: np.nanstd(lambdas(r))))
    for variant in ("firm", "fedcmoo", "fedavg", "firm_beta0", "same_rms", "iid"):
        key = {"firm_beta0": "beta0"}.get(variant, variant)
        table[f"final_help_{key}"] = over_seeds(variant, lambda r: final(r, "help"))
        table[f"final_harm_{key}"] = over_seeds(variant, lambda r: final(r, "harm"))
    runs_for = pareto_runs(results)
    table["pareto"] = [{"p": p, "help": mean_std([final(r, "help") for r in rs]),
                        "harm": mean_std([final(r, "harm") for r in rs])} for p, rs in runs_for.items()]
    seeds = range(len(results["firm"]))
    table["spearman_p_help"] = mean_std([spearmanr(PREFS, [final(runs_for[p][s], "help") for p in PREFS])[0]
                                         for s in seeds])
    table["bytes_up_per_round_firm"] = over_seeds("firm", upload_bytes_per_client)
    table["bytes_up_per_round_fedcmoo"] = over_seeds("fedcmoo", upload_bytes_per_client)
    return table
