"""Benchmark: our local DPO step vs TRL's DPOTrainer step, and the step's utilization of the CPU.

    make bench        # writes benchmarks/results/dpo_step.json

Everything is measured in one process on the same model (fedalign-base + LoRA r=8 on q, v), the
same 8 preference pairs and the same LoRA config, so the ratio is robust to a noisy host. Ours uses
reference log-probs cached once (the reference is the frozen base); TRL recomputes them every
step with the adapter disabled.

Utilization: the FLOPs of our step are counted by ``torch.utils.flop_counter.FlopCounterMode``
over one step as executed (forward and backward; with a frozen base and LoRA the base's weight
gradients are never computed, and attention is counted through its SDPA kernel). The fp32 matmul
peak is measured between the timed steps, in this process, so a busy moment on a shared host lowers
both. ``mfu`` is the median over steps of counted FLOPs / step time / the peak measured beside it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from _common import median_after_warmup, step_timer, write_result
from datasets import Dataset
from peft import LoraConfig
from torch.utils.flop_counter import FlopCounterMode
from trl import DPOConfig, DPOTrainer

from fedalign_lite.algorithms.fed_dpo import dpo_step_loss, get_preset, reference_logps
from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.preference import review_pairs, tokenize_pair
from fedalign_lite.models.causal_lm import add_lora, load_model, lora_target_modules

os.environ.setdefault("HF_HUB_OFFLINE", "1")
STEPS, WARMUP, PAIRS = 12, 3, 8
OUT = Path(__file__).parent / "results" / "dpo_step.json"


def matmul_gflops(n: int = 1024, reps: int = 3) -> float:
    """Best of ``reps`` fp32 (n x n) @ (n x n) products, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def ours(cfg, pairs) -> dict:
    """Our step's median time, its counted FLOPs, and the matmul peak measured after each step."""
    model, tok = load_model(cfg.model)
    torch.manual_seed(0)
    model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    data = [tokenize_pair(tok, p) for p in pairs]
    ref = reference_logps(model, data, tok.pad_token_id, cfg.max_length)   # cached once, outside the loop
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    idx = list(range(len(data)))

    def step() -> None:
        loss, _ = dpo_step_loss(model, data, ref, idx, tok.pad_token_id, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times, peaks = [], []
    for _ in range(STEPS + WARMUP):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        peaks.append(matmul_gflops())
    mfu = [flops / t / 1e9 / p for t, p in zip(times[WARMUP:], peaks[WARMUP:])]
    return {"s_per_step": median_after_warmup(times, WARMUP), "flops_per_step": flops,
            "matmul_gflops": median_after_warmup(peaks, WARMUP), "mfu": sorted(mfu)[len(mfu) // 2]}


def trl_s_per_step(cfg, pairs) -> float:
    model, tok = load_model(cfg.model)
    times = []

    rows = [{"prompt": format_prompt(p["prompt"], tok), "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    args = DPOConfig(output_dir="/tmp/fedalign-bench-trl", per_device_train_batch_size=len(rows),
                     max_steps=STEPS + WARMUP, learning_rate=cfg.lr, beta=cfg.beta, max_length=cfg.max_length,
                     report_to="none", save_strategy="no", bf16=False, gradient_checkpointing=False, use_cpu=True,
                     disable_tqdm=True, logging_steps=1000, dataloader_drop_last=False)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=lora_target_modules(model), task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows * (STEPS + WARMUP)),
                         processing_class=tok, peft_config=lora, callbacks=[step_timer(times)])
    trainer.train()
    return median_after_warmup(times, WARMUP)


def main() -> dict:
    torch.set_num_threads(2)
    cfg = get_preset("cpu")
    pairs = review_pairs(0)[:PAIRS]
    mine = ours(cfg, pairs)
    trl = trl_s_per_step(cfg, pairs)
    result = {"model": cfg.model, "pairs_per_step": PAIRS, "max_length": cfg.max_length, "lora_r": cfg.lora_r,
              "ours_s_per_step": round(mine["s_per_step"], 4), "trl_s_per_step": round(trl, 4),
              "speedup": round(trl / mine["s_per_step"], 3), "flops": "counted",
              "flops_per_step": mine["flops_per_step"],
              "achieved_gflops": round(mine["flops_per_step"] / mine["s_per_step"] / 1e9, 2),
              "matmul_gflops": round(mine["matmul_gflops"], 2), "peak": "fp32 1024^3 matmul, between the timed steps",
              "mfu": round(mine["mfu"], 3)}
    return write_result(OUT, result)


if __name__ == "__main__":
    main()
