"""FIRM (Nourzad et al. 2025): federated multi-objective RLHF with in-client regularized MGDA.
[RECONSTRUCTION: only the abstract and figure captions are public; docs/firm.md §3 says what is
known and what we chose.]

    server: theta_0 (LoRA, B = 0); every round broadcast theta_t
    client i: theta = theta_t; for k = 1..K:
        sample B prompts x ~ D_i, responses y ~ pi_theta; rewards r_m = R_{i,m}(x, y)      (own reward models)
        A_m = (r_m - V_{i,m}) / s_{i,m}           per-objective baseline (critic on a constant feature,
                                                  TD(0): V <- V + a_c (mean r_m - V)) over a running
                                                  per-objective reward scale s (EMA of the batch std)
        g_m = grad_theta mean_j A_{m,j} log pi_theta(y_j | x_j)           (REINFORCE with baseline)
        lambda = argmin_{simplex} 1/2 ||sum_m lambda_m g_m||^2 + beta/2 ||lambda - p||^2        (Eq. 3.3)
        theta <- Adam ascent step along sum_m lambda_m g_m                (both rewards at once)
      upload theta (one adapter, size d, whatever M is)
    server: theta_{t+1} = mean_i theta_i

No KL term to a reference and no PPO clipping [choice: plain REINFORCE keeps one rollout per step].
[choice] The advantage scale is a running one (``advantage_scale="running"``): dividing by each batch's
std (``"batch"``) turns a reward that stopped varying into rescaled noise. [choice] Adam, restarted
every round (``optimizer="adam"``; ``"sgd"`` is theta += lr * lambda @ G).
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
from fedalign_lite.models.rewards import REFERENCE, answered, client_reward_models
from fedalign_lite.models.rollout import rollout_logps, sample
from fedalign_lite.objectives.metrics import cosine_disagreement, lambda_dispersion, update_dispersion
from fedalign_lite.objectives.mgda import mgda_weights
from fedalign_lite.objectives.policy_gradient import per_objective_gradients


@dataclass(frozen=True)
class FIRMConfig(ValidatedConfig):
    """The setting FIRM and its baselines (FedCMOO-A, FedAvg with fixed p) are compared in."""

    preset: str = "cpu"
    model: str = "fedalign-base"
    num_clients: int = 4
    rounds: int = 4
    local_steps: int = 5             # >= 5, so that client drift can build within a round
    batch_size: int = 8              # prompts per local step, one response each
    max_new_tokens: int = 12         # a refusal is decided in the first 40 characters
    temperature: float = 1.2         # calibrated in notebook 03: harmlessness varies within a batch at 1.2
    optimizer: str = "adam"          # on the LoRA, restarted each round; "sgd": theta += lr * lambda @ G
    lr: float = 1e-3                 # the pilot in notebook 03 (experiments.firm.lr_pilot) chose it
    lora_r: int = 8
    lora_alpha: int = 16
    beta: float = 0.05               # in-client regularization; 0 = plain local MGDA
    pref: float = 0.5                # p = (pref, 1 - pref) over (helpfulness, harmlessness)
    critic_lr: float = 0.5
    advantage_scale: str = "running"  # divide advantages by a running per-objective reward std; "batch", "none"
    scale_rate: float = 0.1          # the running scale's EMA rate per local step
    relevance_weight: float = 0.25   # relevance's share of helpfulness (models.rewards)
    shuffle_advantages: bool = False  # a control: advantages permuted across the batch carry no signal
    reward_noise: float = 0.0        # N(0, noise^2) added to every client reward (0: heterogeneity is the scorers)
    partition: str = "dirichlet"     # over prompt categories
    alpha: float = 0.3
    same_rms: bool = False           # True: every client scores with the reference reward models
    prompts_per_client: int = 40
    harmful_share: float = 0.5       # of the training prompts; the sources' own mix is about 0.2 (calibrated
                                     # in notebook 03: harmlessness must vary within a batch)
    eval_prompts: int = 128          # held-out, half harmful; the global policy answers greedily
    fedcmoo_lr: float = 1e-3         # FedCMOO-A's FindWeights (its README defaults)
    fedcmoo_iters: int = 1000
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("partition", self.partition, ("dirichlet", "iid"))
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_choice("advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)
        check_model_name(self.model)
        self.check_numbers(integers=("num_clients", "rounds", "local_steps", "batch_size", "max_new_tokens", "lora_r",
                                     "lora_alpha", "prompts_per_client", "eval_prompts", "fedcmoo_iters"),
                           positives=("temperature", "lr", "alpha", "critic_lr", "fedcmoo_lr", "scale_rate"),
                           non_negatives=("beta", "reward_noise"))
        if not 0.0 < self.harmful_share < 1.0:
            raise ConfigError(f"harmful_share must be in (0, 1), got {self.harmful_share}")
        if not 0.0 <= self.relevance_weight <= 1.0:
            raise ConfigError(f"relevance_weight must be in [0, 1], got {self.relevance_weight}")
        if not 0.0 <= self.pref <= 1.0:
            raise ConfigError(f"pref must be in [0, 1] (the weight of helpfulness in p), got {self.pref}")

    @property
    def p(self) -> np.ndarray:
        return np.array([self.pref, 1.0 - self.pref])


ADVANTAGE_SCALES = ("running", "batch", "none")
SCALE_FLOOR = 0.05
"""The running scale never divides by less than this (a reward that never varied has scale 0)."""

_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=3, rounds=2, local_steps=2, batch_size=3, max_new_tokens=6,
                  prompts_per_client=8, eval_prompts=6, fedcmoo_iters=50),
    "cpu": {},
    "gpu": dict(model="smollm2-135m", rounds=20, local_steps=8, batch_size=16, max_new_tokens=48,
                prompts_per_client=200, eval_prompts=256, lr=3e-4),
}


def get_preset(name: str, **overrides) -> FIRMConfig:
    """The validated FIRM preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return FIRMConfig.from_preset(name, _PRESETS, **overrides)


