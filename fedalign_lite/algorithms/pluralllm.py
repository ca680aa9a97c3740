"""PluralLLM (Srewa, Zhao & Elmalaki 2025): FedAvg training of a GPO group-preference predictor.

Follows the authors' code ``MoSrewa/PluralLLM``@f4e4d9b as summarised in docs/pluralllm.md §4-6::

    server: theta_0 = GPO init; all 8 training groups are clients and take part every round
    for round r in 1..R:
        for each client g:                                   # docs/pluralllm.md §4
            load theta_r into g's model
            for e in 1..E (E = 6):                           # one minibatch per local "epoch"
                sample n_ctx, n_tar ~ U[.], disjoint random context / target questions of g
                loss = -sum_target log N(y | softmax_q(mean), std)        # GPO loss (docs/foundations.md §4)
                Adam step; cosine LR (T_max = 100) stepped every batch
            upload theta_g and n_g = options in the FIRST local batch (n_ctx + n_tar tokens)
        theta_{r+1} = sum_g n_g / sum n * theta_g            # FedAvg over every state_dict entry
    alignment score AS = 1 - mean JS distance on the 6 held-out groups (docs/pluralllm.md §6)

The code's quirks are reproduced by default, each with a flag that fixes it (docs/pluralllm.md §4):
1. ``persistent_optimizer=True``: the client Adam state and LR schedule persist across rounds
   (False: a fresh Adam every round).
2. ``cosine_tmax=100``: the cosine LR passes its minimum after ~17 rounds and oscillates
   (None: T_max = the run's total local steps, one annealing).
3. ``fedavg_weights="sampled"``: FedAvg weights are the random token counts of the first batch
   ("questions": each client's number of training questions).

``server_optimizer="adam"`` [fix, labelled; docs/pluralllm.md §9] moves Adam from the clients to the server:
clients take plain SGD steps at ``client_sgd_lr`` and the server applies FedAdam (Reddi et al. 2021) at ``lr``
to the averaged update (``server_bias_correction=True`` adds Adam's bias correction). With one client holding
one group, per-client Adam keeps federated GPO at the mean of the groups; with the optimizer at the server it
learns to condition.

The centralized baseline (docs/pluralllm.md §5) takes one Adam step per epoch on a batch of all 8 training
groups; ``steps_per_epoch=local_steps`` is the compute-matched variant (48 group-gradients per
epoch, as FedAvg's 8 clients x 6 steps per round).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fedalign_lite.config import MODELS, PRESETS, ValidatedConfig
from fedalign_lite.data.hub import load_global_opinions
from fedalign_lite.data.survey import (
    EVAL_GROUPS,
    LATENT_EVAL,
    LATENT_TRAIN,
    TRAIN_GROUPS,
    check_records,
    gss_opinions,
    latent_opinions,
)
from fedalign_lite.errors import ConfigError, check_choice, check_positive
from fedalign_lite.federated.aggregators import aggregate_fedavg, make_server_optimizer
from fedalign_lite.federated.loop import ClientUpdate, Federation, clone_state, load_state
from fedalign_lite.models.embeddings import OPTION_TEXTS, option_embeddings
from fedalign_lite.models.gpo import CONTEXT_INPUTS, GPO, LOSS_NORMS, gpo_loss, make_batch, sample_context_targets
from fedalign_lite.objectives.metrics import fairness, js_distance_segments
from fedalign_lite.seeding import derive_seed, seed_everything

# The paper's fixed country split (docs/pluralllm.md §2), used when the data is GlobalOpinionQA
GLOBALQA_TRAIN = ["Nigeria", "Egypt", "India (Current national sample)", "Germany", "United States",
                  "Canada", "Argentina", "Australia"]
GLOBALQA_EVAL = ["China", "Japan", "France", "Spain", "Brazil", "New Zealand"]
SERVER_OPTIMIZERS = ("none", "adam")
# FedAdam's constants for server_optimizer="adam" [choice]: torch Adam's betas and an epsilon-sized tau, so the
# server step is Adam's (without its bias correction, as Reddi et al.'s FedAdam, unless server_bias_correction) on
# the averaged client update; their tau = 1e-3 is for their update scale
SERVER_ADAM = dict(momentum=0.9, beta2=0.999, tau=1e-8)


@dataclass(frozen=True)
class PluralConfig(ValidatedConfig):
    """PluralLLM's hyperparameters (docs/pluralllm.md §8); question counts scale with the data set."""

    preset: str = "cpu"
    data: str = "gss"                 # "gss" (offline default), "synthetic" (latent opinions, a labelled control),
                                      # or a GlobalOpinionQA hub id / local file
    embedder: str = "minilm"          # "minilm" or a model name for mean-pooled hidden states (as GPO)
    option_text: str = "gpo"          # what is embedded per option: GPO's prompt; "option": question + option [fix]
    loss_norm: str = "authors"        # the authors' mean over all target slots; "per-group-sum"
    context_input: str = "share"      # what a context token carries: the share y (GPO's code); "relative": K y - 1 [fix]
    d_model: int = 128
    num_layers: int = 6
    nhead: int = 4
    dim_feedforward: int = 128
    emb_depth: int = 4
    rounds: int = 100
    local_steps: int = 6
    central_epochs: int = 100
    lr: float = 3e-4
    cosine_tmax: int | None = 100     # quirk 2; None = the run's total local steps
    persistent_optimizer: bool = True   # quirk 1
    fedavg_weights: str = "sampled"   # quirk 3; "questions" = training questions per client
    server_optimizer: str = "none"    # FedAvg of the clients' Adam models (code); "adam": client SGD + server FedAdam
                                      # at a constant ``lr`` [fix]; quirks 1-2 then have no client optimizer to act on
    client_sgd_lr: float = 1.0        # the clients' SGD rate under server_optimizer="adam" (the server's Adam
                                      # undoes its scale when local_steps=1)
    server_bias_correction: bool = False   # server_optimizer="adam" with Adam's bias correction [fix]: with one
                                           # local step it is then exactly centralized Adam; False = Reddi et al.
    data_split: float = 0.9           # first 90% of the questions (by key) train, as the code
    min_questions: int = 4            # context and target counts ~ U[int(min*split), int(max*split)];
    max_questions: int = 12           # the paper's 10 / 100 are for ~2,500 questions, ours has 25
    eval_context: int = 20            # context questions per held-out group at evaluation
    eval_draws: int = 10              # random context draws averaged per group [choice: the code draws once]
    eval_every: int = 1               # evaluate after every this many rounds / epochs (and after the last)
    data_seed: int = 0              # the data, its split over clients, the evaluation sets: fixed while
                                    # `seed` varies training and client sampling, so seeds are paired
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("fedavg_weights", self.fedavg_weights, ("sampled", "questions"))
        check_choice("option_text", self.option_text, OPTION_TEXTS)
        check_choice("loss_norm", self.loss_norm, LOSS_NORMS)
        check_choice("context_input", self.context_input, CONTEXT_INPUTS)
        check_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        if self.embedder not in ("minilm",) + MODELS and not self.embedder.startswith("hub:"):
            raise ConfigError(f"embedder={self.embedder!r} is not allowed; choose 'minilm', one of {list(MODELS)} "
                              f"or 'hub:<org>/<name>'")
        self.check_numbers(integers=("d_model", "num_layers", "nhead", "dim_feedforward", "rounds", "local_steps",
                                     "central_epochs", "min_questions", "max_questions", "eval_context",
                                     "eval_draws", "eval_every"), positives=("lr", "client_sgd_lr"))
        if self.cosine_tmax is not None:
            check_positive("cosine_tmax", self.cosine_tmax, integer=True)
        if self.server_bias_correction and self.server_optimizer != "adam":
            raise ConfigError(f"server_bias_correction=True needs server_optimizer='adam', got "
                              f"server_optimizer={self.server_optimizer!r}")
        if self.emb_depth < 2:
            raise ConfigError(f"emb_depth must be >= 2 (input and output layer), got {self.emb_depth}")
        if self.d_model % self.nhead:
            raise ConfigError(f"d_model={self.d_model} must be divisible by nhead={self.nhead}")
        if not 0 < self.data_split < 1:
            raise ConfigError(f"data_split must be in (0, 1), got {self.data_split}")
        if self.min_questions > self.max_questions:
            raise ConfigError(f"min_questions={self.min_questions} must be <= max_questions={self.max_questions}")


