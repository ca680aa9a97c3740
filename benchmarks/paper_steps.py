"""Benchmark: one client's local step of every paper's algorithm, at its cpu-preset sizes.

    make bench        # writes benchmarks/results/steps.json (after dpo_step.json and grpo_step.json)

Each paper's step runs in its own process, so its peak RSS is its own: the federation is built
from the cpu preset, then client 0's ``client_update`` for round 1 runs once to warm up and
``REPEATS`` more times, timed. A step is one local optimizer step, with everything the client does
for it: GPO's batch; FedPDPO's DPO + Bradley-Terry batch; FIRM's rollouts, both rewards scored, the
per-objective gradients and the regularized MGDA weights; FedMOA's groups, every objective scored,
the hypergradient weights. The client's per-round overheads (building its optimizer, the upload)
are spread over its local steps, as they are in a run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import peak_rss_mb, write_result

from fedalign_lite.algorithms import ALGORITHMS, get_preset
from fedalign_lite.federated.loop import ClientContext, clone_state
from fedalign_lite.seeding import derive_seed, seed_everything

OUT = Path(__file__).parent / "results" / "steps.json"
REPEATS = 3
# paper -> (algorithm, what one local step processes, from the config)
STEPS = {
    "PluralLLM (GPO step)": ("pluralllm", "groups", lambda cfg: 1),
    "FedPDPO (DPO + BT step)": ("fedpdpo", "pairs", lambda cfg: cfg.batch_size),
    "FIRM (rollout, scoring, MGDA)": ("firm", "responses", lambda cfg: cfg.batch_size),
    "FedMOA (GRPO groups, scoring, weights)": ("fedmoa", "responses", lambda cfg: cfg.prompts_per_step * cfg.group_size),
}


def one(paper: str) -> dict:
    """Time client 0's round-1 update of ``paper``'s algorithm in this process."""
    torch.set_num_threads(2)
    algorithm, unit, per_step = STEPS[paper]
    cfg = get_preset(algorithm, "cpu")
    fed = ALGORITHMS[algorithm].federation(cfg)
    view = fed.download(fed.global_state, 0) if fed.download else fed.global_state
    personal = (fed.personal_states or {}).get(0, {})
    seed = derive_seed(cfg.seed, 1, 0)

    def update() -> float:
        seed_everything(seed)
        t = time.perf_counter()
        fed.client_update(ClientContext(0, 1, seed, clone_state(view), dict(personal)))
        return time.perf_counter() - t

    update()
    s = sorted(update() for _ in range(REPEATS))[REPEATS // 2] / cfg.local_steps
    return {"algorithm": algorithm, "preset": "cpu", "model": getattr(cfg, "model", "GPO (no LM)"),
            "local_steps": cfg.local_steps, f"{unit}_per_step": per_step(cfg), "s_per_step": round(s, 4),
            f"{unit}_per_s": round(per_step(cfg) / s, 2)}


def main() -> dict:
    rows = {}
    for paper in STEPS:
        out = subprocess.run([sys.executable, __file__, paper], capture_output=True, text=True, check=True)
        rows[paper] = json.loads(out.stdout.strip().splitlines()[-1])
        print(paper, rows[paper], flush=True)
    return write_result(OUT, {"steps": rows, "repeats": REPEATS, "threads": 2})


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps({**one(sys.argv[1]), "peak_rss_mb": peak_rss_mb()}))
    else:
        main()
