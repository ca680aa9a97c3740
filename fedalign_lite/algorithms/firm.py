"""FIRM (Nourzad et al. 2025): federated multi-objective RLHF with in-client regularized MGDA.
[RECONSTRUCTION: only the abstract and figure captions are public; docs/firm.md §3 says what is
known and what we chose.]

    server: theta_0 (LoRA, B = 0); every round broadcast theta_t
    client i: theta = theta_t; for k = 1..K:
        sample B prompts x ~ D_i, responses y ~ pi_theta; rewards r_m = R_{i,m}(x, y)      (own reward models)
        A_m = r_m - V_{i,m}                       per-objective baseline (critic on a constant feature,
                                                  TD(0): V <- V + a_c (mean r_m - V))
        g_m = grad_theta mean_j A_{m,j} log pi_theta(y_j | x_j)           (REINFORCE with baseline)
        lambda = argmin_{simplex} 1/2 ||sum_m lambda_m g_m||^2 + beta/2 ||lambda - p||^2        (Eq. 3.3)
        theta <- theta + eta sum_m lambda_m g_m                          (ascent on both rewards)
      upload theta (one adapter, size d, whatever M is)
    server: theta_{t+1} = mean_i theta_i

No KL term to a reference and no PPO clipping [choice: plain REINFORCE keeps one rollout per step].
This module also holds what FIRM's baselines share with it (the setting, the local REINFORCE loop,
the drift-recording aggregation, the evaluation): FedCMOO-A (:mod:`.fedcmoo`) and FedAvg with fixed
preference weights (:mod:`.fixed_preference`) are built from these parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fedalign_lite.config import PRESETS, ValidatedConfig, check_model_name
from fedalign_lite.data.prompts import client_prompts
from fedalign_lite.errors import ConfigError, PayloadError, check_choice
from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.federated.loop import ClientUpdate, Federation, lazy
from fedalign_lite.models.causal_lm import (
    add_lora,
    apply_lora_step,
    get_adapter_state,
    load_model,
    lora_parameters,
    set_adapter_state,
)
from fedalign_lite.models.rewards import REFERENCE, client_reward_models
from fedalign_lite.models.rollout import rollout_logps, sample
from fedalign_lite.objectives.metrics import cosine_disagreement, lambda_dispersion, update_dispersion
from fedalign_lite.objectives.mgda import mgda_weights
from fedalign_lite.objectives.policy_gradient import per_objective_gradients


@dataclass(frozen=True)
class FIRMConfig(ValidatedConfig):
    """The setting FIRM and its baselines (FedCMOO-A, FedAvg with fixed p) are compared in."""

    preset: str = "cpu"
    model: str = "fedalign-base"
    num_clients: int = 8
    rounds: int = 3
    local_steps: int = 2
    batch_size: int = 8              # prompts per local step, one response each
    max_new_tokens: int = 12
    temperature: float = 1.0
    lr: float = 1.0                  # local SGD step on the LoRA (ascent)
    lora_r: int = 4
    lora_alpha: int = 8
    beta: float = 0.05               # in-client regularization; 0 = plain local MGDA
    pref: float = 0.5                # p = (pref, 1 - pref) over (helpfulness, harmlessness)
    critic_lr: float = 0.5
    normalize: bool = True           # advantages divided by their batch std, per objective ("False": raw)
    partition: str = "dirichlet"     # over prompt categories
    alpha: float = 0.3
    same_rms: bool = False           # True: every client scores with the reference reward models
    prompts_per_client: int = 40
    eval_prompts: int = 16           # held-out, half harmful; the global policy answers greedily
    fedcmoo_lr: float = 1e-3         # FedCMOO-A's FindWeights (its README defaults)
    fedcmoo_iters: int = 1000
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("partition", self.partition, ("dirichlet", "iid"))
        check_model_name(self.model)
        self.check_numbers(integers=("num_clients", "rounds", "local_steps", "batch_size", "max_new_tokens", "lora_r",
                                     "lora_alpha", "prompts_per_client", "eval_prompts", "fedcmoo_iters"),
                           positives=("temperature", "lr", "alpha", "critic_lr", "fedcmoo_lr"), non_negatives=("beta",))
        if not 0.0 <= self.pref <= 1.0:
            raise ConfigError(f"pref must be in [0, 1] (the weight of helpfulness in p), got {self.pref}")

    @property
    def p(self) -> np.ndarray:
        return np.array([self.pref, 1.0 - self.pref])


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=3, rounds=2, local_steps=2, batch_size=3, max_new_tokens=6,
                  prompts_per_client=8, eval_prompts=6, fedcmoo_iters=50),
    "cpu": {},
    "gpu": dict(model="smollm2-135m", rounds=20, local_steps=4, batch_size=16, max_new_tokens=48,
                prompts_per_client=200, eval_prompts=128, lora_r=8, lora_alpha=16, lr=0.01),
}


def get_preset(name: str, **overrides) -> FIRMConfig:
    """The validated FIRM preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return FIRMConfig.from_preset(name, _PRESETS, **overrides)


