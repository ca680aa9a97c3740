"""The grid runner every paper's experiment uses, and the results file it writes.

A grid is ``{variant name: (algorithm, config overrides)}`` run for every seed. Each (variant, seed)
is one independent run in a single-threaded worker process (:func:`~fedalign_lite.federated.workers.map_processes`),
so the numbers do not depend on how many workers there are. Every run is reduced to one record of
the same shape, and every paper's ``metrics.json`` has the same top-level keys.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedalign_lite import algorithms
from fedalign_lite.federated.loop import FederatedRun
from fedalign_lite.federated.workers import map_processes

RESULTS_KEYS = ("paper", "preset", "seeds", "wall_s", "commit", "config", "metrics")
"""The top-level keys of every ``figures/<paper>/metrics.json``."""


def run_record(run: FederatedRun) -> dict:
    """One run as the grid keeps it: ``{"history": [per-round dict], "client_log": [per (round, client)
    dict], "server": {name: ndarray}}`` (the server state's tensors, e.g. FIRM's drift rows)."""
    return {"history": run.history, "client_log": run.client_log,
            "server": {k: v.numpy() for k, v in run.server_state.items() if isinstance(v, torch.Tensor)}}


def run_registered(algorithm: str, cfg) -> dict:
    """The default ``run_one`` of :func:`run_grid`: a registered algorithm's run as a :func:`run_record`."""
    return run_record(algorithms.get(algorithm).run(cfg, progress=False))


def _run_job(job: tuple) -> dict:
    """One (variant, seed) in a worker: ``job`` is (run_one, algorithm, cfg), all picklable."""
    run_one, algorithm, cfg = job
    return {"seed": cfg.seed, **run_one(algorithm, cfg)}


def run_grid(base_cfg, variants: dict[str, tuple[str, dict]], seeds: list[int], *,
             run_one: Callable[[str, object], dict] = run_registered, workers: int = 2,
             progress: bool = True, seed_counts: dict[str, int] | None = None,
             costs: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """``{variant: [record per seed]}``: every variant of ``variants`` (``name -> (algorithm,
    overrides of base_cfg)``) for every seed, in one pool of ``workers`` processes.

    ``run_one(algorithm, cfg) -> dict`` runs one job and must be importable (module level); records
    get their ``"seed"``. ``seed_counts`` runs the variants it names on only their first n seeds.
    ``costs`` (relative seconds of one run per variant, 1 for those it leaves out) starts the longest
    runs first, so that the pool does not end with one worker on a long run while the others wait;
    without it jobs start seeds outermost. Records do not depend on the order.
    """
    counts = seed_counts or {}
    jobs = [(name, seed) for i, seed in enumerate(seeds) for name in variants if i < counts.get(name, len(seeds))]
    cost = costs or {}
    order = sorted(range(len(jobs)), key=lambda j: -cost.get(jobs[j][0], 1.0))   # stable: seeds keep their order
    calls = [(run_one, variants[name][0], base_cfg.replace(seed=seed, **variants[name][1]))
             for name, seed in (jobs[j] for j in order)]
    records = [None] * len(jobs)
    for j, record in zip(order, map_processes(_run_job, calls, workers, "runs", progress)):
        records[j] = record
    out: dict[str, list[dict]] = {name: [] for name in variants}
    for (name, _), record in zip(jobs, records):
        out[name].append(record)
    return out


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when tracked files other than the outputs
    (``figures/``, ``REPORT.md``, ``README.md``'s tally) differ from it; ``"unknown"`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(exclude,top)figures", ":(exclude,top)REPORT.md", ":(exclude,top)README.md"],
                               capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(path: str | Path, paper: str, cfg, seeds: list[int], wall_s: float, metrics: dict) -> dict:
    """Write ``metrics.json`` with :data:`RESULTS_KEYS` (``metrics`` from the paper's table, whose
    entries keep their per-seed values) atomically, and return what was written."""
    results = {"paper": paper, "preset": cfg.preset, "seeds": list(seeds), "wall_s": round(float(wall_s), 1),
               "commit": git_commit(), "config": cfg.to_dict(), "metrics": metrics}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable))
    tmp.replace(path)
    return results


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)
