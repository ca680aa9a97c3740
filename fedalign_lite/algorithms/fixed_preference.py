"""FedAvg with fixed preference weights (linear scalarisation): FIRM's client with lambda = p at every
step, the limit beta -> infinity of FIRM's weight problem (docs/firm.md §4). Everything else is FIRM's."""
from __future__ import annotations

import numpy as np

from fedalign_lite.algorithms import firm
from fedalign_lite.federated.loop import ClientUpdate, Federation


def client_parts(cfg: firm.FIRMConfig):
    """K local ascent steps on p_1 * helpfulness + p_2 * harmlessness."""

    def make(policy, tok, pools, rms):
        def client_update(ctx) -> ClientUpdate:
            run = firm.start_local_run(policy, ctx, cfg)
            firm.reinforce_steps(policy, tok, pools[ctx.client_id], rms[ctx.client_id], cfg, cfg.local_steps,
                                 lambda grads: cfg.p, run, np.random.default_rng(ctx.seed))
            return run.update(policy, len(pools[ctx.client_id]))

        return {"client_update": client_update}

    return make


def federation(cfg: firm.FIRMConfig) -> Federation:
    """FedAvg with lambda = p in FIRM's setting, as a :class:`~fedalign_lite.federated.loop.Federation`."""
    return firm.build(cfg, client_parts(cfg))


def run(cfg: firm.FIRMConfig, *, run_dir=None, progress: bool = True):
    """One run in this process; ``artifacts`` as FIRM's."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
