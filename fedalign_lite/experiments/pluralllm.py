"""The grid notebook 01 measures: PluralLLM (FedAvg of GPO) against the authors' centralized baseline
and a compute-matched one, on a labelled synthetic control whose groups come from known latent
opinions (the headline) and on the GSS survey (with GPO's option text and the option-distinguishing
fix); the paper's claims asked again of the fixed setting where federated GPO conditions (its own claims
file, ``claims_fixed.json``); the untrained baselines every method is compared with; the results table and
the claims. Also the longer measurement behind docs/pluralllm.md §9 (``python -m
fedalign_lite.experiments.pluralllm``): where the optimizer sits decides whether federated GPO learns to
condition."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fedalign_lite.algorithms import pluralllm
from fedalign_lite.algorithms.pluralllm import GroupData, PluralConfig, build_model, eval_splits, load_data, run_centralized
from fedalign_lite.experiments.claims import Claim, SignalCheck, evaluate, interval
from fedalign_lite.experiments.grid import git_commit, run_grid, write_results
from fedalign_lite.objectives.metrics import area_under_curve, js_distance, mean_std, steps_to_fraction
from fedalign_lite.seeding import derive_seed

METHODS = {"fl": "federated (FedAvg)", "central": "centralized (1 step / epoch)",
           "matched": "centralized, compute-matched"}
AXIS = {"fl": "rounds", "central": "epochs", "matched": "epochs"}
HEADLINE = "synthetic"
"""The headline claims use the synthetic control: on the GSS groups, conditioning is worth too little to test them."""
CONSTANT_LR_TMAX = 10**9
"""A cosine period far past any run: the rate stays at ``lr`` (to 1e-11), as for the server's Adam."""
FIXED = {"data": HEADLINE, "option_text": "option", "context_input": "relative", "server_optimizer": "adam",
         "server_bias_correction": True, "local_steps": 1, "lr": 1e-3, "cosine_tmax": CONSTANT_LR_TMAX,
         "fedavg_weights": "questions"}
"""[fixes, calibrated in notebook 01 section 11] The setting where federated GPO learns to condition within the
notebook's budget: Adam at the server with its bias correction, the option-distinguishing text and the relative
context input, one local step, a constant 1e-3 (the best of 3e-4 / 1e-3 / 2e-3 for centralized GPO)."""
FIXED_STEPS = {"smoke": 4, "cpu": 1250, "gpu": 1500}
"""Rounds (federated) or epochs (centralized) of one step each in the fixed setting, per preset."""
FIXED_EVALS = 10
"""Evaluations over a fixed run (every ``steps / FIXED_EVALS``), besides the initial model."""
VARIANTS = {**{m: (m, {"data": HEADLINE, "eval_every": 2}) for m in METHODS},
            "gss_fl": ("fl", {"data": "gss", "eval_every": 5}),
            "gss_fl_option": ("fl", {"data": "gss", "option_text": "option", "eval_every": 5}),
            "quirks_fixed": ("fl", {"data": HEADLINE, "eval_every": 2, "persistent_optimizer": False,
                                    "cosine_tmax": None, "fedavg_weights": "questions"}),
            "fixed_fl": ("fl", FIXED), "fixed_central": ("central", FIXED)}
"""Every run the notebook needs: ``name -> (method, overrides)``; the ``gss_`` runs show the real survey and
the option-text fix; ``quirks_fixed`` is the headline federated run with the code's three quirks fixed (first
seed only: :data:`SEED_COUNTS`); the ``fixed_`` runs (their length from :func:`variants`) are the paper's claims
asked of the setting where federated GPO conditions. The headline runs are evaluated every 2 rounds or epochs
and the GSS runs every 5 [choice: evaluation was a fifth of their cost; 2 rounds is finer than any convergence
difference we measured], so that the fixed runs fit in notebook 01's budget."""
SEED_COUNTS = {"quirks_fixed": 1, "gss_fl": 3, "gss_fl_option": 3}
"""Variants run on only their first n seeds [choice: the GSS runs test no claim; they show the real survey's
plateau and headroom, and 3 seeds of them keep notebook 01 within its budget]."""
RUN_SECONDS = {"fixed_fl": 77, "fl": 42, "quirks_fixed": 36, "gss_fl": 33, "gss_fl_option": 31, "fixed_central": 16,
               "matched": 13, "central": 6}
