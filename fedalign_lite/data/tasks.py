"""Small tasks the project writes itself: arithmetic with worked answers, refusals, code.

These are the instruction data of the base model (with text from registry packages) and the task
pools that FedMOA's math and code clients draw from. Every generator is deterministic in its seed.
"""
from __future__ import annotations

import random
import re

REFUSALS = [
    "I'm sorry, but I can't help with that. It could cause harm.",
    "I cannot help with this request because it could hurt people.",
    "Sorry, I won't assist with that. Is there something safe I can help with?",
    "I'm sorry, I can't provide that. It is not safe or legal.",
]

PEOPLE = ["Tom", "Ana", "Lee", "Sam", "Mia", "Raj", "Eva", "Ben"]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles"]


def arithmetic_problem(rng: random.Random, max_digits: int = 2) -> dict:
    """One problem, as ``{"prompt", "answer": int, "solution"}``; word problems for + and -."""
    hi = 10 ** rng.randint(1, max_digits) - 1
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    style = rng.random()
    if style < 0.5 or op == "*":
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        prompt = rng.choice([f"What is {a} {word} {b}?", f"Calculate {a} {op} {b}.", f"Compute {a} {op} {b}."])
    else:
        name, item = rng.choice(PEOPLE), rng.choice(ITEMS)
        verb = "gets" if op == "+" else "gives away"
        prompt = f"{name} has {a} {item} and {verb} {b}. How many {item} does {name} have now?"
    return {"prompt": prompt, "answer": answer, "solution": f"{a} {op} {b} = {answer}. The answer is {answer}."}


NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"
"""A number as answers write it: optionally signed, with thousands separators (1,234) or without."""


def parse_answer(text: str) -> float | None:
    """The number after GSM8K's '####' marker, else after 'The answer is', else the last number in
    ``text``; thousands separators are read (``1,234`` is 1234). None if there is no number."""
    for marker in (r"####\s*", r"answer is\s*"):
        m = re.search(marker + f"({NUMBER})", text)
        if m:
            return float(m.group(1).replace(",", ""))
    nums = re.findall(NUMBER, text)
    return float(nums[-1].replace(",", "")) if nums else None


_FUNCS = [  # (description with {k}, body with {k}, argument list, python expression to test with)
    ("returns x plus {k}", "return x + {k}", "x", lambda k, x: x + k),
    ("returns x times {k}", "return x * {k}", "x", lambda k, x: x * k),
    ("returns x minus {k}", "return x - {k}", "x", lambda k, x: x - k),
    ("returns the square of x plus {k}", "return x * x + {k}", "x", lambda k, x: x * x + k),
    ("returns True if x is greater than {k}", "return x > {k}", "x", lambda k, x: x > k),
    ("returns the remainder of x divided by {k}", "return x % {k}", "x", lambda k, x: x % k),
]
_FNAMES = ["f", "g", "calc", "compute", "transform", "apply", "step", "value"]


def code_task(rng: random.Random) -> dict:
    """A one-line function task: ``{"prompt", "solution", "entry_point", "tests": [(arg, expected)]}``."""
    desc, body, arg, fn = rng.choice(_FUNCS)
    k = rng.randint(2, 9)
    name = rng.choice(_FNAMES)
    prompt = f"Write a Python function {name}({arg}) that {desc.format(k=k)}."
    solution = f"def {name}({arg}):\n    {body.format(k=k)}"
    tests = [(x, fn(k, x)) for x in (rng.randint(0, 20), rng.randint(0, 20), rng.randint(0, 20))]
    return {"prompt": prompt, "solution": solution, "entry_point": name, "tests": tests}
