"""The federated round loop every algorithm plugs into (DESIGN.md section 4).

An algorithm supplies two functions:

* ``client_update(ctx: ClientContext) -> ClientUpdate`` -- local training on client ``ctx.client_id``
  starting from ``ctx.global_state``, with its persistent ``ctx.personal_state``;
* ``aggregate(global_state, updates, server_state) -> (global_state, server_state)``
  (see :mod:`fedalign_lite.aggregators`).

Per round: sample clients (seeded by (seed, round)); for each, seed every RNG from
(seed, round, client) and call ``client_update`` on private copies; drop clients that raise or
upload non-finite values (logged); aggregate the rest; evaluate; checkpoint atomically. A run
restarted with the same ``run_dir`` resumes after the last finished round and ends with the same
metrics as an uninterrupted run, because every random draw is a function of (seed, round, client)
and everything else lives in the checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import AllClientsFailedError, CheckpointError, check_positive

SCALAR_BYTES = 8   # a metric or a sample count crosses the network as one float64/int64


@dataclass
class ClientContext:
    client_id: int
    round: int                  # 1-based
    seed: int                   # derived from (run seed, round, client); every RNG is already seeded with it
    global_state: dict          # private clone of the broadcast {name: tensor}
    personal_state: dict        # private copy of this client's persistent state (never uploaded)


@dataclass
class ClientUpdate:
    upload: dict                              # {name: tensor} sent to the server (counted in bytes up)
    num_samples: int                          # the client's FedAvg weight
    metrics: dict = field(default_factory=dict)   # scalars sent to the server (counted in bytes up)
    personal_state: dict | None = None        # new persistent state; None keeps the old one


@dataclass
class FederatedRun:
    global_state: dict
    personal_states: dict
    server_state: dict
    history: list            # one dict per round (round 0 = evaluation of the initial model)
    client_log: list         # one dict per (round, sampled client)

    @property
    def metrics(self):
        """Per-round metrics as a pandas DataFrame indexed by round."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("round")


