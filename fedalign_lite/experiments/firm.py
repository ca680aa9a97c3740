"""The grid notebook 03 measures: FIRM against FedCMOO-A and FedAvg with fixed p, the beta ablation,
same vs different reward models, IID vs Dirichlet, and the Pareto front over p; and its results table."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from fedalign_lite import algorithms
from fedalign_lite.algorithms.firm import FIRMConfig
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid, run_record
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


# ------------------------------------------------------------------------- claims and signal --

CLOSE = 0.05
"""[choice] "the trajectories stay close" is tested as |final reward difference| < 0.05, per reward."""

SIGNAL = [SignalCheck("pareto_help", "The Pareto endpoints differ in helpfulness: p = 0.9 ends more helpful than p = 0.1"),
          SignalCheck("pareto_harm", "The Pareto endpoints differ in harmlessness: p = 0.1 ends more harmless than p = 0.9")]
CLAIMS = [Claim("beta_lowers_drift", "beta > 0 gives less client drift (D1) than beta = 0", "reduced drift",
                "D1(beta=0) - D1(beta), mean over rounds"),
          Claim("smoother_rewards", "FIRM's rewards are smoother than FedCMOO-A's", "smoother training",
                "TV(FedCMOO-A) - TV(FIRM), help + harm curves"),
          Claim("smoother_weights", "FIRM's weights vary less than FedCMOO-A's", "smoother, consistent weights",
                "std of lambda over rounds and clients: FedCMOO-A - FIRM"),
          Claim("better_tradeoff", "FIRM's final trade-off is at least FedCMOO-A's", "improved trade-offs",
                "(help + harm)(FIRM) - (help + harm)(FedCMOO-A), final"),
          Claim("p_steers", "p moves the trade-off monotonically", "smooth trade-off control",
                "Spearman(p, final helpfulness) over the p grid"),
          Claim("same_vs_different_rms", "Same and different reward models end close", "nearly identical",
                f"{CLOSE} - max |final reward difference|"),
          Claim("iid_vs_dirichlet", "IID and Dirichlet(0.3) end close in harmlessness", "harmlessness close",
                f"{CLOSE} - |final harmlessness difference|"),
          Claim("one_upload", "One upload of size d per client per round", "d vs FedCMOO-A's (M + 1) d",
                "bytes up per client per round: FedCMOO-A - FIRM", by_construction=True)]


def claims_document(results: dict, cfg: FIRMConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records, paired by seed."""
    def paired(a, b, f):
        return [f(x, y) for x, y in zip(results[a], results[b])]

    pareto = pareto_runs(results)
    signal = [(SIGNAL[0], [final(hi, "help") - final(lo, "help") for hi, lo in zip(pareto[0.9], pareto[0.1])]),
              (SIGNAL[1], [final(lo, "harm") - final(hi, "harm") for hi, lo in zip(pareto[0.9], pareto[0.1])])]
    values = [paired("firm_beta0", "firm", lambda b0, b: drift(b0)[:, 0].mean() - drift(b)[:, 0].mean()),
              paired("fedcmoo", "firm", lambda c, f: reward_tv(c) - reward_tv(f)),
              paired("fedcmoo", "firm", lambda c, f: np.nanstd(lambdas(c)) - np.nanstd(lambdas(f))),
              paired("firm", "fedcmoo", lambda f, c: final(f, "help") + final(f, "harm") - final(c, "help") - final(c, "harm")),
              [spearmanr(PREFS, [final(pareto[p][s], "help") for p in PREFS])[0] for s in range(len(seeds))],
              paired("same_rms", "firm", lambda s, f: CLOSE - max(abs(final(s, k) - final(f, k)) for k in ("help", "harm"))),
              paired("iid", "firm", lambda i, f: CLOSE - abs(final(i, "harm") - final(f, "harm"))),
              paired("fedcmoo", "firm", lambda c, f: upload_bytes_per_client(c) - upload_bytes_per_client(f))]
    values[4] = [0.0 if np.isnan(v) else v for v in values[4]]     # a constant front has no rank order
    return evaluate("firm", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
