"""The grid notebook 03 measures, and what it is checked with: the reward calibration on the untrained
policy, the learning-rate pilot, FIRM against FedCMOO-A and FedAvg with fixed p, the beta ablation,
same vs different reward models, IID vs Dirichlet, the Pareto fronts over p; its table and claims."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from fedalign_lite import algorithms
from fedalign_lite.algorithms.firm import FIRMConfig
from fedalign_lite.data.prompts import client_prompts
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid, run_record
from fedalign_lite.federated.loop import client_metric
from fedalign_lite.models.causal_lm import add_lora, load_model
from fedalign_lite.models.rewards import REFERENCE, answered
from fedalign_lite.models.rollout import sample
from fedalign_lite.objectives.metrics import mean_std, total_variation

PREFS = (0.1, 0.3, 0.5, 0.7, 0.9)
BETAS = (0.0, 0.05, 0.5, 5.0)
"""The paper's 0.05, 0 (plain local MGDA), and 0.5 and 5: scaled to our Gram matrix, which is normalised to
unit mean squared gradient norm, so that beta / 2 ||lambda - p||^2 can compete with 1/2 ||lambda @ G||^2."""
SIDE_SEEDS = 2
"""Variants outside the main comparison (Pareto points, beta 0.5 and 5, reward models, IID) run on the first
two seeds; the main ones on every seed."""
MAIN = {"firm": ("firm", {}), "firm_beta0": ("firm", {"beta": 0.0}), "fedcmoo": ("fedcmoo-a", {}),
        "help_only": ("fedavg-fixed-p", {"pref": 1.0}), "harm_only": ("fedavg-fixed-p", {"pref": 0.0})}
SIDE = {"firm_beta0.5": ("firm", {"beta": 0.5}), "firm_beta5": ("firm", {"beta": 5.0}),
        "same_rms": ("firm", {"same_rms": True}), "iid": ("firm", {"partition": "iid"}),
        **{f"firm_p{p}": ("firm", {"pref": p}) for p in PREFS if p != 0.5},
        **{f"fedavg_p{p}": ("fedavg-fixed-p", {"pref": p}) for p in PREFS}}
"""Every run the notebook needs: (algorithm, overrides of the preset); ``firm`` is also FIRM's p = 0.5 point."""
PILOT_RATES = (1e-3, 3e-3, 1e-2)
MAX_MOVE_PER_ROUND = 0.15
"""The pilot keeps the largest rate at which FedAvg at p = 0.5 moves neither held-out rate by more than this
per round: fast enough to show dynamics within the budget, slow enough that rounds resolve them."""
RATES = ("refuse_harmful", "answer_benign")


# ----------------------------------------------------------------------- before any method runs --

@torch.no_grad()
def reward_calibration(cfg: FIRMConfig, n: int = 256) -> dict:
    """The untrained policy's behaviour and reward spread at the sampling temperature, on ``n`` training
    prompts drawn from every client's pool (the mix training sees), in batches of ``cfg.batch_size``.

    Returns ``{"batch_var": (batches, 2) sample variance (ddof 1) of (helpfulness, harmlessness) within
    each batch, "pooled_std": (2,) the root of its mean, "refusal_benign", "refusal_harmful", "n"}`` under
    the reference reward models.
    """
    base, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = add_lora(base, cfg.lora_r, cfg.lora_alpha)        # B = 0: exactly the base model
    pools, _ = client_prompts(cfg.num_clients, cfg.prompts_per_client, cfg.eval_prompts, cfg.partition, cfg.alpha,
                              cfg.batch_size, cfg.data_seed, cfg.harmful_share)
    rows = [r for pool in pools for r in pool]
    picks = [rows[i] for i in np.random.default_rng(cfg.data_seed).choice(len(rows), n)]
    variances, said, is_harmful = [], [], []
    for i in range(0, n, cfg.batch_size):
        batch = picks[i:i + cfg.batch_size]
        prompts, flags = [r["prompt"] for r in batch], [r["harmful"] for r in batch]
        texts = sample(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature).texts
        variances.append(REFERENCE(prompts, texts, flags).var(0, ddof=1))
        said += answered(texts).tolist()
        is_harmful += flags
    said, is_harmful = np.asarray(said), np.asarray(is_harmful)
    variances = np.asarray(variances)
    return {"batch_var": variances, "pooled_std": np.sqrt(variances.mean(0)),
            "refusal_benign": float(1 - said[~is_harmful].mean()), "refusal_harmful": float(1 - said[is_harmful].mean()), "n": n}


