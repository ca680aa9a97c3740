"""FedMOA's cpu-scale tasks: two closed families of arithmetic facts, and the answer styles its auxiliary
rewards ask for. [STAND-IN, labelled: the paper's tasks are math and code benchmarks; our 5M-parameter base
solves our code tasks every time (no headroom), so the cpu preset uses two arithmetic families instead.]

A *family* is closed: every fact (a, b) in its operand range, each in three prompt templates (300 and 363
prompts). The base's greedy accuracy is 0.2-0.6 on both, and what it gets wrong are arithmetic facts (the
equation's result, not the copying or the operation), so a family's own pool is what GRPO can improve: it is
the RL objective itself, and the evaluation set (labelled so in the notebook).

The base writes every answer one way (``3 + 4 = 7. The answer is 7.``), so an auxiliary that asks for another
style gives no gradient. :data:`STYLES` are the three styles of :func:`styled`; a format-only warm-up
(:mod:`fedalign_lite.models.format_warmup`) teaches the base to use the other two sometimes.
"""
from __future__ import annotations

import functools

FAMILIES = {"add": ("+", "plus", range(0, 10)), "mul": ("*", "times", range(2, 13))}
"""family -> (operator, word, operand range): 1-digit addition (100 facts) and 2-12 times 2-12 (121 facts)."""
TEMPLATES = ("What is {a} {word} {b}?", "Calculate {a} {op} {b}.", "Compute {a} {op} {b}.")
STYLES = ("worked", "concise", "answer_first")
"""``worked``: ``3 + 4 = 7. The answer is 7.`` (the base's); ``concise``: ``The answer is 7.``;
``answer_first``: ``Answer: 7.``"""


@functools.cache
def fact_pool(family: str) -> tuple[dict, ...]:
    """Every prompt of a family, ``{"prompt", "answer", "a", "b", "op"}``, in a fixed order (built once; the
    dicts are shared, so callers read them and never write)."""
    op, word, operands = FAMILIES[family]
    value = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}[op]
    return tuple({"prompt": t.format(a=a, b=b, op=op, word=word), "answer": value(a, b), "a": a, "b": b, "op": op}
                 for t in TEMPLATES for a in operands for b in operands)


def styled(fact: dict, answer: int, style: str) -> str:
    """``answer`` (right or wrong) written in ``style`` for ``fact``'s operands."""
    if style == "worked":
        return f"{fact['a']} {fact['op']} {fact['b']} = {answer}. The answer is {answer}."
    if style == "concise":
        return f"The answer is {answer}."
    if style == "answer_first":
        return f"Answer: {answer}."
    raise ValueError(f"style={style!r} is not allowed; choose one of {list(STYLES)}")

