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


def test_fedavg_of_states_without_floats_keeps_the_first_clients_entries():
    out = weighted_average([{"step": torch.tensor([3])}, {"step": torch.tensor([5])}], [1, 1])
    assert out == {"step": torch.tensor([3])} and weighted_average([{}, {}], [1, 2]) == {}


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


def test_fedadam_with_bias_correction_is_torch_adam_on_the_clients_mean_gradient():
    """Clients that upload theta - g_i (one SGD step at rate 1) make bias-corrected FedAdam torch's Adam,
    stepped on the mean of the g_i, with eps = tau."""
    torch.manual_seed(0)
    agg = make_aggregator("fedadam", lr=0.01, momentum=0.9, beta2=0.999, tau=1e-8, bias_correction=True)
    theta = torch.randn(5)
    reference = theta.clone().requires_grad_(True)
    adam = torch.optim.Adam([reference], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    state, server = {"w": theta}, {}
    for _ in range(3):
        grads = [torch.randn(5) for _ in range(4)]
        state, server = agg(state, [_u((state["w"] - g).tolist(), 1) for g in grads], server)
        reference.grad = torch.stack(grads).mean(0)
        adam.step()
        assert torch.allclose(state["w"], reference.detach(), atol=1e-6)
    assert server["step"].item() == 3
    # a first step: corrected, lr * sign(-g); Reddi et al.'s, (1 - b1) / sqrt(1 - b2) = 3.16 times that
    first = [_u((theta - g).tolist(), 1) for g in grads]
    corrected, _ = agg({"w": theta}, first, {})
    plain, _ = make_aggregator("fedadam", lr=0.01, momentum=0.9, beta2=0.999, tau=1e-8)({"w": theta}, first, {})
    assert torch.allclose(corrected["w"] - theta, -0.01 * torch.stack(grads).mean(0).sign(), atol=1e-6)
    assert torch.allclose(plain["w"] - theta, 0.1 / 0.001**0.5 * (corrected["w"] - theta), atol=1e-6)
    with pytest.raises(ConfigError, match="bias_correction applies to aggregator='fedadam' only"):
        make_aggregator("fedavgm", bias_correction=True)


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