_PRESETS = {
    "smoke": dict(d_model=32, num_layers=2, dim_feedforward=32, rounds=3, local_steps=2, central_epochs=3,
                  eval_draws=2),
    "cpu": dict(d_model=64, dim_feedforward=64, num_layers=4),     # half the paper's width and depth
    "gpu": dict(embedder="smollm2-135m"),                             # the paper's sizes
}


def get_preset(name: str, **overrides) -> PluralConfig:
    """The validated PluralLLM preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return PluralConfig.from_preset(name, _PRESETS, **overrides)


# ------------------------------------------------------------------------------------------ data --

@dataclass
class GroupData:
    """The survey as tensors: for each group, per question, option embeddings x (options, D) and shares y."""

    records: list
    x: list                      # per question: (options, D) float32
    y: dict                      # group -> per question: (options,) float32
    train_groups: list
    eval_groups: list
    train_questions: list        # question indices the clients train on (first data_split, by key)

    def group(self, name: str) -> tuple[list, list]:
        return self.x, self.y[name]


def load_data(cfg: PluralConfig) -> GroupData:
    """Records, fixed train/eval groups and cached option embeddings for ``cfg.data``."""
    if cfg.data == "gss":
        records, train, held = gss_opinions(), TRAIN_GROUPS, EVAL_GROUPS
    elif cfg.data == "synthetic":
        records, train, held = latent_opinions(cfg.data_seed), LATENT_TRAIN, LATENT_EVAL
    else:
        records, train, held = load_global_opinions(cfg.data), GLOBALQA_TRAIN, GLOBALQA_EVAL
        # PluralLLM keeps the questions every one of its 14 countries answered (docs/pluralllm.md §2)
        records = [r for r in records if all(g in r["selections"] for g in train + held)]
    check_records(records, train + held, cfg.data)
    order = sorted(range(len(records)), key=lambda i: records[i].get("code", records[i]["question"]))
    records = [records[i] for i in order]
    x = option_embeddings(records, cfg.embedder, style=cfg.option_text)
    y = {g: [torch.tensor(r["selections"][g], dtype=torch.float32) for r in records] for g in train + held}
    n_train = int(len(records) * cfg.data_split)
    return GroupData(records, x, y, list(train), list(held), list(range(n_train)))


def question_counts(cfg: PluralConfig, rng: random.Random) -> tuple[int, int]:
    """(n_ctx, n_tar), each ~ U[int(min*split), int(max*split)] as PluralLLM's collate draws them."""
    lo, hi = int(cfg.min_questions * cfg.data_split), int(cfg.max_questions * cfg.data_split)
    return rng.randint(lo, hi), rng.randint(lo, hi)


