"""Partitioner invariants: disjoint, covering, deterministic; Dirichlet skew grows as alpha falls."""
import numpy as np
import pytest

from fedalign_lite.data.partition import (
    client_histograms,
    format_histograms,
    partition_dirichlet,
    partition_iid,
    partition_natural,
)
from fedalign_lite.errors import ConfigError


def _check_partition(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n


def test_iid():
    parts = partition_iid(103, 4, seed=1)
    _check_partition(parts, 103)
    assert {len(p) for p in parts} <= {25, 26}
    assert all((a == b).all() for a, b in zip(parts, partition_iid(103, 4, seed=1)))


def test_dirichlet_skew_depends_on_alpha():
    labels = np.repeat(np.arange(5), 200)

    def skew(alpha):
        _, c = client_histograms(labels, partition_dirichlet(labels, 8, alpha, seed=0))
        share = c / c.sum(1, keepdims=True)
        return share.max(1).mean()           # mean share of each client's majority label

    parts = partition_dirichlet(labels, 8, 0.3, seed=0)
    _check_partition(parts, 1000)
    assert skew(0.1) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.3                 # near IID: the majority label has about 1/5


def test_natural_groups():
    names, parts = partition_natural(["b", "a", "b", "c"])
    assert names == ["a", "b", "c"] and [p.tolist() for p in parts] == [[1], [0, 2], [3]]


def test_histogram_table():
    text = format_histograms([0, 1, 1, 1], [np.array([0, 1]), np.array([2, 3])])
    assert text.splitlines()[1].split() == ["0", "1", "1", "2"]


@pytest.mark.parametrize("call, match", [
    (lambda: partition_iid(3, 5), "must be <= the number of items"),
    (lambda: partition_dirichlet([0, 1] * 5, 2, 0.0), "alpha must be a number > 0"),
    (lambda: partition_dirichlet([0, 1] * 5, -1, 1.0), "num_clients must be an integer > 0"),
])
def test_bad_partition_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
