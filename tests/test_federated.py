"""The round loop: determinism, faults, bytes, checkpoints, kill-and-resume."""
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedalign_lite.errors import AllClientsFailedError, CheckpointError
from fedalign_lite.federated.checkpoint import load_checkpoint, save_checkpoint
from fedalign_lite.federated.loop import derive_seed, load_state, private_copy, sample_clients
from fedalign_lite.seeding import seed_everything

sys.path.insert(0, str(Path(__file__).parent))
import toy_algorithm as toy  # noqa: E402

TIMING = {"seconds"}


def _numbers(run):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in run.history]


def test_training_reduces_loss_and_is_deterministic():
    a, b = toy.run(15), toy.run(15)
    assert _numbers(a) == _numbers(b)
    assert a.history[-1]["global_loss"] < 0.2 * a.history[0]["global_loss"]
    assert _numbers(toy.run(15, seed=1)) != _numbers(a)


def test_personal_state_persists_across_rounds():
    run = toy.run(4)
    assert run.personal_states == {0: {"steps": 12}, 1: {"steps": 12}, 2: {"steps": 12}}


def test_bytes_counted_from_tensors_sent():
    h = toy.run(1).history[1]
    # down: one float32 vector of DIM per client; up: the vector + num_samples + one metric
    assert h["bytes_down"] == toy.CLIENTS * toy.DIM * 4
    assert h["bytes_up"] == toy.CLIENTS * (toy.DIM * 4 + 8 + 8)


def test_failing_and_nan_clients_are_left_out():
    with pytest.warns(UserWarning, match="client 1 left out"):
        run = toy.run(2, fail=(1,), nan=(2,))
    assert [h["clients_ok"] for h in run.history[1:]] == [1, 1]
    statuses = {r["client"]: r["status"] for r in run.client_log if r["round"] == 1}
    assert statuses[0] == "ok" and "RuntimeError" in statuses[1] and "NaN" in statuses[2]
    assert run.personal_states[1] == {} and run.personal_states[0] == {"steps": 6}


def test_uploads_are_validated_on_arrival():
    with pytest.warns(UserWarning, match="client 2 left out"):
        run = toy.run(1, bad_shape=(2,))
    status = {r["client"]: r["status"] for r in run.client_log}[2]
    assert "PayloadError" in status and "(5,)" in status and "(4,)" in status
    assert run.history[1]["clients_ok"] == 2


def test_all_clients_failing_is_a_clear_error():
    with pytest.warns(UserWarning), pytest.raises(AllClientsFailedError, match="all 3 sampled clients failed"):
        toy.run(1, fail=(0, 1, 2))


def test_seeds_and_sampling():
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert sample_clients(10, 3, seed=0, round_=1) == sample_clients(10, 3, seed=0, round_=1)
    assert len(set(sample_clients(10, 3, 0, 1))) == 3 and sample_clients(4, 4, 0, 1) == [0, 1, 2, 3]


def test_seed_everything_draws_as_the_global_seeders():
    def draws():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randint(0, 10**6, (2,)).tolist()

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    torch.manual_seed(8)
    seed_everything(7)
    assert draws() == expected
    seed_everything(8)
    assert draws() != expected


def test_load_state_is_load_state_dict_and_refuses_a_mismatch():
    def model():
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))   # parameters and buffers

    torch.manual_seed(0)
    source = model()
    source(torch.randn(5, 3))                                      # moves the running statistics
    fast, reference = model(), model()
    load_state(fast, source.state_dict())
    reference.load_state_dict(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), reference.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), source.state_dict().values()))
    assert not any(p.grad is not None for p in fast.parameters())
    with pytest.raises(ValueError, match="missing keys"):
        load_state(fast, {k: v for k, v in source.state_dict().items() if k != "0.bias"})
    with pytest.raises(ValueError, match="'0.bias' has shape"):
        load_state(fast, {**source.state_dict(), "0.bias": torch.zeros(1)})   # would broadcast under copy_


def test_private_copy_equals_deepcopy_and_shares_no_tensor():
    leaf = torch.randn(3, requires_grad=True)
    state = {"lr_step": 3, "adam": {"exp_avg/w": torch.randn(2, 2), "step/w": torch.tensor(4.0)},
             "history": [1.5, (torch.arange(3), "tag")], "leaf": leaf, "array": np.arange(4)}
    copied, reference = private_copy(state), copy.deepcopy(state)

    def flat(obj):
        if isinstance(obj, dict):
            return [x for k in obj for x in [k, *flat(obj[k])]]
        if isinstance(obj, (list, tuple)):
            return [type(obj).__name__, *(x for v in obj for x in flat(v))]
        return [obj]

    for a, b in zip(flat(copied), flat(reference), strict=True):
        assert type(a) is type(b)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) and a.dtype == b.dtype and a.requires_grad == b.requires_grad
        elif isinstance(a, np.ndarray):
            assert (a == b).all()
        else:
            assert a == b
    copied["adam"]["exp_avg/w"].add_(1.0)
    copied["history"][1][0].add_(1)
    copied["array"] += 1
    assert torch.equal(state["adam"]["exp_avg/w"], reference["adam"]["exp_avg/w"])
    assert torch.equal(state["history"][1][0], torch.arange(3)) and (state["array"] == np.arange(4)).all()


def test_checkpoint_roundtrip_keeps_types(tmp_path):
    state = {"a": torch.arange(3.0), 3: [1, 2.5, None, "x"], "opt": {0: {"m": torch.ones(2)}},
             "t": (torch.zeros(1), True)}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back[3] == [1, 2.5, None, "x"] and torch.equal(back["opt"][0]["m"], torch.ones(2))
    assert isinstance(back["t"], tuple) and torch.equal(back["a"], state["a"])
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_resume_refuses_another_config(tmp_path):
    toy.run(1, run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="seed 0; this run has 'toy' and seed 5"):
        toy.run(2, run_dir=tmp_path, seed=5)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(tmp_path):
    rounds = 12
    reference = _numbers(toy.run(rounds))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, str(Path(toy.__file__)), str(tmp_path), str(rounds), "0.05"], env=env)
    ckpt = tmp_path / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:   # kill once a few rounds are checkpointed, mid-run
        if ckpt.exists() and load_checkpoint(ckpt)["round"] >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["round"]
    assert 3 <= killed_at < rounds, "the run finished before it could be killed"
    resumed = toy.run(rounds, run_dir=tmp_path)
    assert _numbers(resumed) == reference
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in lines] == list(range(rounds + 1))
