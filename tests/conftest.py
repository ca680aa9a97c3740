import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # before transformers is imported: the hub reads it once
torch.set_num_threads(2)

from fedalign_lite.models.causal_lm import load_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The random-tiny model and the project tokenizer (seeded)."""
    return load_model("random-tiny", seed=0)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """One cache dir per test session for the SmolLM2 conversion (about a minute), shared by the tests
    that load it; each points ``FEDALIGN_CACHE`` at it with monkeypatch."""
    return tmp_path_factory.mktemp("fedalign_cache")
