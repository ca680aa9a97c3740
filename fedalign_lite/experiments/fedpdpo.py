"""The grid notebook 02 measures: every method in the IID, non-IID and cross-domain settings (FedPDPO,
local DPO, FedAvg-DPO, FedPer and the three ablations); and its results table."""
from __future__ import annotations

import pandas as pd

from fedalign_lite.algorithms.fedpdpo import METHODS, PDPOConfig
from fedalign_lite.data.preference import DOMAINS
from fedalign_lite.experiments.grid import run_grid
from fedalign_lite.objectives.metrics import mean_std

INTRA = [("iid", "fedavg")] + [("noniid", m) for m in METHODS]
CROSS = [("cross", m) for m in ("local", "fedavg", "fedper", "fedpdpo")]
VARIANTS = {f"{setting}/{method}": ("fedpdpo", {"setting": setting, "method": method}) for setting, method in INTRA + CROSS}
"""``"<setting>/<method>"`` -> (algorithm, overrides)."""


def run_experiment(cfg: PDPOConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{"<setting>/<method>": [record per seed]}`` (:func:`~fedalign_lite.experiments.grid.run_grid`)."""
    return run_grid(cfg, VARIANTS, seeds, workers=workers, progress=progress)


def frames(results: dict, setting: str, method: str) -> list[pd.DataFrame]:
    """One per-round metrics DataFrame (indexed by round) per seed."""
    return [pd.DataFrame(r["history"]).set_index("round") for r in results[f"{setting}/{method}"]]


def metrics_table(results: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds
    (final-round accuracy)."""
    def final(setting, method, col="acc"):
        return mean_std([r["history"][-1][col] for r in results[f"{setting}/{method}"]])

    table = {"acc_iid_fedavg": final("iid", "fedavg")}
    table.update({f"acc_noniid_{m}": final("noniid", m) for m in ("fedavg", "local", "fedper", "fedpdpo")})
    table.update({f"acc_ablation_{m}": final("noniid", m) for m in ("no_reward_head", "no_adapter", "no_personal_head")})
    table["cross_domain"] = {d: {m: final("cross", m, f"acc/{i}") for _, m in CROSS} for i, d in enumerate(DOMAINS)}
    table["bytes_up_per_round"] = {m: float(results[f"noniid/{m}"][0]["history"][1]["bytes_up"]) for m in METHODS}
    return table
