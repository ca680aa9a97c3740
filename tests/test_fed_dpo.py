"""Federated DPO on the tiny model: what crosses the network, and the two sanity checks."""
import pytest
import torch

from fedalign_lite.algorithms import fed_dpo
from fedalign_lite.algorithms.fed_dpo import get_preset
from fedalign_lite.federated.aggregators import weighted_average

CFG = get_preset("smoke")


@pytest.fixture(scope="module")
def smoke_run():
    return fed_dpo.run(CFG, progress=False)


def test_upload_is_exactly_the_lora_state_and_differs_from_download(smoke_run):
    run = smoke_run
    keys = set(run.global_state)
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    # LoRA B starts at 0; after training the global adapter moved
    assert any(v.abs().sum() > 0 for k, v in run.global_state.items() if "lora_B" in k)
    h = run.history[1]
    n_bytes = sum(v.numel() * 4 for v in run.global_state.values())
    assert h["bytes_down"] == CFG.clients_per_round * n_bytes
    assert h["bytes_up"] == CFG.clients_per_round * (n_bytes + 8 * 3)   # + num_samples, loss, reward_acc


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_same_seed_same_numbers(smoke_run):
    again = fed_dpo.run(CFG, progress=False)
    assert _without_time(again.history) == _without_time(smoke_run.history)


def test_fedavg_of_identical_adapters_is_the_adapter(smoke_run):
    s = smoke_run.global_state
    out = weighted_average([s, s], [3, 5])
    assert all(torch.allclose(out[k], s[k], atol=1e-7) for k in s)


def test_one_client_equals_centralized_training():
    cfg = CFG.replace(num_clients=1, clients_per_round=1, rounds=3, local_steps=2)
    cfg = cfg.replace(persistent_optimizer=True)
    fed = fed_dpo.run(cfg, progress=False)
    central = fed_dpo.run(cfg.replace(rounds=1, local_steps=6), progress=False)
    for k in fed.global_state:
        torch.testing.assert_close(fed.global_state[k], central.global_state[k], rtol=1e-5, atol=1e-6)
    assert fed.personal_states[0]["losses"] == pytest.approx(central.personal_states[0]["losses"], rel=1e-5)


def test_fedprox_pulls_the_clients_towards_the_global_adapter(smoke_run):
    """The proximal term reaches every LoRA tensor by its uploaded key: with a large mu the first
    round's adapters move less from theta_0 (= B = 0 and the initial A) than FedAvg's."""
    def drift(cfg):
        fed = fed_dpo.federation(cfg)
        init = {k: v.clone() for k, v in fed.global_state.items()}
        run = fed.run(progress=False)
        return sum((run.global_state[k] - init[k]).norm() ** 2 for k in init).sqrt().item()

    one = CFG.replace(rounds=1, lr=1e-2)
    assert drift(one.replace(aggregator="fedprox", prox_mu=100.0)) < 0.5 * drift(one)
