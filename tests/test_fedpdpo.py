"""FedPDPO: losses against TRL (DPOTrainer, RewardTrainer; one step, lr 0, same batch), what leaves a
client, what aggregation may not touch, and the data constructions."""
import copy
import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForSequenceClassification
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from fedalign_lite.algorithms import fedpdpo as F
from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.client_preferences import DOMAINS, WORKED_ON, client_preference_pairs, follows_rule, rated
from fedalign_lite.data.preference import collate, review_pairs, tokenize_pair
from fedalign_lite.errors import ConfigError
from fedalign_lite.models.causal_lm import load_model
from fedalign_lite.objectives.dpo import sequence_logps

CFG = F.get_preset("smoke")


@pytest.fixture(scope="module")
def pairs():
    return [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in review_pairs(seed=0)[:6]]


def _trl_args(cls, **kw):
    return cls(output_dir="/tmp/fedalign-trl-test", per_device_train_batch_size=6, max_steps=1, learning_rate=0.0,
               report_to="none", save_strategy="no", bf16=False, use_cpu=True, disable_tqdm=True, logging_steps=1,
               **kw)


def test_dpo_loss_of_the_personalized_model_matches_trl(pairs):
    model, tok = F.build_model(CFG, F.METHODS["fedpdpo"])
    ref, _ = load_model("random-tiny", seed=1)           # another model, so the loss is not ln 2
    batch = collate([tokenize_pair(tok, p) for p in pairs], tok.pad_token_id)
    with torch.no_grad():
        ref_logps = sequence_logps(ref, **batch).view(2, -1).T
        _, metrics = F.pdpo_loss(model, batch, ref_logps, CFG.replace(mu=0.0))
    policy, _ = load_model("random-tiny", seed=CFG.seed)   # the personalized model at init is the base
    chat = [{**p, "prompt": format_prompt(p["prompt"], tok)} for p in pairs]
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(ref), processing_class=tok,
                         args=_trl_args(DPOConfig, beta=CFG.beta, max_length=None), train_dataset=Dataset.from_list(chat))
    trainer.train()
    log = trainer.state.log_history[0]
    assert metrics["dpo_loss"] == pytest.approx(log["loss"], rel=1e-4)
    assert abs(metrics["dpo_loss"] - math.log(2)) > 1e-3
    assert metrics["reward_acc"] == pytest.approx(log["rewards/accuracies"])


def test_bradley_terry_loss_matches_trl_reward_trainer(pairs):
    model, tok = F.build_model(CFG, F.METHODS["fedpdpo"])
    torch.nn.init.normal_(model.reward.weight, std=1.0)      # a reward head that separates something
    conf = copy.deepcopy(model.peft.get_base_model().config)
    conf.num_labels, conf.pad_token_id = 1, tok.pad_token_id
    rm = LlamaForSequenceClassification(conf)
    base, _ = load_model("random-tiny", seed=CFG.seed)
    rm.model.load_state_dict(base.model.state_dict())     # LoRA B = 0 and the adapter is 0: same backbone
    rm.score.weight.data.copy_(model.reward.weight.data)    # the bias cancels in r_w - r_l
    chat = [{**p, "prompt": format_prompt(p["prompt"], tok)} for p in pairs]
    trainer = RewardTrainer(model=rm, args=_trl_args(RewardConfig), train_dataset=Dataset.from_list(chat),
                            processing_class=tok)
    trainer.train()
    log = trainer.state.log_history[0]
    batch = collate([tokenize_pair(tok, p) for p in pairs], tok.pad_token_id)
    # TRL tokenizes prompt + response + EOS exactly as our pairs are
    assert trainer.train_dataset[0]["chosen_ids"] == batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
    with torch.no_grad():
        _, rewards = F.pair_scores(model, batch)
    chosen, rejected = rewards.view(2, -1)
    assert F.bradley_terry_loss(chosen, rejected).item() == pytest.approx(log["loss"], rel=1e-4)
    assert (chosen > rejected).float().mean().item() == pytest.approx(log["accuracy"])


def test_zero_initialised_adapter_and_copied_head_leave_the_model_unchanged(pairs):
    model, tok = F.build_model(CFG, F.METHODS["fedpdpo"])
    base, _ = load_model("random-tiny", seed=CFG.seed)
    batch = collate([tokenize_pair(tok, p) for p in pairs], tok.pad_token_id)
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"]).logits
        theirs = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert model.adapter_up.weight.abs().sum() == 0


@pytest.fixture(scope="module")
def fedpdpo_run():
    return F.run(CFG.replace(method="fedpdpo", setting="noniid"), progress=False)


def test_only_lora_leaves_a_client(fedpdpo_run):
    keys = set(fedpdpo_run.global_state)
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    lora_bytes = sum(v.numel() * v.element_size() for v in fedpdpo_run.global_state.values())
    scalars = 1 + 4                       # n_i; dpo_loss, reward_acc, bt_loss, explicit_acc
    assert fedpdpo_run.history[1]["bytes_up"] == CFG.num_clients * (lora_bytes + 8 * scalars)


def test_uploads_per_method():
    expected = {"local": set(), "fedper": {"lora"}, "fedavg": {"lora", "head"}}
    for method, kinds in expected.items():
        model, _ = F.build_model(CFG, F.METHODS[method])
        up = model.shared_state()
        assert {("head" if k == "head.weight" else "lora") for k in up} == kinds, method


