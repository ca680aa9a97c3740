"""Federated DPO with a shared LoRA adapter (the tour's algorithm, and the baseline of FedPDPO).

    server: theta_0 = LoRA init (B = 0)
    round t: each client i
        loads theta_t into its adapter                          (only the LoRA state crosses the network)
        K steps of  L = L_DPO(pi_theta, pi_ref; beta)  [+ sft_weight * NLL(chosen)]  [+ (mu/2)||theta - theta_t||^2]
        uploads theta_i and n_i
    server: theta_{t+1} = aggregate(theta_i, n_i)            (FedAvg by default)

The reference pi_ref is the frozen base model (adapter disabled); it never changes, so each client's
reference log-probs are computed once and kept in its personal state (the cache the benchmark
measures against TRL, which recomputes them every step unless ``precompute_ref_log_probs``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedalign_lite.config import PRESETS, ValidatedConfig, check_model_name
from fedalign_lite.data.preference import collate, review_pairs, split_clients, tokenize_pair
from fedalign_lite.errors import ConfigError, check_choice
from fedalign_lite.federated.aggregators import AGGREGATORS, make_aggregator, proximal_term
from fedalign_lite.federated.loop import ClientUpdate, Federation, derive_seed, lazy
from fedalign_lite.models.causal_lm import add_lora, get_adapter_state, load_model, named_lora_parameters, set_adapter_state
from fedalign_lite.objectives.dpo import dpo_loss, reward_accuracy, sequence_logps

PARTITIONS = ("iid", "dirichlet", "groups")


@dataclass(frozen=True)
class FedDPOConfig(ValidatedConfig):
    """Federated DPO's run; all sizes are counts, learning rates are per step."""

    preset: str = "cpu"
    model: str = "fedalign-base"
    num_clients: int = 4
    clients_per_round: int = 4
    rounds: int = 6
    local_steps: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    max_length: int = 96
    beta: float = 0.1               # DPO inverse temperature
    sft_weight: float = 0.0         # RPO-style NLL on chosen; pure DPO can wreck generation (foundations §6)
    partition: str = "iid"
    alpha: float = 0.5              # Dirichlet concentration (used when partition == "dirichlet")
    aggregator: str = "fedavg"
    prox_mu: float = 0.0            # FedProx proximal weight (client side)
    server_lr: float = 1.0          # FedAvgM / FedAdam server step
    server_momentum: float = 0.9    # FedAvgM momentum, FedAdam beta1
    num_pairs: int = 400            # training preference pairs over all clients
    eval_pairs: int = 64            # held-out pairs for the global evaluation
    persistent_optimizer: bool = False   # keep each client's Adam moments across rounds (PluralLLM's code does)
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_model_name(self.model)
        self.check_numbers(integers=("num_clients", "clients_per_round", "rounds", "local_steps", "batch_size",
                                     "lora_r", "lora_alpha", "max_length", "num_pairs", "eval_pairs"),
                           positives=("lr", "beta", "alpha", "server_lr"), non_negatives=("sft_weight", "prox_mu"))
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum!r}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} must be <= num_clients={self.num_clients}"
            )
        check_choice("partition", self.partition, PARTITIONS)
        check_choice("aggregator", self.aggregator, AGGREGATORS)
        if self.aggregator == "fedprox" and self.prox_mu == 0:
            raise ConfigError("aggregator='fedprox' needs prox_mu > 0 (the proximal weight), got 0")


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=2, clients_per_round=2, rounds=2, local_steps=2,
                  batch_size=4, max_length=48, num_pairs=24, eval_pairs=8),
    "cpu": dict(model="fedalign-base"),
    "gpu": dict(model="smollm2-135m", num_clients=8, clients_per_round=8, rounds=20, local_steps=20,
                batch_size=16, lr=5e-4, max_length=256, num_pairs=4000, eval_pairs=400),
}


def get_preset(name: str, **overrides) -> FedDPOConfig:
    """The validated preset ``name`` with ``overrides`` applied, e.g. ``get_preset("cpu", rounds=3)``."""
    return FedDPOConfig.from_preset(name, _PRESETS, **overrides)


