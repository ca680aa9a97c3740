"""FedPDPO's clients: a shared preference every client holds, and a personal one on which two client
types disagree (docs/fedpdpo.md §4).

Every client's pairs have two parts:

* **shared**: code pairs, a correct one-line function over a subtly broken one. Every rater agrees.
* **personal**: arithmetic problems answered two ways, both correct: *worked* (``"7 + 5 = 12. The
  answer is 12."``) and *concise* (``"The answer is 12."``). Which a rater prefers depends on the
  prompt's category (a word problem or a bare sum) and on the client's type:

  ====== =================== ===================
  type   word problem        bare sum
  ====== =================== ===================
  A      worked              concise
  B      concise             worked
  ====== =================== ===================

  The rule is a category-by-type interaction, so neither type's preference is a constant style
  (a pure style preference is learnt in one DPO step and would leave nothing to compare). Training
  labels come from raters who agree with their type's rule with probability ``agreement``;
  held-out labels are the rule itself.

With the ``reviews`` personal task (the paper's own, for the gpu preset) type A prefers the fresh
review and type B the rotten one.

Settings: ``noniid`` splits the personal items over clients by Dirichlet(alpha) over their operation
(or movie bucket) and gives a ``minority_fraction`` of the clients type B. ``iid`` is the control: the
same items split uniformly, every client type A. A client's held-out pairs are drawn from a balanced
pool by its index and labelled by its type's rule, so a type-A client is tested on the same pairs
with the same labels in both settings. ``cross`` has one client per domain of :data:`DOMAINS`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from fedalign_lite.data.assets import harmful_prompts
from fedalign_lite.data.partition import partition_dirichlet, partition_iid
from fedalign_lite.data.preference import code_pairs, pair_group, review_pairs
from fedalign_lite.data.tasks import ITEMS, PEOPLE, REFUSALS
from fedalign_lite.errors import ConfigError
from fedalign_lite.seeding import derive_seed

CLIENT_TYPES = ("A", "B")
WORKED_ON = {"A": "word", "B": "bare"}
"""The prompt category on which each client type prefers the worked answer (the concise one elsewhere)."""
OPERATIONS = ("+", "-", "*")
PERSONAL_TASKS = ("style", "reviews")
POOL_FACTOR = 4
"""The personal training pool holds this many items per client's share, so a Dirichlet split can give every
client ``pairs_per_client`` items; each client keeps ``pairs_per_client`` of its part."""
DOMAINS = ("code", "style", "safety")
"""The cross-domain setting's clients, one domain each, every one learnable by the cpu base model."""

_COMPLIANCE = ["Sure! Here is how to do that, step by step.", "Of course. Here is what you asked for.",
               "Sure, I can help with that. First, you will need a few things.", "Okay, here is a plan you can follow."]


def arithmetic_item(rng: random.Random) -> dict:
    """One problem, half word problems and half bare sums, for every operation:
    ``{"prompt", "answer", "category": "word"|"bare", "operation", "worked", "concise"}``."""
    op = rng.choice(OPERATIONS)
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(0, 99), rng.randint(0, 99))
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    category = rng.choice(("word", "bare"))
    if category == "bare":
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        prompt = rng.choice([f"What is {a} {word} {b}?", f"Calculate {a} {op} {b}.", f"Compute {a} {op} {b}."])
    else:
        name, item = rng.choice(PEOPLE), rng.choice(ITEMS)
        prompt = {"+": f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
                  "-": f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have now?",
                  "*": f"{name} has {a} boxes with {b} {item} in each. How many {item} does {name} have?"}[op]
    return {"prompt": prompt, "answer": answer, "category": category, "operation": op,
            "worked": f"{a} {op} {b} = {answer}. The answer is {answer}.", "concise": f"The answer is {answer}."}


def style_pair(item: dict, client_type: str) -> dict:
    """The pair ``client_type``'s rule prefers (noise-free); keeps the item's category and operation."""
    worked = item["category"] == WORKED_ON[client_type]
    return {"prompt": item["prompt"], "chosen": item["worked" if worked else "concise"],
            "rejected": item["concise" if worked else "worked"], "category": item["category"],
            "topic": item["operation"]}


def follows_rule(pair: dict, client_type: str) -> bool:
    """Whether a personal style pair is labelled as ``client_type``'s rule says: the worked answer (the one
    with ``=``) is chosen exactly on the type's :data:`WORKED_ON` category."""
    return ("=" in pair["chosen"]) == (pair["category"] == WORKED_ON[client_type])


def review_pair(pair: dict, client_type: str) -> dict:
    """A review pair as ``client_type`` rates it: A prefers the fresh review, B the rotten one."""
    out = {**pair, "topic": pair_group(pair)}
    return out if client_type == "A" else {**out, "chosen": pair["rejected"], "rejected": pair["chosen"]}


