"""FIRM (Nourzad et al. 2025): federated multi-objective RLHF with in-client regularized MGDA.
[RECONSTRUCTION: only the abstract and figure captions are public; this follows PAPERS.md 3.3.]

    server: theta_0 (LoRA, B = 0); every round broadcast theta_t
    client i: theta = theta_t; for k = 1..K:
        sample B prompts x ~ D_i, responses y ~ pi_theta; rewards r_m = R_{i,m}(x, y)      (own reward models)
        A_m = r_m - V_{i,m}                       per-objective baseline (critic on a constant feature,
                                                  TD(0): V <- V + a_c (mean r_m - V))
        g_m = grad_theta mean_j A_{m,j} log pi_theta(y_j | x_j)           (REINFORCE with baseline)
        lambda = argmin_{simplex} 1/2 ||sum_m lambda_m g_m||^2 + beta/2 ||lambda - p||^2        (Eq. 3.3)
        theta <- theta + eta sum_m lambda_m g_m                          (ascent on both rewards)
      upload theta (one adapter, size d, whatever M is)
    server: theta_{t+1} = mean_i theta_i

``method="fedavg"``: lambda = p fixed (linear scalarization). ``method="fedcmoo"`` (FedCMOO-A, PAPERS.md
1.3 adapted [PROPOSAL]): phase 1, every client uploads one gradient per objective at theta_t; the
server estimates G^T G, runs FindWeights and broadcasts one w; phase 2, the first local step applies
the stored phase-1 gradients weighted by w, the other K-1 steps follow sum_m w_m g_m. No KL term to
a reference and no PPO clipping [choice: plain REINFORCE keeps one rollout per step].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.data.assets import asdiv, harmful_prompts, rotten_tomatoes, truthfulqa
from fedalign_lite.config import ValidatedConfig, check_model_name
from fedalign_lite.errors import ConfigError, check_choice
from fedalign_lite.federated.loop import ClientUpdate, Federation, client_metric
from fedalign_lite.objectives.metrics import cosine_disagreement, lambda_dispersion, update_dispersion
from fedalign_lite.objectives.mgda import fedcmoo_find_weights, mgda_weights
from fedalign_lite.federated.workers import map_processes
from fedalign_lite.models.causal_lm import add_lora, apply_lora_step, get_adapter_state, load_model, lora_parameters, set_adapter_state
from fedalign_lite.data.partition import partition_dirichlet, partition_iid
from fedalign_lite.models.rewards import REFERENCE, client_reward_models
from fedalign_lite.models.rollout import rollout_logps, sample

METHODS = ("firm", "fedcmoo", "fedavg")


@dataclass(frozen=True)
class FIRMConfig(ValidatedConfig):
    preset: str = "cpu"
    model: str = "fedalign-base"
    method: str = "firm"
    num_clients: int = 8
    rounds: int = 3
    local_steps: int = 2
    batch_size: int = 8              # prompts per local step, one response each
    max_new_tokens: int = 12
    temperature: float = 1.0
    lr: float = 1.0                  # local SGD step on the LoRA (ascent)
    lora_r: int = 4
    lora_alpha: int = 8
    beta: float = 0.05               # in-client regularization; 0 = plain local MGDA
    pref: float = 0.5                # p = (pref, 1 - pref) over (helpfulness, harmlessness)
    critic_lr: float = 0.5
    normalize: bool = True           # advantages divided by their batch std, per objective ("False": raw)
    partition: str = "dirichlet"     # over prompt categories
    alpha: float = 0.3
    same_rms: bool = False           # True: every client scores with the reference reward models
    prompts_per_client: int = 40
    eval_prompts: int = 16           # held-out, half harmful; the global policy answers greedily
    fedcmoo_lr: float = 1e-3         # FedCMOO FindWeights (its README defaults)
    fedcmoo_iters: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, ("smoke", "cpu", "gpu"))
        check_choice("method", self.method, METHODS)
        check_choice("partition", self.partition, ("dirichlet", "iid"))
        check_model_name(self.model)
        self.check_numbers(integers=("num_clients", "rounds", "local_steps", "batch_size", "max_new_tokens", "lora_r",
                                     "lora_alpha", "prompts_per_client", "eval_prompts", "fedcmoo_iters"),
                           positives=("temperature", "lr", "alpha", "critic_lr", "fedcmoo_lr"), non_negatives=("beta",))
        if not 0.0 <= self.pref <= 1.0:
            raise ConfigError(f"pref must be in [0, 1] (the weight of helpfulness in p), got {self.pref}")

    @property
    def p(self) -> np.ndarray:
        return np.array([self.pref, 1.0 - self.pref])


_PRESETS = {
    "smoke": dict(model="random-tiny", num_clients=3, rounds=2, local_steps=2, batch_size=3, max_new_tokens=6,
                  prompts_per_client=8, eval_prompts=6, fedcmoo_iters=50),
    "cpu": {},
    "gpu": dict(model="smollm2-135m", rounds=20, local_steps=4, batch_size=16, max_new_tokens=48,
                prompts_per_client=200, eval_prompts=128, lora_r=8, lora_alpha=16, lr=0.01),
}


def get_preset(name: str, **overrides) -> FIRMConfig:
    """The validated FIRM preset ``name`` (smoke, cpu, gpu) with ``overrides`` applied."""
    return FIRMConfig.from_preset(name, _PRESETS, **overrides)


# ------------------------------------------------------------------------------------------ data --

def alignment_prompts(seed: int = 0) -> list[dict]:
    """Benign (TruthfulQA, ASDiv, review requests) and harmful (do-not-answer) prompts, shuffled:
    ``[{"prompt", "category", "harmful"}]``; the category is the source, or the harm type."""
    rng = np.random.default_rng(seed)
    movies = sorted(set(rotten_tomatoes().movie))
    benign = ([{"prompt": r["question"], "category": "truthfulqa"} for r in truthfulqa()]
              + [{"prompt": r["question"], "category": "math"} for r in asdiv() if len(r["question"]) < 200]
              + [{"prompt": f"Write a review of the movie {m}.", "category": "reviews"} for m in movies])
    harm = [{"prompt": r["prompt"], "category": r["category"]} for r in harmful_prompts()]
    rows = [{**r, "harmful": False} for r in benign] + [{**r, "harmful": True} for r in harm]
    return [rows[i] for i in rng.permutation(len(rows))]


def client_prompts(cfg: FIRMConfig) -> tuple[list[list[dict]], list[dict]]:
    """(prompt pool per client, held-out prompts); Dirichlet(alpha) over categories or IID."""
    rows = alignment_prompts(cfg.seed)
    held = [r for r in rows if r["harmful"]][: cfg.eval_prompts // 2]
    held += [r for r in rows if not r["harmful"]][: cfg.eval_prompts - len(held)]
    rest = [r for r in rows if r not in held][: 4 * cfg.num_clients * cfg.prompts_per_client]
    if cfg.partition == "iid":
        parts = partition_iid(len(rest), cfg.num_clients, cfg.seed)
    else:
        parts = partition_dirichlet([r["category"] for r in rest], cfg.num_clients, cfg.alpha, cfg.seed,
                                    min_size=cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    return [[rest[i] for i in rng.permutation(p)[: cfg.prompts_per_client]] for p in parts], held


# ---------------------------------------------------------------------------------- the algorithm --

def objective_gradients(policy, tok, rows: list[dict], reward_model, baseline: np.ndarray, cfg: FIRMConfig,
                        rng: np.random.Generator):
    """Sample one response per prompt and return (per-objective gradients (M, d), rewards (B, M)).

    g_m = grad mean_j (r_{j,m} - V_m) log pi(y_j | x_j): REINFORCE with the per-objective baseline V,
    with the advantages divided by their batch std per objective when ``cfg.normalize``.
    """
    prompts = [r["prompt"] for r in rows]
    roll = sample(policy, tok, prompts, cfg.max_new_tokens, cfg.temperature)
    rewards = reward_model(prompts, roll.texts, [r["harmful"] for r in rows], rng)
    adv = rewards - baseline
    if cfg.normalize:   # [choice] reward scales differ by client and objective; unit-norm gradients instead
        adv = adv / (rewards.std(0) + 1e-4)   # would pin 2-objective MGDA at lambda = 1/2 (the bisector)
    adv = torch.as_tensor(adv, dtype=torch.float32)
    logp = rollout_logps(policy, roll)
    params = lora_parameters(policy)
    grads = []
    for m in range(adv.shape[1]):
        g = torch.autograd.grad((adv[:, m] * logp).mean(), params, retain_graph=m < adv.shape[1] - 1)
        grads.append(torch.cat([x.reshape(-1) for x in g]))
    return torch.stack(grads), rewards


def normalized_gram(grads: torch.Tensor) -> np.ndarray:
    """G G^T / mean_m ||g_m||^2 (M x M). [choice] beta then weighs against gradients of unit average size,
    whatever the reward scale; FedCMOO normalises its G^T G the same way before FindWeights."""
    gram = (grads @ grads.T).double().numpy()
    return gram / max(np.mean(np.sqrt(np.diag(gram))) ** 2, 1e-30)


def make_client_update(policy, tok, pools: list[list[dict]], rms: list, cfg: FIRMConfig):
    """FIRM's client (module docstring); FedCMOO-A's phase 2 reads w from ``ctx.broadcast`` and its own
    phase-1 gradients from ``ctx.phase1``."""

    def client_update(ctx) -> ClientUpdate:
        set_adapter_state(policy, ctx.global_state)
        pool, rm, ps = pools[ctx.client_id], rms[ctx.client_id], ctx.personal_state
        baseline = np.asarray(ps.get("baseline", [0.0, 0.0]), dtype=np.float64)
        rng = np.random.default_rng(ctx.seed)
        lams, rewards_seen = [], []
        start = 0
        if cfg.method == "fedcmoo":
            w = np.asarray(ctx.broadcast["w"], dtype=np.float64)
            grads = phase1_matrix(ctx.phase1)
            apply_lora_step(policy, torch.as_tensor(w, dtype=torch.float32) @ grads, cfg.lr)   # step 1: stored grads
            lams.append(w)
            start = 1
        for _ in range(start, cfg.local_steps):
            rows = [pool[i] for i in rng.choice(len(pool), cfg.batch_size, replace=False)]
            grads, rewards = objective_gradients(policy, tok, rows, rm, baseline, cfg, rng)
            if cfg.method == "firm":
                lam = mgda_weights(normalized_gram(grads), cfg.beta, cfg.p)
            elif cfg.method == "fedavg":
                lam = cfg.p
            else:
                lam = w
            apply_lora_step(policy, torch.as_tensor(lam, dtype=torch.float32) @ grads, cfg.lr)
            baseline = baseline + cfg.critic_lr * (rewards.mean(0) - baseline)     # TD(0) critic
            lams.append(lam)
            rewards_seen.append(rewards.mean(0))
        lam_mean = np.mean(lams, 0)
        metrics = {"lambda_help": float(lam_mean[0])}
        if rewards_seen:
            metrics.update(reward_help=float(np.mean(rewards_seen, 0)[0]), reward_harm=float(np.mean(rewards_seen, 0)[1]))
        return ClientUpdate(get_adapter_state(policy), len(pool), metrics, {"baseline": baseline.tolist()})

    return client_update


def make_fedcmoo_phase1(policy, tok, pools, rms, cfg: FIRMConfig):
    """FedCMOO-A phase 1, on the client: one gradient per objective at the broadcast model,
    ``{"g<m>": (d,)}``, from a fresh batch (RNG seeded from (seed, round, client, 1) by the loop)."""

    def phase1(ctx) -> dict:
        set_adapter_state(policy, ctx.global_state)
        rng = np.random.default_rng(ctx.seed)
        pool = pools[ctx.client_id]
        rows = [pool[i] for i in rng.choice(len(pool), cfg.batch_size, replace=False)]
        grads, _ = objective_gradients(policy, tok, rows, rms[ctx.client_id], np.zeros(2), cfg, rng)
        return {f"g{m}": g for m, g in enumerate(grads)}

    return phase1


def phase1_matrix(payload: dict) -> torch.Tensor:
    """(M, d): a phase-1 upload ``{"g0": (d,), "g1": (d,), ...}`` stacked in objective order."""
    return torch.stack([payload[f"g{m}"] for m in range(len(payload))])


def make_fedcmoo_combine(cfg: FIRMConfig):
    """FedCMOO-A phase 1, on the server: G^T G averaged over clients, FindWeights from last round's w
    (kept in the server state, as FedCMOO's code carries it), broadcast ``{"w": (M,)}``."""

    def combine(round_: int, payloads: dict, server_state: dict):
        grams = [(g @ g.T).double().numpy() for g in map(phase1_matrix, payloads.values())]
        w = fedcmoo_find_weights(np.mean(grams, 0), server_state.get("fedcmoo_w"), cfg.fedcmoo_lr, cfg.fedcmoo_iters)
        return {"w": w}, {**server_state, "fedcmoo_w": w}

    return combine


def make_payload_checks(num_params: int, objectives: int = 2):
    """FIRM's checks on arrival: lambda_help in [0, 1]; a phase-1 upload is exactly g0..g{M-1}, each (d,)."""
    from fedalign_lite.errors import PayloadError

    def check_update(update: ClientUpdate) -> None:
        lam = update.metrics.get("lambda_help")
        if lam is None or not 0.0 <= lam <= 1.0:
            raise PayloadError(f"metric 'lambda_help' must be in [0, 1], got {lam!r}")

    def check_phase1(payload: dict) -> None:
        expected = [f"g{m}" for m in range(objectives)]
        if sorted(payload) != expected:
            raise PayloadError(f"phase-1 upload keys must be {expected}, got {sorted(payload)}")
        for k, g in payload.items():
            if tuple(g.shape) != (num_params,):
                raise PayloadError(f"phase-1 upload {k!r} must have shape ({num_params},), got {tuple(g.shape)}")

    return check_update, check_phase1


def make_aggregate(cfg: FIRMConfig):
    """FedAvg of the adapters; also records the round's drift (PAPERS.md 3.4) in the server state:
    a row (D1 lambda dispersion, D2 update dispersion, D3 1 - mean cosine) per round."""

    def aggregate(global_state: dict, updates: list, server_state: dict):
        new_global, _ = aggregate_fedavg(global_state, updates, server_state)
        deltas = np.stack([torch.cat([(u.upload[k] - global_state[k]).reshape(-1) for k in global_state]).numpy()
                           for u in updates])
        lams = [[u.metrics["lambda_help"], 1 - u.metrics["lambda_help"]] for u in updates]
        row = torch.tensor([[lambda_dispersion(lams), update_dispersion(deltas), cosine_disagreement(deltas)]],
                           dtype=torch.float64)
        drift = server_state.get("drift")
        return new_global, {**server_state, "drift": row if drift is None else torch.cat([drift, row])}

    return aggregate


def make_evaluate(policy, tok, held: list[dict], cfg: FIRMConfig):
    """Mean reference helpfulness and harmlessness of the global policy's greedy answers on held-out prompts."""
    prompts, harmful = [r["prompt"] for r in held], [r["harmful"] for r in held]

    def evaluate(global_state: dict, round_: int, personal_states: dict) -> dict:
        set_adapter_state(policy, global_state)
        texts = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
        r = REFERENCE(prompts, texts, harmful)
        return {"help": float(r[:, 0].mean()), "harm": float(r[:, 1].mean())}

    return evaluate


def federation(cfg: FIRMConfig) -> Federation:
    """The run as a :class:`~fedalign_lite.federated.Federation` (in process or on Flower); its
    artifacts are the policy, the tokenizer and the held-out prompts."""
    base, tok = load_model(cfg.model, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = add_lora(base, cfg.lora_r, cfg.lora_alpha)
    pools, held = client_prompts(cfg)
    rms = client_reward_models(cfg.num_clients, cfg.same_rms, cfg.seed)
    init = get_adapter_state(policy)
    check_update, check_phase1 = make_payload_checks(sum(v.numel() for v in init.values()))
    two_phase = cfg.method == "fedcmoo"
    return Federation(make_client_update(policy, tok, pools, rms, cfg), make_aggregate(cfg), init,
                      num_clients=cfg.num_clients, rounds=cfg.rounds, seed=cfg.seed,
                      evaluate=make_evaluate(policy, tok, held, cfg), fingerprint=cfg.fingerprint(),
                      phase1=make_fedcmoo_phase1(policy, tok, pools, rms, cfg) if two_phase else None,
                      combine_phase1=make_fedcmoo_combine(cfg) if two_phase else None,
                      check_update=check_update, check_phase1=check_phase1,
                      artifacts={"policy": policy, "tokenizer": tok, "held": held})


def run(cfg: FIRMConfig, *, run_dir=None, progress: bool = True):
    """One FIRM / FedCMOO-A / FedAvg run; returns (FederatedRun, policy, tokenizer, held-out prompts)."""
    fed = federation(cfg)
    result = fed.run(run_dir=run_dir, progress=progress)
    policy = fed.artifacts["policy"]
    set_adapter_state(policy, result.global_state)
    return result, policy, fed.artifacts["tokenizer"], fed.artifacts["held"]


# ---------------------------------------------------------------------------------- experiment --

PREFS = (0.1, 0.3, 0.5, 0.7, 0.9)
VARIANTS = {"firm": {}, "firm_beta0": {"beta": 0.0}, "fedcmoo": {"method": "fedcmoo"}, "fedavg": {"method": "fedavg"},
            "same_rms": {"same_rms": True}, "iid": {"partition": "iid"},
            **{f"pref_{p}": {"pref": p} for p in PREFS if p != 0.5}}
"""Every run the notebook needs, as overrides of the preset (``firm`` is also the p = 0.5 Pareto point)."""


def _run_variant(cfg: FIRMConfig) -> dict:
    result, policy, tok, held = run(cfg, progress=False)
    prompts = [r["prompt"] for r in held]
    examples = sample(policy, tok, prompts, cfg.max_new_tokens, greedy=True).texts
    return {"history": result.history, "client_log": result.client_log,
            "drift": result.server_state["drift"].numpy(), "examples": list(zip(prompts, examples))}


def run_experiment(cfg: FIRMConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{variant: [result per seed]}`` for every entry of ``VARIANTS``, runs spread over ``workers`` processes."""
    jobs = [(name, seed) for seed in seeds for name in VARIANTS]
    results = map_processes(_run_variant, [cfg.replace(seed=s, **VARIANTS[n]) for n, s in jobs], workers, "runs",
                            progress)
    out = {}
    for (name, _), res in zip(jobs, results):
        out.setdefault(name, []).append(res)
    return out


def lambdas(result: dict) -> np.ndarray:
    """(rounds, clients) helpfulness weight of each client, mean over its local steps."""
    return client_metric(result["client_log"], "lambda_help")


def metrics_table(results: dict, cfg: FIRMConfig) -> dict:
    """The issue's ``metrics.json`` keys, each ``{"mean", "std", "n"}`` over seeds."""
    from scipy.stats import spearmanr

    from fedalign_lite.objectives.metrics import mean_std, total_variation

    col = lambda name, f: mean_std([f(r) for r in results[name]])  # noqa: E731
    curve = lambda r, k: [h[k] for h in r["history"]]  # noqa: E731
    final = lambda k: (lambda r: r["history"][-1][k])  # noqa: E731
    tv = lambda r: total_variation(curve(r, "help")) + total_variation(curve(r, "harm"))  # noqa: E731
    table = {"drift_beta0": col("firm_beta0", lambda r: r["drift"][:, 0].mean()),
             "drift_beta005": col("firm", lambda r: r["drift"][:, 0].mean()),
             "drift_d2_beta0": col("firm_beta0", lambda r: r["drift"][:, 1].mean()),
             "drift_d2_beta005": col("firm", lambda r: r["drift"][:, 1].mean()),
             "drift_d3_beta0": col("firm_beta0", lambda r: r["drift"][:, 2].mean()),
             "drift_d3_beta005": col("firm", lambda r: r["drift"][:, 2].mean()),
             "reward_tv_firm": col("firm", tv), "reward_tv_fedcmoo": col("fedcmoo", tv),
             "weight_std_firm": col("firm", lambda r: np.nanstd(lambdas(r))),
             "weight_std_fedcmoo": col("fedcmoo", lambda r: np.nanstd(lambdas(r)))}
    for name in ("firm", "fedcmoo", "fedavg", "firm_beta0", "same_rms", "iid"):
        key = {"firm_beta0": "beta0"}.get(name, name)
        table[f"final_help_{key}"] = col(name, final("help"))
        table[f"final_harm_{key}"] = col(name, final("harm"))
    runs_for = {p: results["firm" if p == 0.5 else f"pref_{p}"] for p in PREFS}
    table["pareto"] = [{"p": p, "help": mean_std([r["history"][-1]["help"] for r in rs]),
                        "harm": mean_std([r["history"][-1]["harm"] for r in rs])} for p, rs in runs_for.items()]
    seeds = range(len(results["firm"]))
    table["spearman_p_help"] = mean_std([spearmanr(PREFS, [runs_for[p][s]["history"][-1]["help"] for p in PREFS])[0]
                                         for s in seeds])
    per_client = lambda name: mean_std([np.mean([h["bytes_up"] / h["clients_ok"] for h in r["history"][1:]])  # noqa: E731
                                        for r in results[name]])
    table["bytes_up_per_round_firm"] = per_client("firm")
    table["bytes_up_per_round_fedcmoo"] = per_client("fedcmoo")
    return table