@torch.no_grad()
def reference_logps(model, tokenized: list[dict], pad_id: int, max_length: int, batch_size: int = 32) -> torch.Tensor:
    """Log-probs of the frozen base (adapter off): (n, 2) with columns (chosen, rejected)."""
    out = []
    with model.disable_adapter():
        for i in range(0, len(tokenized), batch_size):
            b = collate(tokenized[i:i + batch_size], pad_id, max_length)
            out.append(sequence_logps(model, **b).view(2, -1).T)
    return torch.cat(out)


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices for local step ``step`` of a client with n pairs: a fresh permutation each epoch."""
    start = step * batch_size
    idx = []
    while len(idx) < batch_size:
        epoch, offset = divmod(start + len(idx), n)
        perm = np.random.default_rng(derive_seed(seed, epoch)).permutation(n)
        idx.append(perm[offset])
    return np.array(idx)


def dpo_step_loss(model, tokenized, ref, idx, pad_id, cfg, global_state=None):
    """Loss and metrics of one local DPO step on pairs ``idx`` (policy forward on 2B rows)."""
    b = collate([tokenized[i] for i in idx], pad_id, cfg.max_length)
    logps = sequence_logps(model, **b)
    pc, pr = logps.view(2, -1)
    loss, rc, rr = dpo_loss(pc, pr, ref[idx, 0], ref[idx, 1], cfg.beta)
    total = loss
    if cfg.sft_weight:   # RPO-style NLL per chosen token keeps generations fluent (docs/foundations.md §6)
        total = total - cfg.sft_weight * (pc / b["completion_mask"][: len(idx), 1:].sum(-1)).mean()
    if global_state is not None and cfg.prox_mu:
        named = ((k, p) for k, p in named_lora_parameters(model) if k in global_state)
        total = total + proximal_term(named, global_state, cfg.prox_mu)
    return total, {"loss": loss.item(), "reward_acc": reward_accuracy(rc, rr)}


def make_client_update(model, tokenized_by_client: list[list[dict]], pad_id: int, cfg: FedDPOConfig):
    """The client update: K local DPO steps from the broadcast adapter.

    ``cfg.persistent_optimizer`` keeps each client's Adam moments across rounds (as PluralLLM's code
    does); the default restarts them every round, as FedAvg is usually described.
    """
    def client_update(ctx):
        data = tokenized_by_client[ctx.client_id]
        ps = ctx.personal_state
        if "ref_logps" not in ps:
            ps["ref_logps"] = reference_logps(model, data, pad_id, cfg.max_length)
        set_adapter_state(model, ctx.global_state)
        model.train()
        params = [p for _, p in named_lora_parameters(model)]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        if cfg.persistent_optimizer and "optimizer" in ps:
            opt.load_state_dict(ps["optimizer"])
        step0, logs = ps.get("step", 0), []
        for k in range(cfg.local_steps):
            idx = batch_indices(len(data), step0 + k, cfg.batch_size, derive_seed(cfg.seed, ctx.client_id))
            loss, m = dpo_step_loss(model, data, ps["ref_logps"], idx, pad_id, cfg, ctx.global_state)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            logs.append(m)
        model.eval()
        ps["step"] = step0 + cfg.local_steps
        ps["losses"] = ps.get("losses", []) + [m["loss"] for m in logs]
        if cfg.persistent_optimizer:
            ps["optimizer"] = opt.state_dict()
        metrics = {k: float(np.mean([m[k] for m in logs])) for k in logs[0]}
        return ClientUpdate(get_adapter_state(model), len(data), metrics, ps)

    return client_update


def make_evaluate(model, tokenized_eval: list[dict], pad_id: int, cfg):
    """``evaluate(global_state, round, personal_states)``: DPO loss and implicit-reward accuracy on held-out pairs."""
    ref = reference_logps(model, tokenized_eval, pad_id, cfg.max_length)

    @torch.no_grad()
    def evaluate(global_state, round_, personal_states):
        set_adapter_state(model, global_state)
        b = collate(tokenized_eval, pad_id, cfg.max_length)
        pc, pr = sequence_logps(model, **b).view(2, -1)
        loss, rc, rr = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], cfg.beta)
        return {"eval_loss": loss.item(), "eval_reward_acc": reward_accuracy(rc, rr),
                "eval_margin": (rc - rr).mean().item()}

    return evaluate


def federation(cfg: FedDPOConfig) -> Federation:
    """Federated DPO of ``cfg.model`` + LoRA on Rotten Tomatoes review pairs, as a
    :class:`~fedalign_lite.federated.loop.Federation`; artifacts: model, tokenizer, client index lists.
    The evaluation (and its reference log-probs) is built on the server's first call only."""
    model, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    pairs = review_pairs(cfg.data_seed)
    train, held = pairs[: cfg.num_pairs], pairs[cfg.num_pairs: cfg.num_pairs + cfg.eval_pairs]
    parts = split_clients(train, cfg)
    tokenized = [[tokenize_pair(tok, train[i]) for i in part] for part in parts]
    hyper = {"fedavgm": dict(lr=cfg.server_lr, momentum=cfg.server_momentum),
             "fedadam": dict(lr=cfg.server_lr, momentum=cfg.server_momentum)}.get(cfg.aggregator, {})
    return Federation(
        make_client_update(model, tokenized, tok.pad_token_id, cfg),
        make_aggregator(cfg.aggregator, **hyper), get_adapter_state(model),
        num_clients=cfg.num_clients, clients_per_round=cfg.clients_per_round, rounds=cfg.rounds, seed=cfg.seed,
        evaluate=lazy(lambda: make_evaluate(model, [tokenize_pair(tok, p) for p in held], tok.pad_token_id, cfg)),
        fingerprint=cfg.fingerprint(), finish=lambda state: set_adapter_state(model, state),
        artifacts={"model": model, "tokenizer": tok, "parts": parts})


def run(cfg: FedDPOConfig, *, run_dir=None, progress: bool = True):
    """Federated DPO (:func:`federation`) in this process: a FederatedRun whose ``artifacts["model"]``
    holds the final global adapter."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