def safety_pairs(n: int, seed: int = 0) -> list[dict]:
    """Half harmful prompts (a refusal chosen over a compliant opening, neither with harmful content), half
    arithmetic prompts (the worked answer chosen over a refusal)."""
    rng = random.Random(seed)
    harmful = [r["prompt"] for r in harmful_prompts()]
    out = []
    for i in range(n):
        if i % 2:
            out.append({"prompt": rng.choice(harmful), "chosen": rng.choice(REFUSALS), "rejected": rng.choice(_COMPLIANCE)})
        else:
            item = arithmetic_item(rng)
            out.append({"prompt": item["prompt"], "chosen": item["worked"], "rejected": rng.choice(REFUSALS)})
    return out


def rated(pairs: list[dict], agreement: float, seed: int) -> list[dict]:
    """The pairs as a rater who agrees with them with probability ``agreement`` labels them (seeded)."""
    disagree = np.random.default_rng(seed).random(len(pairs)) >= agreement
    return [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} if d else p for p, d in zip(pairs, disagree)]


def client_types(cfg, setting: str) -> list[str]:
    """Each client's type: in ``noniid`` a seeded ``minority_fraction`` of the clients are type B; in ``iid``
    every client is type A (no conflict)."""
    types = ["A"] * cfg.num_clients
    if setting == "noniid":
        k = int(round(cfg.minority_fraction * cfg.num_clients))
        for c in np.random.default_rng(derive_seed(cfg.data_seed, 4242)).choice(cfg.num_clients, k, replace=False):
            types[c] = "B"
    return types


@dataclass(frozen=True)
class ClientPairs:
    """One setting's data. ``train[c]``: client c's training pairs (both parts, rater-labelled);
    ``held[c]``: ``{part: noise-free held-out pairs}``; ``names[c]``: a description; ``types[c]``: its type
    (the domain in ``cross``)."""

    train: list
    held: list
    names: list
    types: list


def _personal_items(task: str, n: int, seed: int) -> list[dict]:
    """Up to ``n`` unlabelled personal items (all the review pairs there are, if fewer): arithmetic items or
    review pairs, with a ``topic`` label to split on."""
    if task == "reviews":
        return [{**p, "topic": pair_group(p)} for p in review_pairs(seed)[:n]]
    rng = random.Random(derive_seed(seed, 7))
    return [{**item, "topic": item["operation"]} for item in (arithmetic_item(rng) for _ in range(n))]


def _label(item: dict, task: str, client_type: str) -> dict:
    return (review_pair if task == "reviews" else style_pair)(item, client_type)


def client_preference_pairs(cfg, setting: str) -> ClientPairs:
    """The clients' pairs in ``setting`` (``iid``, ``noniid`` or ``cross``) under ``cfg``'s sizes
    (``pairs_per_client`` and ``eval_per_client`` per part), ``agreement``, ``alpha``, ``minority_fraction``,
    ``personal_task`` and ``data_seed``."""
    n, m, seed = cfg.pairs_per_client, cfg.eval_per_client, cfg.data_seed
    if setting == "cross":
        per_domain = {"code": code_pairs(n + m, derive_seed(seed, 1)),
                      "style": [style_pair(i, "A") for i in _personal_items("style", n + m, derive_seed(seed, 2))],
                      "safety": safety_pairs(n + m, derive_seed(seed, 3))}
        train = [rated(per_domain[d][m:], cfg.agreement, derive_seed(seed, 10 + i)) for i, d in enumerate(DOMAINS)]
        return ClientPairs(train, [{d: per_domain[d][:m]} for d in DOMAINS], list(DOMAINS), list(DOMAINS))
    k, task = cfg.num_clients, cfg.personal_task
    items = _personal_items(task, k * (m + POOL_FACTOR * n), seed)
    if len(items) < k * (m + n):
        raise ConfigError(f"the setting needs {k * (m + n)} {task} items, the corpus has {len(items)}; "
                          "lower num_clients, pairs_per_client or eval_per_client")
    held_items, pool = items[: k * m], items[k * m:]
    shared = code_pairs(k * (n + m), derive_seed(seed, 1))
    if setting == "iid":
        parts = partition_iid(len(pool), k, seed)
    else:
        parts = partition_dirichlet([it["topic"] for it in pool], k, cfg.alpha, seed, min_size=n)
    parts = [np.random.default_rng(derive_seed(seed, c)).permutation(p)[:n] for c, p in enumerate(parts)]
    if min(len(p) for p in parts) < n:
        raise ConfigError(f"a client got fewer than pairs_per_client={n} personal items; lower it or raise alpha")
    types = client_types(cfg, setting)
    train, held = [], []
    for c, (part, kind) in enumerate(zip(parts, types)):
        personal = [_label(pool[i], task, kind) for i in part]
        rng = random.Random(derive_seed(seed, 100 + c))
        mixed = personal + shared[k * m + c * n: k * m + (c + 1) * n]
        rng.shuffle(mixed)
        train.append(rated(mixed, cfg.agreement, derive_seed(seed, 200 + c)))
        held.append({"personal": [_label(it, task, kind) for it in held_items[c * m:(c + 1) * m]],
                     "shared": shared[c * m:(c + 1) * m]})
    names = [f"client {c} (type {t})" for c, t in enumerate(types)]
    return ClientPairs(train, held, names, types)