# ------------------------------------------------------------------- what the baselines share --

def objective_gradients(policy, tok, rows: list[dict], reward_model, baseline: np.ndarray, cfg: FIRMConfig,
                        rng: np.random.Generator):
    """Sample one response per prompt and return (per-objective gradients (M, d), rewards (B, M)).

    g_m = grad mean_j (r_{j,m} - V_m) log pi(y_j | x_j): REINFORCE with the per-objective baseline V,
    with the advantages divided by their batch std per objective when ``cfg.normalize``.
    """
    prompts = [r["prompt"] for r in rows]
    roll = sample(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature)
    rewards = reward_model(prompts, roll.texts, [r["harmful"] for r in rows], rng)
    adv = rewards - baseline
    if cfg.normalize:   # [choice] reward scales differ by client and objective; unit-norm gradients instead
        adv = adv / (rewards.std(0) + 1e-4)   # would pin 2-objective MGDA at lambda = 1/2 (the bisector)
    adv = torch.as_tensor(adv, dtype=torch.float32)
    return per_objective_gradients(rollout_logps(policy, roll), adv, lora_parameters(policy)), rewards


def normalized_gram(grads: torch.Tensor) -> np.ndarray:
    """G G^T / mean_m ||g_m||^2 (M x M). [choice] beta then weighs against gradients of unit average size,
    whatever the reward scale; FedCMOO normalises its G^T G the same way before FindWeights."""
    gram = (grads @ grads.T).double().numpy()
    return gram / max(np.mean(np.sqrt(np.diag(gram))) ** 2, 1e-30)


@dataclass
class LocalRun:
    """What a client's local REINFORCE loop leaves: the weights used per step, the mean rewards per
    sampled step, and the critic's baseline."""

    lambdas: list
    rewards: list
    baseline: np.ndarray

    def update(self, policy, num_samples: int) -> ClientUpdate:
        """The upload: the adapter, its size, the mean lambda_help (and rewards); the baseline stays."""
        metrics = {"lambda_help": float(np.mean(self.lambdas, 0)[0])}
        if self.rewards:
            mean = np.mean(self.rewards, 0)
            metrics.update(reward_help=float(mean[0]), reward_harm=float(mean[1]))
        return ClientUpdate(get_adapter_state(policy), num_samples, metrics, {"baseline": self.baseline.tolist()})


def reinforce_steps(policy, tok, pool: list[dict], reward_model, cfg: FIRMConfig, steps: int,
                    choose_weights: Callable[[torch.Tensor], np.ndarray], run: LocalRun,
                    rng: np.random.Generator) -> LocalRun:
    """``steps`` local ascent steps theta += lr * lambda @ G with lambda = ``choose_weights(G)``;
    appends to ``run`` and moves its TD(0) baseline."""
    for _ in range(steps):
        rows = [pool[i] for i in rng.choice(len(pool), cfg.batch_size, replace=False)]
        grads, rewards = objective_gradients(policy, tok, rows, reward_model, run.baseline, cfg, rng)
        lam = choose_weights(grads)
        apply_lora_step(policy, torch.as_tensor(lam, dtype=torch.float32) @ grads, cfg.lr)
        run.baseline = run.baseline + cfg.critic_lr * (rewards.mean(0) - run.baseline)     # TD(0) critic
        run.lambdas.append(lam)
        run.rewards.append(rewards.mean(0))
    return run


def start_local_run(policy, ctx) -> LocalRun:
    """Load the broadcast adapter; resume the client's critic baseline (zero the first time)."""
    set_adapter_state(policy, ctx.global_state)
    return LocalRun([], [], np.asarray(ctx.personal_state.get("baseline", [0.0, 0.0]), dtype=np.float64))