def training_batch(data: GroupData, groups: list[str], cfg: PluralConfig, rng: random.Random):
    """One GPO batch: shared (n_ctx, n_tar), an independent question permutation per group."""
    n_ctx, n_tar = question_counts(cfg, rng)
    if n_ctx + n_tar > len(data.train_questions):
        raise ConfigError(f"max_questions={cfg.max_questions} draws up to {n_ctx + n_tar} questions per batch "
                          f"but only {len(data.train_questions)} training questions exist")
    splits = [sample_context_targets(data.train_questions, n_ctx, n_tar, rng) for _ in groups]
    return make_batch([data.group(g) for g in groups], [c for c, _ in splits], [t for _, t in splits])


def cosine_lr(base_lr: float, step: int, t_max: int) -> float:
    """CosineAnnealingLR's value after ``step`` scheduler steps (eta_min 0); periodic past t_max."""
    return base_lr * (1 + math.cos(math.pi * step / t_max)) / 2


def gpo_step(model: GPO, opt: torch.optim.Optimizer, batch, lr: float, loss_norm: str = "authors") -> float:
    """One step of ``opt`` (Adam; SGD under server_optimizer="adam") on the GPO loss at learning rate ``lr``;
    returns the loss before the step."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = gpo_loss(*model(batch), batch, loss_norm)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def make_adam(model: GPO, lr: float) -> torch.optim.Adam:
    """GPO's Adam (the authors' torch defaults), fused: the same update to float rounding (1.5e-8 after 20
    steps) at a quarter of the per-tensor loop's cost on GPO's 60 small tensors."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def build_model(cfg: PluralConfig, dim_x: int) -> GPO:
    torch.manual_seed(cfg.seed)
    return GPO(dim_x, cfg.d_model, cfg.emb_depth, cfg.dim_feedforward, cfg.nhead, cfg.num_layers,
               context_input=cfg.context_input)


# ---------------------------------------------------------------------------------- evaluation --

