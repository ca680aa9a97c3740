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

import numpy as np
import torch

from fedalign_lite.federated.aggregators import proximal_term
from fedalign_lite.federated.loop import ClientUpdate, Federation, derive_seed
from fedalign_lite.objectives.dpo import dpo_loss, reward_accuracy, sequence_logps
from fedalign_lite.models.causal_lm import get_adapter_state, named_lora_parameters, set_adapter_state
from fedalign_lite.data.preference import collate


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
    if cfg.sft_weight:   # RPO-style NLL per chosen token keeps generations fluent (MEASURED.md)
        total = total - cfg.sft_weight * (pc / b["completion_mask"][: len(idx), 1:].sum(-1)).mean()
    if global_state is not None and cfg.prox_mu:
        named = ((k, p) for k, p in named_lora_parameters(model) if k in global_state)
        total = total + proximal_term(named, global_state, cfg.prox_mu)
    return total, {"loss": loss.item(), "reward_acc": reward_accuracy(rc, rr)}


def make_client_update(model, tokenized_by_client: list[list[dict]], pad_id: int, cfg,
                       persistent_optimizer: bool = False):
    """The client update for :func:`fedalign_lite.federated.run_federated`.

    ``persistent_optimizer=True`` keeps each client's Adam moments across rounds (as PluralLLM's
    code does); the default restarts them every round, as FedAvg is usually described.
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
        if persistent_optimizer and "optimizer" in ps:
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
        if persistent_optimizer:
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


def pair_group(pair: dict, groups: int = 5) -> int:
    """A stable pseudo-category of a review pair (a hash of its movie into ``groups`` buckets); the
    label that the Dirichlet and natural partitions of review pairs split on."""
    import zlib

    return zlib.crc32(pair["movie"].encode()) % groups


def split_clients(pairs: list[dict], cfg) -> list[np.ndarray]:
    """Client index lists for ``pairs`` according to ``cfg.partition``."""
    from fedalign_lite.errors import ConfigError
    from fedalign_lite.data.partition import partition_dirichlet, partition_iid, partition_natural

    labels = [pair_group(p) for p in pairs]
    if cfg.partition == "iid":
        return partition_iid(len(pairs), cfg.num_clients, cfg.seed)
    if cfg.partition == "dirichlet":
        return partition_dirichlet(labels, cfg.num_clients, cfg.alpha, cfg.seed)
    names, parts = partition_natural(labels)
    if len(parts) != cfg.num_clients:
        raise ConfigError(f"partition={cfg.partition!r} gives one client per group: num_clients must be "
                          f"{len(parts)}, got {cfg.num_clients}")
    return parts


def federation(cfg, *, persistent_optimizer: bool = False, model_and_tok=None) -> Federation:
    """Federated DPO of ``cfg.model`` + LoRA on Rotten Tomatoes review pairs, as a
    :class:`~fedalign_lite.federated.Federation`; artifacts: model, tokenizer, client index lists."""
    from fedalign_lite.federated.aggregators import make_aggregator
    from fedalign_lite.models.causal_lm import add_lora, load_model
    from fedalign_lite.data.preference import review_pairs, tokenize_pair

    model, tok = model_and_tok or load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    pairs = review_pairs(cfg.seed)
    train, held = pairs[: cfg.num_pairs], pairs[cfg.num_pairs: cfg.num_pairs + cfg.eval_pairs]
    parts = split_clients(train, cfg)
    tokenized = [[tokenize_pair(tok, train[i]) for i in part] for part in parts]
    hyper = {"fedavgm": dict(lr=cfg.server_lr, momentum=cfg.server_momentum),
             "fedadam": dict(lr=cfg.server_lr, momentum=cfg.server_momentum)}.get(cfg.aggregator, {})
    return Federation(
        make_client_update(model, tokenized, tok.pad_token_id, cfg, persistent_optimizer),
        make_aggregator(cfg.aggregator, **hyper), get_adapter_state(model),
        num_clients=cfg.num_clients, clients_per_round=cfg.clients_per_round, rounds=cfg.rounds, seed=cfg.seed,
        evaluate=make_evaluate(model, [tokenize_pair(tok, p) for p in held], tok.pad_token_id, cfg),
        fingerprint=cfg.fingerprint() + ("-persist" if persistent_optimizer else ""),
        artifacts={"model": model, "tokenizer": tok, "parts": parts})


def run(cfg, *, run_dir=None, persistent_optimizer: bool = False, progress: bool = True, model_and_tok=None):
    """Federated DPO (:func:`federation`) in this process.

    Returns ``(FederatedRun, model, tokenizer, parts)``; the model holds the final global adapter.
    """
    fed = federation(cfg, persistent_optimizer=persistent_optimizer, model_and_tok=model_and_tok)
    result = fed.run(run_dir=run_dir, progress=progress)
    model = fed.artifacts["model"]
    set_adapter_state(model, result.global_state)
    return result, model, fed.artifacts["tokenizer"], fed.artifacts["parts"]