def check_update(update: ClientUpdate) -> None:
    """On arrival: lambda_help is a weight in [0, 1]."""
    lam = update.metrics.get("lambda_help")
    if lam is None or not 0.0 <= lam <= 1.0:
        raise PayloadError(f"metric 'lambda_help' must be in [0, 1], got {lam!r}")


def aggregate_with_drift(global_state: dict, updates: list, server_state: dict):
    """FedAvg of the adapters; also records the round's drift (docs/firm.md §4) in the server state:
    a row (D1 lambda dispersion, D2 update dispersion, D3 1 - mean cosine) per round."""
    new_global, _ = aggregate_fedavg(global_state, updates, server_state)
    deltas = np.stack([torch.cat([(u.upload[k] - global_state[k]).reshape(-1) for k in global_state]).numpy()
                       for u in updates])
    lams = [[u.metrics["lambda_help"], 1 - u.metrics["lambda_help"]] for u in updates]
    row = torch.tensor([[lambda_dispersion(lams), update_dispersion(deltas), cosine_disagreement(deltas)]],
                       dtype=torch.float64)
    drift = server_state.get("drift")
    return new_global, {**server_state, "drift": row if drift is None else torch.cat([drift, row])}


def make_evaluate(policy, tok, held: list[dict], cfg: FIRMConfig):
    """Mean reference helpfulness and harmlessness of the global policy's greedy answers on held-out prompts."""
    prompts, harmful = [r["prompt"] for r in held], [r["harmful"] for r in held]

    def evaluate(global_state: dict, round_: int, personal_states: dict) -> dict:
        set_adapter_state(policy, global_state)
        texts = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
        r = REFERENCE(prompts, texts, harmful)
        return {"help": float(r[:, 0].mean()), "harm": float(r[:, 1].mean())}

    return evaluate


def build(cfg: FIRMConfig, client_parts: Callable[..., dict]) -> Federation:
    """The federation of ``cfg``'s setting; ``client_parts(policy, tok, pools, rms)`` returns the
    algorithm's own Federation fields (``client_update``, and FedCMOO-A's phase 1). Artifacts: the
    policy, the tokenizer, the held-out prompts."""
    base, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = add_lora(base, cfg.lora_r, cfg.lora_alpha)
    pools, held = client_prompts(cfg.num_clients, cfg.prompts_per_client, cfg.eval_prompts, cfg.partition,
                                 cfg.alpha, cfg.batch_size, cfg.data_seed)
    rms = client_reward_models(cfg.num_clients, cfg.same_rms, cfg.data_seed)
    return Federation(aggregate=aggregate_with_drift, global_state=get_adapter_state(policy),
                      num_clients=cfg.num_clients, rounds=cfg.rounds, seed=cfg.seed,
                      evaluate=lazy(lambda: make_evaluate(policy, tok, held, cfg)), fingerprint=cfg.fingerprint(),
                      check_update=check_update, finish=lambda state: set_adapter_state(policy, state),
                      artifacts={"policy": policy, "tokenizer": tok, "held": held},
                      **client_parts(policy, tok, pools, rms))


# --------------------------------------------------------------------------------------- FIRM --

def client_parts(cfg: FIRMConfig):
    """FIRM's client (module docstring): K steps, each with its own regularized MGDA weights."""

    def firm_weights(grads: torch.Tensor) -> np.ndarray:
        return mgda_weights(normalized_gram(grads), cfg.beta, cfg.p)

    def make(policy, tok, pools, rms):
        def client_update(ctx) -> ClientUpdate:
            run = start_local_run(policy, ctx)
            reinforce_steps(policy, tok, pools[ctx.client_id], rms[ctx.client_id], cfg, cfg.local_steps,
                            firm_weights, run, np.random.default_rng(ctx.seed))
            return run.update(policy, len(pools[ctx.client_id]))

        return {"client_update": client_update}

    return make


def federation(cfg: FIRMConfig) -> Federation:
    """FIRM as a :class:`~fedalign_lite.federated.loop.Federation` (in process or on Flower)."""
    return build(cfg, client_parts(cfg))


def run(cfg: FIRMConfig, *, run_dir=None, progress: bool = True):
    """One FIRM run in this process; ``artifacts``: the final policy, tokenizer, held-out prompts."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