"""One run of each variant in the cpu preset, in seconds on one thread (measured once; a scheduling hint for
:func:`~fedalign_lite.experiments.grid.run_grid`, which starts the longest first)."""
PRIORS = ("uniform", "mean", "nearest", "ceiling")


def variants(cfg: PluralConfig) -> dict:
    """:data:`VARIANTS` with the fixed runs' length for ``cfg.preset`` (:data:`FIXED_STEPS`)."""
    steps = FIXED_STEPS[cfg.preset]
    length = {"rounds": steps, "central_epochs": steps, "eval_every": max(steps // FIXED_EVALS, 1)}
    return {name: (method, {**over, **length} if name.startswith("fixed_") else over)
            for name, (method, over) in VARIANTS.items()}


def data_config(cfg: PluralConfig, variant: str) -> PluralConfig:
    """``cfg`` with ``variant``'s overrides (its data and option text are what :func:`load_data` reads)."""
    return cfg.replace(**variants(cfg)[variant][1])


def run_method(method: str, cfg: PluralConfig) -> dict:
    """One run of ``method`` (``fl``, ``central``: one Adam step per epoch as the authors' code,
    ``matched``: ``local_steps`` steps per epoch): ``{"history", "client_log", "server", "state"}``."""
    data = load_data(cfg)
    if method == "fl":
        run = pluralllm.run(cfg, data, progress=False)
        return {"history": run.history, "client_log": run.client_log, "server": {},
                "state": run.artifacts["model"].state_dict()}
    history, model = run_centralized(cfg, data, 1 if method == "central" else cfg.local_steps, progress=False)
    return {"history": history, "client_log": [], "server": {}, "state": model.state_dict()}


def group_gradients_per_point(method: str, cfg: PluralConfig, num_train_groups: int) -> int:
    """Compute between two points of a curve, in group-gradients (one group's GPO loss, forward and
    backward): a round is every client's local steps; an epoch is 1 (``central``) or ``local_steps``
    (``matched``) steps on a batch of every training group."""
    steps = 1 if method == "central" else cfg.local_steps
    return num_train_groups * steps


def summarize(history: list[dict], per_point: int) -> dict:
    """Scalars of one run's evaluation curve (its evaluated rows; row 0 = the initial model).

    ``to_95``: first round/epoch whose AS reaches 95% of the run's best; ``compute_to_95``: the same in
    group-gradients (``per_point`` per round/epoch); ``to_95_gain``: first reaching 95% of the run's gain
    over the initial model; ``auc``: mean AS over the evaluated points; final values are the last row.
    """
    rows = [h for h in history if "as" in h]
    curve, rounds, last = [h["as"] for h in rows], [h["round"] for h in rows], rows[-1]
    to_95 = rounds[steps_to_fraction(curve, 0.95)]
    return {"alignment": last["as"], "best_alignment": max(curve), "fairness": last["fi_cv"], "jain": last["jain"],
            "worst_group": last["worst"], "to_95": to_95, "compute_to_95": to_95 * per_point,
            "to_95_gain": rounds[steps_to_fraction(curve, 0.95, relative_to_start=True)],
            "auc": area_under_curve(curve)}


def run_experiment(cfg: PluralConfig, seeds: list[int], workers: int = 2, progress: bool = True) -> dict:
    """Every variant of :data:`VARIANTS` for each seed (:func:`~fedalign_lite.experiments.grid.run_grid`).

    Returns ``{"data": {variant: GroupData}, "priors": {data name: {prior: AS}}, "records": {variant:
    [record per seed]}, "histories", "models": {variant: model of the first seed}, "summary": {variant:
    [summarize(history) per seed]}}``.
    """
    data = {v: load_data(data_config(cfg, v)) for v in VARIANTS}   # embeddings cached before any worker reads them
    records = run_grid(cfg, variants(cfg), seeds, run_one=run_method, workers=workers, progress=progress,
                       seed_counts=SEED_COUNTS, costs=RUN_SECONDS)
    out = {"data": data, "priors": {name: priors(data[v], data_config(cfg, v))
                                    for name, v in ((HEADLINE, "fl"), ("gss", "gss_fl"))},
           "records": records, "histories": {}, "models": {}, "summary": {}}
    for variant, runs in records.items():
        method = VARIANTS[variant][0]
        per_point = group_gradients_per_point(method, data_config(cfg, variant), len(data[variant].train_groups))
        out["histories"][variant] = [r["history"] for r in runs]
        out["summary"][variant] = [summarize(r["history"], per_point) for r in runs]
        model = build_model(data_config(cfg, variant), data[variant].x[0].shape[1])
        model.load_state_dict(runs[0]["state"])
        out["models"][variant] = model
    return out


def metrics_table(summary: dict) -> dict:
    """The notebook's ``metrics.json`` keys, each ``{"per_seed", "mean", "std", "n"}`` over seeds."""
    out = {}
    for variant, rows in summary.items():
        axis = AXIS[VARIANTS[variant][0]]
        for key in ("to_95", "to_95_gain"):
            out[f"{axis}_{key}_{variant}"] = mean_std([r[key] for r in rows])
        for key in ("compute_to_95", "alignment", "best_alignment", "fairness", "jain", "worst_group", "auc"):
            out[f"{key}_{variant}"] = mean_std([r[key] for r in rows])
    return out


# --------------------------------------------------------------------- baselines without training --

def prior_alignment(data: GroupData, cfg: PluralConfig, kind: str) -> float:
    """The alignment score of a predictor that needs no training, on the evaluation draws every method
    is scored on (:func:`~fedalign_lite.algorithms.pluralllm.eval_splits`):

    * ``"uniform"``: every option equally likely;
    * ``"mean"``: every target gets the mean distribution of the training groups (no conditioning);
    * ``"nearest"``: the training group whose answers are closest (mean JS distance) to the held-out
      group's on the draw's context questions answers for it (conditioning by lookup);
    * ``"ceiling"``: the group's own shares resampled (multinomial) at its respondent count: what a
      perfect model scores against shares measured with that much sampling noise (seeded by
      ``cfg.data_seed``; needs the records' ``counts``).

    ``nearest - mean`` is what conditioning on a group can be worth on this data.
    """
    train = data.train_groups
    rng = np.random.default_rng(derive_seed(cfg.data_seed, 104729))
    distances = []
    for group, context, targets in eval_splits(cfg, data.eval_groups, len(data.records)):
        if kind == "uniform":
            def predict(q):
                return np.full(len(data.records[q]["options"]), 1.0 / len(data.records[q]["options"]))
        elif kind == "mean":
            def predict(q):
                return np.mean([data.y[g][q].numpy() for g in train], 0)
        elif kind == "nearest":
            gaps = [np.mean([js_distance(data.y[g][q].numpy(), data.y[group][q].numpy())[0] for q in context])
                    for g in train]
            nearest = train[int(np.argmin(gaps))]

            def predict(q, nearest=nearest):
                return data.y[nearest][q].numpy()
        elif kind == "ceiling":
            def predict(q, group=group):
                n, shares = data.records[q]["counts"][group], data.y[group][q].double().numpy()
                return rng.multinomial(n, shares / shares.sum()) / n
        else:
            raise ValueError(f"kind must be one of {list(PRIORS)}, got {kind!r}")
        distances += [js_distance(predict(q), data.y[group][q].numpy())[0] for q in targets]
    return 1.0 - float(np.mean(distances))


def priors(data: GroupData, cfg: PluralConfig) -> dict:
    """``{kind: AS}`` for every kind of :func:`prior_alignment` (``ceiling`` only where counts exist)."""
    kinds = [k for k in PRIORS if k != "ceiling" or all("counts" in r for r in data.records)]
    return {k: prior_alignment(data, cfg, k) for k in kinds}


# ------------------------------------------------------------------------- claims and signal --

CONDITIONING_HEADROOM = 0.05
"""Signal: conditioning on the group must be worth at least this much alignment (nearest - mean prior)."""
FAIRNESS_MARGIN = 0.01
"""[choice] "about the same fairness" is tested as FI(FL) > FI(centralized) - 0.01 (a one-sided margin)."""

SIGNAL = [SignalCheck("fl_learns", "Federated GPO's alignment rises above its initial model's"),
          SignalCheck("conditioning_matters", f"Conditioning is worth >= {CONDITIONING_HEADROOM} alignment on the "
                                              f"headline data (nearest training group minus the mean of the training "
                                              f"groups)"),
          SignalCheck("fl_beats_prior", "Federated GPO beats the mean-of-training-groups prior")]
CLAIMS = [Claim("fl_vs_central", "FL aligns better than centralized (the authors' baseline)", "+4%",
                "AS(FL) - AS(centralized, 1 step/epoch), final"),
          Claim("fl_vs_matched", "FL aligns better than centralized (compute-matched)", "+4%",
                "AS(FL) - AS(centralized, 6 steps/epoch), final"),
          Claim("faster_than_central", "FL converges in fewer rounds than centralized epochs (authors' baseline)",
                "46% faster", "epochs - rounds to 95% of the run's best AS (a round = 48 group-gradients, "
                              "an epoch = 8)"),
          Claim("faster_than_matched", "FL converges in fewer rounds than centralized epochs (compute-matched)",
                "46% faster", "epochs - rounds to 95% of the run's best AS (48 group-gradients each)"),
          Claim("faster_compute_central", "FL converges with fewer gradient steps than centralized (authors' "
                "baseline)", "46% faster (counted in rounds)", "group-gradients to 95%: centralized - FL"),
          Claim("fairness_equal", "Fairness about equal to centralized", "nearly the same",
                f"FI(FL) - FI(centralized) + {FAIRNESS_MARGIN}")]


def signal_values(fl_curves: list[list[float]], prior: dict) -> list[tuple]:
    """:data:`SIGNAL` with its per-seed values, from federated GPO's evaluated AS curves (one per seed,
    entry 0 = the initial model) and the headline data's priors (:func:`priors`)."""
    return [(SIGNAL[0], [c[-1] - c[0] for c in fl_curves]),
            (SIGNAL[1], [prior["nearest"] - prior["mean"] - CONDITIONING_HEADROOM] * len(fl_curves)),
            (SIGNAL[2], [c[-1] - prior["mean"] for c in fl_curves])]


def claims_document(exp: dict, cfg: PluralConfig, seeds: list[int], wall_s: float) -> dict:
    """The notebook's ``claims.json`` (:mod:`~fedalign_lite.experiments.claims`) from
    :func:`run_experiment`'s output, on the headline data; per-seed values are paired (same evaluation
    draws). The priors of both data sets are kept under ``"priors"``."""
    summary, histories, prior = exp["summary"], exp["histories"], exp["priors"][HEADLINE]

    def fl_minus(other, key, sign=1.0, shift=0.0):
        return [sign * (a[key] - b[key]) + shift for a, b in zip(summary["fl"], summary[other])]

    signal = signal_values([[h["as"] for h in history if "as" in h] for history in histories["fl"]], prior)
    values = [fl_minus("central", "alignment"), fl_minus("matched", "alignment"),
              fl_minus("central", "to_95", -1.0), fl_minus("matched", "to_95", -1.0),
              fl_minus("central", "compute_to_95", -1.0),
              fl_minus("central", "fairness", 1.0, FAIRNESS_MARGIN)]
    doc = evaluate("pluralllm", cfg.replace(data=HEADLINE), seeds, wall_s, git_commit(), signal,
                   list(zip(CLAIMS, values)))
    doc["priors"] = exp["priors"]
    return doc


# ------------------------------------------------------ the optimizer's place, at a longer budget --

BUDGET_VARIANTS = {"fl_client_adam": ("fl", {}), "fl_server_adam": ("fl", {"server_optimizer": "adam"}),
                   "central": ("central", {})}
"""docs/pluralllm.md §9: FedAvg of client Adam models (the code's), client SGD with Adam at the server [fix],
and centralized Adam on 8-group batches; each takes one optimizer step per round or epoch."""


def conditioning_budget(cfg: PluralConfig, seeds: list[int], steps: int = 3000, every: int = 250,
                        workers: int = 2, progress: bool = True) -> dict:
    """Every :data:`BUDGET_VARIANTS` run for ``steps`` rounds or epochs of one step each, on the synthetic
    control, with a constant rate and equal FedAvg weights (so the three differ only in where Adam sits).

    Returns ``{"config", "priors", "rounds": evaluated rounds, "alignment": {variant: [curve per seed]},
    "fairness": {variant: [final FI per seed]}, "beats_mean_prior": {variant: interval of final AS -
    mean-of-groups prior}, "server_minus_central": interval of the paired final difference}``. About 3-5
    minutes per run at 3,000 steps on one thread.
    """
    base = cfg.replace(data=HEADLINE, local_steps=1, rounds=steps, central_epochs=steps, eval_every=every,
                       cosine_tmax=CONSTANT_LR_TMAX, fedavg_weights="questions")
    records = run_grid(base, BUDGET_VARIANTS, seeds, run_one=run_method, workers=workers, progress=progress)
    mean_prior = priors(load_data(base), base)
    out = {"config": base, "priors": mean_prior, **curves(records, {v: v for v in BUDGET_VARIANTS})}
    final = {v: [c[-1] for c in cs] for v, cs in out["alignment"].items()}
    return {**out, "beats_mean_prior": {v: interval([f - mean_prior["mean"] for f in fs]) for v, fs in final.items()},
            "server_minus_central": interval([a - b for a, b in zip(final["fl_server_adam"], final["central"])])}


def curves(records: dict, names: dict) -> dict:
    """Evaluated curves of one-step-per-round runs: ``{"rounds": evaluated rounds, "alignment": {name: [AS
    curve per seed]}, "fairness": {name: [final FI per seed]}}`` for ``records[variant]`` under
    ``names[variant]`` (the variants must share their evaluation rounds)."""
    first = records[next(iter(names))][0]["history"]
    return {"rounds": [h["round"] for h in first if "as" in h],
            "alignment": {key: [[h["as"] for h in r["history"] if "as" in h] for r in records[v]] for v, key in names.items()},
            "fairness": {key: [r["history"][-1]["fi_cv"] for r in records[v]] for v, key in names.items()}}


def fixed_budget(exp: dict) -> dict:
    """:func:`run_experiment`'s fixed runs in :func:`conditioning_budget`'s form (``fl_server_adam`` and
    ``central``), with the headline data's priors, for :func:`rounds_past_prior` and
    :func:`fixed_claims_document`."""
    return {"priors": exp["priors"][HEADLINE],
            **curves(exp["records"], {"fixed_fl": "fl_server_adam", "fixed_central": "central"})}


def rounds_past_prior(budget: dict, prior: str = "mean") -> dict:
    """When each :data:`BUDGET_VARIANTS` run first scores above the ``prior`` line, from a
    :func:`conditioning_budget` result (or the ``metrics`` of its JSON file).

    Returns ``{"first_round": {variant: [round per seed, None where it never does]}, "server_minus_central":
    interval of the paired difference in rounds (seeds where both cross)}``. Rounds are read at the
    evaluation grid (``every``), so each value is an upper bound within one grid step; both variants take
    one optimizer step per round or epoch, so rounds are also matched compute.
    """
    level = budget["priors"][prior]
    first = {v: [next((r for r, a in zip(budget["rounds"], curve) if a > level), None) for curve in curves]
             for v, curves in budget["alignment"].items()}
    pairs = [(a, b) for a, b in zip(first["fl_server_adam"], first["central"]) if a is not None and b is not None]
    return {"first_round": first, "server_minus_central": interval([a - b for a, b in pairs]) if pairs else None}


FIXED_SETTING = ("cpu, {rounds:,} one-step rounds: server Adam with bias correction, option text and relative "
                 "input [fixes]")
"""What the fixed runs' claims file names as its setting (not a preset of its own: notebook 01 runs it)."""
FIXED_CLAIMS = [
    Claim("fl_vs_central", "Federated GPO with server Adam [fixes] aligns better than centralized GPO", "+4%",
          "AS(FL) - AS(centralized), final, as many steps each (one step per round or epoch: the authors' "
          "baseline and the compute-matched one coincide)"),
    Claim("faster_than_central", "Federated GPO with server Adam [fixes] converges in fewer rounds than "
          "centralized epochs", "46% faster", "epochs - rounds to 95% of the run's best AS (8 group-gradients "
          "each)"),
    Claim("conditions_sooner", "Federated GPO with server Adam [fixes] passes the mean-of-groups line in fewer "
          "rounds than centralized epochs", "46% faster", "epochs - rounds to the first evaluation above the "
          "mean-of-groups prior (seeds where both cross)"),
    Claim("fairness_equal", "Fairness about equal to centralized", "nearly the same",
          f"FI(FL) - FI(centralized) + {FAIRNESS_MARGIN}")]


def fixed_claims_document(budget: dict, cfg: PluralConfig, seeds: list[int], wall_s: float, commit: str) -> dict:
    """The fixed setting's claims file (``figures/pluralllm/claims_fixed.json``) from :func:`fixed_budget`
    (or a :func:`conditioning_budget` result): the paper's claims asked of federated GPO with Adam at the
    server, paired by seed against centralized GPO at the same step count. Its signal checks are the
    notebook's, on the server-Adam runs."""
    fl, central = budget["alignment"]["fl_server_adam"], budget["alignment"]["central"]
    prior, rounds = budget["priors"], budget["rounds"]

    def to_95(curve):
        return rounds[steps_to_fraction(curve, 0.95)]

    signal = signal_values(fl, prior)
    fairness, crossing = budget["fairness"], rounds_past_prior(budget)["server_minus_central"]
    values = [[a[-1] - b[-1] for a, b in zip(fl, central)],
              [to_95(b) - to_95(a) for a, b in zip(fl, central)],
              [-d for d in crossing["per_seed"]] if crossing else None,
              [a - b + FAIRNESS_MARGIN for a, b in zip(fairness["fl_server_adam"], fairness["central"])]]
    # conditions_sooner has no value when no seed's runs both cross the line: it is left out, not invented
    claims = [(claim, v) for claim, v in zip(FIXED_CLAIMS, values) if v is not None]
    return evaluate("pluralllm", cfg, seeds, wall_s, commit, signal, claims,
                    setting=FIXED_SETTING.format(rounds=rounds[-1]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Where the optimizer sits (docs/pluralllm.md section 9): "
                                                 "federated GPO with client or server Adam, and centralized GPO")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="figures/pluralllm", help="folder for conditioning_budget.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = conditioning_budget(pluralllm.get_preset("cpu"), args.seeds, args.steps, workers=args.workers)
    cfg, wall_s = result.pop("config"), time.perf_counter() - start
    return write_results(Path(args.out) / "conditioning_budget.json", "pluralllm", cfg, args.seeds, wall_s, result)


if __name__ == "__main__":
    main()
