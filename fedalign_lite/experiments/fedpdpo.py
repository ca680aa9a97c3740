"""The grid notebook 02 measures, and what it is checked with: every method in the IID, non-IID and
cross-domain settings (FedPDPO, local DPO, FedAvg-DPO, FedPer and FedPDPO's three ablations), the
accuracy per part (shared, personal) and client type, a greedy generation check of the personalized
models, and the claims."""
from __future__ import annotations

import random
import re

import numpy as np

from fedalign_lite.algorithms import fedpdpo as F
from fedalign_lite.algorithms.fedpdpo import METHODS, PDPOConfig
from fedalign_lite.data.chat import format_prompt
from fedalign_lite.data.client_preferences import DOMAINS, arithmetic_item, client_preference_pairs, client_types
from fedalign_lite.data.preference import tokenize_pair
from fedalign_lite.data.tasks import parse_answer
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate
from fedalign_lite.experiments.grid import git_commit, run_grid, run_record
from fedalign_lite.federated.loop import ClientContext
from fedalign_lite.objectives.metrics import mean_std
from fedalign_lite.seeding import derive_seed

INTRA = [("iid", "fedavg")] + [("noniid", m) for m in METHODS]
CROSS = [("cross", m) for m in ("local", "fedavg", "fedper", "fedpdpo")]
VARIANTS = {f"{setting}/{method}": ("fedpdpo", {"setting": setting, "method": method}) for setting, method in INTRA + CROSS}
"""``"<setting>/<method>"`` -> (algorithm, overrides)."""
PARTS = ("personal", "shared")
GENERATION_PROMPTS = 8
"""Per category (word problem, bare sum): the fixed prompts of the greedy generation check."""
_WORKED = re.compile(r"^\s*\d+ [-+*] \d+ =")


# ----------------------------------------------------------------------- before any method runs --

PILOT_RATES = (1e-3, 3e-3)


