"""FedPDPO (Zhu et al. 2026): personalized federated DPO. [RECONSTRUCTION: the paper's method section and
code are not public; this follows docs/fedpdpo.md §3, itself pinned to the abstract.]

Per client i, on a frozen backbone f_0:

    h        = f_0 with the shared LoRA adapter (A, B)            (the only weights that cross the network)
    h~       = h + W_up^i relu(W_down^i h)                         bottleneck adapter, W_up^i = 0 at init
    log pi_i = log softmax(H_i h~)                                 personal LM head H_i, init = lm_head
    r^_i     = beta [log pi_i(y|x) - log pi_ref(y|x)]              implicit reward (DPO)
    r~_i     = v_i^T h~_last + c_i                                 explicit reward head
    L_i      = L_DPO(r^_i) + mu * L_BT(r~_i),  L_BT = -log sigma(r~_i(x, y_w) - r~_i(x, y_l))
    server: FedAvg of the LoRA (A, B), weighted by n_i

pi_ref is the frozen backbone with the original head (no LoRA, no adapter) [choice, docs/fedpdpo.md §3];
``reference="global"`` makes it the round-start model instead (what TRL 1.x does silently when
handed a PeftModel). The additive loss is used, not the "complement" joint-margin variant. Accuracy
is the implicit reward's (r^(y_w) > r^(y_l), TRL's ``rewards/accuracies``); the explicit head shapes
training only and its own accuracy is logged beside it.

Every method is this model with components switched (``METHODS``): what is shared, what is
personal, what is absent.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedalign_lite.algorithms.fed_dpo import batch_indices
from fedalign_lite.config import PRESETS, ValidatedConfig, check_model_name
from fedalign_lite.data.client_preferences import PERSONAL_TASKS, client_preference_pairs
from fedalign_lite.data.preference import collate, tokenize_pair
from fedalign_lite.errors import ConfigError, check_choice
from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.federated.loop import ClientUpdate, Federation, lazy
from fedalign_lite.models.causal_lm import add_lora, get_adapter_state, load_model, set_adapter_state
from fedalign_lite.objectives.dpo import completion_logps, completion_start, dpo_loss, reward_accuracy
from fedalign_lite.seeding import derive_seed


@dataclass(frozen=True)
class Components:
    lora: str = "shared"        # "shared" (FedAvg) or "local" (never leaves the client)
    head: str = "personal"      # "personal", "shared" (uploaded and averaged) or "frozen" (the base lm_head)
    adapter: bool = True        # bottleneck adapter (personal)
    reward_head: bool = True    # explicit Bradley-Terry reward head (personal)


METHODS = {
    "local": Components("local", "personal", False, False),
    "fedavg": Components("shared", "shared", False, False),
    "fedper": Components("shared", "personal", False, False),
    "fedpdpo": Components(),
    "no_reward_head": Components(reward_head=False),
    "no_adapter": Components(adapter=False),
    "no_personal_head": Components(head="frozen"),
}
SETTINGS = ("iid", "noniid", "cross")


@dataclass(frozen=True)
class PDPOConfig(ValidatedConfig):
    preset: str = "cpu"
    model: str = "fedalign-base"
    num_clients: int = 8            # intra-domain; the cross-domain setting always has 3 (one per domain)
    rounds: int = 5
    local_steps: int = 5
    batch_size: int = 8
    lr: float = 3e-3
    lora_r: int = 8
    lora_alpha: int = 16
    bottleneck: int = 16            # adapter width [PROPOSAL: 8-16 for toy models]
    max_length: int = 48
    beta: float = 0.1
    mu: float = 1.0                 # weight of the Bradley-Terry loss [PROPOSAL]
    reference: str = "base"         # "base" (frozen backbone) or "global" (round-start model)
    personal_task: str = "style"    # "style" (category-dependent answer style) or "reviews" (the paper's sentiment)
    pairs_per_client: int = 40      # training pairs per client and part (personal, shared)
    eval_per_client: int = 40       # held-out pairs per client and part, noise-free, fixed by data_seed
    eval_every: int = 2             # evaluate after every eval_every-th round (and round 0 and the last)
    agreement: float = 0.8          # P(a rater's training label follows its type's rule)
    alpha: float = 0.5              # Dirichlet concentration over the personal items' topics (non-IID)
    minority_fraction: float = 0.375   # non-IID: share of clients of type B (3 of 8)
    method: str = "fedpdpo"         # a key of METHODS: which parts are shared, personal or absent
    setting: str = "noniid"         # "iid", "noniid" (topic skew and conflicting preferences) or "cross" (3 domains)
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_model_name(self.model)
        check_choice("reference", self.reference, ("base", "global"))
        check_choice("method", self.method, METHODS)
        check_choice("setting", self.setting, SETTINGS)
        check_choice("personal_task", self.personal_task, PERSONAL_TASKS)
        self.check_numbers(integers=("num_clients", "rounds", "local_steps", "batch_size", "lora_r", "lora_alpha",
                                     "bottleneck", "max_length", "pairs_per_client", "eval_per_client", "eval_every"),
                           positives=("lr", "beta", "alpha"), non_negatives=("mu",))
        if not 0 <= self.minority_fraction < 0.5:
            raise ConfigError(f"minority_fraction must be in [0, 0.5) (type B is the minority), got {self.minority_fraction}")
        if not 0.5 < self.agreement <= 1:
            raise ConfigError(f"agreement must be in (0.5, 1] (a rater who follows its rule more often than not), "
                              f"got {self.agreement}")


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=4, rounds=2, local_steps=2, batch_size=2, pairs_per_client=6,
                  eval_per_client=4, minority_fraction=0.25),
    "cpu": {},
    "gpu": dict(model="smollm2-135m", personal_task="reviews", rounds=20, local_steps=10, pairs_per_client=200,
                eval_per_client=50, max_length=128, lr=5e-4, bottleneck=64),
}


def get_preset(name: str, **overrides) -> PDPOConfig:
    """The validated FedPDPO preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return PDPOConfig.from_preset(name, _PRESETS, **overrides)


