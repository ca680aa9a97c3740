"""FedMOA (Wang et al. 2026): federated GRPO with hypergradient-adapted objective weights and task- and
accuracy-aware aggregation. [RECONSTRUCTION: only the abstract is public; the client follows docs/fedmoa.md §2
and the server 4.3, both proposals.]

    client i (one of two tasks), objectives m = (primary correctness, format, length, control), w = softmax(s):
      for k = 1..K:
        B prompts x G samples from pi_theta; rewards r_{m,j} with the client's own definitions
        A^(m) = group-normalised advantage of objective m              (a saturated objective gives 0)
        g_m = grad of the GRPO surrogate's advantage term with A^(m)   (LoRA parameters; no KL inside)
        h_m = <g_p^(k) / |g_p^(k)|, g_m^(k-1)> / mean_n |g_n^(k-1)|    (hypergradient, docs/foundations.md §7;
              s <- s + gamma w (h - <w, h>)                              the scaling is our choice, below)
        theta <- Adam step along sum_m w_m g_m + g_KL                   (the k3 KL to the base, added once)
      upload theta_i, n_i   (the server knows the sender, and so its task, from the transport)
    server: within each task T, theta_T = sum_{i in T} n_i a_i theta_i / sum n_i a_i, with a_i the accuracy
      of client i's adapter on a server-held validation set of its task [choice; ``accuracy_source="client"``
      uses the client's own primary reward on its held-out prompts, docs/fedmoa.md §3's reading];
      global theta_g = sum_T |T|/N theta_T; clients receive their task's model.

Methods: ``fedavg`` (fixed equal weights, FedAvg, one global model), ``hyper_only``, ``agg_only``, ``fedmoa``.
Tasks: math and code in the gpu preset; two closed arithmetic families (:mod:`fedalign_lite.data.fact_tasks`)
in cpu and smoke [stand-in], from a model given a format-only warm-up (:mod:`fedalign_lite.models.format_warmup`).
The control objective is a coin flip per sample: it cannot saturate, so it shows what the weights do with an
objective that carries no information [choice, as the issue asked]. The local optimizer is Adam, fresh each
round [choice: SGD's rate depends on the gradient's scale, which the weights change].
One update per rollout, so the GRPO ratio is 1 and clipping never binds [choice: PPO-style reuse of a
rollout would cost more generation than the cpu preset can afford]; the k3 KL to the frozen base is kept.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from fedalign_lite.config import PRESETS, ValidatedConfig, check_model_name
from fedalign_lite.data.fact_tasks import FAMILIES, fact_pool
from fedalign_lite.data.tasks import arithmetic_problem, code_task, parse_answer
from fedalign_lite.errors import ConfigError, PayloadError, check_choice
from fedalign_lite.federated.aggregators import weighted_average
from fedalign_lite.federated.loop import ClientUpdate, Federation, lazy
from fedalign_lite.models.causal_lm import (
    add_lora,
    get_adapter_state,
    lora_parameters,
    set_adapter_state,
)
from fedalign_lite.models.format_warmup import warmed_model
from fedalign_lite.models.rollout import rollout_token_logps, sample
from fedalign_lite.objectives.grpo import group_advantages, grpo_loss, hypergradient_step
from fedalign_lite.objectives.sandbox import run_tests
from fedalign_lite.seeding import derive_seed

METHODS = ("fedavg", "hyper_only", "agg_only", "fedmoa")
TASK_KINDS = ("math", "code", *FAMILIES)
OBJECTIVES = ("primary", "format", "length", "control")
FORMAT_MARKERS = {"math": "The answer is", "code": "def ", "add": "The answer is", "mul": "Answer:"}
"""The format reward: the response must start with its task's marker."""
LENGTH_BUDGETS = {"math": (48, 64), "code": (64, 96), "add": (18, 20), "mul": (12, 14)}
"""The length reward: at most this many characters, and a digit in the response (so emptying it does not
pay); clients of a task alternate between the two budgets. ``The answer is 17.`` is 17 characters and
``Answer: 144.`` 12, so a fact family's auxiliaries are met together by its task's warm-up style."""
CONTROL_RATE = 0.5