def eval_splits(cfg: PluralConfig, groups: list[str], num_questions: int) -> list[tuple[str, list, list]]:
    """(group, context questions, target questions) for every evaluation draw; the same every round and method."""
    out = []
    for gi, g in enumerate(groups):
        for d in range(cfg.eval_draws):
            rng = random.Random(derive_seed(cfg.data_seed, 7919, gi, d))
            ctx, tar = sample_context_targets(list(range(num_questions)), cfg.eval_context, num_questions, rng)
            out.append((g, ctx, tar))
    return out


@torch.no_grad()
def alignment(model: GPO, data: GroupData, groups: list[str], cfg: PluralConfig) -> dict:
    """Alignment score (docs/pluralllm.md §6) of ``model`` on ``groups``.

    For each group and each of ``eval_draws`` seeded draws, ``eval_context`` random questions are the
    context and every other question is a target; JSD = JS distance (natural log) between the
    predicted and true distribution of each target. Returns ``{"as": 1 - mean over all pooled JSDs,
    "as_by_group": {g: 1 - mean JSD of g}, "jsd": {(g, q): mean over draws}}``.
    """
    model.eval()
    draws = eval_splits(cfg, groups, len(data.records))
    batch = make_batch([data.group(g) for g, _, _ in draws], [c for _, c, _ in draws], [t for _, _, t in draws])
    probs, _ = model(batch)
    dist = js_distance_segments(probs.numpy(), batch.yt.squeeze(-1).numpy(), batch.tar_q.numpy())
    per_pair, per_group = {}, {g: [] for g in groups}
    for b, (g, _, tar) in enumerate(draws):
        for i, q in enumerate(tar):
            per_pair.setdefault((g, q), []).append(float(dist[b, i]))
            per_group[g].append(float(dist[b, i]))
    model.train()
    return {"as": 1 - float(np.mean([v for vs in per_group.values() for v in vs])),
            "as_by_group": {g: 1 - float(np.mean(v)) for g, v in per_group.items()},
            "jsd": {k: float(np.mean(v)) for k, v in per_pair.items()}}


@torch.no_grad()
def predict(model: GPO, data: GroupData, group: str, question: int, cfg: PluralConfig) -> np.ndarray:
    """The predicted distribution over ``question``'s options for ``group``, from the first eval draw's context."""
    model.eval()
    others = [q for q in range(len(data.records)) if q != question]
    rng = random.Random(derive_seed(cfg.data_seed, 7919, 10**6, question))   # a stream no eval draw uses
    ctx, _ = sample_context_targets(others, cfg.eval_context, 0, rng)
    probs, _ = model(make_batch([data.group(group)], [ctx], [[question]]))
    model.train()
    return probs[0].numpy()


def eval_row(model: GPO, data: GroupData, cfg: PluralConfig) -> dict:
    """Scalars logged per round / epoch: pooled AS, fairness indices and AS of each held-out group."""
    res = alignment(model, data, data.eval_groups, cfg)
    return {"as": res["as"], **fairness(list(res["as_by_group"].values())),
            **{f"as/{g}": v for g, v in res["as_by_group"].items()}}


# ----------------------------------------------------------------------------------- federated --

def _adam_state(opt: torch.optim.Adam, model: GPO) -> dict:
    """Adam's moments as named tensors, so they checkpoint with the client (quirk 1)."""
    out = {}
    for name, p in model.named_parameters():
        st = opt.state.get(p)
        if st:
            out.update({f"exp_avg/{name}": st["exp_avg"], f"exp_avg_sq/{name}": st["exp_avg_sq"],
                        f"step/{name}": st["step"]})
    return out


def _load_adam_state(opt: torch.optim.Adam, model: GPO, saved: dict) -> None:
    for name, p in model.named_parameters():
        if f"step/{name}" in saved:
            # ``saved`` is the loop's private copy of the client state, so no clone is needed
            opt.state[p] = {"step": saved[f"step/{name}"], "exp_avg": saved[f"exp_avg/{name}"],
                            "exp_avg_sq": saved[f"exp_avg_sq/{name}"]}


