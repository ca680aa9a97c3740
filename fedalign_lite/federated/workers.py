"""Independent runs (seeds, configs) in worker processes with one thread each.

Small models are bound by per-operation overhead, not by matmul width, so a second thread barely
helps one run while a second process doubles the work done on 2 cores. Every call of ``fn`` runs
single-threaded whether or not workers are used, so results do not depend on ``workers``.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch
from tqdm.auto import tqdm

from fedalign_lite.errors import check_positive


def _single_threaded(fn: Callable, arg):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the same thread count everywhere gives the same float reductions
    try:
        return fn(arg)
    finally:
        torch.set_num_threads(threads)


def map_processes(fn: Callable, args: list, workers: int = 2, desc: str = "runs", progress: bool = True) -> list:
    """``[fn(a) for a in args]``, in ``workers`` spawned processes (``fn`` must be importable)."""
    check_positive("workers", workers, integer=True)
    if workers == 1 or len(args) == 1:
        return [_single_threaded(fn, a) for a in tqdm(args, desc=desc, disable=not progress)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_single_threaded, fn, a) for a in args]
        return [f.result() for f in tqdm(futures, desc=desc, disable=not progress)]