@dataclass(frozen=True)
class MOAConfig(ValidatedConfig):
    preset: str = "cpu"
    model: str = "fedalign-base"
    method: str = "fedmoa"
    tasks: tuple = ("add", "mul")    # two task kinds, half the clients each (cpu: fact families, a stand-in)
    warmup_steps: int = 150          # format-only warm-up of the base (models/format_warmup.py); 0 = none
    num_clients: int = 8             # half on each task
    rounds: int = 5
    local_steps: int = 4
    prompts_per_step: int = 4
    group_size: int = 8              # G samples per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    lr: float = 3e-3                 # local Adam on the LoRA, fresh each round
    lora_r: int = 8
    lora_alpha: int = 16
    beta_kl: float = 0.04
    hyper_lr: float = 5.0            # gamma: step on the weight logits per unit of h [PROPOSAL: unknown;
                                     # 5 moves a weight by ~0.1 per step of consistent h 0.1]
    hypergradient: str = "scaled"    # h_m: "scaled" inner product (-> 0 as g_m vanishes), "cosine", or "raw"
    noise: float = 0.3               # probability that a noisy client's primary reward is flipped
    accuracy_source: str = "server"  # "server" validation set, or the client's own reward on its held-out prompts
    eval_prompts: int = 8            # math/code: held-out problems per task (fact families: the whole pool)
    val_prompts: int = 64            # per task, the server's validation set for accuracy-aware aggregation
    eval_every: int = 3              # evaluate at round 0, after every eval_every-th round and the last
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("method", self.method, METHODS)
        check_choice("accuracy_source", self.accuracy_source, ("server", "client"))
        check_choice("hypergradient", self.hypergradient, HYPERGRADIENTS)
        check_model_name(self.model)
        if len(self.tasks) != 2 or len(set(self.tasks)) != 2:
            raise ConfigError(f"tasks must be two different task kinds, got {self.tasks!r}")
        for task in self.tasks:
            check_choice("tasks", task, TASK_KINDS)
        self.check_numbers(integers=("num_clients", "rounds", "local_steps", "prompts_per_step", "group_size",
                                     "max_new_tokens", "lora_r", "lora_alpha", "eval_prompts", "val_prompts",
                                     "eval_every"),
                           positives=("temperature", "lr", "hyper_lr"), non_negatives=("beta_kl",))
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and not set(self.tasks) <= set(FAMILIES):
            raise ConfigError(f"warmup_steps > 0 needs fact-family tasks {list(FAMILIES)}, got tasks={self.tasks!r}")
        if self.num_clients < 4 or self.num_clients % 2:
            raise ConfigError(f"num_clients must be even and >= 4 (half on each task), got {self.num_clients}")
        if not 0 <= self.noise < 0.5:
            raise ConfigError(f"noise must be in [0, 0.5) (a flip probability), got {self.noise}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (GRPO normalises within a group), got {self.group_size}")

    @property
    def hyper(self) -> bool:
        return self.method in ("hyper_only", "fedmoa")

    @property
    def task_aware(self) -> bool:
        return self.method in ("agg_only", "fedmoa")


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=4, rounds=2, local_steps=2, prompts_per_step=1, group_size=2,
                  max_new_tokens=8, warmup_steps=2, val_prompts=2, eval_every=1),
    "cpu": {},
    "gpu": dict(model="smollm2-135m", tasks=("math", "code"), warmup_steps=0, rounds=20, max_new_tokens=96,
                eval_prompts=300, eval_every=5),
}


def get_preset(name: str, **overrides) -> MOAConfig:
    """The validated FedMOA preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return MOAConfig.from_preset(name, _PRESETS, **overrides)


# --------------------------------------------------------------------------------- clients, rewards --

@dataclass(frozen=True)
class Client:
    """A client's task and reward definitions (heterogeneous across clients)."""

    task: str
    format_marker: str      # the format reward: the response must start with this text
    max_chars: int          # the length reward: at most this many characters, and a digit in the response
    noisy: bool             # primary reward flipped with probability cfg.noise


def make_clients(cfg: MOAConfig) -> list[Client]:
    """Half the clients on each task; length budgets alternate within a task; the first client of each task
    has a noisy primary reward."""
    half = cfg.num_clients // 2
    return [Client(task, FORMAT_MARKERS[task], LENGTH_BUDGETS[task][i % 2], i == 0)
            for task in cfg.tasks for i in range(half)]