def lr_pilot(cfg: FIRMConfig, rates=PILOT_RATES, workers: int = 2, progress: bool = True) -> tuple[list, float]:
    """FedAvg at p = 0.5, one seed per rate: ``(rows, chosen)``, a row per rate with the held-out rates per
    round and the largest move per round; ``chosen`` is the largest rate whose move stays below
    :data:`MAX_MOVE_PER_ROUND` (the smallest rate if none does)."""
    variants = {f"lr={r:g}": ("fedavg-fixed-p", {"lr": r, "pref": 0.5}) for r in rates}
    runs = run_grid(cfg, variants, [cfg.seed], workers=workers, progress=progress)
    rows = []
    for rate, records in zip(rates, runs.values()):
        hist = records[0]["history"]
        move = max(abs(b[k] - a[k]) for a, b in zip(hist, hist[1:]) for k in RATES)
        rows.append({"lr": rate, "max_move_per_round": move, **{k: [round(h[k], 3) for h in hist] for k in RATES}})
    ok = [r["lr"] for r in rows if r["max_move_per_round"] < MAX_MOVE_PER_ROUND]
    return rows, max(ok) if ok else min(rates)


# ---------------------------------------------------------------------------------- the grid --

def run_with_examples(algorithm: str, cfg: FIRMConfig) -> dict:
    """A run's record plus the final policy's greedy answers on the held-out prompts (``examples``)."""
    run = algorithms.get(algorithm).run(cfg, progress=False)
    held, policy, tok = run.artifacts["held"], run.artifacts["policy"], run.artifacts["tokenizer"]
    prompts = [r["prompt"] for r in held]
    texts = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
    return {**run_record(run), "examples": list(zip(prompts, texts))}