def local_pilot(cfg: PDPOConfig, rates=PILOT_RATES, steps: int = 40, every: int = 5) -> list[dict]:
    """Local DPO's learning curve on the first client of each type (non-IID data), before any method is
    compared: the personal part should take tens of steps and plateau below 1 (the 0.8 raters cap it), or
    it cannot separate methods. One row per (rate, type, step) with ``acc_personal`` and ``acc_shared`` on
    the client's held-out pairs; step 0 is the untrained model (every pair ties: 0.5)."""
    data = client_preference_pairs(cfg, "noniid")
    rows = []
    for lr in rates:
        for kind in ("A", "B"):
            client = data.types.index(kind)
            c = cfg.replace(method="local", lr=lr, local_steps=every)
            model, tok = F.build_model(c, METHODS["local"])
            train = [[tokenize_pair(tok, p) for p in data.train[client]]]
            held = [{part: [tokenize_pair(tok, p) for p in ps] for part, ps in data.held[client].items()}]
            update = F.make_client_update(model, train, tok.pad_token_id, c)
            evaluate = F.make_evaluate(model, held, tok.pad_token_id, c)
            personal = {}
            for k in range(steps // every + 1):
                if k:
                    personal = update(ClientContext(0, k, derive_seed(c.seed, k), {}, personal)).personal_state
                row = evaluate({}, k, {0: personal})
                rows.append({"lr": lr, "type": kind, "step": k * every,
                             **{f"acc_{part}": row[f"acc_{part}/0"] for part in PARTS}})
    return rows


# ---------------------------------------------------------------------------------- the grid --

def generation_items(cfg: PDPOConfig) -> list[dict]:
    """:data:`GENERATION_PROMPTS` word problems and as many bare sums, fixed by ``data_seed`` (not seen in training)."""
    rng = random.Random(derive_seed(cfg.data_seed, 99))
    items = {"word": [], "bare": []}
    while min(len(v) for v in items.values()) < GENERATION_PROMPTS:
        item = arithmetic_item(rng)
        if len(items[item["category"]]) < GENERATION_PROMPTS:
            items[item["category"]].append(item)
    return items["word"] + items["bare"]


def generation_check(model, tok, global_state: dict, personal_states: dict, types: list[str], cfg: PDPOConfig,
                     max_new_tokens: int = 24) -> dict:
    """Greedy answers of the first client of each type (its own personalized model: ``global_state`` plus
    its entry of ``personal_states``, the initial modules if none) to :func:`generation_items`:
    ``{type: {"worked_word", "worked_bare", "correct", "examples"}}``, the share of answers in the worked
    style per category, the share whose number is right, and the (prompt, answer) pairs."""
    model.eval()
    out = {}
    for kind in sorted(set(types)):
        model.load_shared(global_state)
        model.load_personal(personal_states.get(types.index(kind), {}))
        rows = []
        for item in generation_items(cfg):
            prompt_ids = tok(format_prompt(item["prompt"], tok))["input_ids"]
            text = tok.decode(model.greedy(prompt_ids, tok.eos_token_id, max_new_tokens), skip_special_tokens=True)
            rows.append((item, text))
        worked = {cat: float(np.mean([bool(_WORKED.match(t)) for it, t in rows if it["category"] == cat]))
                  for cat in ("word", "bare")}
        out[kind] = {"worked_word": worked["word"], "worked_bare": worked["bare"],
                     "correct": float(np.mean([parse_answer(t) == it["answer"] for it, t in rows])),
                     "examples": [(it["prompt"], t) for it, t in rows]}
    return out


def run_with_generation(algorithm: str, cfg: PDPOConfig) -> dict:
    """A run's record plus, in the intra-domain style settings, its :func:`generation_check`."""
    run = F.run(cfg, progress=False)
    record = run_record(run)
    if cfg.setting != "cross" and cfg.personal_task == "style":
        art = run.artifacts
        record["generation"] = generation_check(art["model"], art["tokenizer"], run.global_state, run.personal_states,
                                                art["types"], cfg)
    return record


def run_experiment(cfg: PDPOConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """``{"<setting>/<method>": [record per seed]}`` (:func:`~fedalign_lite.experiments.grid.run_grid`)."""
    return run_grid(cfg, VARIANTS, seeds, run_one=run_with_generation, workers=workers, progress=progress)


# ------------------------------------------------------------------------- reading the records --

def evaluated(record: dict) -> list[dict]:
    """The history rows that carry an evaluation (round 0, every ``eval_every``-th round, the last)."""
    return [h for h in record["history"] if "acc" in h]


def clients_of(cfg: PDPOConfig, kind: str, setting: str = "noniid") -> list[int]:
    """The clients of type ``kind`` in ``setting``."""
    return [c for c, t in enumerate(client_types(cfg, setting)) if t == kind]


def _mean_accuracy(row: dict, part: str | None, clients) -> float:
    return float(np.mean([row[f"acc/{c}"] if part is None else row[f"acc_{part}/{c}"] for c in clients]))


def part_accuracy(record: dict, part: str | None, clients) -> float:
    """Final mean held-out accuracy over ``clients`` on ``part`` (``None``: both parts)."""
    return _mean_accuracy(evaluated(record)[-1], part, clients)


def curve(record: dict, part: str | None, clients) -> tuple[list[int], list[float]]:
    """(rounds, accuracy) over the evaluated rounds, as :func:`part_accuracy`."""
    rows = evaluated(record)
    return [h["round"] for h in rows], [_mean_accuracy(h, part, clients) for h in rows]


def per_seed(results: dict, variant: str, part: str | None, clients) -> list[float]:
    """Final :func:`part_accuracy` of ``variant``, one value per seed."""
    return [part_accuracy(r, part, clients) for r in results[variant]]


def metrics_table(results: dict, cfg: PDPOConfig) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds (final round):
    ``acc_<setting>_<method>`` (all clients, both parts), ``acc_<setting>_<method>_<part>_<type>``, the
    cross-domain accuracy per domain, the bytes a client uploads per round, and the generation check."""
    types = {k: clients_of(cfg, k) for k in ("A", "B")}
    table = {}
    for setting, method in INTRA:
        variant = f"{setting}/{method}"
        table[f"acc_{setting}_{method}"] = mean_std(per_seed(results, variant, None, range(cfg.num_clients)))
        groups = {"A": range(cfg.num_clients)} if setting == "iid" else types     # IID: every client is type A
        for part in PARTS:
            for kind, clients in groups.items():
                table[f"acc_{setting}_{method}_{part}_{kind}"] = mean_std(per_seed(results, variant, part, clients))
    table["cross_domain"] = {d: {m: mean_std([evaluated(r)[-1][f"acc_{d}/{i}"] for r in results[f"cross/{m}"]])
                                 for _, m in CROSS} for i, d in enumerate(DOMAINS)}
    table["bytes_up_per_client_round"] = {m: float(results[f"noniid/{m}"][0]["history"][1]["bytes_up"]
                                                   / cfg.num_clients) for m in METHODS}
    table["generation"] = {v: {kind: {k: mean_std([r["generation"][kind][k] for r in recs])
                                      for k in ("worked_word", "worked_bare", "correct")}
                               for kind in recs[0]["generation"]}
                           for v, recs in results.items() if "generation" in recs[0]}
    return table


# ------------------------------------------------------------------------- claims and signal --

SIGNAL = [SignalCheck("iid_learns_personal", "Under IID, FedAvg-DPO's personal-part accuracy exceeds 0.5"),
          SignalCheck("iid_learns_shared", "Under IID, FedAvg-DPO's shared-part accuracy exceeds 0.5"),
          SignalCheck("conflict", "Under non-IID, FedAvg-DPO's personal-part accuracy differs between the majority "
                                  "(type A) and the minority (type B): the conflict personalization must resolve",
                      direction=0),
          SignalCheck("local_learns_A", "Local DPO's personal-part accuracy exceeds 0.5 on type-A clients"),
          SignalCheck("local_learns_B", "Local DPO's personal-part accuracy exceeds 0.5 on type-B clients")]
CLAIMS = [Claim("noniid_degrades", "Non-IID data degrade FedAvg-DPO on the same clients' own preferences",
                "degrades (Fig. 1)", "type-A clients, both parts: acc(IID) - acc(non-IID), FedAvg-DPO"),
          Claim("beats_fedavg", "FedPDPO beats FedAvg-DPO under non-IID", "up to +4.80 points",
                "acc(FedPDPO) - acc(FedAvg-DPO), all clients, both parts, final"),
          Claim("beats_local", "FedPDPO beats local DPO under non-IID", "up to +4.80 points",
                "acc(FedPDPO) - acc(local), all clients, both parts, final"),
          Claim("beats_fedavg_minority", "FedPDPO beats FedAvg-DPO on the minority (type B)", "personalization",
                "type-B clients, both parts: acc(FedPDPO) - acc(FedAvg-DPO)"),
          Claim("reward_head_pays", "Removing the reward head costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without reward head)"),
          Claim("adapter_pays", "Removing the bottleneck adapter costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without adapter)"),
          Claim("personal_head_pays", "Removing the personal head costs accuracy", "each component helps",
                "acc(FedPDPO) - acc(without personal head)"),
          Claim("cross_beats_fedavg", "FedPDPO beats FedAvg-DPO across domains", "up to +4.80 points",
                "mean over 3 domains: acc(FedPDPO) - acc(FedAvg-DPO)"),
          Claim("cross_beats_local", "FedPDPO beats local DPO across domains", "best of the methods (Fig. 4)",
                "mean over 3 domains: acc(FedPDPO) - acc(local)"),
          Claim("lora_only_upload", "A client uploads the LoRA adapter only", "communication-efficient",
                "bytes up per round: FedAvg-DPO (LoRA + head) - FedPDPO", by_construction=True)]


def claims_document(results: dict, cfg: PDPOConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` from :func:`run_experiment`'s records, paired by seed."""
    a, b, everyone = clients_of(cfg, "A"), clients_of(cfg, "B"), range(cfg.num_clients)
    domains = range(len(DOMAINS))

    def diff(x, y):
        return [p - q for p, q in zip(x, y)]

    def acc(variant, part=None, clients=everyone):
        return per_seed(results, variant, part, clients)

    signal = [(SIGNAL[0], [v - 0.5 for v in acc("iid/fedavg", "personal")]),
              (SIGNAL[1], [v - 0.5 for v in acc("iid/fedavg", "shared")]),
              (SIGNAL[2], diff(acc("noniid/fedavg", "personal", a), acc("noniid/fedavg", "personal", b))),
              (SIGNAL[3], [v - 0.5 for v in acc("noniid/local", "personal", a)]),
              (SIGNAL[4], [v - 0.5 for v in acc("noniid/local", "personal", b)])]
    values = [diff(acc("iid/fedavg", None, a), acc("noniid/fedavg", None, a)),
              diff(acc("noniid/fedpdpo"), acc("noniid/fedavg")),
              diff(acc("noniid/fedpdpo"), acc("noniid/local")),
              diff(acc("noniid/fedpdpo", None, b), acc("noniid/fedavg", None, b)),
              *[diff(acc("noniid/fedpdpo"), acc(f"noniid/{m}")) for m in ("no_reward_head", "no_adapter", "no_personal_head")],
              diff(acc("cross/fedpdpo", None, domains), acc("cross/fedavg", None, domains)),
              diff(acc("cross/fedpdpo", None, domains), acc("cross/local", None, domains)),
              [x["history"][1]["bytes_up"] - y["history"][1]["bytes_up"]
               for x, y in zip(results["noniid/fedavg"], results["noniid/fedpdpo"])]]
    return evaluate("fedpdpo", cfg, seeds, wall_s, git_commit(), signal, list(zip(CLAIMS, values)))