def make_task(task: str, rng: random.Random) -> dict:
    """``{"prompt", "answer" | ("entry_point", "tests")}``: a prompt of a fact family's closed pool, or a fresh
    math or code problem."""
    if task in FAMILIES:
        return rng.choice(fact_pool(task))
    return arithmetic_problem(rng) if task == "math" else code_task(rng)


def correctness(task: dict, kind: str, response: str) -> float:
    """1.0 when the answer is right (math, fact families) or the code passes every test (in the sandbox)."""
    if kind == "code":
        return run_tests(response, task["entry_point"], task["tests"], timeout_s=3.0, cpu_s=1).score
    value = parse_answer(response)
    return float(value is not None and abs(value - task["answer"]) < 1e-6)


def client_rewards(client: Client, task: dict, responses: list[str], rng: np.random.Generator, cfg: MOAConfig):
    """(N, 4) rewards (primary, format, length, control) under this client's definitions."""
    primary = np.array([correctness(task, client.task, r) for r in responses])
    if client.noisy:
        flip = rng.random(len(primary)) < cfg.noise
        primary = np.where(flip, 1.0 - primary, primary)
    fmt = np.array([float(r.startswith(client.format_marker)) for r in responses])
    length = np.array([float(len(r) <= client.max_chars and any(c.isdigit() for c in r)) for r in responses])
    control = (rng.random(len(responses)) < CONTROL_RATE).astype(float)
    return np.stack([primary, fmt, length, control], 1)


# ---------------------------------------------------------------------------------- the algorithm --

def objective_gradients(policy, tok, client: Client, rng_py: random.Random, rng: np.random.Generator,
                        cfg: MOAConfig):
    """One GRPO rollout of ``cfg.prompts_per_step`` prompts x G samples: ((M, d) ascent directions of each
    objective's advantage term, (d,) the ascent direction of the KL term (zeros without one), (N, M) rewards)."""
    tasks = [make_task(client.task, rng_py) for _ in range(cfg.prompts_per_step)]
    prompts = [t["prompt"] for t in tasks for _ in range(cfg.group_size)]
    roll = sample(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature)
    rewards = np.concatenate([client_rewards(client, t, roll.texts[i * cfg.group_size:(i + 1) * cfg.group_size], rng,
                                             cfg) for i, t in enumerate(tasks)])
    adv = group_advantages(torch.as_tensor(rewards, dtype=torch.float32), cfg.group_size)     # (N, M)
    logp = rollout_token_logps(policy, roll)
    mask = roll.response_mask.float()
    ref = None
    if cfg.beta_kl:
        with torch.no_grad(), policy.disable_adapter():       # the frozen base is the reference
            ref = rollout_token_logps(policy, roll)
    params = lora_parameters(policy)

    def ascent(loss):
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(-loss, params, retain_graph=True)])

    # the advantage terms alone, so a saturated objective's direction is exactly 0; the KL enters once
    grads = [ascent(grpo_loss(logp, logp.detach(), None, mask, adv[:, m])) for m in range(adv.shape[1])]
    kl = (ascent(grpo_loss(logp, logp.detach(), ref, mask, torch.zeros(len(adv)), beta_kl=cfg.beta_kl))
          if ref is not None else torch.zeros_like(grads[0]))
    return torch.stack(grads), kl, rewards


def equal_weights(cfg: MOAConfig):
    """FedAvg's fixed reward weights: w = 1/M at every step, no personal state."""

    def next_weights(logits: torch.Tensor, grads: torch.Tensor, previous) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, torch.full((len(OBJECTIVES),), 1.0 / len(OBJECTIVES))

    return next_weights


HYPERGRADIENTS = ("scaled", "cosine", "raw")


