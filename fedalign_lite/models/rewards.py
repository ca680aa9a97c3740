"""Two reward models that conflict, built from offline parts (FIRM's helpfulness vs harmlessness).

* helpfulness = 0 for a refusal or an empty answer; an answer scores (1 - w) + w * relevance, where
  relevance is the cosine similarity of prompt and answer MiniLM embeddings clipped to [0, 1]
  (``"minilm"``), or the share of the prompt's content words the answer repeats (``"overlap"``).
  [choice] w = 0.25: answering is the behaviour the base model has and varies within a batch;
  relevance of our model's near-incoherent text is a weak signal, so it adds to answering and does not
  replace it (w = 1 is relevance alone).
* harmlessness = 1 for refusing a harmful prompt and 0 for answering it; on a benign prompt,
  1 - P(offensive) of the answer by alt-profanity-check (``"profanity-check"``) or 1 - [contains a
  listed profane word] by better-profanity (``"wordlist"``).

Answering a harmful question is helpful and harmful; refusing everything is harmless and
unhelpful, so the two objectives genuinely conflict. ``RewardModel`` adds a client's variant:
other scorers and a scale per objective (FIRM's heterogeneous reward models), optionally noise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fedalign_lite.data.assets import contains_profanity, minilm_embedder, offensive_probability, truthfulqa
from fedalign_lite.data.chat import is_refusal
from fedalign_lite.data.tasks import REFUSALS
from fedalign_lite.errors import check_choice, check_positive

OBJECTIVES = ("helpfulness", "harmlessness")
_STOP = set("a an the of to in on for and or is are was were be do does did how what why who when where which "
            "can could should would i you me my your it its this that with by from at as about".split())
_MINILM = None
_EMBEDDED: dict = {}
_EMBEDDED_MAX = 50_000


def _content_words(text: str) -> set:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOP}


def relevance(prompts: list[str], responses: list[str], scorer: str = "minilm") -> np.ndarray:
    """(B,) relevance of each response to its prompt, in [0, 1]."""
    check_choice("helpfulness scorer", scorer, ("minilm", "overlap"))
    if scorer == "overlap":
        out = []
        for p, r in zip(prompts, responses):
            words = _content_words(p)
            out.append(len(words & _content_words(r)) / len(words) if words else 0.0)
        return np.asarray(out)
    vecs = _minilm_vectors(list(prompts) + list(responses))
    return np.clip((vecs[: len(prompts)] * vecs[len(prompts):]).sum(1), 0.0, 1.0)


def _minilm_vectors(texts: list[str]) -> np.ndarray:
    """(n, 384) unit MiniLM embeddings; each distinct text is encoded once per process (prompts recur
    every step and every evaluation, and so do many short answers)."""
    global _MINILM
    _MINILM = _MINILM or minilm_embedder()
    new = list(dict.fromkeys(t for t in texts if t not in _EMBEDDED))
    if new:
        if len(_EMBEDDED) + len(new) > _EMBEDDED_MAX:
            _EMBEDDED.clear()
        # one text per forward: no padding, so a text's vector never depends on what it was batched with
        vecs = _MINILM.encode(new, batch_size=1, convert_to_numpy=True, normalize_embeddings=True)
        _EMBEDDED.update(zip(new, vecs))
    return np.stack([_EMBEDDED[t] for t in texts])


def answered(responses: list[str]) -> np.ndarray:
    """(B,) 1.0 where a response is non-empty and not a refusal."""
    return np.array([bool(r.strip()) and not is_refusal(r) for r in responses], dtype=np.float64)


def helpfulness(prompts: list[str], responses: list[str], scorer: str = "minilm",
                relevance_weight: float = 0.25) -> np.ndarray:
    """(B,) answered * ((1 - w) + w * relevance), w = ``relevance_weight`` (module docstring)."""
    w, said = relevance_weight, answered(responses)
    rel = np.zeros(len(responses))
    idx = np.flatnonzero(said)
    if w and len(idx):      # a refusal scores 0 whatever its relevance: score only the answers
        rel[idx] = relevance([prompts[i] for i in idx], [responses[i] for i in idx], scorer)
    return said * ((1.0 - w) + w * rel)


def harmlessness(responses: list[str], harmful: list[bool], scorer: str = "profanity-check") -> np.ndarray:
    check_choice("harmlessness scorer", scorer, ("profanity-check", "wordlist"))
    if scorer == "profanity-check":
        clean = 1.0 - np.asarray(offensive_probability(list(responses)), dtype=np.float64)
    else:
        clean = np.array([0.0 if contains_profanity(r) else 1.0 for r in responses])
    refused = np.array([is_refusal(r) for r in responses], dtype=np.float64)
    return np.where(np.asarray(harmful, dtype=bool), refused, clean)


@dataclass(frozen=True)
class RewardModel:
    """One client's pair of reward models: scorers, relevance's weight in helpfulness, a scale per
    objective, and optional Gaussian noise (std)."""

    help_scorer: str = "minilm"
    harm_scorer: str = "profanity-check"
    scale: tuple = (1.0, 1.0)
    noise: float = 0.0
    relevance_weight: float = 0.25

    def __post_init__(self):
        check_choice("help_scorer", self.help_scorer, ("minilm", "overlap"))
        check_choice("harm_scorer", self.harm_scorer, ("profanity-check", "wordlist"))
        check_positive("noise", self.noise, allow_zero=True)
        if not 0.0 <= self.relevance_weight <= 1.0:
            raise ValueError(f"relevance_weight must be in [0, 1], got {self.relevance_weight}")

    def __call__(self, prompts: list[str], responses: list[str], harmful: list[bool],
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """(B, 2) rewards (helpfulness, harmlessness) of each response."""
        r = np.stack([helpfulness(prompts, responses, self.help_scorer, self.relevance_weight),
                      harmlessness(responses, harmful, self.harm_scorer)], 1) * np.asarray(self.scale)
        if self.noise:
            r = r + (rng or np.random.default_rng(0)).normal(0.0, self.noise, r.shape)
        return r


REFERENCE = RewardModel()
"""The reward models every global policy is evaluated with (no client variant)."""


def client_reward_models(num_clients: int, same: bool, seed: int = 0, noise: float = 0.0,
                         relevance_weight: float = REFERENCE.relevance_weight) -> list[RewardModel]:
    """Heterogeneous reward models (FIRM's Fig. 4): the relevance and offensiveness scorers alternate
    across clients and each objective gets a scale ~ U[0.8, 1.2]; ``noise`` adds N(0, noise^2) to every
    reward (0 by default: heterogeneity comes from the scorers, not from noise). ``same=True`` gives every
    client the reference models. Every client weighs relevance by ``relevance_weight``."""
    if same:
        return [RewardModel(relevance_weight=relevance_weight)] * num_clients
    rng = np.random.default_rng(seed)
    return [RewardModel(("minilm", "overlap")[i % 2], ("profanity-check", "wordlist")[(i // 2) % 2],
                        tuple(rng.uniform(0.8, 1.2, 2).round(3)), noise, relevance_weight)
            for i in range(num_clients)]


def reward_model_accuracy(n: int = 200, seed: int = 0) -> dict:
    """Accuracy of the reward models' parts on held-out labelled examples.

    * ``refusal``: the refusal detector on the project's refusal templates (positives) against
      TruthfulQA's correct answers (negatives);
    * ``relevance/<scorer>``: how often a TruthfulQA question's correct answer scores above the
      correct answer of another question (pairwise accuracy).
    """
    rng = np.random.default_rng(seed)
    rows = [truthfulqa()[i] for i in rng.permutation(len(truthfulqa()))[:n]]
    questions, answers = [r["question"] for r in rows], [r["answers"][0] for r in rows]
    shuffled = [answers[(i + 1) % len(answers)] for i in range(len(answers))]
    texts = list(REFUSALS) + answers
    labels = [True] * len(REFUSALS) + [False] * len(answers)
    out = {"refusal": float(np.mean([is_refusal(t) == y for t, y in zip(texts, labels)]))}
    for scorer in ("minilm", "overlap"):
        right, wrong = relevance(questions, answers, scorer), relevance(questions, shuffled, scorer)
        out[f"relevance/{scorer}"] = float(np.mean(right > wrong))
    return out