def make_client_update(model: GPO, data: GroupData, cfg: PluralConfig):
    """PluralLLM's client (docs/pluralllm.md §4): E local GPO steps on one group, FedAvg weight n_g."""
    t_max = cfg.cosine_tmax or cfg.rounds * cfg.local_steps

    sgd = cfg.server_optimizer == "adam"    # [fix] plain local steps; the server holds the only Adam
    # plain SGD keeps no state, so one optimizer serves every client
    client_sgd = torch.optim.SGD(model.parameters(), lr=cfg.client_sgd_lr) if sgd else None

    def client_update(ctx) -> ClientUpdate:
        group = data.train_groups[ctx.client_id]
        load_state(model, ctx.global_state)
        opt = client_sgd if sgd else make_adam(model, cfg.lr)
        personal = ctx.personal_state
        if cfg.persistent_optimizer and not sgd:
            _load_adam_state(opt, model, personal.get("adam", {}))
        step = int(personal.get("lr_step", 0))          # the client's scheduler counter persists (quirk 2)
        rng = random.Random(ctx.seed)
        losses, n_g = [], None
        for _ in range(cfg.local_steps):
            batch = training_batch(data, [group], cfg, rng)
            if n_g is None:                              # quirk 3: tokens of the FIRST local batch
                n_g = batch.yc.shape[1] + batch.yt.shape[1]
            lr = cfg.client_sgd_lr if sgd else cosine_lr(cfg.lr, step, t_max)
            losses.append(gpo_step(model, opt, batch, lr, cfg.loss_norm))
            step += 1
        if cfg.fedavg_weights == "questions":
            n_g = len(data.train_questions)
        keep_adam = cfg.persistent_optimizer and not sgd
        new_personal = {"lr_step": step, "adam": _adam_state(opt, model) if keep_adam else {}}
        return ClientUpdate(clone_state(model.state_dict()), n_g, {"loss": float(np.mean(losses))}, new_personal)

    return client_update


def federation(cfg: PluralConfig, data: GroupData | None = None) -> Federation:
    """FedAvg of GPO over the training groups as a :class:`~fedalign_lite.federated.loop.Federation`;
    ``data`` (from :func:`load_data`) saves reloading it. Artifacts: the model (the final global state
    after :meth:`~fedalign_lite.federated.loop.Federation.run`) and the data."""
    data = data or load_data(cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.x[0].shape[1])

    def evaluate(state: dict, round_: int, personal_states: dict) -> dict:
        load_state(model, state)
        return eval_row(model, data, cfg)

    aggregate = (make_server_optimizer("fedadam", lr=cfg.lr, bias_correction=cfg.server_bias_correction, **SERVER_ADAM)
                 if cfg.server_optimizer == "adam" else aggregate_fedavg)
    return Federation(make_client_update(model, data, cfg), aggregate, clone_state(model.state_dict()),
                      num_clients=len(data.train_groups), rounds=cfg.rounds, seed=cfg.seed, evaluate=evaluate,
                      evaluate_every=cfg.eval_every, fingerprint=cfg.fingerprint(), finish=model.load_state_dict,
                      artifacts={"model": model, "data": data})


def run(cfg: PluralConfig, data: GroupData | None = None, *, run_dir=None, progress: bool = True):
    """PluralLLM (FedAvg over the training groups) in this process; a FederatedRun whose
    ``artifacts["model"]`` holds the final global GPO. Round 0 = the initial model."""
    return federation(cfg, data).run(run_dir=run_dir, progress=progress)


# --------------------------------------------------------------------------------- centralized --

def run_centralized(cfg: PluralConfig, data: GroupData, steps_per_epoch: int = 1, progress: bool = True):
    """PluralLLM's centralized baseline (docs/pluralllm.md §5): all training groups in one batch per step.

    Returns (history, model); history has one row per epoch (epoch 0 = the initial model) with the
    mean training loss, and :func:`eval_row`'s metrics every ``cfg.eval_every`` epochs and at the last.
    """
    check_positive("steps_per_epoch", steps_per_epoch, integer=True)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.x[0].shape[1])        # the same init as the federated run [choice]
    opt = make_adam(model, cfg.lr)
    t_max = cfg.cosine_tmax or cfg.central_epochs * steps_per_epoch
    history = [{"round": 0, **eval_row(model, data, cfg)}]
    step = 0
    for epoch in tqdm(range(1, cfg.central_epochs + 1), desc="epochs", disable=not progress):
        rng = random.Random(derive_seed(cfg.seed, epoch, 10**6))
        losses = []
        for _ in range(steps_per_epoch):
            batch = training_batch(data, data.train_groups, cfg, rng)
            losses.append(gpo_step(model, opt, batch, cosine_lr(cfg.lr, step, t_max), cfg.loss_norm))
            step += 1
        evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.central_epochs
        history.append({"round": epoch, "client_loss": float(np.mean(losses)),
                        **(eval_row(model, data, cfg) if evaluated else {})})
    return history, model
