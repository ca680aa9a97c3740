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
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
