"""GPO, the alignment metrics and PluralLLM's FedAvg, against hand-computed cases and scipy."""
import json
import math
import random

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from fedalign_lite.algorithms import pluralllm as P
from fedalign_lite.data import survey
from fedalign_lite.errors import ConfigError, DataError
from fedalign_lite.experiments import pluralllm as experiment
from fedalign_lite.federated.aggregators import aggregate_fedavg
from fedalign_lite.federated.loop import Federation, run_federated
from fedalign_lite.models.embeddings import option_prompts
from fedalign_lite.models.gpo import GPO, GPOBatch, context_only_mask, gpo_loss, make_batch, segment_softmax
from fedalign_lite.objectives.metrics import area_under_curve, fairness, js_distance, js_distance_segments, steps_to_fraction

# ------------------------------------------------------------------------------------- GPO --

def test_context_only_mask_by_hand():
    expected = torch.tensor([[False, False, True], [False, False, True], [False, False, True]])
    assert torch.equal(context_only_mask(2, 1), expected)


def _toy_groups(num_q=4, options=(2, 3, 2, 3), dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(k, dim, generator=g) for k in options[:num_q]]
    y = [torch.softmax(torch.randn(k, generator=g), 0) for k in options[:num_q]]
    return x, y


def test_targets_see_the_context_only():
    torch.manual_seed(0)
    model = GPO(6, d_model=16, dim_feedforward=16, nhead=2, num_layers=2).eval()
    x, y = _toy_groups()
    base = model(make_batch([(x, y)], [[0, 1]], [[2, 3]]))[0]
    x2 = list(x)
    x2[3] = x[3] + 5.0                                 # another target question changes ...
    moved = model(make_batch([(x2, y)], [[0, 1]], [[2, 3]]))[0]
    assert torch.allclose(base[0, :2], moved[0, :2])   # ... question 2's prediction does not
    assert not torch.allclose(base[0, 2:], moved[0, 2:])
    y2 = list(y)
    y2[0] = y[0].flip(0)                               # the group's context answers do matter
    assert not torch.allclose(base, model(make_batch([(x, y2)], [[0, 1]], [[2, 3]]))[0])


def test_padding_does_not_change_predictions():
    torch.manual_seed(0)
    model = GPO(6, d_model=16, dim_feedforward=16, nhead=2, num_layers=2).eval()
    x, y = _toy_groups()
    alone = model(make_batch([(x, y)], [[0]], [[2]]))[0]            # 2 ctx tokens, 2 target tokens
    padded = model(make_batch([(x, y), (x, y)], [[0], [1]], [[2], [3]]))[0]   # row 0 padded to 3 + 3
    assert torch.allclose(alone[0], padded[0, :2], atol=1e-6)
    assert padded[0, 2] == 0                                          # a padded target gets no mass


def test_relative_context_input_is_k_y_minus_1():
    torch.manual_seed(0)
    share = GPO(6, d_model=16, dim_feedforward=16, nhead=2, num_layers=2).eval()
    relative = GPO(6, d_model=16, dim_feedforward=16, nhead=2, num_layers=2, context_input="relative").eval()
    relative.load_state_dict(share.state_dict())
    x, y = _toy_groups()
    batch = make_batch([(x, y), (x, y)], [[0, 1], [0]], [[2], [3]])   # row 1's context is padded
    k = torch.tensor([len(y[0])] * len(y[0]) + [len(y[1])] * len(y[1]), dtype=torch.float32)
    assert torch.equal(batch.ctx_options[0, :, 0], k) and batch.ctx_options[1, len(y[0]):].abs().sum() == 0
    by_hand = make_batch([(x, y), (x, y)], [[0, 1], [0]], [[2], [3]])
    by_hand.yc = torch.where(batch.ctx_pad.unsqueeze(-1), 0.0, batch.yc * batch.ctx_options - 1)
    assert torch.allclose(relative(batch)[0], share(by_hand)[0])
    uniform = [torch.full_like(v, 1 / len(v)) for v in y]              # a uniform answer carries 0
    flat = make_batch([(x, uniform)], [[0, 1]], [[2]])
    zero = make_batch([(x, uniform)], [[0, 1]], [[2]])
    zero.yc = torch.zeros_like(zero.yc)
    assert torch.allclose(relative(flat)[0], share(zero)[0], atol=1e-6)
    with pytest.raises(ValueError, match="context_input='raw' is not allowed"):
        GPO(6, context_input="raw")


