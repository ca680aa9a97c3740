"""Server aggregation rules. Each has the signature the round loop expects::

    aggregate(global_state, updates, server_state) -> (new_global_state, new_server_state)

``global_state`` and each ``update.upload`` are ``{name: tensor}`` with the same keys; ``updates``
are the clients that succeeded this round; ``server_state`` is the server optimizer's memory
(``{}`` for plain FedAvg), checkpointed with the run.
"""
from __future__ import annotations

import torch

from fedalign_lite.errors import ConfigError, check_choice


def weighted_average(states: list[dict], weights: list[float]) -> dict:
    """sum_i w_i s_i / sum_i w_i, key by key (float tensors; others are taken from the first state)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"aggregation weights must sum to > 0, got {weights}")
    floats = [k for k, ref in states[0].items() if torch.is_floating_point(ref)]
    averaged = {}
    if floats:
        # every float entry in one flat vector: the same float64 multiply-adds per element as key by key (so
        # the same numbers), without a Python loop over keys for each client
        sizes = [states[0][k].numel() for k in floats]
        acc = torch.zeros(sum(sizes), dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += torch.cat([s[k].reshape(-1).to(torch.float64) for k in floats]) * (w / total)
        averaged = dict(zip(floats, acc.split(sizes)))
    return {key: averaged[key].view(ref.shape).to(ref.dtype) if key in averaged else ref.clone()
            for key, ref in states[0].items()}


def aggregate_fedavg(global_state: dict, updates: list, server_state: dict):
    """FedAvg (McMahan et al. 2017): theta <- sum_i n_i theta_i / sum_i n_i."""
    return weighted_average([u.upload for u in updates], [u.num_samples for u in updates]), server_state


def make_server_optimizer(kind: str, lr: float = 1.0, momentum: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                          bias_correction: bool = False):
    """FedAvgM / FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization").

    The pseudo-gradient is Delta = FedAvg(uploads) - theta. FedAvgM: m <- momentum*m + Delta,
    theta <- theta + lr*m. FedAdam: m <- b1*m + (1-b1)Delta, v <- b2*v + (1-b2)Delta^2,
    theta <- theta + lr*m/(sqrt(v)+tau) with b1 = ``momentum``. lr=1, momentum=0 is FedAvg.

    ``bias_correction`` (FedAdam only) divides m by 1 - b1^t and v by 1 - b2^t at server step t, as
    torch's Adam does: Reddi et al.'s FedAdam has none, so its first steps are up to about
    (1 - b1) / sqrt(1 - b2) times ``lr`` (3.2x with Adam's constants, still 1.3x after 1,000 steps). With
    it, clients that upload theta - g make this exactly Adam on the mean of their g.
    """
    check_choice("aggregator", kind, ["fedavgm", "fedadam"])
    if bias_correction and kind != "fedadam":
        raise ConfigError(f"bias_correction applies to aggregator='fedadam' only, got aggregator={kind!r}")

    def aggregate(global_state: dict, updates: list, server_state: dict):
        avg, _ = aggregate_fedavg(global_state, updates, server_state)
        new_global, new_server = {}, {}
        if bias_correction:
            step = int(server_state["step"].item()) + 1 if "step" in server_state else 1
            new_server["step"] = torch.tensor([step])
            m_scale, v_scale = 1 - momentum**step, 1 - beta2**step
        for key, theta in global_state.items():
            if not torch.is_floating_point(theta):
                new_global[key] = avg[key]
                continue
            delta = avg[key] - theta
            m = server_state.get(f"m/{key}", torch.zeros_like(theta))
            if kind == "fedavgm":
                m = momentum * m + delta
                new_global[key] = theta + lr * m
            else:
                v = server_state.get(f"v/{key}", torch.zeros_like(theta))
                m = momentum * m + (1 - momentum) * delta
                v = beta2 * v + (1 - beta2) * delta * delta
                new_server[f"v/{key}"] = v
                m_hat, v_hat = (m / m_scale, v / v_scale) if bias_correction else (m, v)
                new_global[key] = theta + lr * m_hat / (v_hat.sqrt() + tau)
            new_server[f"m/{key}"] = m
        return new_global, new_server

    return aggregate


AGGREGATORS = ("fedavg", "fedprox", "fedavgm", "fedadam")


def make_aggregator(name: str, **hyper):
    """The aggregation function for ``name`` in {fedavg, fedprox, fedavgm, fedadam}.

    FedProx differs from FedAvg only on the client (:func:`proximal_term`); its server rule is FedAvg.
    """
    check_choice("aggregator", name, AGGREGATORS)
    if name in ("fedavg", "fedprox"):
        if hyper:
            raise ConfigError(f"aggregator={name!r} takes no server hyperparameters, got {sorted(hyper)}")
        return aggregate_fedavg
    return make_server_optimizer(name, **hyper)


def proximal_term(named_params, global_state: dict, mu: float) -> torch.Tensor:
    """FedProx (Li et al. 2020) client penalty (mu/2) * ||w - w_global||^2 over the shared parameters.

    ``named_params`` yields (key, parameter) with keys as in ``global_state``.
    """
    terms = [((p - global_state[k].detach()) ** 2).sum() for k, p in named_params]
    return 0.5 * mu * torch.stack(terms).sum()
