"""Split a dataset's items over clients: IID, Dirichlet(alpha) label skew, or natural groups.

Every partitioner returns ``list[np.ndarray]``: client k gets the item indices ``parts[k]``
(sorted, disjoint, covering every item). All are deterministic in ``seed``.
"""
from __future__ import annotations

import numpy as np

from fedalign_lite.errors import ConfigError, check_positive


def partition_iid(n_items: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` near-equal parts."""
    check_positive("num_clients", num_clients, integer=True)
    if num_clients > n_items:
        raise ConfigError(f"num_clients={num_clients} must be <= the number of items ({n_items})")
    perm = np.random.default_rng(seed).permutation(n_items)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def partition_dirichlet(labels, num_clients: int, alpha: float, seed: int = 0, min_size: int = 1,
                        max_tries: int = 100) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): each label's items are split over clients in proportions ~ Dir(alpha).

    Small ``alpha`` (0.1-0.5) gives each client few labels; large alpha approaches IID. Draws are
    repeated until every client has at least ``min_size`` items.
    """
    check_positive("num_clients", num_clients, integer=True)
    check_positive("alpha", alpha)
    labels = np.asarray(labels)
    if num_clients * min_size > len(labels):
        raise ConfigError(f"num_clients={num_clients} x min_size={min_size} exceeds the {len(labels)} items")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k] += chunk.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=int)) for p in parts]
    raise ConfigError(f"alpha={alpha} left a client with < {min_size} items in {max_tries} draws; raise alpha")


def partition_natural(keys) -> tuple[list, list[np.ndarray]]:
    """One client per distinct key (a user group, a country, a domain): ``(sorted keys, parts)``."""
    keys = np.asarray(keys)
    names = sorted(np.unique(keys).tolist())
    return names, [np.flatnonzero(keys == name) for name in names]


def client_histograms(labels, parts: list[np.ndarray]) -> tuple[list, np.ndarray]:
    """``(label values, counts)`` with counts of shape (num_clients, num_labels)."""
    labels = np.asarray(labels)
    values = sorted(np.unique(labels).tolist())
    counts = np.array([[int((labels[p] == v).sum()) for v in values] for p in parts])
    return values, counts


def format_histograms(labels, parts: list[np.ndarray]) -> str:
    """A printable per-client table of label counts."""
    values, counts = client_histograms(labels, parts)
    head = "client " + " ".join(f"{str(v):>8}" for v in values) + "    total"
    rows = [f"{k:>6} " + " ".join(f"{c:>8}" for c in row) + f" {row.sum():>8}" for k, row in enumerate(counts)]
    return "\n".join([head] + rows)

