"""FedCMOO-A: FedCMOO (Askin et al. 2025, docs/foundations.md §3) adapted to FIRM's RL setting, as
FIRM's figures name its baseline. [RECONSTRUCTION of the adaptation: docs/firm.md §4.]

    phase 1, client i:  one gradient per objective at theta_t, from a fresh batch      -> upload g_0..g_{M-1}
    phase 1, server:    G^T G averaged over clients; w = FindWeights(G^T G, last round's w) -> broadcast w
    phase 2, client i:  step 1 applies the stored phase-1 gradients weighted by w;
                        steps 2..K follow sum_m w_m g_m; upload theta_i
    server:             theta_{t+1} = mean_i theta_i

Everything else (setting, REINFORCE gradients, critic, drift, evaluation) is FIRM's (:mod:`.firm`).
"""
from __future__ import annotations

import numpy as np
import torch

from fedalign_lite.algorithms import firm
from fedalign_lite.errors import PayloadError
from fedalign_lite.federated.loop import ClientUpdate, Federation
from fedalign_lite.models.causal_lm import lora_parameters, set_adapter_state
from fedalign_lite.objectives.mgda import fedcmoo_find_weights

OBJECTIVES = 2


def phase1_matrix(payload: dict) -> torch.Tensor:
    """(M, d): a phase-1 upload ``{"g0": (d,), "g1": (d,), ...}`` stacked in objective order."""
    return torch.stack([payload[f"g{m}"] for m in range(len(payload))])


def client_parts(cfg: firm.FIRMConfig):
    """FedCMOO-A's two phases (module docstring), on FIRM's policy, prompt pools and reward models."""

    def make(policy, tok, pools, rms):
        def phase1(ctx) -> dict:
            """``{"g<m>": (d,)}`` at the broadcast model (RNG seeded from (seed, round, client, 1) by the loop)."""
            set_adapter_state(policy, ctx.global_state)
            rng = np.random.default_rng(ctx.seed)
            pool = pools[ctx.client_id]
            rows = [pool[i] for i in rng.choice(len(pool), cfg.batch_size, replace=False)]
            grads, _ = firm.objective_gradients(policy, tok, rows, rms[ctx.client_id], *firm.critic_state(ctx.personal_state),
                                                cfg, rng)
            return {f"g{m}": g for m, g in enumerate(grads)}

        def combine_phase1(round_: int, payloads: dict, server_state: dict):
            """FindWeights on the clients' mean G^T G, warm-started from last round's w (kept in the server
            state, as FedCMOO's code carries it); broadcast ``{"w": (M,)}``."""
            grams = [(g @ g.T).double().numpy() for g in map(phase1_matrix, payloads.values())]
            w = fedcmoo_find_weights(np.mean(grams, 0), server_state.get("fedcmoo_w"), cfg.fedcmoo_lr,
                                     cfg.fedcmoo_iters)
            return {"w": w}, {**server_state, "fedcmoo_w": w}

        def client_update(ctx) -> ClientUpdate:
            """Phase 2: w from ``ctx.broadcast``, the client's own phase-1 gradients from ``ctx.phase1``."""
            run = firm.start_local_run(policy, ctx, cfg)
            w = np.asarray(ctx.broadcast["w"], dtype=np.float64)
            run.ascend(policy, torch.as_tensor(w, dtype=torch.float32) @ phase1_matrix(ctx.phase1))
            run.lambdas.append(w)
            firm.reinforce_steps(policy, tok, pools[ctx.client_id], rms[ctx.client_id], cfg, cfg.local_steps - 1,
                                 lambda grads: w, run, np.random.default_rng(ctx.seed))
            return run.update(policy, len(pools[ctx.client_id]))

        num_params = sum(p.numel() for p in lora_parameters(policy))
        return {"client_update": client_update, "phase1": phase1, "combine_phase1": combine_phase1,
                "check_phase1": make_check_phase1(num_params)}

    return make


def make_check_phase1(num_params: int):
    """On arrival: a phase-1 upload is exactly g0..g{M-1}, each of shape (d,)."""

    def check_phase1(payload: dict) -> None:
        expected = [f"g{m}" for m in range(OBJECTIVES)]
        if sorted(payload) != expected:
            raise PayloadError(f"phase-1 upload keys must be {expected}, got {sorted(payload)}")
        for k, g in payload.items():
            if tuple(g.shape) != (num_params,):
                raise PayloadError(f"phase-1 upload {k!r} must have shape ({num_params},), got {tuple(g.shape)}")

    return check_phase1


def federation(cfg: firm.FIRMConfig) -> Federation:
    """FedCMOO-A in FIRM's setting as a two-phase :class:`~fedalign_lite.federated.loop.Federation`."""
    return firm.build(cfg, client_parts(cfg))


def run(cfg: firm.FIRMConfig, *, run_dir=None, progress: bool = True):
    """One FedCMOO-A run in this process; ``artifacts`` as FIRM's."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
