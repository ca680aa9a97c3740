"""The gpu preset's code paths on CPU with tiny budgets: SmolLM2-135M-Instruct loads from the cached
safetensors (converted once, never from a hub), LoRA lands on its attention projections, and one
round of every algorithm runs on it. Only the budgets are overridden; model, LoRA rank, learning
rates and sequence sizes are the gpu preset's own."""
import pytest
import torch

from fedalign_lite.algorithms import fed_dpo, fedmoa, fedpdpo, firm, pluralllm
from fedalign_lite.models import causal_lm

LAYERS = 30   # SmolLM2-135M

TINY = {
    "fed-dpo": (lambda: fed_dpo.federation(fed_dpo.get_preset(
        "gpu", num_clients=2, clients_per_round=2, rounds=1, local_steps=1, batch_size=2, num_pairs=8, eval_pairs=4))),
    "fedpdpo": (lambda: fedpdpo.federation(fedpdpo.get_preset(
        "gpu", num_clients=4, rounds=1, local_steps=1, batch_size=2, pairs_per_client=4, eval_per_client=2,
        method="fedpdpo", setting="noniid"))),
    "firm": (lambda: firm.federation(firm.get_preset(
        "gpu", num_clients=2, rounds=1, local_steps=1, batch_size=2, max_new_tokens=4, prompts_per_client=4,
        eval_prompts=2))),
    "fedmoa": (lambda: fedmoa.federation(fedmoa.get_preset(
        "gpu", num_clients=4, rounds=1, local_steps=1, prompts_per_step=1, group_size=2, max_new_tokens=6,
        eval_prompts=1, val_prompts=2))),
}


@pytest.fixture
def converted(smollm2_cache, monkeypatch):
    """The SmolLM2 cache, converted; afterwards a conversion (or any hub access) is an error."""
    monkeypatch.setenv("FEDALIGN_CACHE", str(smollm2_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = causal_lm._smollm2_dir()
    assert (path / "model.safetensors").exists()
    monkeypatch.setattr(causal_lm, "asset_path", lambda *a: pytest.fail("the GGUF was converted again"))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(TINY))
def test_one_round_of_each_lm_algorithm_on_smollm2(algorithm, converted):
    fed = TINY[algorithm]()
    lora = [k for k in fed.global_state if "lora_" in k]
    # q and v projections of every layer, A and B each (FedMOA keeps one adapter per task)
    assert len(lora) == LAYERS * 2 * 2 * (2 if algorithm == "fedmoa" else 1)
    assert {k.split(".")[-3] for k in lora} == {"q_proj", "v_proj"}
    init = {k: v.clone() for k, v in fed.global_state.items()}
    run = fed.run(progress=False)
    last = run.history[-1]
    assert last["round"] == 1 and last["clients_failed"] == 0 and last["clients_ok"] == fed.num_clients
    assert any(not torch.equal(run.global_state[k], init[k]) for k in init), "the round changed nothing"


@pytest.mark.slow
def test_pluralllm_gpu_preset_embeds_with_smollm2(converted):
    cfg = pluralllm.get_preset("gpu", rounds=1, local_steps=1, eval_draws=1)
    assert cfg.embedder == "smollm2-135m" and cfg.d_model == pluralllm.PluralConfig.d_model   # the paper's size
    fed = pluralllm.federation(cfg)
    x = fed.artifacts["data"].x[0]
    assert x.shape[1] == 576          # SmolLM2-135M's hidden size, mean-pooled
    run = fed.run(progress=False)
    assert run.history[-1]["round"] == 1 and run.history[-1]["clients_failed"] == 0
