"""The grid notebook 04 measures: FedMOA, its two ablations and FedAvg; and its results table."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr

from fedalign_lite.algorithms import fedmoa
from fedalign_lite.algorithms.fedmoa import METHODS, MOAConfig
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid, run_record
from fedalign_lite.federated.loop import client_metric
from fedalign_lite.objectives.metrics import mean_std

VARIANTS = {m: ("fedmoa", {"method": m}) for m in METHODS}


def run_with_clients(algorithm: str, cfg: MOAConfig) -> dict:
    """A run's record plus which clients have a noisy primary reward (``noisy``, in client order)."""
    run = fedmoa.run(cfg, progress=False)
    return {**run_record(run), "noisy": [c.noisy for c in run.artifacts["clients"]]}


def run_experiment(cfg: MOAConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{method: [record per seed]}`` for the four methods (:func:`~fedalign_lite.experiments.grid.run_grid`)."""
    return run_grid(cfg, VARIANTS, seeds, run_one=run_with_clients, workers=workers, progress=progress)


def client_series(record: dict, key: str) -> np.ndarray:
    """(rounds, clients) of a client metric (e.g. ``w_primary``, ``sat_format``)."""
    return client_metric(record["client_log"], key)


def aggregation_weights(record: dict) -> np.ndarray:
    """(rounds, clients): each client's weight within its task model (0 when not sampled)."""
    return record["server"]["agg_weights"]


def metrics_table(results: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    def final(method, key):
        return mean_std([r["history"][-1][key] for r in results[method]])

    table = {f"acc_{m}": final(m, "acc") for m in METHODS}
    table.update({f"personal_acc_{m}": final(m, "personal_acc") for m in METHODS})
    hyper = results["fedmoa"]
    w = [np.nanmean(client_series(r, "w_primary"), 1) for r in hyper]
    sat = [np.nanmean((client_series(r, "sat_format") + client_series(r, "sat_length")) / 2, 1) for r in hyper]
    table["w_primary_start"] = mean_std([x[0] for x in w])
    table["w_primary_end"] = mean_std([x[-1] for x in w])
    corr = [pearsonr(a, b)[0] if np.std(a) > 0 and np.std(b) > 0 else float("nan") for a, b in zip(w, sat)]
    table["corr_w_primary_saturation"] = mean_std([c for c in corr if c == c] or [float("nan")])
    noisy = [np.array(r["noisy"]) for r in hyper]
    table["agg_weight_noisy"] = mean_std([aggregation_weights(r)[:, n].mean() for r, n in zip(hyper, noisy)])
    table["agg_weight_clean"] = mean_std([aggregation_weights(r)[:, ~n].mean() for r, n in zip(hyper, noisy)])
    return table


# ------------------------------------------------------------------------- claims and signal --

UNSATURATED = 0.4
"""Signal: the auxiliaries must start below this compliance, or there is nothing to saturate."""

SIGNAL = [SignalCheck("fedavg_learns", "FedAvg's accuracy at the end exceeds its round-0 value"),
          SignalCheck("auxiliaries_start_unsaturated", f"The auxiliaries start below {UNSATURATED} compliance "
                                                       "(first round, mean over clients and both auxiliaries)"),
          SignalCheck("auxiliaries_saturate", "The auxiliaries' compliance rises past 0.9 during training")]
CLAIMS = [Claim("beats_fedavg_global", "FedMOA's global accuracy exceeds FedAvg's", "up to +2.2 points",
                "acc(FedMOA) - acc(FedAvg), final, held-out problems"),
          Claim("beats_fedavg_personal", "FedMOA's personalized accuracy exceeds FedAvg's", "improved personalization",
                "personal acc(FedMOA) - acc(FedAvg), final"),
          Claim("primary_weight_rises", "The primary weight rises as the auxiliaries saturate",
                "prioritizes primary reasoning", "w_primary last round - first round"),
          Claim("noisy_downweighted", "Accuracy-aware aggregation gives noisy clients less weight",
                "prioritizes high-quality updates", "aggregation weight: clean - noisy clients"),
          Claim("hypergradient_alone", "The hypergradient alone beats FedAvg", "ablation", "acc(hyper only) - acc(FedAvg)"),
          Claim("aggregation_alone", "The aggregation alone beats FedAvg", "ablation", "acc(aggregation only) - acc(FedAvg)")]


def claims_document(results: dict, cfg: MOAConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records, paired by seed."""
    def minus_fedavg(method, key):
        return [a["history"][-1][key] - b["history"][-1][key] for a, b in zip(results[method], results["fedavg"])]

    def saturation(record):
        return np.nanmean((client_series(record, "sat_format") + client_series(record, "sat_length")) / 2, 1)

    hyper = results["fedmoa"]
    w = [np.nanmean(client_series(r, "w_primary"), 1) for r in hyper]
    noisy = [np.array(r["noisy"]) for r in hyper]
    signal = [(SIGNAL[0], [r["history"][-1]["acc"] - r["history"][0]["acc"] for r in results["fedavg"]]),
              (SIGNAL[1], [UNSATURATED - saturation(r)[0] for r in hyper]),
              (SIGNAL[2], [saturation(r).max() - 0.9 for r in hyper])]
    values = [minus_fedavg("fedmoa", "acc"), minus_fedavg("fedmoa", "personal_acc"), [x[-1] - x[0] for x in w],
              [aggregation_weights(r)[:, ~n].mean() - aggregation_weights(r)[:, n].mean() for r, n in zip(hyper, noisy)],
              minus_fedavg("hyper_only", "acc"), minus_fedavg("agg_only", "acc")]
    return evaluate("fedmoa", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
