"""FedAvg, FedAvgM, FedAdam and the FedProx term against hand-computed values."""
import pytest
import torch

from fedalign_lite.errors import ConfigError
from fedalign_lite.federated.aggregators import aggregate_fedavg, make_aggregator, proximal_term, weighted_average
from fedalign_lite.federated.loop import ClientUpdate


def _u(w, n):
    return ClientUpdate({"w": torch.tensor(w)}, n)


def test_fedavg_is_sample_weighted():
    new, _ = aggregate_fedavg({"w": torch.zeros(2)}, [_u([1.0, 0.0], 1), _u([4.0, 3.0], 2)], {})
    assert torch.allclose(new["w"], torch.tensor([3.0, 2.0]))


def test_fedavg_of_identical_clients_is_the_client():
    s = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    out = weighted_average([s, s, s], [3, 1, 7])
    assert all(torch.allclose(out[k], s[k], atol=1e-7) for k in s)


def test_fedavgm_hand_computed():
    agg = make_aggregator("fedavgm", lr=1.0, momentum=0.5)
    g, st = agg({"w": torch.tensor([0.0])}, [_u([1.0], 1)], {})      # delta 1, m 1
    assert g["w"].item() == pytest.approx(1.0)
    g, st = agg(g, [_u([1.0], 1)], st)                                 # delta 0, m 0.5
    assert g["w"].item() == pytest.approx(1.5)


def test_fedadam_hand_computed():
    agg = make_aggregator("fedadam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    g, st = agg({"w": torch.tensor([0.0])}, [_u([2.0], 1)], {})
    m, v = 0.1 * 2.0, 0.01 * 4.0
    assert g["w"].item() == pytest.approx(0.1 * m / (v ** 0.5 + 1e-3))
    assert st["v/w"].item() == pytest.approx(v)


def test_fedavgm_with_lr1_momentum0_is_fedavg():
    ups = [_u([1.0, 2.0], 3), _u([5.0, -2.0], 1)]
    a, _ = make_aggregator("fedavgm", lr=1.0, momentum=0.0)({"w": torch.zeros(2)}, ups, {})
    b, _ = aggregate_fedavg({"w": torch.zeros(2)}, ups, {})
    assert torch.allclose(a["w"], b["w"])


def test_proximal_term():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    term = proximal_term([("w", w)], {"w": torch.tensor([0.0, 0.0])}, mu=0.5)
    assert term.item() == pytest.approx(0.25 * 5.0)
    term.backward()
    assert torch.allclose(w.grad, 0.5 * torch.tensor([1.0, 2.0]))


def test_bad_aggregator_names_allowed():
    with pytest.raises(ConfigError, match=r"aggregator='fedsgd'.*\['fedavg', 'fedprox', 'fedavgm', 'fedadam'\]"):
        make_aggregator("fedsgd")