# ----------------------------------------------------------------------------------------- model --

class PersonalizedLM(nn.Module):
    """The backbone with LoRA, plus the head, bottleneck adapter and reward head of docs/fedpdpo.md §3.

    One instance serves every client: a client's personal modules are loaded before its update
    (:meth:`load_personal`) and saved after it (:meth:`personal_state`).
    """

    def __init__(self, peft_model, components: Components, bottleneck: int):
        super().__init__()
        base = peft_model.get_base_model()
        self.peft, self.backbone, self.base_head = peft_model, base.model, base.lm_head
        self.components = components
        hidden, vocab = base.config.hidden_size, base.config.vocab_size
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight.data.copy_(base.lm_head.weight.data)          # H_i init = the pretrained lm_head
        self.adapter_down = nn.Linear(hidden, bottleneck)
        self.adapter_up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.adapter_up.weight)                          # zero-init: h~ = h at the start
        nn.init.zeros_(self.adapter_up.bias)
        self.reward = nn.Linear(hidden, 1)
        self.initial = {k: v.detach().clone() for k, v in self.personal_modules().items()}
        self.initial_lora = get_adapter_state(peft_model)

    def personal_modules(self) -> dict:
        """{name: parameter} of the head, adapter and reward head (whether personal, shared or unused)."""
        return {"head.weight": self.head.weight, "adapter_down.weight": self.adapter_down.weight,
                "adapter_down.bias": self.adapter_down.bias, "adapter_up.weight": self.adapter_up.weight,
                "adapter_up.bias": self.adapter_up.bias, "reward.weight": self.reward.weight,
                "reward.bias": self.reward.bias}

    def hidden(self, input_ids, attention_mask) -> torch.Tensor:
        """h~ (B, T, hidden): the LoRA backbone's last hidden state, through the adapter when it is on."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        if self.components.adapter:
            h = h + self.adapter_up(F.relu(self.adapter_down(h)))
        return h

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0, reference: bool = False):
        """``logits`` (B, T', vocab) of the last ``logits_to_keep`` positions (all when 0) and ``hidden`` h~ (B, T,
        hidden). ``reference=True`` runs the frozen base instead (LoRA disabled, no adapter, the pretrained
        head) through the same code, so an untrained policy's log-probs equal the reference's bit for bit."""
        if reference:
            with self.peft.disable_adapter():
                h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        else:
            h = self.hidden(input_ids, attention_mask)
        head = self.base_head if reference or self.components.head == "frozen" else self.head
        return SimpleNamespace(logits=head(h[:, -logits_to_keep:]), hidden=h)

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], eos_id: int, max_new_tokens: int) -> list[int]:
        """Greedy continuation token ids of one prompt through the whole personalized model (its head and
        adapter), without a KV cache: one full forward per token, which is enough for a few short answers."""
        ids = torch.tensor([prompt_ids])
        for _ in range(max_new_tokens):
            nxt = self(ids, torch.ones_like(ids), logits_to_keep=1).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if nxt.item() == eos_id:
                break
        return ids[0, len(prompt_ids):].tolist()

    def explicit_reward(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """r~ (B,): the reward head on the last real token's h~ (right padding)."""
        last = attention_mask.sum(1) - 1
        return self.reward(h[torch.arange(len(h)), last]).squeeze(-1)

    def trainable(self) -> list:
        c = self.components
        params = [p for n, p in self.peft.named_parameters() if "lora_" in n]
        if c.head != "frozen":
            params.append(self.head.weight)
        if c.adapter:
            params += [self.adapter_down.weight, self.adapter_down.bias, self.adapter_up.weight, self.adapter_up.bias]
        if c.reward_head:
            params += [self.reward.weight, self.reward.bias]
        return params

    def shared_state(self) -> dict:
        """What the client uploads: the LoRA (if shared) and the head (if shared)."""
        out = get_adapter_state(self.peft) if self.components.lora == "shared" else {}
        if self.components.head == "shared":
            out["head.weight"] = self.head.weight.detach().clone()
        return out

    def load_shared(self, state: dict) -> None:
        lora = {k: v for k, v in state.items() if k != "head.weight"}
        if lora:
            set_adapter_state(self.peft, lora)
        if "head.weight" in state:
            self.head.weight.data.copy_(state["head.weight"])

    def personal_state(self) -> dict:
        """What stays on the client: its personal modules, and its LoRA when that is local."""
        out = {k: v.detach().clone() for k, v in self.personal_modules().items()
               if not (k == "head.weight" and self.components.head == "shared")}
        if self.components.lora == "local":
            out.update({f"lora/{k}": v for k, v in get_adapter_state(self.peft).items()})
        return out

    def load_personal(self, state: dict) -> None:
        """Load a client's personal modules; a client seen for the first time gets the initial ones."""
        with torch.no_grad():
            for k, p in self.personal_modules().items():
                if k == "head.weight" and self.components.head == "shared":
                    continue
                p.copy_(state.get(k, self.initial[k]))
        if self.components.lora == "local":
            lora = {k[5:]: v for k, v in state.items() if k.startswith("lora/")}
            set_adapter_state(self.peft, lora or self.initial_lora)


