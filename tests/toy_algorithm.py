"""A least-squares federated algorithm small enough to run hundreds of rounds in a test.

Client k holds (X_k, y_k); its update is ``steps`` of SGD on the mean squared error with a
persistent step counter in its personal state. Run as a script, it performs a checkpointed run
(used by the kill-and-resume test).
"""
import sys
import time

import torch

from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.federated.loop import ClientUpdate, Federation

DIM, CLIENTS = 4, 3


def client_data(k: int):
    g = torch.Generator().manual_seed(100 + k)
    X = torch.randn(20 + 5 * k, DIM, generator=g)
    w_true = torch.arange(1.0, DIM + 1) * (1 + 0.3 * k)
    return X, X @ w_true


def make_client_update(steps=3, lr=0.05, fail=(), nan=(), delay=0.0, bad_shape=()):
    def client_update(ctx):
        if ctx.client_id in fail:
            raise RuntimeError("simulated crash")
        if ctx.client_id in bad_shape:
            return ClientUpdate({"w": torch.zeros(DIM + 1)}, 1)
        time.sleep(delay)
        X, y = client_data(ctx.client_id)
        w = ctx.global_state["w"].clone().requires_grad_(True)
        for _ in range(steps):
            idx = torch.randint(len(X), (8,))          # seeded by the loop from (seed, round, client)
            loss = ((X[idx] @ w - y[idx]) ** 2).mean()
            (g,) = torch.autograd.grad(loss, w)
            w = (w - lr * g).detach().requires_grad_(True)
        w = w.detach()
        if ctx.client_id in nan:
            w = w * float("nan")
        n_steps = ctx.personal_state.get("steps", 0) + steps
        return ClientUpdate({"w": w}, len(X), {"loss": loss.item()}, {"steps": n_steps})
    return client_update


def evaluate(state, r, personal_states):
    return {"global_loss": float(sum(((X @ state["w"] - y) ** 2).mean() for X, y in map(client_data, range(CLIENTS))))}


def federation(rounds, seed=0, delay=0.0, **kw):
    return Federation(make_client_update(delay=delay, **kw), aggregate_fedavg, {"w": torch.zeros(DIM)},
                      num_clients=CLIENTS, rounds=rounds, seed=seed, evaluate=evaluate, fingerprint="toy")


def run(rounds, run_dir=None, seed=0, delay=0.0, **kw):
    return federation(rounds, seed, delay, **kw).run(run_dir=run_dir, progress=False)


if __name__ == "__main__":
    run(int(sys.argv[2]), run_dir=sys.argv[1], delay=float(sys.argv[3]))
