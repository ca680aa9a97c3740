"""Benchmark: our local GRPO step (FedMOA's client step) vs TRL's GRPOTrainer step on the same work.

    make bench        # writes benchmarks/results/grpo_step.json (after dpo_step.json)

Same model (fedalign-base + LoRA on q, v), the same prompts, G samples per prompt, the same maximum
completion length, temperature 1, the k3 KL to the frozen base (beta 0.04), one reward function
(the answer's format) and one optimizer step per rollout. Ours batches the G samples of every
prompt into one ``generate`` call with the KV cache and takes the reference log-probs with the
adapter disabled, as TRL does. Median over steps after warm-up, both in this one process.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch
from _common import median_after_warmup, step_timer, write_result
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.tasks import arithmetic_problem
from fedalign_lite.models.causal_lm import add_lora, load_model, lora_parameters, lora_target_modules
from fedalign_lite.models.rollout import rollout_token_logps, sample
from fedalign_lite.objectives.grpo import group_advantages, grpo_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STEPS, WARMUP, PROMPTS, G, MAX_NEW, BETA, LR = 8, 2, 2, 8, 32, 0.04, 1e-3
OUT = Path(__file__).parent / "results" / "grpo_step.json"


def format_reward(completions, **kwargs) -> list[float]:
    return [float("The answer is" in c) for c in completions]


def prompts() -> list[str]:
    rng = random.Random(0)
    return [arithmetic_problem(rng)["prompt"] for _ in range(PROMPTS * (STEPS + WARMUP))]


def ours_s_per_step() -> float:
    model, tok = load_model("fedalign-base")
    torch.manual_seed(0)
    policy = add_lora(model, 8, 16)
    opt = torch.optim.AdamW(lora_parameters(policy), lr=LR)
    all_prompts, times = prompts(), []
    for step in range(STEPS + WARMUP):
        t = time.perf_counter()
        batch = [p for p in all_prompts[step * PROMPTS:(step + 1) * PROMPTS] for _ in range(G)]
        roll = sample(policy, tok, batch, MAX_NEW, temperature=1.0)
        adv = group_advantages(torch.tensor(format_reward(roll.texts)), G)
        policy.train()
        logp = rollout_token_logps(policy, roll)
        with torch.no_grad(), policy.disable_adapter():
            ref = rollout_token_logps(policy, roll)
        loss = grpo_loss(logp, logp.detach(), ref, roll.response_mask.float(), adv, beta_kl=BETA)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return median_after_warmup(times, WARMUP)


def trl_s_per_step() -> float:
    model, tok = load_model("fedalign-base")
    times = []

    rows = [{"prompt": format_prompt(p, tok)} for p in prompts()]
    args = GRPOConfig(output_dir="/tmp/fedalign-bench-grpo", per_device_train_batch_size=PROMPTS * G,
                      num_generations=G, max_completion_length=MAX_NEW, max_steps=STEPS + WARMUP, learning_rate=LR,
                      beta=BETA, temperature=1.0, use_vllm=False, report_to="none", save_strategy="no", bf16=False,
                      use_cpu=True, disable_tqdm=True, logging_steps=1000, gradient_checkpointing=False)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=lora_target_modules(model),
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[format_reward], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=lora, callbacks=[step_timer(times)])
    trainer.train()
    return median_after_warmup(times, WARMUP)


def main() -> dict:
    torch.set_num_threads(2)
    ours = ours_s_per_step()
    trl = trl_s_per_step()
    result = {"model": "fedalign-base", "prompts_per_step": PROMPTS, "num_generations": G,
              "max_completion_length": MAX_NEW, "beta_kl": BETA, "lora_r": 8,
              "ours_s_per_step": round(ours, 4), "trl_s_per_step": round(trl, 4), "speedup": round(trl / ours, 3)}
    return write_result(OUT, result)


if __name__ == "__main__":
    main()