def test_personal_modules_are_untouched_by_aggregation(fedpdpo_run):
    states = fedpdpo_run.personal_states
    for key in ("head.weight", "adapter_up.weight", "reward.weight"):
        assert not torch.equal(states[0][key], states[1][key]), key     # each client kept its own
        assert key not in fedpdpo_run.global_state
    # and what a client saved is exactly what it loads next round: run one more round by hand
    model, tok = F.build_model(CFG, F.METHODS["fedpdpo"])
    model.load_personal(states[0])
    assert torch.equal(model.head.weight, states[0]["head.weight"])
    model.load_shared(fedpdpo_run.global_state)
    assert torch.equal(model.head.weight, states[0]["head.weight"])


def test_reference_global_starts_each_round_at_ln2():
    run = F.run(CFG.replace(reference="global", local_steps=1, rounds=1, method="fedper", setting="iid"), progress=False)
    assert run.history[1]["client_dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    base = F.run(CFG.replace(local_steps=1, rounds=1, method="fedper", setting="iid"), progress=False)
    assert base.history[1]["client_dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)   # round 1: global = base
    two = F.run(CFG.replace(reference="global", local_steps=1, rounds=2, method="fedper", setting="iid"), progress=False)
    two_base = F.run(CFG.replace(local_steps=1, rounds=2, method="fedper", setting="iid"), progress=False)
    assert two.history[2]["client_dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(two_base.history[2]["client_dpo_loss"] - math.log(2)) > 1e-6


def test_data_constructions():
    cfg = CFG.replace(num_clients=5, minority_fraction=0.4, pairs_per_client=10, eval_per_client=8)
    iid, non = client_preference_pairs(cfg, "iid"), client_preference_pairs(cfg, "noniid")
    assert iid.types == ["A"] * 5 and sorted(non.types) == ["A", "A", "A", "B", "B"]
    for data in (iid, non):
        for train, held, kind in zip(data.train, data.held, data.types):
            personal = [p for p in train if "category" in p]
            assert len(personal) == len(train) - len(personal) == 10
            assert set(held) == {"personal", "shared"} and all(len(v) == 8 for v in held.values())
            assert all(follows_rule(p, kind) for p in held["personal"])          # held-out labels are the rule
            assert all("def " in p["chosen"] for p in held["shared"])
    for c, kind in enumerate(non.types):                                          # a type-A client: same test
        assert (iid.held[c] == non.held[c]) == (kind == "A")
    topics = [{p["topic"] for p in train if "topic" in p} for train in non.train]
    assert all(t <= {"+", "-", "*"} for t in topics)
    cross = client_preference_pairs(cfg, "cross")
    assert cross.names == list(DOMAINS) and [list(h) for h in cross.held] == [[d] for d in DOMAINS]


def test_follows_rule_by_hand():
    word, bare = {"category": "word", "chosen": "2 + 3 = 5. The answer is 5."}, {"category": "bare", "chosen": "The answer is 5."}
    assert follows_rule(word, "A") and follows_rule(bare, "A") and not follows_rule(word, "B") and not follows_rule(bare, "B")
    assert WORKED_ON == {"A": "word", "B": "bare"}


def test_raters_agree_at_the_configured_rate():
    cfg = CFG.replace(num_clients=4, pairs_per_client=200, eval_per_client=4)
    noisy = client_preference_pairs(cfg.replace(agreement=0.8), "noniid")
    clean = client_preference_pairs(cfg.replace(agreement=1.0), "noniid")
    for kind, train in zip(clean.types, clean.train):
        assert all(follows_rule(p, kind) for p in train if "category" in p)
    follows = [follows_rule(p, kind) for kind, train in zip(noisy.types, noisy.train) for p in train if "category" in p]
    assert 0.76 < sum(follows) / len(follows) < 0.84                               # 800 labels, sd 0.014
    assert rated([{"chosen": "x", "rejected": "y"}], 1.0, 0) == [{"chosen": "x", "rejected": "y"}]


def test_an_untrained_model_ties_on_every_held_out_pair():
    for method in ("fedpdpo", "fedavg", "no_personal_head"):
        row = F.run(CFG.replace(method=method, rounds=1, local_steps=1), progress=False).history[0]
        accs = {k: v for k, v in row.items() if k.startswith("acc")}
        assert accs and set(accs.values()) == {0.5}, method
        assert all(v == 0.0 for k, v in row.items() if k.startswith("margin")), method


def test_evaluation_scores_each_part_of_each_client():
    run = F.run(CFG.replace(rounds=3, eval_every=2), progress=False)
    assert [("acc" in h) for h in run.history] == [True, False, True, True]       # rounds 0, 2 and the last
    last = run.history[-1]
    for c in range(CFG.num_clients):
        assert last[f"acc/{c}"] == pytest.approx((last[f"acc_personal/{c}"] + last[f"acc_shared/{c}"]) / 2)
    assert last["acc"] == pytest.approx(sum(last[f"acc/{c}"] for c in range(CFG.num_clients)) / CFG.num_clients)


@pytest.mark.parametrize("field,value,match", [
    ("reference", "policy", "reference='policy' is not allowed"),
    ("minority_fraction", 0.5, "minority_fraction must be in"),
    ("agreement", 0.5, "agreement must be in"),
    ("personal_task", "imdb", "personal_task='imdb' is not allowed"),
    ("mu", -1.0, "mu must be"),
    ("model", "gpt2", "model='gpt2' is not allowed"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        F.get_preset("smoke", **{field: value})


def test_unknown_method_or_setting_is_a_clear_error():
    with pytest.raises(ConfigError, match="method='fedx' is not allowed"):
        CFG.replace(method="fedx")
    with pytest.raises(ConfigError, match="setting='mixed' is not allowed"):
        CFG.replace(setting="mixed")
