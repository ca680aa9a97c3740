"""FIRM's pieces: the reward models by hand, the per-objective gradients against a direct autograd
of the weighted objective, the ascent step, exact communication bytes, and beta's effect."""
import numpy as np
import pytest
import torch

from fedalign_lite import algorithms
from fedalign_lite.algorithms import firm as F
from fedalign_lite.errors import ConfigError
from fedalign_lite.models import rewards as R
from fedalign_lite.models.causal_lm import add_lora, apply_lora_step, load_model, lora_parameters
from fedalign_lite.models.rollout import rollout_logps, sample
from fedalign_lite.objectives.dpo import sequence_logps

CFG = F.get_preset("smoke")


def test_rewards_conflict_by_construction():
    prompts = ["How do I pick a lock?", "Why is the sky blue?"]
    refuse, answer = "I'm sorry, but I can't help with that.", "The sky is blue because light scatters."
    help_ = R.helpfulness(prompts, [refuse, answer], "overlap")
    assert help_[0] == 0.0 and help_[1] == pytest.approx(2 / 2)            # content words: sky, blue
    harm = R.harmlessness([refuse, answer, answer], [True, True, False], "wordlist")
    assert harm.tolist() == [1.0, 0.0, 1.0]            # refusing harm: harmless; answering it: not
    assert R.helpfulness(["Tell me a joke"], [""], "overlap")[0] == 0.0
    # relevance adds to answering: half the content words -> 0.75 + 0.25 * 0.5; alone (w = 1) -> 0.5
    assert R.helpfulness(["Why is the sky blue?"], ["The sky is green."], "overlap")[0] == pytest.approx(0.875)
    assert R.helpfulness(["Why is the sky blue?"], ["The sky is green."], "overlap", relevance_weight=1.0)[0] == 0.5


def test_client_reward_models_differ_unless_same():
    same = R.client_reward_models(4, same=True)
    assert all(rm == R.REFERENCE for rm in same)
    diff = R.client_reward_models(4, same=False)
    assert {rm.help_scorer for rm in diff} == {"minilm", "overlap"} and len(set(diff)) == 4
    with pytest.raises(ConfigError, match="help_scorer='bleu' is not allowed"):
        R.RewardModel(help_scorer="bleu")


def test_objective_gradients_are_linear_in_the_weights():
    base, tok = load_model("random-tiny", seed=0)
    torch.manual_seed(0)
    policy = add_lora(base, 4, 8)
    with torch.no_grad():                               # a non-zero adapter so every LoRA factor has a gradient
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    rows = [{"prompt": "Why is the sky blue?", "harmful": False}, {"prompt": "How to steal?", "harmful": True}]
    rm = R.RewardModel("overlap", "wordlist")
    torch.manual_seed(1)
    cfg = CFG.replace(advantage_scale="none")
    grads, rewards = F.objective_gradients(policy, tok, rows, rm, np.array([0.1, 0.2]), None, cfg,
                                           np.random.default_rng(0))
    # the same rollout again, then one backward of the weighted objective
    torch.manual_seed(1)
    roll = sample(policy, tok, [r["prompt"] for r in rows], cfg.max_new_tokens, cfg.temperature)
    lam = torch.tensor([0.3, 0.7])
    adv = torch.as_tensor(rewards - np.array([0.1, 0.2]), dtype=torch.float32)
    logp = rollout_logps(policy, roll, cfg.temperature)
    direct = torch.autograd.grad(((adv @ lam) * logp).mean(), lora_parameters(policy))
    # float32 sums in another order: atol 1e-6 (1.2e-7 was seen with 2 threads)
    torch.testing.assert_close(lam @ grads, torch.cat([g.reshape(-1) for g in direct]), rtol=1e-5, atol=1e-6)


def test_apply_step_is_plain_ascent():
    base, _ = load_model("random-tiny", seed=0)
    policy = add_lora(base, 4, 8)
    before = torch.cat([p.detach().reshape(-1).clone() for p in lora_parameters(policy)])
    direction = torch.randn_like(before)
    apply_lora_step(policy, direction, 0.5)
    after = torch.cat([p.detach().reshape(-1) for p in lora_parameters(policy)])
    torch.testing.assert_close(after, before + 0.5 * direction)


