"""Benchmark: whole federated rounds of PluralLLM's fixed setting (notebook 01 section 11), where each of the
8 clients takes one GPO step, so the loop's per-client work (download, upload checks, aggregation) is a large
share of a round.

    .venv/bin/python benchmarks/fed_round.py      # writes benchmarks/results/fed_round.json

One thread, as in the notebook's worker processes. ``ROUNDS`` rounds run ``REPEATS`` times after a warm-up
run; the result is the median seconds per round and per client step.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import write_result

from fedalign_lite.algorithms import pluralllm
from fedalign_lite.experiments.pluralllm import data_config

OUT = Path(__file__).parent / "results" / "fed_round.json"
ROUNDS, REPEATS = 100, 3


def main() -> dict:
    torch.set_num_threads(1)
    cfg = data_config(pluralllm.get_preset("cpu"), "fixed_fl").replace(rounds=ROUNDS, eval_every=10**6)
    data = pluralllm.load_data(cfg)
    pluralllm.run(cfg.replace(rounds=5), data, progress=False)              # warm-up
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        pluralllm.run(cfg, data, progress=False)
        times.append((time.perf_counter() - t) / ROUNDS)
    s = sorted(times)[REPEATS // 2]
    clients = len(data.train_groups)
    return write_result(OUT, {"setting": "pluralllm fixed_fl (cpu): 8 clients x 1 GPO step per round, server Adam",
                              "rounds": ROUNDS, "repeats": REPEATS, "s_per_round": round(s, 4),
                              "ms_per_client_step": round(1000 * s / clients, 2)})


if __name__ == "__main__":
    main()