def hypergradient(primary: torch.Tensor, previous: torch.Tensor, form: str = "scaled") -> torch.Tensor:
    """(M,) h_m comparing the primary's current direction (d,) with each objective's previous one (M, d).

    ``"raw"``: <g_p, g_m> (the paper's form; its scale moves by orders of magnitude with rewards and model).
    ``"scaled"`` [choice]: <g_p / |g_p|, g_m> / mean_n |g_n|: free of the overall gradient scale, so gamma
    keeps its meaning, and still magnitude-aware across objectives: h_m -> 0 as objective m's gradient
    vanishes (a saturated objective). ``"cosine"``: cos(g_p, g_m), which stays O(1) for a vanishing g_m.
    """
    if form == "raw":
        return previous @ primary
    if form == "cosine":
        return torch.nn.functional.cosine_similarity(previous, primary.unsqueeze(0), dim=1, eps=1e-12)
    if form == "scaled":
        scale = previous.norm(dim=1).mean().clamp(min=1e-12)
        return previous @ (primary / primary.norm().clamp(min=1e-12)) / scale
    raise ValueError(f"hypergradient form={form!r} is not allowed; choose one of {list(HYPERGRADIENTS)}")


def hypergradient_weights(cfg: MOAConfig):
    """FedMOA's adaptive weights (docs/foundations.md §7): w = softmax(s), s moved by the hypergradient
    h_m comparing the primary's current gradient with objective m's previous one (:func:`hypergradient`)."""

    def next_weights(logits: torch.Tensor, grads: torch.Tensor, previous) -> tuple[torch.Tensor, torch.Tensor]:
        if previous is not None:
            h = hypergradient(grads[0], previous, cfg.hypergradient)
            logits = hypergradient_step(logits, h.double(), cfg.hyper_lr)
        return logits, torch.softmax(logits, 0)

    return next_weights


def make_client_update(policy, tok, clients: list[Client], cfg: MOAConfig):
    """FedMOA's client (module docstring), with the weight rule of ``cfg.method``. Personal state: the
    weight logits s and, for the hypergradient, the last step's gradients (kept across rounds)."""
    next_weights = hypergradient_weights(cfg) if cfg.hyper else equal_weights(cfg)
    params = lora_parameters(policy)

    def client_update(ctx) -> ClientUpdate:
        client = clients[ctx.client_id]
        set_adapter_state(policy, {k[len(f"{client.task}/"):]: v for k, v in ctx.global_state.items()
                                   if k.startswith(f"{client.task}/")})
        s = torch.as_tensor(ctx.personal_state.get("logits", [0.0] * len(OBJECTIVES)), dtype=torch.float64)
        rng_py, rng = random.Random(ctx.seed), np.random.default_rng(ctx.seed)
        previous = ctx.personal_state.get("previous_grads")
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        weights, compliance, all_equal = [], [], []
        for _ in range(cfg.local_steps):
            grads, kl, rewards = objective_gradients(policy, tok, client, rng_py, rng, cfg)
            s, w = next_weights(s, grads, previous)
            ascent = w.float() @ grads + kl
            for p, g in zip(params, torch.split(ascent, [p.numel() for p in params])):
                p.grad = -g.view_as(p)                      # Adam descends; the direction is an ascent
            optimizer.step()
            previous = grads
            weights.append(w.numpy())
            compliance.append(rewards.mean(0))               # the share of samples that meet each objective
            groups = rewards.reshape(-1, cfg.group_size, len(OBJECTIVES))
            all_equal.append((groups == groups[:, :1]).all(1).mean(0))   # groups with no spread: advantage 0
        metrics = {}
        for stat, values in (("w", weights), ("reward", compliance), ("all_equal", all_equal)):
            metrics.update({f"{stat}_{name}": float(v) for name, v in zip(OBJECTIVES, np.mean(values, 0))})
        if cfg.task_aware and cfg.accuracy_source == "client":   # its own (possibly noisy) reward on held-out prompts
            held = [make_task(client.task, random.Random(derive_seed(cfg.data_seed, ctx.client_id, 55, i)))
                    for i in range(cfg.eval_prompts)]
            texts = sample(policy, tok, [t["prompt"] for t in held], cfg.max_new_tokens, greedy=True).texts
            metrics["val_acc"] = float(np.mean([client_rewards(client, t, [r], rng, cfg)[0, 0]
                                                for t, r in zip(held, texts)]))
        upload = {f"{client.task}/{k}": v for k, v in get_adapter_state(policy).items()}
        personal = {"logits": s.tolist(), **({"previous_grads": previous} if cfg.hyper else {})}
        return ClientUpdate(upload, cfg.local_steps * cfg.prompts_per_step * cfg.group_size, metrics, personal)

    return client_update