def build_model(cfg: PDPOConfig, components: Components):
    """(PersonalizedLM, tokenizer) on a freshly loaded base, seeded by cfg.seed; the LoRA starts at B = 0."""
    base, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    return PersonalizedLM(add_lora(base, cfg.lora_r, cfg.lora_alpha), components, cfg.bottleneck), tok


# ---------------------------------------------------------------------------------------- losses --

_REFERENCE_CACHE: dict = {}


@torch.no_grad()
def pair_logps(model: "PersonalizedLM", tokenized: list[dict], pad_id: int, cfg: PDPOConfig, batch_size: int = 32,
               reference: bool = False) -> torch.Tensor:
    """(n, 2) log-probs (chosen, rejected) on ``tokenized``, in batches of ``batch_size`` pairs: the model as it
    stands, or with ``reference`` the frozen base through the same code path."""
    return torch.cat([pair_scores(model, collate(tokenized[i:i + batch_size], pad_id, cfg.max_length),
                                  reference=reference)[0].view(2, -1).T
                      for i in range(0, len(tokenized), batch_size)])


def frozen_reference_logps(model: "PersonalizedLM", tokenized: list[dict], pad_id: int, cfg: PDPOConfig,
                           batch_size: int = 32) -> torch.Tensor:
    """(n, 2) log-probs (chosen, rejected) of the frozen base on ``tokenized``, in batches of ``batch_size``
    pairs, cached across runs in this process.

    The base is run through the policy's own code path (backbone with the LoRA disabled, the pretrained
    head), so with the same batches an untrained policy's implicit rewards are exactly 0 and its pairs
    tie. Every method and ablation of one (model, seed, setting) shares the same frozen base and pairs,
    so the notebook computes each client's reference once instead of once per method.
    """
    key = (cfg.model, cfg.seed, cfg.max_length, batch_size,
           hashlib.sha256(json.dumps([[t["prompt_ids"], t["chosen_ids"], t["rejected_ids"]] for t in tokenized])
                          .encode()).hexdigest())
    if key not in _REFERENCE_CACHE:
        if len(_REFERENCE_CACHE) > 1024:
            _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[key] = pair_logps(model, tokenized, pad_id, cfg, batch_size, reference=True)
    return _REFERENCE_CACHE[key]


