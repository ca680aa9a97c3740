"""What both benchmarks share: the step timer for TRL's trainers, the median, and the JSON writer."""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


def median_after_warmup(times: list, warmup: int) -> float:
    kept = sorted(times[warmup:])
    return kept[len(kept) // 2]


def step_timer(times: list):
    """A transformers TrainerCallback that appends each optimizer step's wall time to ``times``."""
    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    return StepTimer()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_result(out: Path, result: dict) -> dict:
    """Add peak memory, threads and versions, write ``out`` as JSON and print it."""
    result = {**result, "peak_rss_mb": peak_rss_mb(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "note": "median over steps after warm-up; one process, so ratios are comparable on a noisy host"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result