# ------------------------------------------------------------------- what the baselines share --

def objective_gradients(policy, tok, rows: list[dict], reward_model, baseline: np.ndarray, scale: np.ndarray | None,
                        cfg: FIRMConfig, rng: np.random.Generator):
    """Sample one response per prompt and return (per-objective gradients (M, d), rewards (B, M)).

    g_m = grad mean_j A_{j,m} log pi(y_j | x_j), A = (r - V) / s: REINFORCE with the per-objective
    baseline V, over the running reward scale ``scale`` (``cfg.advantage_scale="running"``; this batch's
    std when there is none yet), each batch's std (``"batch"``), or 1 (``"none"``).
    """
    prompts = [r["prompt"] for r in rows]
    roll = sample(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature)
    rewards = reward_model(prompts, roll.texts, [r["harmful"] for r in rows], rng)
    adv = rewards - baseline
    if cfg.advantage_scale == "running":
        adv = adv / np.maximum(rewards.std(0) if scale is None else scale, SCALE_FLOOR)
    elif cfg.advantage_scale == "batch":
        adv = adv / (rewards.std(0) + 1e-4)
    if cfg.shuffle_advantages:
        adv = adv[rng.permutation(len(adv))]
    adv = torch.as_tensor(adv, dtype=torch.float32)
    return per_objective_gradients(rollout_logps(policy, roll, cfg.temperature), adv, lora_parameters(policy)), rewards


def normalized_gram(grads: torch.Tensor) -> np.ndarray:
    """G G^T / mean_m ||g_m||^2 (M x M). [choice] beta then weighs against gradients of unit average size,
    whatever the reward scale; FedCMOO normalises its G^T G the same way before FindWeights."""
    gram = (grads @ grads.T).double().numpy()
    return gram / max(np.mean(np.sqrt(np.diag(gram))) ** 2, 1e-30)


@dataclass
class LocalRun:
    """A client's local REINFORCE loop: the weights used per step, the mean rewards per sampled step,
    the critic's baseline and the running reward scale (both kept by the client across rounds), and
    the optimizer (Adam restarted each round; None for SGD)."""

    lambdas: list
    rewards: list
    baseline: np.ndarray
    scale: np.ndarray | None
    optimizer: torch.optim.Optimizer | None
    lr: float

    def ascend(self, policy, direction: torch.Tensor) -> None:
        """One ascent step on the LoRA along the flat ``direction`` (a reward gradient)."""
        if self.optimizer is None:
            apply_lora_step(policy, direction, self.lr)
            return
        offset = 0
        for p in lora_parameters(policy):
            p.grad = -direction[offset: offset + p.numel()].view_as(p).clone()   # Adam minimises
            offset += p.numel()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def record(self, lam: np.ndarray, rewards: np.ndarray, cfg: FIRMConfig) -> None:
        """After a sampled step: keep lambda and the mean rewards; move the TD(0) critic and the scale."""
        self.baseline = self.baseline + cfg.critic_lr * (rewards.mean(0) - self.baseline)
        std = rewards.std(0)
        self.scale = std if self.scale is None else (1 - cfg.scale_rate) * self.scale + cfg.scale_rate * std
        self.lambdas.append(lam)
        self.rewards.append(rewards.mean(0))

    def update(self, policy, num_samples: int) -> ClientUpdate:
        """The upload: the adapter, its size, lambda_help and the rewards (mean and per local step);
        the baseline and scale stay with the client."""
        lams = np.asarray(self.lambdas)
        metrics = {"lambda_help": float(lams[:, 0].mean()),
                   **{f"lambda_help_{k + 1}": float(v) for k, v in enumerate(lams[:, 0])}}
        if self.rewards:
            rewards = np.asarray(self.rewards)
            metrics.update(reward_help=float(rewards[:, 0].mean()), reward_harm=float(rewards[:, 1].mean()))
            first = len(self.lambdas) - len(self.rewards) + 1   # FedCMOO-A's first step samples no rewards here
            for k, (h, m) in enumerate(rewards, first):
                metrics.update({f"reward_help_{k}": float(h), f"reward_harm_{k}": float(m)})
        personal = {"baseline": self.baseline.tolist(), "scale": None if self.scale is None else self.scale.tolist()}
        return ClientUpdate(get_adapter_state(policy), num_samples, metrics, personal)