def test_segment_softmax_by_hand():
    v = torch.tensor([[1.0, 2.0, 0.5, 0.5, 9.0]])
    seg = torch.tensor([[0, 0, 1, 1, -1]])
    e = math.exp(1) + math.exp(2)
    assert torch.allclose(segment_softmax(v, seg), torch.tensor([[math.exp(1) / e, math.exp(2) / e, .5, .5, 0]]))


def test_gpo_loss_by_hand():
    probs = torch.tensor([[0.3, 0.7, 0.0]])
    std = torch.tensor([[0.5, 2.0, 1.0]])
    batch = GPOBatch(torch.zeros(1, 1, 2), torch.zeros(1, 1, 1), torch.zeros(1, 3, 2),
                     torch.tensor([[[0.2], [0.8], [0.0]]]), torch.tensor([[0, 0, -1]]), torch.zeros(1, 1, dtype=bool))
    nll = lambda y, mu, s: 0.5 * math.log(2 * math.pi) + math.log(s) + (y - mu) ** 2 / (2 * s * s)  # noqa: E731
    real = nll(.2, .3, .5) + nll(.8, .7, 2.0)
    # the authors' code: the mean over all 3 target slots, the padded one counting as 0
    assert gpo_loss(probs, std, batch).item() == pytest.approx(real / 3, rel=1e-6)
    assert gpo_loss(probs, std, batch, "per-group-sum").item() == pytest.approx(real, rel=1e-6)
    with pytest.raises(ValueError, match="norm='sum' is not allowed"):
        gpo_loss(probs, std, batch, "sum")


# --------------------------------------------------------------------------------- metrics --

def test_js_distance_matches_scipy():
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        p, q = rng.dirichlet(np.ones(k), 20), rng.dirichlet(np.ones(k), 20)
        p[0, 0], p[0] = 0, p[0] / p[0].sum()        # a zero entry (0 log 0 = 0)
        ref = [jensenshannon(a, b) for a, b in zip(p, q)]
        assert js_distance(p, q) == pytest.approx(ref, abs=1e-12)
    assert js_distance([1, 0], [0, 1])[0] == pytest.approx(math.sqrt(math.log(2)))


def test_js_distance_segments_matches_scipy():
    rng = np.random.default_rng(1)
    parts = [rng.dirichlet(np.ones(k)) for k in (3, 2, 3)]
    truth = [rng.dirichlet(np.ones(k)) for k in (3, 2, 3)]
    p = np.concatenate(parts + [np.zeros(2)])[None]
    q = np.concatenate(truth + [np.zeros(2)])[None]
    seg = np.array([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1]])
    out = js_distance_segments(p, q, seg)
    assert out[0] == pytest.approx([jensenshannon(a, b) for a, b in zip(parts, truth)], abs=1e-12)


def test_alignment_score_is_one_minus_pooled_scipy_jsd():
    cfg = P.get_preset("smoke")
    data = _gss_data(cfg)
    model = P.build_model(cfg, data.x[0].shape[1])
    res = P.alignment(model, data, data.eval_groups, cfg)
    model.eval()
    pooled = []                                   # one unbatched forward per draw, scipy per target question
    for g, ctx, tar in P.eval_splits(cfg, data.eval_groups, len(data.records)):
        with torch.no_grad():
            probs = model(make_batch([data.group(g)], [ctx], [tar]))[0][0].numpy()
        sizes = np.cumsum([0] + [len(data.y[g][q]) for q in tar])
        pooled += [jensenshannon(probs[a:b], data.y[g][q].numpy()) for a, b, q in zip(sizes, sizes[1:], tar)]
    assert res["as"] == pytest.approx(1 - np.mean(pooled), abs=1e-6)
    assert len(pooled) == len(data.eval_groups) * cfg.eval_draws * (len(data.records) - cfg.eval_context)