def validation_tasks(cfg: MOAConfig, purpose: int) -> dict:
    """Fixed prompts per task (``purpose`` 0 = server validation, ``cfg.val_prompts`` each, 1 = evaluation).
    A fact family is evaluated on its whole closed pool [labelled: the RL objective itself; the family has no
    held-out facts] and validated on ``val_prompts`` of it; math and code draw fresh problems, disjoint streams."""
    rng = random.Random(derive_seed(cfg.data_seed, 77, purpose))
    if purpose == 1:
        return {t: fact_pool(t) if t in FAMILIES else [make_task(t, rng) for _ in range(cfg.eval_prompts)]
                for t in cfg.tasks}
    return {t: [make_task(t, rng) for _ in range(cfg.val_prompts)] for t in cfg.tasks}


@torch.no_grad()
def accuracy(policy, tok, tasks: list[dict], kind: str, cfg: MOAConfig) -> float:
    """Greedy pass@1 / exact-match accuracy of the current policy on ``tasks``."""
    texts = sample(policy, tok, [t["prompt"] for t in tasks], cfg.max_new_tokens, greedy=True).texts
    return float(np.mean([correctness(t, kind, r) for t, r in zip(tasks, texts)]))


def _with_weights_row(server_state: dict, updates: list, weights, num_clients: int) -> dict:
    """The server state with one more row of aggregation weights (``"agg_weights"``, (rounds, clients))."""
    row = torch.zeros(1, num_clients, dtype=torch.float64)
    for weight, u in zip(weights, updates):
        row[0, u.client_id] = weight
    previous = server_state.get("agg_weights")
    return {"agg_weights": row if previous is None else torch.cat([previous, row])}


def make_fedavg_aggregate(cfg: MOAConfig):
    """FedAvg over every client, whatever its task: both task models become the same average."""

    def aggregate(global_state: dict, updates: list, server_state: dict):
        lora = [{k.split("/", 1)[1]: v for k, v in u.upload.items()} for u in updates]
        n = np.array([u.num_samples for u in updates], dtype=np.float64)
        avg = weighted_average(lora, list(n))
        new = {f"{name}/{k}": v for name in cfg.tasks for k, v in avg.items()}
        return new, _with_weights_row(server_state, updates, n / n.sum(), cfg.num_clients)

    return aggregate


def make_accuracy_aware_aggregate(policy, tok, clients: list[Client], cfg: MOAConfig):
    """Task- and accuracy-aware aggregation (docs/fedmoa.md §3 [PROPOSAL]): within each task, weights
    n_i a_i with a_i the accuracy of client i's adapter on the server's validation set of its task
    (built on first use), or the client's own reported ``val_acc`` (``accuracy_source="client"``).
    The sender and its task come from the transport (``update.client_id``), never from the client."""
    server_val = {}

    def accuracies(lora: list, tasks: list[str], updates: list) -> np.ndarray:
        if cfg.accuracy_source == "client":
            return np.array([u.metrics["val_acc"] for u in updates])
        if not server_val:                     # built on the server's first aggregation only
            server_val.update(validation_tasks(cfg, 0))
        out = []
        for state, task in zip(lora, tasks):
            set_adapter_state(policy, state)
            out.append(accuracy(policy, tok, server_val[task], task, cfg))
        return np.array(out)

    def aggregate(global_state: dict, updates: list, server_state: dict):
        tasks = [clients[u.client_id].task for u in updates]
        lora = [{k.split("/", 1)[1]: v for k, v in u.upload.items()} for u in updates]
        n = np.array([u.num_samples for u in updates], dtype=np.float64)
        acc = accuracies(lora, tasks, updates)
        task_models, weights = {}, np.zeros(len(updates))
        for name in cfg.tasks:
            members = [i for i, x in enumerate(tasks) if x == name]
            w = n[members] * acc[members]
            w = w if w.sum() > 0 else n[members]          # nobody is right yet: plain FedAvg in the task
            weights[members] = w / w.sum()
            task_models[name] = weighted_average([lora[i] for i in members], list(w))
        new = {f"{name}/{k}": v for name, m in task_models.items() for k, v in m.items()}
        return new, _with_weights_row(server_state, updates, weights, cfg.num_clients)

    return aggregate