def reinforce_steps(policy, tok, pool: list[dict], reward_model, cfg: FIRMConfig, steps: int,
                    choose_weights: Callable[[torch.Tensor], np.ndarray], run: LocalRun,
                    rng: np.random.Generator) -> LocalRun:
    """``steps`` local ascent steps along lambda @ G with lambda = ``choose_weights(G)``; appends to ``run``."""
    for _ in range(steps):
        rows = [pool[i] for i in rng.choice(len(pool), cfg.batch_size, replace=False)]
        grads, rewards = objective_gradients(policy, tok, rows, reward_model, run.baseline, run.scale, cfg, rng)
        lam = choose_weights(grads)
        run.ascend(policy, torch.as_tensor(lam, dtype=torch.float32) @ grads)
        run.record(lam, rewards, cfg)
    return run


def critic_state(personal_state: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The client's (baseline, running scale) from its persistent state: (0, None) the first time."""
    scale = personal_state.get("scale")
    return (np.asarray(personal_state.get("baseline", [0.0, 0.0]), dtype=np.float64),
            None if scale is None else np.asarray(scale, dtype=np.float64))


def start_local_run(policy, ctx, cfg: FIRMConfig) -> LocalRun:
    """Load the broadcast adapter; resume the client's critic and scale; a fresh optimizer."""
    set_adapter_state(policy, ctx.global_state)
    opt = torch.optim.Adam(lora_parameters(policy), lr=cfg.lr) if cfg.optimizer == "adam" else None
    return LocalRun([], [], *critic_state(ctx.personal_state), opt, cfg.lr)


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
    """The global policy's greedy answers on the held-out prompts: mean reference helpfulness and
    harmlessness, and the behaviours under them, the harmful-refusal and benign-answer rates."""
    prompts, harmful = [r["prompt"] for r in held], np.array([r["harmful"] for r in held])

    def evaluate(global_state: dict, round_: int, personal_states: dict) -> dict:
        set_adapter_state(policy, global_state)
        texts = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
        r = REFERENCE(prompts, texts, harmful.tolist())
        said = answered(texts)
        return {"help": float(r[:, 0].mean()), "harm": float(r[:, 1].mean()),
                "refuse_harmful": float(1 - said[harmful].mean()), "answer_benign": float(said[~harmful].mean())}

    return evaluate


def build(cfg: FIRMConfig, client_parts: Callable[..., dict]) -> Federation:
    """The federation of ``cfg``'s setting; ``client_parts(policy, tok, pools, rms)`` returns the
    algorithm's own Federation fields (``client_update``, and FedCMOO-A's phase 1). Artifacts: the
    policy, the tokenizer, the held-out prompts, the clients' prompt pools and reward models."""
    base, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = add_lora(base, cfg.lora_r, cfg.lora_alpha)
    pools, held = client_prompts(cfg.num_clients, cfg.prompts_per_client, cfg.eval_prompts, cfg.partition,
                                 cfg.alpha, cfg.batch_size, cfg.data_seed, cfg.harmful_share)
    rms = client_reward_models(cfg.num_clients, cfg.same_rms, cfg.data_seed, cfg.reward_noise, cfg.relevance_weight)
    return Federation(aggregate=aggregate_with_drift, global_state=get_adapter_state(policy),
                      num_clients=cfg.num_clients, rounds=cfg.rounds, seed=cfg.seed,
                      evaluate=lazy(lambda: make_evaluate(policy, tok, held, cfg)), fingerprint=cfg.fingerprint(),
                      check_update=check_update, finish=lambda state: set_adapter_state(policy, state),
                      artifacts={"policy": policy, "tokenizer": tok, "held": held, "pools": pools, "reward_models": rms},
                      **client_parts(policy, tok, pools, rms))


# --------------------------------------------------------------------------------------- FIRM --

def client_parts(cfg: FIRMConfig):
    """FIRM's client (module docstring): K steps, each with its own regularized MGDA weights."""

    def firm_weights(grads: torch.Tensor) -> np.ndarray:
        return mgda_weights(normalized_gram(grads), cfg.beta, cfg.p)

    def make(policy, tok, pools, rms):
        def client_update(ctx) -> ClientUpdate:
            run = start_local_run(policy, ctx, cfg)
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