def test_fairness_by_hand():
    f = fairness([0.8, 0.6])
    assert f["fi_cv"] == pytest.approx(1 - 0.1 / 0.7)
    assert f["jain"] == pytest.approx(1.96 / (2 * (0.64 + 0.36)))
    assert f["worst"] == 0.6
    assert fairness([0.7, 0.7, 0.7]) == pytest.approx({"fi_cv": 1.0, "jain": 1.0, "worst": 0.7})


def test_convergence_and_auc_by_hand():
    curve = [0.8, 0.85, 0.9, 1.0]
    assert steps_to_fraction(curve, 0.8) == 0
    assert steps_to_fraction(curve, 0.8, relative_to_start=True) == 3     # needs 0.96
    assert steps_to_fraction(curve, 0.5, relative_to_start=True) == 2     # needs 0.90
    assert area_under_curve([0.0, 1.0, 1.0]) == pytest.approx(0.75)


def test_cosine_lr_equals_torch_scheduler_past_its_period():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for step in range(250):
        assert P.cosine_lr(3e-4, step, 100) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


# -------------------------------------------------------------------------------------- data --

def _gss_data(cfg):
    return P.load_data(cfg)


def test_survey_file_is_what_the_builder_writes():
    records = survey.gss_opinions()
    assert records == json.loads(json.dumps(survey.build_gss_opinions()))
    assert len(records) >= 20
    groups = survey.TRAIN_GROUPS + survey.EVAL_GROUPS
    assert len(survey.TRAIN_GROUPS) == 8 and len(survey.EVAL_GROUPS) == 6 and len(set(groups)) == 14
    for r in records:
        assert set(r["selections"]) == set(groups)
        for g in groups:
            assert sum(r["selections"][g]) == pytest.approx(1.0)
            assert r["counts"][g] >= survey.MIN_RESPONDENTS


def test_no_group_leaks_between_clients_and_evaluation():
    data = _gss_data(P.get_preset("smoke"))
    assert not set(data.train_groups) & set(data.eval_groups)
    assert sorted(data.train_groups + data.eval_groups) == sorted(survey.TRAIN_GROUPS + survey.EVAL_GROUPS)


def test_survey_validation_names_the_problem(tmp_path):
    records = survey.gss_opinions()
    records[3]["selections"][survey.EVAL_GROUPS[0]] = [0.5, 0.6, 0.1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match="record 3.*sum to 1"):
        survey.gss_opinions(bad)


