"""One module per algorithm, each the paper and nothing else: its config and presets, the client
update, the server aggregation and ``federation(cfg)``. :data:`ALGORITHMS` is the one registry
(name -> module) that the Flower apps, the experiment grids and anything else look algorithms up in.

Every module has ``get_preset(name, **overrides)``, ``federation(cfg) -> Federation`` and
``run(cfg, *, run_dir=None, progress=True) -> FederatedRun``; every run choice is a config field.
"""
from __future__ import annotations

from types import ModuleType

from fedalign_lite.algorithms import fed_dpo, fedcmoo, fedmoa, fedpdpo, firm, fixed_preference, pluralllm
from fedalign_lite.errors import ConfigError
from fedalign_lite.federated.loop import Federation

ALGORITHMS: dict[str, ModuleType] = {
    "fed-dpo": fed_dpo,                   # FedAvg of DPO on a shared LoRA (the tour; FedPDPO's baseline family)
    "pluralllm": pluralllm,               # FedAvg of a GPO group-preference predictor
    "fedpdpo": fedpdpo,                   # personalized federated DPO, its baselines and ablations (cfg.method)
    "firm": firm,                         # in-client regularized MGDA, one upload
    "fedcmoo-a": fedcmoo,                 # FIRM's baseline: one server-side weight vector, two phases
    "fedavg-fixed-p": fixed_preference,   # FIRM's baseline: lambda = p
    "fedmoa": fedmoa,                     # hypergradient weights + task/accuracy-aware aggregation (cfg.method)
}
"""Registry keys; FIRM's two baselines take FIRM's config (``firm.get_preset``)."""

_CONFIG_OF = {"fedcmoo-a": firm, "fedavg-fixed-p": firm}


def get(name: str) -> ModuleType:
    """The algorithm module registered as ``name``; ConfigError naming the registered ones otherwise."""
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm={name!r} is not registered; choose one of {list(ALGORITHMS)}")
    return ALGORITHMS[name]


def get_preset(algorithm: str, preset: str, **overrides):
    """The validated config of ``algorithm``'s preset ``preset`` with ``overrides`` applied."""
    get(algorithm)
    return _CONFIG_OF.get(algorithm, ALGORITHMS[algorithm]).get_preset(preset, **overrides)


def federation_from_run_config(run_config: dict) -> Federation:
    """The :class:`Federation` a run config describes, e.g. ``{"algorithm": "firm", "preset": "smoke",
    "rounds": 1}`` (Flower's ``--run-config``; ``-`` in keys reads as ``_``). Every key but
    ``algorithm`` and ``preset`` (default ``smoke``) sets the config field of that name; unknown
    algorithms, presets and fields are a ConfigError naming the allowed values."""
    rc = dict(run_config)
    algorithm = str(rc.pop("algorithm", ""))
    preset = str(rc.pop("preset", "smoke"))
    overrides = {k.replace("-", "_"): v for k, v in rc.items()}
    return get(algorithm).federation(get_preset(algorithm, preset, **overrides))
