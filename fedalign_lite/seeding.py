"""Seeds that are functions of (run seed, round, client, ...): a run is reproducible, a resumed run
repeats exactly, and every worker process draws the same numbers as a serial run."""
from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (SeedSequence hashing, so nearby inputs decorrelate)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU, and CUDA where it is available).

    The loop calls this for every client in every round. ``torch.manual_seed`` would also queue a lazy seed
    for each accelerator backend torch was built with, recording a stack trace each time (about 1 ms on a
    CPU-only machine, as long as a small model's client step); the CPU draws are the same either way.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
