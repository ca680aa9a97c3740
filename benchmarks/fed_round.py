"""Benchmark: whole federated rounds of PluralLLM, in the two settings notebook 01 spends most of its time on:
the fixed setting (section 11: each of the 8 clients takes one GPO step with plain SGD, so the loop's per-client
work, download, upload checks and aggregation, is a large share of a round) and the paper's (each client takes
6 steps with its own Adam, whose moments persist across rounds in the client's personal state).

    .venv/bin/python benchmarks/fed_round.py      # writes benchmarks/results/fed_round.json

One thread, as in the notebook's worker processes. Each setting runs a warm-up, then its rounds ``REPEATS``
times; the result is the median seconds per round and per client step.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import write_result

from fedalign_lite.algorithms import pluralllm
from fedalign_lite.experiments.pluralllm import data_config

OUT = Path(__file__).parent / "results" / "fed_round.json"
SETTINGS = {"fixed_fl": (100, "8 clients x 1 GPO step (SGD) per round, server Adam"),
            "fl": (20, "8 clients x 6 GPO steps (persistent client Adam) per round, FedAvg")}
REPEATS = 3


def time_rounds(variant: str, rounds: int) -> dict:
    cfg = data_config(pluralllm.get_preset("cpu"), variant).replace(rounds=rounds, eval_every=10**6)
    data = pluralllm.load_data(cfg)
    pluralllm.run(cfg.replace(rounds=3), data, progress=False)              # warm-up
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        pluralllm.run(cfg, data, progress=False)
        times.append((time.perf_counter() - t) / rounds)
    s = sorted(times)[REPEATS // 2]
    return {"rounds": rounds, "s_per_round": round(s, 4),
            "ms_per_client_step": round(1000 * s / (len(data.train_groups) * cfg.local_steps), 2)}


def main() -> dict:
    torch.set_num_threads(1)
    return write_result(OUT, {"repeats": REPEATS, **{f"{variant} (cpu): {what}": time_rounds(variant, rounds)
                                                      for variant, (rounds, what) in SETTINGS.items()}})


if __name__ == "__main__":
    main()
