"""Named models load offline; the base-model recipe learns on a tiny budget."""
import json

import pytest
import torch

from fedalign_lite.data.chat import ASSISTANT, USER, format_prompt, is_refusal
from fedalign_lite.models.causal_lm import WEIGHTS_DIR, add_lora, get_adapter_state, load_model, named_lora_parameters
from fedalign_lite.recipes import base_model


def test_base_model_and_card():
    model, tok = load_model("fedalign-base")
    assert 3e6 < sum(p.numel() for p in model.parameters()) < 8e6
    card = json.loads((WEIGHTS_DIR / "card.json").read_text())
    for key in ("heldout_perplexity", "arithmetic_accuracy", "harmful_refused", "benign_refused"):
        assert key in card["eval"]
    assert (WEIGHTS_DIR / "MODEL_CARD.md").exists()
    ids = tok(format_prompt("hi"))["input_ids"]
    assert tok.convert_tokens_to_ids(USER) in ids and tok.convert_tokens_to_ids(ASSISTANT) in ids


def test_random_tiny_is_seeded(tiny):
    a, _ = load_model("random-tiny", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), tiny[0].parameters()))


def test_lora_starts_as_identity(tiny):
    model, tok = load_model("random-tiny", seed=0)
    x = tok("hello world", return_tensors="pt")["input_ids"]
    before = model(input_ids=x).logits
    after = add_lora(model)(input_ids=x).logits
    torch.testing.assert_close(before, after)


def test_hub_loader_on_a_local_folder(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(f"hub:{tmp_path}")
    assert len(ltok) == len(tok)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters()))


def test_recipe_loss_falls(tmp_path):
    card = base_model.main(["--quick", "--out", str(tmp_path)])
    first, last = card["pretrain_loss_first_last"]
    assert last < first - 0.5
    loaded, _ = load_model(f"hub:{tmp_path}")
    assert sum(p.numel() for p in loaded.parameters()) == card["params"]


def test_refusal_detector():
    assert is_refusal("I'm sorry, but I can't help with that.") and not is_refusal("Sure: 2 + 2 = 4.")


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads(smollm2_cache, monkeypatch):
    tmp_path = smollm2_cache
    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path))
    model, tok = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    x = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
    assert loss < 6.0                       # a trained model, not random (random ~ ln 49152 = 10.8)
    again, _ = load_model("smollm2-135m")   # from the safetensors cache this time
    assert torch.equal(next(again.parameters()), next(model.parameters()))


def test_named_lora_parameters_are_the_uploaded_tensors():
    model = add_lora(load_model("random-tiny")[0], 4, 8)
    named = named_lora_parameters(model)
    state = get_adapter_state(model)
    assert [k for k, _ in named] == list(state) and len(named) == 8
    with torch.no_grad():
        for _, p in named:
            p.add_(1.0)                       # a step on the parameter is a step on the uploaded key
    assert all(torch.equal(get_adapter_state(model)[k], state[k] + 1.0) for k in state)