def client_metric(client_log: list, key: str) -> np.ndarray:
    """(rounds, clients) array of the client metric ``key`` (as sent, without the ``client_`` prefix)
    from a run's ``client_log``; NaN where a client was not sampled or failed."""
    log = [x for x in client_log if x["status"] == "ok"]
    out = np.full((max(x["round"] for x in log), max(x["client"] for x in log) + 1), np.nan)
    for x in log:
        out[x["round"] - 1, x["client"]] = x[f"client_{key}"]
    return out


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (SeedSequence hashing, so nearby inputs decorrelate)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_nbytes(state: dict) -> int:
    """Bytes of the tensors in ``state`` as sent (numel x element size)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def clone_state(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def sample_clients(num_clients: int, clients_per_round: int, seed: int, round_: int) -> list[int]:
    if clients_per_round == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(derive_seed(seed, round_, 2**31))  # a stream no client id uses
    return sorted(rng.choice(num_clients, clients_per_round, replace=False).tolist())


def _is_finite(update: ClientUpdate) -> bool:
    tensors_ok = all(torch.isfinite(t).all() for t in update.upload.values() if torch.is_floating_point(t))
    return tensors_ok and all(math.isfinite(float(v)) for v in update.metrics.values())


def run_federated(client_update: Callable[[ClientContext], ClientUpdate], aggregate: Callable,
                  global_state: dict, *, num_clients: int, rounds: int, clients_per_round: int | None = None,
                  seed: int = 0, evaluate: Callable[[dict, int, dict], dict] | None = None,
                  personal_states: dict | None = None, run_dir: str | Path | None = None, resume: bool = True,
                  fingerprint: str = "", progress: bool = True) -> FederatedRun:
    """Run ``rounds`` rounds and return the final state and the metrics.

    Args:
        global_state: initial shared parameters ``{name: tensor}`` (what the server broadcasts).
        evaluate: ``evaluate(global_state, round, personal_states) -> {metric: float}``, called after
            every round and once on the initial state (round 0); ``personal_states`` is
            ``{client_id: dict}`` (read-only), for personalized evaluation.
        personal_states: initial ``{client_id: dict}``; missing clients start with ``{}``.
        run_dir: where ``checkpoint.safetensors`` and ``metrics.jsonl`` go; ``None`` keeps nothing on disk.
        fingerprint: config hash stored in the checkpoint; resuming under another one is refused.
    """
    check_positive("num_clients", num_clients, integer=True)
    check_positive("rounds", rounds, integer=True)
    clients_per_round = clients_per_round or num_clients
    check_positive("clients_per_round", clients_per_round, integer=True)
    state = {"round": 0, "global_state": clone_state(global_state), "server_state": {},
             "personal_states": {k: personal_states.get(k, {}) if personal_states else {} for k in range(num_clients)},
             "history": [], "client_log": [], "fingerprint": fingerprint, "seed": seed}
    ckpt = Path(run_dir) / "checkpoint.safetensors" if run_dir is not None else None
    if ckpt is not None and resume and ckpt.exists():
        loaded = load_checkpoint(ckpt)
        if loaded.get("fingerprint") != fingerprint or loaded.get("seed") != seed:
            raise CheckpointError(
                f"checkpoint {ckpt} was written by a run with config fingerprint {loaded.get('fingerprint')!r} "
                f"and seed {loaded.get('seed')}; this run has {fingerprint!r} and seed {seed}. "
                f"Use another run_dir or resume=False")
        state = loaded
    if state["round"] == 0 and not state["history"] and evaluate is not None:
        state["history"].append({"round": 0, **evaluate(state["global_state"], 0, state["personal_states"])})

    bar = tqdm(range(state["round"] + 1, rounds + 1), desc="rounds", disable=not progress,
               initial=state["round"], total=rounds)
    for r in bar:
        t0 = time.perf_counter()
        sampled = sample_clients(num_clients, clients_per_round, seed, r)
        down = state_nbytes(state["global_state"])
        ok, rows = [], []
        for cid in tqdm(sampled, desc=f"round {r} clients", leave=False, disable=not progress):
            s = derive_seed(seed, r, cid)
            seed_everything(s)
            ctx = ClientContext(cid, r, s, clone_state(state["global_state"]),
                                copy.deepcopy(state["personal_states"][cid]))
            row = {"round": r, "client": cid, "bytes_down": down}
            try:
                upd = client_update(ctx)
                if not _is_finite(upd):
                    raise FloatingPointError("upload or metrics contain NaN/inf")
            except Exception as e:  # a failing client must not stop the federation
                warnings.warn(f"round {r}: client {cid} left out of aggregation: {type(e).__name__}: {e}")
                rows.append({**row, "status": f"failed: {type(e).__name__}: {e}", "bytes_up": 0})
                continue
            rows.append({**row, "status": "ok", "num_samples": upd.num_samples,
                         "bytes_up": state_nbytes(upd.upload) + SCALAR_BYTES * (1 + len(upd.metrics)),
                         **{f"client_{k}": float(v) for k, v in upd.metrics.items()}})
            ok.append((cid, upd))
        if not ok:
            raise AllClientsFailedError(f"round {r}: all {len(sampled)} sampled clients failed: "
                                        + "; ".join(f"client {x['client']}: {x['status']}" for x in rows))
        state["global_state"], state["server_state"] = aggregate(state["global_state"], [u for _, u in ok],
                                                                  state["server_state"])
        for cid, upd in ok:
            if upd.personal_state is not None:
                state["personal_states"][cid] = upd.personal_state
        metric_keys = sorted({k for x in rows for k in x if k.startswith("client_")})
        summary = {"round": r, "clients_ok": len(ok), "clients_failed": len(rows) - len(ok),
                   "bytes_up": sum(x["bytes_up"] for x in rows), "bytes_down": down * len(sampled),
                   **{k: float(np.mean([x[k] for x in rows if k in x])) for k in metric_keys}}
        if evaluate is not None:
            summary.update(evaluate(state["global_state"], r, state["personal_states"]))
        summary["seconds"] = time.perf_counter() - t0
        state["history"].append(summary)
        state["client_log"] += rows
        state["round"] = r
        if ckpt is not None:
            save_checkpoint(ckpt, state)
            table = ckpt.parent / "metrics.jsonl"
            table.with_suffix(".tmp").write_text("".join(json.dumps(h) + "\n" for h in state["history"]))
            table.with_suffix(".tmp").replace(table)
    return FederatedRun(state["global_state"], state["personal_states"], state["server_state"],
                        state["history"], state["client_log"])
