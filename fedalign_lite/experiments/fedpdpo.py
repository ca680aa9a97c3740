"""The grid notebook 02 measures: every method in the IID, non-IID and cross-domain settings (FedPDPO,
local DPO, FedAvg-DPO, FedPer and the three ablations); and its results table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fedalign_lite.algorithms.fedpdpo import METHODS, PDPOConfig
from fedalign_lite.data.preference import DOMAINS, critic_clients
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid
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


# ------------------------------------------------------------------------- claims and signal --

SIGNAL = [SignalCheck("iid_fedavg_learns", "Under IID, FedAvg-DPO's accuracy exceeds chance (0.5)"),
          SignalCheck("local_learns", "Local DPO's accuracy exceeds chance on the clients' own preferences (non-IID)"),
          SignalCheck("conflict", "Under non-IID, FedAvg-DPO's accuracy differs between the majority (fans) and the "
                                  "minority (critics): the conflict personalization must resolve", direction=0)]
CLAIMS = [Claim("noniid_degrades", "Non-IID data degrade FedAvg-DPO", "degrades (Fig. 1)",
                "acc(FedAvg-DPO, IID) - acc(FedAvg-DPO, non-IID)"),
          Claim("beats_fedavg", "FedPDPO beats FedAvg-DPO under non-IID", "up to +4.80 points",
                "acc(FedPDPO) - acc(FedAvg-DPO), non-IID, final"),
          Claim("beats_local", "FedPDPO beats local DPO under non-IID", "up to +4.80 points",
                "acc(FedPDPO) - acc(local), non-IID, final"),
          Claim("beats_fedavg_minority", "FedPDPO beats FedAvg-DPO on the minority (critic) clients", "personalization",
                "critic clients' acc: FedPDPO - FedAvg-DPO"),
          Claim("reward_head_pays", "Removing the reward head costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without reward head)"),
          Claim("adapter_pays", "Removing the bottleneck adapter costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without adapter)"),
          Claim("personal_head_pays", "Removing the personal head costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without personal head)"),
          Claim("cross_domain", "FedPDPO beats FedAvg-DPO across domains", "up to +4.80 points",
                "mean over 3 domains: acc(FedPDPO) - acc(FedAvg-DPO)"),
          Claim("lora_only_upload", "A client uploads the LoRA adapter only", "communication-efficient",
                "bytes up per round: FedAvg-DPO (LoRA + head) - FedPDPO", by_construction=True)]


def claims_document(results: dict, cfg: PDPOConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records, paired by seed."""
    critics = critic_clients(cfg)

    def acc(variant, key="acc"):
        return [r["history"][-1][key] for r in results[variant]]

    def group_acc(variant, clients):
        return [np.mean([r["history"][-1][f"acc/{c}"] for c in clients]) for r in results[variant]]

    def diff(a, b):
        return [x - y for x, y in zip(a, b)]

    fans = [c for c in range(cfg.num_clients) if c not in critics]
    signal = [(SIGNAL[0], [a - 0.5 for a in acc("iid/fedavg")]), (SIGNAL[1], [a - 0.5 for a in acc("noniid/local")]),
              (SIGNAL[2], diff(group_acc("noniid/fedavg", fans), group_acc("noniid/fedavg", critics)))]
    values = [diff(acc("iid/fedavg"), acc("noniid/fedavg")), diff(acc("noniid/fedpdpo"), acc("noniid/fedavg")),
              diff(acc("noniid/fedpdpo"), acc("noniid/local")),
              diff(group_acc("noniid/fedpdpo", critics), group_acc("noniid/fedavg", critics)),
              *[diff(acc("noniid/fedpdpo"), acc(f"noniid/{m}")) for m in ("no_reward_head", "no_adapter", "no_personal_head")],
              diff(group_acc("cross/fedpdpo", range(len(DOMAINS))), group_acc("cross/fedavg", range(len(DOMAINS)))),
              [a["history"][1]["bytes_up"] - b["history"][1]["bytes_up"]
               for a, b in zip(results["noniid/fedavg"], results["noniid/fedpdpo"])]]
    return evaluate("fedpdpo", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
