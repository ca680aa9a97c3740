"""Bad input at the edges: each case raises a documented error type whose message names the field
and what is allowed, and leaves the working directory exactly as it was (no partial files)."""
import os

import pytest
import torch

from fedalign_lite.algorithms.fed_dpo import FedDPOConfig, get_preset
from fedalign_lite.data import hub
from fedalign_lite.errors import CheckpointError, ConfigError, DataError, FedAlignError, check_probability_vector
from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.federated.loop import ClientUpdate, Federation, run_federated
from fedalign_lite.models.causal_lm import check_compatible, load_model


def _write(name, text):
    def setup(d):
        (d / name).write_bytes(text)
        return d / name
    return setup


def _fed(d):
    fed = Federation(lambda ctx: ClientUpdate(ctx.global_state, 1), aggregate_fedavg, {"w": torch.zeros(2)},
                     num_clients=1, rounds=1)
    return run_federated(fed, run_dir=d, progress=False)


def _mismatch(_):
    model, tok = load_model("random-tiny")
    model.resize_token_embeddings(100)
    check_compatible(model, tok, "random-tiny")


CASES = [  # id, setup(dir) -> file or None, call(dir), error type, regex the message must match
    ("unknown preset", None, lambda d: get_preset("huge"), ConfigError, r"preset='huge'.*\['smoke', 'cpu', 'gpu'\]"),
    ("unknown model", None, lambda d: FedDPOConfig(model="gpt9"), ConfigError, r"model='gpt9'.*'fedalign-base'.*hub:"),
    ("unknown model at load", None, lambda d: load_model("gpt9"), ConfigError, r"model='gpt9'.*'random-tiny'"),
    ("unknown aggregator", None, lambda d: FedDPOConfig(aggregator="fedsgd"), ConfigError, r"aggregator='fedsgd'.*'fedadam'"),
    ("unknown partition", None, lambda d: FedDPOConfig(partition="zipf"), ConfigError, r"partition='zipf'.*'dirichlet'"),
    ("zero rounds", None, lambda d: FedDPOConfig(rounds=0), ConfigError, r"rounds must be an integer > 0, got 0"),
    ("negative clients", None, lambda d: FedDPOConfig(num_clients=-2), ConfigError, r"num_clients must be an integer > 0"),
    ("zero alpha", None, lambda d: FedDPOConfig(alpha=0.0), ConfigError, r"alpha must be a number > 0, got 0.0"),
    ("string lr", None, lambda d: FedDPOConfig(lr="fast"), ConfigError, r"lr must be a number, got 'fast'"),
    ("too many sampled", None, lambda d: FedDPOConfig(num_clients=2, clients_per_round=3), ConfigError,
     r"clients_per_round=3 must be <= num_clients=2"),
    ("fedprox without mu", None, lambda d: FedDPOConfig(aggregator="fedprox"), ConfigError, r"needs prox_mu > 0"),
    ("unknown field", None, lambda d: get_preset("cpu", round=3), ConfigError, r"unknown config field.*'rounds'"),
    ("negative preference", None, lambda d: check_probability_vector("p", [-0.2, 1.2], length=2), ConfigError,
     r"p entries must be >= 0"),
    ("preference not on simplex", None, lambda d: check_probability_vector("p", [0.3, 0.3], length=2), ConfigError,
     r"p must sum to 1"),
    ("preference wrong length", None, lambda d: check_probability_vector("p", [1.0], length=2), ConfigError,
     r"p must have 2 entries"),
    ("empty data file", _write("e.jsonl", b""), lambda d: hub.load_imdb(str(d / "e.jsonl")), DataError, r"is empty"),
    ("malformed data file", _write("m.jsonl", b'{"text": "a", "la'), lambda d: hub.load_imdb(str(d / "m.jsonl")),
     DataError, r"malformed"),
    ("missing column", _write("c.jsonl", b'{"text": "a"}\n'), lambda d: hub.load_imdb(str(d / "c.jsonl")), DataError,
     r"lacks column\(s\) \['label'\]; required columns: \['text', 'label'\]"),
    ("corrupted checkpoint", _write("checkpoint.safetensors", b"\x00garbage" * 10), _fed, CheckpointError,
     r"corrupted or truncated.*resume=False"),
    ("truncated checkpoint", "truncated", _fed, CheckpointError, r"corrupted or truncated"),
    ("tokenizer/model mismatch", None, _mismatch, ConfigError, r"tokenizer has \d+ tokens but the model embeds only 100"),
]


def _truncated_checkpoint(d):
    _fed(d)
    ck = d / "checkpoint.safetensors"
    ck.write_bytes(ck.read_bytes()[:-20])
    (d / "metrics.jsonl").unlink()
    return ck


def _snapshot(d):
    return {p: (d / p).read_bytes() for p in sorted(os.listdir(d))}


@pytest.mark.parametrize("name, setup, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, setup, call, error, match):
    if setup == "truncated":
        _truncated_checkpoint(tmp_path)
    elif setup is not None:
        setup(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(error, match=match) as info:
        call(tmp_path)
    assert isinstance(info.value, FedAlignError)
    assert _snapshot(tmp_path) == before, "a failed call left or changed files"


def test_there_are_at_least_15_cases():
    assert len(CASES) >= 15
