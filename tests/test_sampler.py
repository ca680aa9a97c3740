"""The sampler against ``generate``: the same tokens under greedy decoding, log-probs equal to a full
forward's, and draws from the tempered softmax."""
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.tasks import arithmetic_problem
from fedalign_lite.models.causal_lm import add_lora, llama_config, load_model, lora_parameters
from fedalign_lite.models.rollout import rollout_token_logps, sample
from fedalign_lite.models.sampler import decode, draw, supports


def _policy(name: str):
    """``name`` with a LoRA whose B is non-zero, so the merged weights differ from the base."""
    model, tok = load_model(name)
    torch.manual_seed(0)
    model = add_lora(model, 8, 16)
    for p in lora_parameters(model):
        p.data.normal_(0, 0.05)
    return model.eval(), tok


def _prompts(n: int = 12) -> list[str]:
    """Prompts of different lengths, so left padding differs per row."""
    rng = random.Random(0)
    return [arithmetic_problem(rng)["prompt"] + " and then explain why" * (i % 3) for i in range(n)]


def _encode(tok, prompts):
    tok.padding_side = "left"
    enc = tok([format_prompt(p, tok) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = "right"
    return enc


@pytest.mark.parametrize("name", ["random-tiny", "fedalign-base"])
def test_greedy_tokens_equal_generate(name):
    model, tok = _policy(name)
    enc = _encode(tok, _prompts())
    assert enc["attention_mask"].min() == 0, "the prompts must need left padding"
    ref = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    ours, _ = decode(model, enc["input_ids"], enc["attention_mask"], 24, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, greedy=True)
    assert torch.equal(ours, ref)


def test_greedy_stops_and_pads_like_generate():
    """Declare as EOS a token the model emits in some rows but not all: rows that emit it end there and
    pad, the others run on, exactly as generate does."""
    model, tok = _policy("fedalign-base")
    enc = _encode(tok, _prompts())
    free = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id)[:, enc["input_ids"].shape[1]:]
    early = free[:, :8]
    eos = next(int(t) for t in early.unique() if t not in (tok.pad_token_id, tok.eos_token_id)
               and 0 < (early == t).any(1).sum() < len(free) - 1)
    ref = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    ours, logps = decode(model, enc["input_ids"], enc["attention_mask"], 16, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, greedy=True)
    response = ours[:, enc["input_ids"].shape[1]:]
    assert (response == tok.pad_token_id).any() and not (response == eos).any(1).all()
    assert torch.equal(ours, ref)
    assert logps.shape == response.shape and (logps[response == tok.pad_token_id] == 0).all()


def test_sampled_logps_equal_a_full_forward():
    model, tok = _policy("fedalign-base")
    torch.manual_seed(1)
    roll = sample(model, tok, _prompts(8), max_new_tokens=20, temperature=1.0)
    assert roll.sampled_logps is not None
    full = rollout_token_logps(model, roll) * roll.response_mask
    torch.testing.assert_close(roll.sampled_logps, full, atol=1e-4, rtol=1e-4)


def test_draw_follows_the_tempered_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]]).repeat(40_000, 1)
    torch.manual_seed(0)
    for temperature in (1.0, 0.5):
        counts = torch.bincount(draw(logits, temperature), minlength=5).double() / len(logits)
        expected = torch.softmax(logits[0].double() / temperature, -1)
        torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)   # 4.5 binomial sd at 40k draws
        assert counts[4] == 0


def test_sampling_is_deterministic_given_the_seed():
    model, tok = _policy("random-tiny")
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(sample(model, tok, _prompts(6), max_new_tokens=12).input_ids)
    assert torch.equal(*runs)


def test_other_architectures_fall_back_to_generate():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=4096, n_positions=64))
    _, tok = load_model("random-tiny")
    assert not supports(gpt2) and supports(load_model("random-tiny")[0])
    roll = sample(gpt2.eval(), tok, _prompts(3), max_new_tokens=4, greedy=True)
    assert roll.sampled_logps is None and roll.input_ids.shape[0] == 3


def test_greedy_equals_generate_with_grouped_query_attention():
    """SmolLM2 (the gpu preset) has 9 query heads over 3 key/value heads: a random model of that shape."""
    _, tok = load_model("random-tiny")
    cfg = llama_config(tok, hidden=72, layers=2, heads=6)
    cfg.num_key_value_heads, cfg.rope_theta = 2, 100000.0
    torch.manual_seed(0)
    model = add_lora(LlamaForCausalLM(cfg), 4, 8)
    for p in lora_parameters(model):
        p.data.normal_(0, 0.05)
    model.eval()
    enc = _encode(tok, _prompts())
    ref = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    ours, _ = decode(model, enc["input_ids"], enc["attention_mask"], 16, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, greedy=True)
    assert torch.equal(ours, ref)


def test_a_response_prefix_continues_the_greedy_answer_where_it_left_off():
    """Greedy decoding is causal: begin the response with the first words of the model's own greedy answer and
    it writes the rest of that answer (the prefix belongs to the prompt, not to the returned text)."""
    model, tok = load_model("fedalign-base")
    prompts = ["What is 2 plus 3?", "Compute 7 * 8."]
    free = sample(model, tok, prompts, 16, greedy=True).texts
    heads = [" ".join(t.split()[:3]) for t in free]
    for prompt, text, head in zip(prompts, free, heads):
        rest = sample(model, tok, [prompt], 16, greedy=True, response_prefix=head).texts[0]
        assert f"{head} {rest}" == text
