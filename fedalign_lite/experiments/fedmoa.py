"""The grid notebook 04 measures: FedMOA, its two ablations and FedAvg; and its results table."""
from __future__ import annotations

import random

import numpy as np
import torch

from fedalign_lite.algorithms import fedmoa
from fedalign_lite.algorithms.fedmoa import METHODS, OBJECTIVES, MOAConfig
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid, run_record
from fedalign_lite.federated.loop import client_metric
from fedalign_lite.models.causal_lm import add_lora, load_model
from fedalign_lite.models.format_warmup import warmed_model
from fedalign_lite.models.rollout import sample
from fedalign_lite.objectives.grpo import group_advantages, hypergradient_step
from fedalign_lite.objectives.metrics import mean_std
from fedalign_lite.seeding import derive_seed

VARIANTS = {m: ("fedmoa", {"method": m}) for m in METHODS}


def run_with_clients(algorithm: str, cfg: MOAConfig) -> dict:
    """A run's record plus which clients have a noisy primary reward (``noisy``, in client order)."""
    run = fedmoa.run(cfg, progress=False)
    return {**run_record(run), "noisy": [c.noisy for c in run.artifacts["clients"]]}


def run_experiment(cfg: MOAConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{method: [record per seed]}`` for the four methods (:func:`~fedalign_lite.experiments.grid.run_grid`)."""
    return run_grid(cfg, VARIANTS, seeds, run_one=run_with_clients, workers=workers, progress=progress)


def client_series(record: dict, key: str) -> np.ndarray:
    """(rounds, clients) of a client metric (e.g. ``w_primary``, ``reward_format``, ``all_equal_primary``)."""
    return client_metric(record["client_log"], key)


def aggregation_weights(record: dict) -> np.ndarray:
    """(rounds, clients): each client's weight within its task model (0 when not sampled)."""
    return record["server"]["agg_weights"]


def real_compliance(record: dict) -> np.ndarray:
    """(rounds, clients): the mean compliance of the two real auxiliaries (format, length) in each round."""
    return (client_series(record, "reward_format") + client_series(record, "reward_length")) / 2


def final_accuracy(record: dict, key: str) -> float:
    """An accuracy of the last evaluation (``acc``, ``personal_acc``, ``acc/<task>``, ...)."""
    return record["history"][-1][key]


def weight_slope_on(record: dict, compliance: np.ndarray) -> float:
    """OLS slope of each client's per-round change of w_primary on ``compliance`` (rounds, clients) in the
    round of the change, within rounds: each round's mean over clients is removed from both, so a trend that
    every client shares over time (w_primary moves fastest early, whatever the compliance) does not count.
    Pooled over clients and rounds 2..R [choice: a regression instead of a split at 0.9 compliance, so every
    seed gives a number even when few clients cross 0.9 before the last round]; 0 when nothing varies."""
    w = client_series(record, "w_primary")
    dw, x = np.diff(w, axis=0), compliance[1:].astype(float)
    missing = ~(np.isfinite(dw) & np.isfinite(x))
    dw, x = np.where(missing, np.nan, dw), np.where(missing, np.nan, x)
    dw, x = dw - np.nanmean(dw, 1, keepdims=True), x - np.nanmean(x, 1, keepdims=True)
    keep = ~missing
    dw, x = dw[keep], x[keep]
    return float(np.polyfit(x, dw, 1)[0]) if np.ptp(x) > 1e-12 else 0.0


def metrics_table(results: dict, cfg: MOAConfig) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    table = {}
    for m in METHODS:
        for key in ("acc", "personal_acc", *(f"acc/{t}" for t in cfg.tasks)):
            table[f"{key}_{m}".replace("/", "_")] = mean_std([final_accuracy(r, key) for r in results[m]])
    table["acc_start"] = mean_std([r["history"][0]["acc"] for r in results["fedavg"]])
    hyper = results["fedmoa"]
    for name in OBJECTIVES:
        w = [np.nanmean(client_series(r, f"w_{name}"), 1) for r in hyper]
        table[f"w_{name}_start"], table[f"w_{name}_end"] = mean_std([x[0] for x in w]), mean_std([x[-1] for x in w])
        table[f"all_equal_{name}"] = mean_std([np.nanmean(client_series(r, f"all_equal_{name}"))
                                               for m in METHODS for r in results[m]])
    table["control_slope"] = mean_std([weight_slope_on(r, client_series(r, "reward_control")) for r in hyper])
    noisy = [np.array(r["noisy"]) for r in hyper]
    table["agg_weight_noisy"] = mean_std([aggregation_weights(r)[:, n].mean() for r, n in zip(hyper, noisy)])
    table["agg_weight_clean"] = mean_std([aggregation_weights(r)[:, ~n].mean() for r, n in zip(hyper, noisy)])
    return table


# ------------------------------------------------------------------------- claims and signal --

START_BAND = (0.1, 0.4)
"""Signal: each real auxiliary's compliance in the first round lies in this band: met sometimes, not mostly."""
SATURATED = 0.9
"""Signal: the real auxiliaries' compliance (mean over clients, FedMOA) passes this during training."""
CONTROL_BAND = 0.1
"""Signal: the control's compliance stays within this of its rate (0.5) in every round."""


def signal_checks(cfg: MOAConfig) -> list[SignalCheck]:
    """The experiment's preconditions (the issue's), per task and per auxiliary."""
    return ([SignalCheck(f"fedavg_learns_{t}", f"FedAvg's accuracy on {t} (its whole pool, greedy) at the end "
                                               "exceeds its round-0 value") for t in cfg.tasks]
            + [SignalCheck(f"{a}_starts_{side}_{edge}", f"The {a} auxiliary's compliance in round 1 is {side} "
                                                       f"{edge} (FedMOA, mean over clients)")
               for a in ("format", "length") for side, edge in zip(("above", "below"), START_BAND)]
            + [SignalCheck(f"{a}_saturates", f"The {a} auxiliary's compliance passes {SATURATED} in some round "
                                             "(FedMOA, mean over clients)") for a in ("format", "length")]
            + [SignalCheck("control_stays_at_rate", f"The control's compliance stays within {CONTROL_BAND} of 0.5 "
                                                    "in every round (FedMOA, mean over clients)"),
               SignalCheck("primary_groups_have_spread", "Most groups have a non-zero primary reward spread "
                                                         "(the fraction of all-equal groups is below 0.5, FedAvg)",
                           direction=-1)])


CLAIMS = [Claim("beats_fedavg_global", "FedMOA's global accuracy exceeds FedAvg's", "up to +2.2 points",
                "acc(FedMOA) - acc(FedAvg), final, both pools, greedy"),
          Claim("beats_fedavg_personal", "FedMOA's personalized accuracy exceeds FedAvg's", "improved personalization",
                "personal acc(FedMOA) - personal acc(FedAvg), final"),
          Claim("primary_weight_rises_as_auxiliaries_saturate", "w_primary rises faster as the auxiliaries saturate",
                "prioritizes primary reasoning as auxiliaries saturate",
                "slope of per-round change of w_primary on the real auxiliaries' compliance (FedMOA)"),
          Claim("noisy_downweighted", "Accuracy-aware aggregation gives noisy clients less weight",
                "prioritizes high-quality updates", "aggregation weight: clean - noisy clients, paired per seed"),
          Claim("hypergradient_alone", "The hypergradient alone beats FedAvg", "ablation", "acc(hyper only) - acc(FedAvg)"),
          Claim("aggregation_alone", "The aggregation alone beats FedAvg", "ablation", "acc(aggregation only) - acc(FedAvg)")]


def claims_document(results: dict, cfg: MOAConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records, paired by seed."""
    def minus_fedavg(method, key):
        return [final_accuracy(a, key) - final_accuracy(b, key) for a, b in zip(results[method], results["fedavg"])]

    def over_clients(record, key):
        return np.nanmean(client_series(record, key), 1)

    fedavg, hyper = results["fedavg"], results["fedmoa"]
    noisy = [np.array(r["noisy"]) for r in hyper]
    values = ([[final_accuracy(r, f"acc/{t}") - r["history"][0][f"acc/{t}"] for r in fedavg] for t in cfg.tasks]
              + [[sign * (over_clients(r, f"reward_{a}")[0] - edge) for r in hyper]
                 for a in ("format", "length") for sign, edge in zip((1, -1), START_BAND)]
              + [[over_clients(r, f"reward_{a}").max() - SATURATED for r in hyper] for a in ("format", "length")]
              + [[CONTROL_BAND - np.abs(over_clients(r, "reward_control") - 0.5).max() for r in hyper],
                 [np.nanmean(client_series(r, "all_equal_primary")) - 0.5 for r in fedavg]])
    claims = [minus_fedavg("fedmoa", "acc"), minus_fedavg("fedmoa", "personal_acc"),
              [weight_slope_on(r, real_compliance(r)) for r in hyper],
              [aggregation_weights(r)[:, ~n].mean() - aggregation_weights(r)[:, n].mean() for r, n in zip(hyper, noisy)],
              minus_fedavg("hyper_only", "acc"), minus_fedavg("agg_only", "acc")]
    return evaluate("fedmoa", cfg, seeds, wall_s, git_commit(), list(zip(signal_checks(cfg), values)), list(zip(CLAIMS, claims)))


# ------------------------------------------------------------------ calibration and one step by hand --

def calibration(cfg: MOAConfig, prompts_per_client: int = 16) -> dict:
    """Before any method runs: ``{"accuracy": [{model, task, greedy accuracy}], "styles": [{task, answer
    begins with, greedy accuracy}], "warmup": info, "clients": [{client, task, objective, compliance,
    all-equal groups}], "example": one group's texts}``. Accuracy is greedy on each task's whole
    evaluation set, for the base and for the warmed-up model; compliance is each client's own rewards on
    ``prompts_per_client`` of its prompts x G samples at the training temperature, from the warmed-up model."""
    torch.manual_seed(cfg.seed)
    held = fedmoa.validation_tasks(cfg, 1)
    base, tok = load_model(cfg.model, seed=0)
    warm, tok, info = warmed_model(cfg.model, cfg.tasks, steps=cfg.warmup_steps)
    rows = [{"model": name, "task": t, "greedy accuracy": fedmoa.accuracy(m, tok, held[t], t, cfg)}
            for name, m in (("base", base), ("warmed up", warm)) for t in cfg.tasks]
    styles = []            # what each task's format costs: the warmed-up model's accuracy once an answer has
    for t in cfg.tasks:    # begun with a marker (none: the model's own choice, mostly the worked style)
        for marker in ("", *sorted({fedmoa.FORMAT_MARKERS[x] for x in cfg.tasks})):
            texts = sample(warm, tok, [x["prompt"] for x in held[t]], cfg.max_new_tokens, greedy=True,
                           response_prefix=marker).texts
            styles.append({"task": t, "answer begins with": repr(marker) if marker else "(free)",
                           "greedy accuracy": float(np.mean([fedmoa.correctness(x, t, f"{marker} {r}")
                                                             for x, r in zip(held[t], texts)]))})
    clients, per_client = fedmoa.make_clients(cfg), []
    for cid, client in enumerate(clients):
        rng_py, rng = random.Random(derive_seed(cfg.data_seed, 91, cid)), np.random.default_rng(cid)
        tasks = [fedmoa.make_task(client.task, rng_py) for _ in range(prompts_per_client)]
        texts = sample(warm, tok, [t["prompt"] for t in tasks for _ in range(cfg.group_size)], cfg.max_new_tokens,
                       cfg.temperature).texts
        rewards = np.concatenate([fedmoa.client_rewards(client, t, texts[i * cfg.group_size:(i + 1) * cfg.group_size],
                                                        rng, cfg) for i, t in enumerate(tasks)])
        groups = rewards.reshape(-1, cfg.group_size, len(OBJECTIVES))
        per_client += [{"client": cid, "task": client.task, "objective": name, "compliance": rewards[:, m].mean(),
                        "all-equal groups": (groups[:, :, m] == groups[:, :1, m]).all(1).mean()}
                       for m, name in enumerate(OBJECTIVES)]
    return {"accuracy": rows, "styles": styles, "warmup": info, "clients": per_client,
            "example": texts[:cfg.group_size]}


def one_client_step(cfg: MOAConfig, client_id: int = 1) -> dict:
    """Two local steps of one FedMOA client from the warmed-up model, as the algorithm takes them (no
    parameter update in between, so step 2 sees the same model), with what they compute: step 2's first group
    (responses, rewards per objective, advantages), each objective's gradient norm, h in its three forms
    (step 2's primary gradient against step 1's gradients) and the weights before and after the step on s."""
    warm, tok, _ = warmed_model(cfg.model, cfg.tasks, steps=cfg.warmup_steps)
    torch.manual_seed(cfg.seed)
    policy = add_lora(warm, cfg.lora_r, cfg.lora_alpha)
    client = fedmoa.make_clients(cfg)[client_id]
    rng_py, rng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)
    previous, _, _ = fedmoa.objective_gradients(policy, tok, client, rng_py, rng, cfg)
    grads, kl, rewards = fedmoa.objective_gradients(policy, tok, client, rng_py, rng, cfg)
    G = cfg.group_size
    logits = torch.zeros(len(OBJECTIVES), dtype=torch.float64)
    h = {form: fedmoa.hypergradient(grads[0], previous, form) for form in fedmoa.HYPERGRADIENTS}
    after = hypergradient_step(logits, h[cfg.hypergradient].double(), cfg.hyper_lr)
    return {"client": client, "rewards": rewards[:G],
            "advantages": group_advantages(torch.as_tensor(rewards[:G], dtype=torch.float32), G).numpy(),
            "grad_norms": grads.norm(dim=1).numpy(), "kl_norm": float(kl.norm()),
            "h": {form: v.numpy() for form, v in h.items()},
            "weights_before": torch.softmax(logits, 0).numpy(), "weights_after": torch.softmax(after, 0).numpy(),
            "bytes_up": 4 * grads.shape[1]}