def test_global_opinions_schema_runs_through_the_same_code(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    countries = P.GLOBALQA_TRAIN + P.GLOBALQA_EVAL
    rows = []
    for i in range(24):
        k = 2 + i % 3
        sel = {c: (100 * rng.dirichlet(np.ones(k))).round(3).tolist() for c in countries}
        rows.append({"question": f"Survey question number {i}?", "options": str([f"option {j}" for j in range(k)]),
                     "selections": f"defaultdict(<class 'list'>, {sel!r})", "source": "GAS"})
    path = tmp_path / "goqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = P.get_preset("smoke", data=str(path), eval_context=10)
    data = P.load_data(cfg)
    assert data.train_groups == P.GLOBALQA_TRAIN and len(data.records) == 24
    run = P.run(cfg.replace(rounds=1), data, progress=False)
    assert 0 < run.history[-1]["as"] <= 1


# ------------------------------------------------------------------------------- federated --

def test_fedavg_weights_are_the_first_batch_token_counts():
    cfg = P.get_preset("smoke", rounds=1)
    data = _gss_data(cfg)
    model = P.build_model(cfg, data.x[0].shape[1])
    client_update = P.make_client_update(model, data, cfg)
    seen = {}

    def spy(ctx):
        first = P.training_batch(data, [data.train_groups[ctx.client_id]], cfg, random.Random(ctx.seed))
        upd = client_update(ctx)
        seen[ctx.client_id] = (upd, first.yc.shape[1] + first.yt.shape[1])
        return upd

    init = {k: v.clone() for k, v in model.state_dict().items()}
    run = run_federated(Federation(spy, aggregate_fedavg, init, num_clients=8, rounds=1), progress=False)
    assert all(upd.num_samples == tokens for upd, tokens in seen.values())
    total = sum(u.num_samples for u, _ in seen.values())
    key = "head.2.weight"
    expected = sum(u.upload[key].double() * u.num_samples / total for u, _ in seen.values())
    assert torch.allclose(run.global_state[key].double(), expected, atol=1e-6)
    assert len({u.num_samples for u, _ in seen.values()}) > 1      # random per client, not dataset sizes


def test_quirk_flags_change_what_they_say():
    cfg = P.get_preset("smoke", rounds=2)
    data = _gss_data(cfg)
    run = P.run(cfg, data, progress=False)
    assert run.personal_states[0]["adam"] and run.personal_states[0]["lr_step"] == 2 * cfg.local_steps
    fixed = P.run(cfg.replace(persistent_optimizer=False, fedavg_weights="questions"), data, progress=False)
    assert fixed.personal_states[0]["adam"] == {}
    assert {x["num_samples"] for x in fixed.client_log} == {len(data.train_questions)}
    assert fixed.history[-1]["client_loss"] != run.history[-1]["client_loss"]


def test_server_adam_clients_take_plain_sgd_steps_and_the_server_adams_their_average():
    """server_optimizer="adam" [fix]: each client's upload is one SGD step by hand; the new global state is
    FedAdam's first step on the average, theta + lr m / (sqrt(v) + tau) with m = 0.1 Delta, v = 0.001 Delta^2
    (Reddi et al.: no bias correction)."""
    cfg = P.get_preset("smoke", rounds=1, local_steps=1, server_optimizer="adam", client_sgd_lr=0.5,
                       fedavg_weights="questions")
    data = _gss_data(cfg)
    fed = P.federation(cfg, data)
    init = {k: v.clone() for k, v in fed.global_state.items()}
    model = P.build_model(cfg, data.x[0].shape[1])
    uploads = []

    def spy(ctx):
        model.load_state_dict(ctx.global_state)
        batch = P.training_batch(data, [data.train_groups[ctx.client_id]], cfg, random.Random(ctx.seed))
        model.zero_grad()
        gpo_loss(*model(batch), batch, cfg.loss_norm).backward()
        by_hand = {n: p.detach() - cfg.client_sgd_lr * p.grad for n, p in model.named_parameters()}
        upd = client_update(ctx)
        for n, expected in by_hand.items():
            assert torch.allclose(upd.upload[n], expected, atol=1e-6), n
        uploads.append(upd.upload)
        return upd

    client_update, fed.client_update = fed.client_update, spy
    run = fed.run(progress=False)
    assert len(uploads) == 8 and run.personal_states[0]["adam"] == {}
    for key in ("head.2.weight", "embedder.0.weight"):
        # the mean of the uploads, held in float32 as the weights are
        delta = (torch.stack([u[key].double() for u in uploads]).mean(0).float() - init[key]).double()
        step = cfg.lr * 0.1 * delta / ((0.001 * delta**2).sqrt() + P.SERVER_ADAM["tau"])
        moved = run.global_state[key].double() - init[key].double()
        # where Delta is near float32 rounding of the weights (~1e-9), Adam's normalisation amplifies the rounding
        clear = (delta.abs() > 1e-6) | (delta == 0)
        assert clear.float().mean() > 0.9
        assert torch.allclose(moved[clear], step[clear], atol=1e-6)
        assert moved.abs().max() <= cfg.lr * 0.1 / 0.001**0.5 + 1e-7
    # FedAvg of the same SGD steps moves by Delta itself, not Adam's normalised step
    plain = P.run(cfg.replace(server_optimizer="none"), data, progress=False)
    assert not torch.allclose(plain.global_state["head.2.weight"], run.global_state["head.2.weight"])


def test_eval_every_evaluates_less_often_and_trains_the_same():
    cfg = P.get_preset("smoke", rounds=5, central_epochs=5)
    data = _gss_data(cfg)
    every, sparse = P.run(cfg, data, progress=False).history, P.run(cfg.replace(eval_every=2), data, progress=False).history
    assert [h["round"] for h in sparse if "as" in h] == [0, 2, 4, 5]
    assert [h["as"] for h in sparse if "as" in h] == [every[r]["as"] for r in (0, 2, 4, 5)]
    central, _ = P.run_centralized(cfg, data, progress=False)
    central_sparse, _ = P.run_centralized(cfg.replace(eval_every=2), data, progress=False)
    assert [h["round"] for h in central_sparse if "as" in h] == [0, 2, 4, 5]
    assert central_sparse[-1]["as"] == central[-1]["as"]
    assert experiment.summarize(sparse, 48)["to_95"] in (0, 2, 4, 5)


def test_conditioning_budget_compares_where_adam_sits_on_the_same_draws():
    out = experiment.conditioning_budget(P.get_preset("smoke"), [0, 1], steps=4, every=2, workers=1, progress=False)
    assert out["rounds"] == [0, 2, 4] and out["config"].data == experiment.HEADLINE
    assert {v: [len(c) for c in cs] for v, cs in out["alignment"].items()} == {v: [3, 3] for v in experiment.BUDGET_VARIANTS}
    finals = {v: [c[-1] for c in cs] for v, cs in out["alignment"].items()}
    assert len({cs[0][0] for cs in out["alignment"].values()}) == 1          # one initial model for all three
    assert out["beats_mean_prior"]["central"]["per_seed"] == pytest.approx(
        [f - out["priors"]["mean"] for f in finals["central"]])
    assert out["server_minus_central"]["per_seed"] == pytest.approx(
        [a - b for a, b in zip(finals["fl_server_adam"], finals["central"])])
    assert finals["fl_server_adam"] != finals["fl_client_adam"]
    assert {v: len(f) for v, f in out["fairness"].items()} == {v: 2 for v in experiment.BUDGET_VARIANTS}


def test_fixed_claims_pair_server_adam_with_centralized_by_seed():
    budget = {"priors": {"mean": 0.5, "nearest": 0.6}, "rounds": [0, 10, 20, 30],
              "alignment": {"fl_client_adam": [[0.4, 0.45, 0.5, 0.49]] * 2,
                            "fl_server_adam": [[0.4, 0.45, 0.6, 0.62], [0.4, 0.52, 0.7, 0.7]],
                            "central": [[0.4, 0.55, 0.6, 0.6], [0.4, 0.45, 0.49, 0.6]]},
              "fairness": {"fl_client_adam": [0.2, 0.2], "fl_server_adam": [0.1, 0.3], "central": [0.15, 0.2]}}
    doc = experiment.fixed_claims_document(budget, P.get_preset("smoke"), [0, 1], 12.0, "abc")
    assert doc["preset"] == ("cpu, 30 one-step rounds: server Adam with bias correction, option text and relative "
                             "input [fixes]") and doc["model"] == "minilm"
    signal = {s["id"]: s["per_seed"] for s in doc["signal"]}
    assert signal["fl_learns"] == pytest.approx([0.22, 0.3]) and signal["fl_beats_prior"] == pytest.approx([0.12, 0.2])
    assert signal["conditioning_matters"] == pytest.approx([0.05, 0.05])     # 0.6 - 0.5 minus the 0.05 headroom
    claims = {c["id"]: c["per_seed"] for c in doc["claims"]}
    assert claims["fl_vs_central"] == pytest.approx([0.02, 0.1])
    # 95% of the best: seed 0, FL's 0.589 and centralized's 0.57 are first met at round 20; seed 1, at 20 and 30
    assert claims["faster_than_central"] == [0, 10]
    assert claims["conditions_sooner"] == [-10, 20]     # first above 0.5: FL 20 vs 10 epochs; 10 vs 30
    assert claims["fairness_equal"] == pytest.approx([0.1 - 0.15 + 0.01, 0.3 - 0.2 + 0.01])
    # two seeds 0.08 apart: t(1) = 12.7 puts 0 inside fl_learns's interval, so no claim gets a verdict
    assert [s["holds"] for s in doc["signal"]] == [False, True, False]
    assert {c["verdict"] for c in doc["claims"]} == {"no signal"}
    budget["alignment"]["central"] = [[0.4] * 4] * 2                    # never above the line: nothing to pair
    doc = experiment.fixed_claims_document(budget, P.get_preset("smoke"), [0, 1], 12.0, "abc")
    assert [c["id"] for c in doc["claims"]] == ["fl_vs_central", "faster_than_central", "fairness_equal"]


def test_fixed_runs_have_the_presets_length_and_read_as_a_budget():
    """The fixed variants run FIXED_STEPS[preset] one-step rounds or epochs with every fix on; the claims read
    their curves under conditioning_budget's names, with the headline data's priors."""
    cfg = P.get_preset("smoke")
    fixed = experiment.data_config(cfg, "fixed_fl")
    assert (fixed.rounds, fixed.central_epochs, fixed.local_steps) == (4, 4, 1)
    assert (fixed.server_optimizer, fixed.server_bias_correction, fixed.option_text, fixed.context_input) == (
        "adam", True, "option", "relative")
    assert experiment.data_config(cfg, "fl").rounds == cfg.rounds                 # the paper's runs keep theirs
    assert experiment.group_gradients_per_point("fl", fixed, 8) == 8
    history = [{"round": r, **({"as": 0.5 + r / 100, "fi_cv": 0.9} if r % 2 == 0 else {})} for r in range(5)]
    exp = {"priors": {experiment.HEADLINE: {"mean": 0.51}},
           "records": {"fixed_fl": [{"history": history}], "fixed_central": [{"history": history[:3]}]}}
    budget = experiment.fixed_budget(exp)
    assert budget["rounds"] == [0, 2, 4] and budget["priors"] == {"mean": 0.51}
    assert budget["alignment"] == {"fl_server_adam": [[0.5, 0.52, 0.54]], "central": [[0.5, 0.52]]}
    assert budget["fairness"] == {"fl_server_adam": [0.9], "central": [0.9]}


def test_rounds_past_prior_reads_the_first_evaluation_above_the_line_and_pairs_by_seed():
    budget = {"priors": {"mean": 0.5}, "rounds": [0, 10, 20, 30],
              "alignment": {"fl_client_adam": [[0.4, 0.45, 0.5, 0.49], [0.4, 0.6, 0.4, 0.4]],
                            "fl_server_adam": [[0.4, 0.45, 0.51, 0.6], [0.4, 0.52, 0.7, 0.7]],
                            "central": [[0.4, 0.55, 0.6, 0.6], [0.4, 0.45, 0.49, 0.9]]}}
    out = experiment.rounds_past_prior(budget)
    assert out["first_round"] == {"fl_client_adam": [None, 10],     # equal to the line is not above it
                                  "fl_server_adam": [20, 10], "central": [10, 30]}
    assert out["server_minus_central"]["per_seed"] == [10, -20]
    budget["alignment"]["central"][1] = [0.4] * 4                      # a seed that never crosses is left out
    assert experiment.rounds_past_prior(budget)["server_minus_central"]["per_seed"] == [10]


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_same_seed_same_numbers_and_centralized_runs():
    cfg = P.get_preset("smoke")
    data = _gss_data(cfg)
    a = P.run(cfg, data, progress=False)
    b = P.run(cfg, data, progress=False)
    assert _without_time(a.history) == _without_time(b.history)
    hist, _ = P.run_centralized(cfg, data, steps_per_epoch=2, progress=False)
    assert len(hist) == cfg.central_epochs + 1 and all(0 < h["as"] <= 1 for h in hist)


@pytest.mark.parametrize("field,value,match", [
    ("fedavg_weights", "size", "fedavg_weights='size' is not allowed"),
    ("embedder", "bert", "embedder='bert' is not allowed"),
    ("d_model", 30, "divisible by nhead"),
    ("data_split", 1.5, "data_split must be in"),
    ("cosine_tmax", 0, "cosine_tmax must be"),
    ("server_optimizer", "sgd", "server_optimizer='sgd' is not allowed"),
    ("client_sgd_lr", 0.0, "client_sgd_lr must be"),
    ("server_bias_correction", True, "server_bias_correction=True needs server_optimizer='adam'"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        P.get_preset("smoke", **{field: value})


def test_too_many_questions_per_batch_is_a_clear_error():
    cfg = P.get_preset("smoke", max_questions=40, min_questions=30)
    data = _gss_data(cfg)
    with pytest.raises(ConfigError, match="max_questions=40"):
        P.training_batch(data, data.train_groups[:1], cfg, random.Random(0))


def test_parallel_seeds_give_the_same_numbers_as_serial():
    cfg = P.get_preset("smoke", rounds=2, central_epochs=2)
    serial = experiment.run_experiment(cfg, [0, 1], workers=1, progress=False)
    parallel = experiment.run_experiment(cfg, [0, 1], workers=2, progress=False)
    assert serial["summary"] == parallel["summary"]
    assert experiment.metrics_table(serial["summary"])["alignment_fl"]["n"] == 2


def test_prior_baselines_by_hand():
    """A held-out group that answers exactly like training group 'a': the nearest-group prior is perfect,
    the mean-of-groups prior is off by the JS distance between a and the mean of a and b."""
    a, b = torch.tensor([0.8, 0.2]), torch.tensor([0.2, 0.8])
    records = [{"question": f"q{i}", "options": ["x", "y"], "code": f"q{i}"} for i in range(6)]
    data = P.GroupData(records, [torch.zeros(2, 3)] * 6, {"a": [a] * 6, "b": [b] * 6, "c": [a] * 6},
                       ["a", "b"], ["c"], list(range(5)))
    cfg = P.get_preset("smoke", eval_context=2, eval_draws=1)
    assert experiment.prior_alignment(data, cfg, "nearest") == pytest.approx(1.0)
    expected = 1 - jensenshannon([0.5, 0.5], [0.8, 0.2])
    assert experiment.prior_alignment(data, cfg, "mean") == pytest.approx(expected)
    assert experiment.prior_alignment(data, cfg, "uniform") == pytest.approx(expected)   # the mean of a, b is uniform


def test_sampling_ceiling_is_one_minus_the_resampling_noise():
    """Counts so large that a resample equals the shares give a ceiling of 1; small counts fall short of it,
    by the JS distance a multinomial resample at that count has on average."""
    a = torch.tensor([0.3, 0.7])
    records = [{"question": f"q{i}", "options": ["x", "y"], "code": f"q{i}", "counts": {"c": 10**9}} for i in range(6)]
    data = P.GroupData(records, [torch.zeros(2, 3)] * 6, {"a": [a] * 6, "c": [a] * 6}, ["a"], ["c"], list(range(5)))
    cfg = P.get_preset("smoke", eval_context=2, eval_draws=20)
    assert experiment.prior_alignment(data, cfg, "ceiling") == pytest.approx(1.0, abs=1e-3)
    for r in records:
        r["counts"] = {"c": 10}
    rng = np.random.default_rng(0)
    noise = np.mean([jensenshannon(rng.multinomial(10, [0.3, 0.7]) / 10, [0.3, 0.7]) for _ in range(20000)])
    assert 1 - experiment.prior_alignment(data, cfg, "ceiling") == pytest.approx(noise, rel=0.15)
    assert set(experiment.priors(data, cfg)) == {"uniform", "mean", "nearest", "ceiling"}


def test_latent_opinions_have_the_structure_they_claim():
    records = survey.latent_opinions(0)
    gss = survey.gss_opinions()
    assert [r["question"] for r in records] == [r["question"] for r in gss]
    assert all(r["source"].startswith("synthetic") for r in records)
    assert records == survey.latent_opinions(0) and records != survey.latent_opinions(1)   # seeded
    # every held-out group sits between two training groups on the latent circle
    z = records[0]["latent"]
    for g in survey.LATENT_EVAL:
        k = survey.LATENT_GROUPS.index(g)
        neighbours = {survey.LATENT_GROUPS[(k - 1) % 14], survey.LATENT_GROUPS[(k + 1) % 14]}
        assert neighbours <= set(survey.LATENT_TRAIN)
        assert np.hypot(*z[g]) == pytest.approx(1.0)
    # groups far apart on the circle answer differently; with strength 0 they answer alike (up to sampling)
    flat = survey.latent_opinions(0, strength=0.0)
    spread = [np.ptp([r["selections"][g][0] for g in survey.LATENT_GROUPS]) for r in records]
    spread_flat = [np.ptp([r["selections"][g][0] for g in survey.LATENT_GROUPS]) for r in flat]
    assert np.mean(spread) > 2 * np.mean(spread_flat)


def test_option_text_fix_separates_the_options():
    record = survey.gss_opinions()[0]
    faithful, fixed = option_prompts(record), option_prompts(record, "option")
    assert all(record["question"] in t for t in faithful + fixed)
    assert all("Options:" in t for t in faithful) and not any("Options:" in t for t in fixed)
    with pytest.raises(ValueError, match="style='bare' is not allowed"):
        option_prompts(record, "bare")


def test_server_bias_correction_makes_the_first_round_a_unit_adam_step():
    """server_bias_correction=True: Adam's corrected moments make the first step lr * sign(Delta) wherever Delta is
    clear of float32 rounding; without the correction it is (1 - b1) / sqrt(1 - b2) = 3.16 times longer."""
    cfg = P.get_preset("smoke", rounds=1, local_steps=1, server_optimizer="adam", server_bias_correction=True,
                       fedavg_weights="questions")
    data = _gss_data(cfg)
    init = {k: v.clone() for k, v in P.federation(cfg, data).global_state.items()}
    corrected = P.run(cfg, data, progress=False).global_state
    plain = P.run(cfg.replace(server_bias_correction=False), data, progress=False).global_state
    key = "head.2.weight"
    moved, moved_plain = (corrected[key] - init[key]).double(), (plain[key] - init[key]).double()
    clear = moved.abs() > 0.5 * cfg.lr          # elements whose gradient is not ~0 (some of the head's get none)
    assert clear.float().mean() > 0.5 and (clear | (moved.abs() < 1e-3 * cfg.lr)).all()
    # where |Delta| is not far above Adam's tau (1e-8) the step is shorter: the bulk is exactly lr
    unit = (moved[clear].abs() / cfg.lr - 1).abs() < 1e-3
    assert unit.float().mean() > 0.9 and (moved[clear].abs() <= cfg.lr * (1 + 1e-3)).all()
    ratio = moved_plain[clear][unit] / moved[clear][unit]
    assert torch.allclose(ratio, torch.full_like(ratio, 0.1 / 0.001**0.5), rtol=0.05)    # tau weighs more here