def pair_scores(model: PersonalizedLM, batch: dict, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequence log-probs (2B,) and, with a reward head (and not ``reference``), explicit rewards (2B,) for a
    collated batch. The head runs only from the column before the earliest response token on."""
    start = completion_start(batch["completion_mask"])
    out = model(batch["input_ids"], batch["attention_mask"], logits_to_keep=batch["input_ids"].shape[1] - start + 1,
                reference=reference)
    logps = completion_logps(out.logits, batch["input_ids"][:, start - 1:], batch["completion_mask"][:, start - 1:])
    with_reward = model.components.reward_head and not reference
    return logps, model.explicit_reward(out.hidden, batch["attention_mask"]) if with_reward else None


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(r_w - r_l), mean over pairs (TRL RewardTrainer's loss, no margin)."""
    return -F.logsigmoid(chosen - rejected).mean()


def pdpo_loss(model: PersonalizedLM, batch: dict, ref: torch.Tensor, cfg: PDPOConfig):
    """L = L_DPO + mu * L_BT (docs/fedpdpo.md §3) on a collated batch; ``ref`` is (B, 2) reference log-probs."""
    logps, rewards = pair_scores(model, batch)
    pc, pr = logps.view(2, -1)
    loss, rc, rr = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], cfg.beta)
    metrics = {"dpo_loss": loss.item(), "reward_acc": reward_accuracy(rc, rr)}
    if rewards is not None:
        ec, er = rewards.view(2, -1)
        bt = bradley_terry_loss(ec, er)
        loss = loss + cfg.mu * bt
        metrics.update(bt_loss=bt.item(), explicit_acc=reward_accuracy(ec.detach(), er.detach()))
    return loss, metrics


# ---------------------------------------------------------------------------------- the algorithm --