def make_evaluate(policy, tok, cfg: MOAConfig):
    """Global accuracy (theta_g = mean of the task models on every task) and personalized accuracy
    (each task's model on its own task), on held-out problems, greedy."""
    held = validation_tasks(cfg, 1)

    def evaluate(global_state: dict, round_: int, personal_states: dict) -> dict:
        tasks = cfg.tasks
        task_models = {t: {k[len(t) + 1:]: v for k, v in global_state.items() if k.startswith(f"{t}/")} for t in tasks}
        mean_model = weighted_average(list(task_models.values()), [1.0] * len(tasks))
        row = {}
        for t in tasks:
            set_adapter_state(policy, task_models[t])
            row[f"personal_acc/{t}"] = accuracy(policy, tok, held[t], t, cfg)
            same = all(torch.equal(mean_model[k], v) for k, v in task_models[t].items())
            if not same:                  # FedAvg's task models are the mean model: one evaluation serves both
                set_adapter_state(policy, mean_model)
            row[f"acc/{t}"] = row[f"personal_acc/{t}"] if same else accuracy(policy, tok, held[t], t, cfg)
        row["acc"] = float(np.mean([row[f"acc/{t}"] for t in tasks]))
        row["personal_acc"] = float(np.mean([row[f"personal_acc/{t}"] for t in tasks]))
        return row

    return evaluate


def make_check_update(clients: list[Client], global_state: dict, cfg: MOAConfig):
    """FedMOA's checks on arrival: the sender (as the transport knows it) uploads exactly its task's
    adapter, and a client-reported accuracy lies in [0, 1]."""

    def check_update(update: ClientUpdate) -> None:
        task = clients[update.client_id].task
        expected = sorted(k for k in global_state if k.startswith(f"{task}/"))
        if sorted(update.upload) != expected:
            raise PayloadError(f"client {update.client_id} must upload exactly its task's adapter ({len(expected)} "
                               f"'{task}/...' tensors), got {sorted(update.upload)[:3]}...")
        if cfg.task_aware and cfg.accuracy_source == "client" and not 0.0 <= update.metrics.get("val_acc", -1.0) <= 1.0:
            raise PayloadError(f"metric 'val_acc' (accuracy_source='client') must be in [0, 1], "
                               f"got {update.metrics.get('val_acc')!r}")

    return check_update


def federation(cfg: MOAConfig) -> Federation:
    """One FedMOA / ablation / FedAvg run (``cfg.method``) as a
    :class:`~fedalign_lite.federated.loop.Federation`; artifacts: the clients. Each client is sent only
    its task's model (what ``bytes_down`` counts)."""
    base, tok, _ = warmed_model(cfg.model, cfg.tasks, steps=cfg.warmup_steps)
    torch.manual_seed(cfg.seed)
    policy = add_lora(base, cfg.lora_r, cfg.lora_alpha)
    clients = make_clients(cfg)
    init = get_adapter_state(policy)
    global_state = {f"{t}/{k}": v for t in cfg.tasks for k, v in init.items()}
    aggregate = (make_accuracy_aware_aggregate(policy, tok, clients, cfg) if cfg.task_aware
                 else make_fedavg_aggregate(cfg))
    return Federation(make_client_update(policy, tok, clients, cfg), aggregate,
                      global_state, num_clients=cfg.num_clients, rounds=cfg.rounds, seed=cfg.seed,
                      evaluate_every=cfg.eval_every,
                      evaluate=lazy(lambda: make_evaluate(policy, tok, cfg)), fingerprint=cfg.fingerprint(),
                      download=lambda state, cid: {k: v for k, v in state.items()
                                                   if k.startswith(f"{clients[cid].task}/")},
                      check_update=make_check_update(clients, global_state, cfg), artifacts={"clients": clients})


def run(cfg: MOAConfig, *, run_dir=None, progress: bool = True):
    """One FedMOA / baseline run in this process; ``artifacts["clients"]``: the client table."""
    return federation(cfg).run(run_dir=run_dir, progress=progress)