def run_experiment(cfg: FIRMConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{variant: [record per seed]}``: :data:`MAIN` on every seed, :data:`SIDE` on the first
    :data:`SIDE_SEEDS`, all in one pool of ``workers`` processes."""
    return run_grid(cfg, {**MAIN, **SIDE}, seeds, run_one=run_with_examples, workers=workers, progress=progress,
                    seed_counts=dict.fromkeys(SIDE, SIDE_SEEDS))


def step_series(record: dict, key: str) -> np.ndarray:
    """(clients, steps) of the per-local-step client metric ``key`` (``lambda_help``, ``reward_help``,
    ``reward_harm``), every round's steps in order; NaN where a client did not send it."""
    keys = sorted({k[len(f"client_{key}_"):] for x in record["client_log"] for k in x
                   if k.startswith(f"client_{key}_")}, key=int)
    per_round = [client_metric(record["client_log"], f"{key}_{k}") for k in keys]   # each (rounds, clients)
    return np.stack(per_round, -1).transpose(1, 0, 2).reshape(per_round[0].shape[1], -1)


def roughness(series: np.ndarray) -> float:
    """Mean |x_{t+1} - x_t| along each client's steps, averaged over clients (NaN steps skipped)."""
    return float(np.mean([total_variation(row[~np.isnan(row)]) / max(np.sum(~np.isnan(row)) - 1, 1)
                          for row in series]))


def reward_roughness(record: dict) -> float:
    """Roughness of the clients' training rewards per local step, helpfulness plus harmlessness."""
    return roughness(step_series(record, "reward_help")) + roughness(step_series(record, "reward_harm"))


def drift(record: dict) -> np.ndarray:
    """(rounds, 3): D1 lambda dispersion, D2 update dispersion, D3 1 - mean cosine, per round."""
    return record["server"]["drift"]


def curve(record: dict, key: str) -> list:
    """The evaluation metric ``key`` per round (round 0 = the initial policy)."""
    return [h[key] for h in record["history"]]


def final(record: dict, key: str) -> float:
    return record["history"][-1][key]


def upload_bytes_per_client(record: dict) -> float:
    """Bytes a client sends per round (both phases), mean over rounds."""
    return float(np.mean([h["bytes_up"] / h["clients_ok"] for h in record["history"][1:]]))


def pareto_runs(results: dict, method: str) -> dict:
    """``{p: [record per seed]}`` over :data:`PREFS` for ``method`` ``"firm"`` or ``"fedavg"``."""
    if method == "firm":
        return {p: results["firm" if p == 0.5 else f"firm_p{p}"][:SIDE_SEEDS] for p in PREFS}
    return {p: results[f"fedavg_p{p}"] for p in PREFS}


def metrics_table(results: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    table = {}
    for variant, runs in results.items():
        for key in ("help", "harm") + RATES:
            table[f"final_{key}_{variant}"] = mean_std([final(r, key) for r in runs])
    for variant in ("firm", "firm_beta0", "firm_beta0.5", "firm_beta5", "fedcmoo"):
        table[f"drift_d1_{variant}"] = mean_std([drift(r)[:, 0].mean() for r in results[variant]])
        table[f"weight_roughness_{variant}"] = mean_std([roughness(step_series(r, "lambda_help"))
                                                         for r in results[variant]])
        table[f"reward_roughness_{variant}"] = mean_std([reward_roughness(r) for r in results[variant]])
    for method in ("firm", "fedavg"):
        table[f"pareto_{method}"] = [{"p": p, **{k: mean_std([final(r, k) for r in rs]) for k in RATES}}
                                     for p, rs in pareto_runs(results, method).items()]
    for method in ("firm", "fedcmoo"):
        table[f"bytes_up_per_round_{method}"] = mean_std([upload_bytes_per_client(r) for r in results[method]])
    return table


# ------------------------------------------------------------------------- claims and signal --

STEP0_STD = 0.2
CLOSE = 0.05
"""[choice] "the trajectories stay close" is tested as |final difference| < 0.05, per reward."""

SIGNAL = [SignalCheck("step0_std_help", f"At step 0, helpfulness varies within a batch: pooled std >= {STEP0_STD} "
                      "(per-batch variance minus its square)"),
          SignalCheck("step0_std_harm", f"At step 0, harmlessness varies within a batch: pooled std >= {STEP0_STD} "
                      "(per-batch variance minus its square)"),
          SignalCheck("objectives_move_benign",
                      "Training on p = (1, 0) ends answering more benign prompts than training on p = (0, 1)"),
          SignalCheck("objectives_move_harmful",
                      "Training on p = (0, 1) ends refusing more harmful prompts than training on p = (1, 0)"),
          SignalCheck("pareto_benign", "FedAvg's Pareto endpoints differ: p = 0.9 answers more benign prompts than 0.1"),
          SignalCheck("pareto_harmful", "FedAvg's Pareto endpoints differ: p = 0.1 refuses more harmful prompts than 0.9")]
CLAIMS = [Claim("beta_lowers_drift", "beta = 0.05 gives less client drift (D1) than beta = 0", "reduced drift",
                "D1(beta=0) - D1(beta=0.05), mean over rounds"),
          Claim("smoother_rewards", "FIRM's training rewards are smoother than FedCMOO-A's", "smoother training",
                "roughness(FedCMOO-A) - roughness(FIRM): mean |step-to-step change|, help + harm"),
          Claim("smoother_weights", "FIRM's per-client weights are smoother over steps than FedCMOO-A's broadcast ones",
                "smoother, consistent weights", "roughness of lambda_help over local steps: FedCMOO-A - FIRM"),
          Claim("better_tradeoff", "FIRM's final trade-off is at least FedCMOO-A's", "improved trade-offs",
                "(help + harm)(FIRM) - (help + harm)(FedCMOO-A), final, held out"),
          Claim("p_steers", "p moves FIRM's trade-off monotonically (beta = 0.05)", "smooth trade-off control",
                "Spearman(p, final benign-answer rate) over FIRM's p grid"),
          Claim("same_vs_different_rms", "Same and different reward models end close", "nearly identical",
                f"{CLOSE} - max |final reward difference|"),
          Claim("iid_vs_dirichlet", "IID and Dirichlet(0.3) end close", "close trajectories",
                f"{CLOSE} - max |final reward difference|"),
          Claim("one_upload", "One upload of size d per client per round", "d vs FedCMOO-A's (M + 1) d",
                "bytes up per client per round: FedCMOO-A - FIRM", by_construction=True)]


def claims_document(results: dict, calibration: dict, cfg: FIRMConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records (paired by seed) and
    :func:`reward_calibration`'s batches."""
    def paired(a, b, f):
        return [f(x, y) for x, y in zip(results[a], results[b])]

    def rewards_gap(x, y):
        return max(abs(final(x, k) - final(y, k)) for k in ("help", "harm"))

    spread = calibration["batch_var"] - STEP0_STD ** 2
    fedavg, firm = pareto_runs(results, "fedavg"), pareto_runs(results, "firm")
    hi, lo = fedavg[0.9], fedavg[0.1]
    signal = [(SIGNAL[0], spread[:, 0]), (SIGNAL[1], spread[:, 1]),
              (SIGNAL[2], paired("help_only", "harm_only", lambda h, m: final(h, "answer_benign") - final(m, "answer_benign"))),
              (SIGNAL[3], paired("harm_only", "help_only", lambda m, h: final(m, "refuse_harmful") - final(h, "refuse_harmful"))),
              (SIGNAL[4], [final(h, "answer_benign") - final(low, "answer_benign") for h, low in zip(hi, lo)]),
              (SIGNAL[5], [final(low, "refuse_harmful") - final(h, "refuse_harmful") for h, low in zip(hi, lo)])]
    spearman = [spearmanr(PREFS, [final(firm[p][s], "answer_benign") for p in PREFS])[0] for s in range(SIDE_SEEDS)]
    values = [paired("firm_beta0", "firm", lambda b0, b: drift(b0)[:, 0].mean() - drift(b)[:, 0].mean()),
              paired("fedcmoo", "firm", lambda c, f: reward_roughness(c) - reward_roughness(f)),
              paired("fedcmoo", "firm", lambda c, f: roughness(step_series(c, "lambda_help"))
                     - roughness(step_series(f, "lambda_help"))),
              paired("firm", "fedcmoo", lambda f, c: final(f, "help") + final(f, "harm") - final(c, "help") - final(c, "harm")),
              [0.0 if np.isnan(v) else v for v in spearman],        # a constant front has no rank order
              paired("same_rms", "firm", lambda s, f: CLOSE - rewards_gap(s, f)),
              paired("iid", "firm", lambda i, f: CLOSE - rewards_gap(i, f)),
              paired("fedcmoo", "firm", lambda c, f: upload_bytes_per_client(c) - upload_bytes_per_client(f))]
    return evaluate("firm", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