def make_client_update(model: PersonalizedLM, train: list[list[dict]], pad_id: int, cfg: PDPOConfig):
    """Local personalized DPO (docs/fedpdpo.md §3): K steps of L_DPO + mu L_BT, upload the shared part only."""

    def client_update(ctx) -> ClientUpdate:
        data, ps = train[ctx.client_id], ctx.personal_state
        model.load_shared(ctx.global_state)
        model.load_personal(ps)
        if cfg.reference == "global":     # the round-start model, recomputed every round
            model.eval()
            ref = pair_logps(model, data, pad_id, cfg)
        else:                             # the frozen backbone never changes: computed once, kept
            if "ref_logps" not in ps:
                ps["ref_logps"] = frozen_reference_logps(model, data, pad_id, cfg)
            ref = ps["ref_logps"]
        model.train()
        opt = torch.optim.Adam(model.trainable(), lr=cfg.lr)
        step0, logs = ps.get("step", 0), []
        for k in range(cfg.local_steps):
            idx = batch_indices(len(data), step0 + k, cfg.batch_size, derive_seed(cfg.seed, ctx.client_id))
            loss, m = pdpo_loss(model, collate([data[i] for i in idx], pad_id, cfg.max_length), ref[idx], cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            logs.append(m)
        model.eval()
        personal = {**model.personal_state(), "step": step0 + cfg.local_steps}
        if "ref_logps" in ps:
            personal["ref_logps"] = ps["ref_logps"]
        metrics = {k: float(np.mean([m[k] for m in logs])) for k in logs[0]}
        return ClientUpdate(model.shared_state(), len(data), metrics, personal)

    return client_update


def make_evaluate(model: PersonalizedLM, held: list[dict], pad_id: int, cfg: PDPOConfig):
    """Personalized accuracy: each client's model (global shared part + its personal modules) on its own
    held-out pairs, per part (``held[c]`` is ``{part: pairs}``). Ties score 0.5, so the untrained model is
    at chance. Keys: ``acc_<part>/<c>`` and ``margin_<part>/<c>`` (mean r^(y_w) - r^(y_l), nats x beta),
    ``acc/<c>`` (mean over c's parts), ``acc`` (mean over clients), ``explicit_acc`` with a reward head."""
    refs = [{part: frozen_reference_logps(model, pairs, pad_id, cfg, batch_size=len(pairs)) for part, pairs in parts.items()}
            for parts in held]      # one batch per part, as evaluated: ties at initialisation are exact

    @torch.no_grad()
    def evaluate(global_state: dict, round_: int, personal_states: dict) -> dict:
        model.load_shared(global_state)
        row, explicit = {}, []
        for c, parts in enumerate(held):
            model.load_personal(personal_states.get(c, {}))
            for part, pairs in parts.items():
                logps, rewards = pair_scores(model, collate(pairs, pad_id, cfg.max_length))
                pc, pr = logps.view(2, -1)
                _, rc, rr = dpo_loss(pc, pr, refs[c][part][:, 0], refs[c][part][:, 1], cfg.beta)
                row[f"acc_{part}/{c}"] = reward_accuracy(rc, rr, ties=0.5)
                row[f"margin_{part}/{c}"] = (rc - rr).mean().item()
                if rewards is not None:
                    explicit.append(reward_accuracy(*rewards.view(2, -1), ties=0.5))
            row[f"acc/{c}"] = float(np.mean([row[f"acc_{part}/{c}"] for part in parts]))
        row["acc"] = float(np.mean([row[f"acc/{c}"] for c in range(len(held))]))
        if explicit:
            row["explicit_acc"] = float(np.mean(explicit))
        return row

    return evaluate


def federation(cfg: PDPOConfig) -> Federation:
    """``cfg.method`` in ``cfg.setting`` as a :class:`~fedalign_lite.federated.loop.Federation`;
    artifacts: the client descriptions (``names``) and types (``types``). Its evaluation is personalized (it
    reads every client's personal modules), so on Flower, where those never leave the clients, the server skips it."""
    data = client_preference_pairs(cfg, cfg.setting)
    model, tok = build_model(cfg, METHODS[cfg.method])
    train = [[tokenize_pair(tok, p) for p in ps] for ps in data.train]
    held = [{part: [tokenize_pair(tok, p) for p in ps] for part, ps in parts.items()} for parts in data.held]
    return Federation(make_client_update(model, train, tok.pad_token_id, cfg), aggregate_fedavg,
                      model.shared_state(), num_clients=len(train), rounds=cfg.rounds, seed=cfg.seed,
                      evaluate=lazy(lambda: make_evaluate(model, held, tok.pad_token_id, cfg)),
                      fingerprint=cfg.fingerprint(), evaluate_needs_personal=True, evaluate_every=cfg.eval_every,
                      finish=model.load_shared,
                      artifacts={"names": data.names, "types": data.types, "model": model, "tokenizer": tok})


def run(cfg: PDPOConfig, *, run_dir=None, progress: bool = True):
    """``cfg.method`` in ``cfg.setting`` in this process; a FederatedRun with the client descriptions in
    ``artifacts["names"]``."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