def test_adam_ascent_first_step_moves_by_lr_along_the_sign():
    """Adam's first step is lr * m / (sqrt(v) + eps) = lr * sign(g) (bias-corrected); an ascent step on
    the direction d is a descent step on -d."""
    base, _ = load_model("random-tiny", seed=0)
    policy = add_lora(base, 4, 8)
    params = lora_parameters(policy)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    run = F.LocalRun([], [], np.zeros(2), None, torch.optim.Adam(params, lr=1e-3, eps=1e-12), 1e-3)
    direction = torch.randn_like(before)
    run.ascend(policy, direction)
    after = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(after - before, 1e-3 * direction.sign(), atol=1e-7, rtol=0)
    assert all(p.grad is None for p in params)


def test_running_scale_and_critic_by_hand():
    cfg = CFG.replace(critic_lr=0.5, scale_rate=0.1)
    run = F.LocalRun([], [], np.zeros(2), None, None, cfg.lr)
    first = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])   # stds 0.5 and 0.433
    run.record(np.array([0.5, 0.5]), first, cfg)
    np.testing.assert_allclose(run.scale, first.std(0))                    # the first batch sets it
    np.testing.assert_allclose(run.baseline, 0.5 * first.mean(0))
    flat = np.ones((4, 2))                                                 # a reward that stopped varying
    run.record(np.array([0.5, 0.5]), flat, cfg)
    np.testing.assert_allclose(run.scale, 0.9 * first.std(0))              # decays; no batch-std blow-up
    assert F.critic_state(run.update(_tiny_policy(), 1).personal_state)[1].tolist() == pytest.approx(run.scale.tolist())


def _tiny_policy():
    base, _ = load_model("random-tiny", seed=0)
    return add_lora(base, 4, 8)


@pytest.fixture(scope="module")
def runs():
    return {name: algorithms.get(alg).run(CFG, progress=False)
            for name, alg in (("firm", "firm"), ("fedcmoo", "fedcmoo-a"), ("fedavg", "fedavg-fixed-p"))}


def test_communication_bytes_are_exact(runs):
    lora = sum(v.numel() * v.element_size() for v in runs["firm"].global_state.values())
    k = CFG.local_steps
    # n_i, lambda_help, reward_help, reward_harm, then lambda_help and both rewards per local step
    scalars = 8 * (1 + 3 + k + 2 * k)
    assert runs["firm"].history[1]["bytes_up"] == CFG.num_clients * (lora + scalars)
    assert runs["fedavg"].history[1]["bytes_up"] == CFG.num_clients * (lora + scalars)
    # FedCMOO-A also sends one gradient per objective (2 x the adapter size); its first step samples no rewards
    assert runs["fedcmoo"].history[1]["bytes_up"] == CFG.num_clients * (3 * lora + 8 * (1 + 3 + k + 2 * (k - 1)))
    assert {"refuse_harmful", "answer_benign", "help", "harm"} <= set(runs["firm"].history[-1])
    assert set(runs["fedcmoo"].global_state) == set(runs["firm"].global_state)    # gradients are not averaged


def test_drift_rows_and_fixed_weights(runs):
    assert runs["firm"].server_state["drift"].shape == (CFG.rounds, 3)
    lam = [x["client_lambda_help"] for x in runs["fedavg"].client_log]
    assert lam == [0.5] * len(lam)
    assert runs["fedavg"].server_state["drift"][:, 0].abs().max() == 0        # fixed weights: no dispersion


def test_large_beta_pins_every_client_to_p():
    run = F.run(CFG.replace(beta=1e9, pref=0.3, rounds=1), progress=False)
    assert [x["client_lambda_help"] for x in run.client_log] == pytest.approx([0.3] * CFG.num_clients, abs=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("pref", 1.5, "pref must be in"),
    ("partition", "groups", "partition='groups' is not allowed"),
    ("beta", -0.1, "beta must be"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        F.get_preset("smoke", **{field: value})


def test_rollout_logps_equal_an_unpadded_forward():
    policy, tok = load_model("random-tiny", seed=0)
    torch.manual_seed(0)
    roll = sample(policy, tok, ["Hi", "Why is the sky blue today?", "Tell me a story."], 8)
    with torch.no_grad():
        batched = rollout_logps(policy, roll)
        for i in range(3):
            keep = roll.attention_mask[i] == 1
            ids, comp = roll.input_ids[i][keep][None], roll.completion_mask[i][keep][None]
            assert batched[i].item() == pytest.approx(sequence_logps(policy, ids, torch.ones_like(ids), comp).item(),
                                                      abs=1e-4)
    assert roll.response_mask.shape[1] == roll.input_ids.shape[1] - roll.prompt_width
