"""DPO loss, implicit rewards and tokenization against TRL's DPOTrainer (one step, lr 0, same batch)."""
import copy
import math

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.preference import collate, review_pairs, tokenize_pair
from fedalign_lite.models.causal_lm import load_model
from fedalign_lite.objectives.dpo import dpo_loss, reward_accuracy, sequence_logps

BETA = 0.1


@pytest.fixture(scope="module")
def pairs():
    return [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in review_pairs(seed=0)[:8]]


def _trl_one_step(policy, ref, tok, pairs):
    args = DPOConfig(output_dir="/tmp/fedalign-trl-test", per_device_train_batch_size=len(pairs), max_steps=1,
                     learning_rate=0.0, beta=BETA, max_length=None, report_to="none", save_strategy="no",
                     bf16=False, gradient_checkpointing=False, use_cpu=True, disable_tqdm=True, logging_steps=1)
    chat = [{**p, "prompt": format_prompt(p["prompt"], tok)} for p in pairs]   # TRL sees the same text
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(chat),
                         processing_class=tok)
    trainer.train()
    return trainer, trainer.state.log_history[0]


def _ours(policy, ref, tok, pairs):
    b = collate([tokenize_pair(tok, p) for p in pairs], tok.pad_token_id)
    with torch.no_grad():
        pc, pr = sequence_logps(policy, **b).view(2, -1)
        rc, rr = sequence_logps(ref, **b).view(2, -1)
    loss, cr, rj = dpo_loss(pc, pr, rc, rr, BETA)
    return loss.item(), cr, rj


def test_matches_trl_dpotrainer(pairs):
    policy, tok = load_model("random-tiny", seed=0)
    ref, _ = load_model("random-tiny", seed=1)        # a different model, so the loss is not ln 2
    loss, cr, rj = _ours(policy, ref, tok, pairs)
    trainer, log = _trl_one_step(copy.deepcopy(policy), copy.deepcopy(ref), tok, pairs)
    assert loss == pytest.approx(log["loss"], rel=1e-4)
    assert abs(loss - math.log(2)) > 1e-3
    assert reward_accuracy(cr, rj) == pytest.approx(log["rewards/accuracies"])
    assert cr.mean().item() == pytest.approx(log["rewards/chosen"], rel=1e-4, abs=1e-6)
    assert rj.mean().item() == pytest.approx(log["rewards/rejected"], rel=1e-4, abs=1e-6)
    # and our tokenization is TRL's
    row = trainer.train_dataset[0]
    ours = tokenize_pair(tok, pairs[0])
    assert {k: row[k] for k in ours} == ours


def test_first_step_loss_is_ln2_when_policy_is_reference(pairs):
    policy, tok = load_model("random-tiny", seed=0)
    loss, cr, rj = _ours(policy, policy, tok, pairs)
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    assert reward_accuracy(cr, rj) == 0.0     # ties are not counted as correct (TRL)
    assert reward_accuracy(cr, rj, ties=0.5) == 0.5


def test_dpo_loss_hand_computed():
    loss, cr, rj = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]),
                            torch.tensor([-2.0, -2.0]), beta=0.5)
    # margins: 0.5*((1) - (-1)) = 1 ; 0.5*((0) - (1)) = -0.5
    expected = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert loss.item() == pytest.approx(expected)
    assert cr.tolist() == [0.5, 0.0] and rj.tolist() == [-0.5, 0.5]
    assert reward_accuracy(cr, rj) == 0.5
    assert reward_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]), ties=0.5) == 0.5  # 1, 1/2, 0
