"""FedMOA: reward definitions, the task- and accuracy-aware aggregation weights by hand, and the runs' bookkeeping."""
import numpy as np
import pytest
import torch

from fedalign_lite.algorithms import fedmoa as F
from fedalign_lite.data.fact_tasks import fact_pool, styled
from fedalign_lite.data.tasks import parse_answer
from fedalign_lite.errors import ConfigError
from fedalign_lite.experiments import fedmoa as X
from fedalign_lite.federated.loop import ClientUpdate
from fedalign_lite.models.causal_lm import load_model
from fedalign_lite.models.format_warmup import warmed_model
from fedalign_lite.objectives.grpo import grpo_loss

CFG = F.get_preset("smoke")


def test_clients_are_heterogeneous_with_one_noisy_client_per_task():
    clients = F.make_clients(F.get_preset("cpu"))
    assert [c.task for c in clients] == ["add"] * 4 + ["mul"] * 4
    assert [c.noisy for c in clients] == [True, False, False, False] * 2
    assert [c.max_chars for c in clients] == [18, 20, 18, 20, 12, 14, 12, 14]
    assert {c.format_marker for c in clients} == {"The answer is", "Answer:"}


def test_rewards_by_hand():
    client = F.Client("add", "The answer is", 18, noisy=False)
    task = {"prompt": "What is 9 plus 8?", "answer": 17}
    texts = ["9 + 8 = 17. The answer is 17.", "The answer is 17.", "The answer is 16.", "The answer is", ""]
    r = F.client_rewards(client, task, texts, np.random.default_rng(0), CFG)
    # primary, format (starts with the marker), length (<= 18 characters with a digit: emptying does not pay)
    assert r[:, :3].tolist() == [[1, 0, 0], [1, 1, 1], [0, 1, 1], [0, 1, 0], [0, 0, 0]]
    assert set(r[:, 3]) <= {0.0, 1.0}                    # the control: a coin flip, whatever the text
    code = F.Client("code", "def ", 40, noisy=False)
    task = {"prompt": "", "entry_point": "f", "tests": [(1, 2), (2, 4)]}
    r = F.client_rewards(code, task, ["def f(x):\n    return 2 * x", "def f(x):\n    return x"], np.random.default_rng(0), CFG)
    assert r[:, 0].tolist() == [1.0, 0.0] and r[:, 1].tolist() == [1.0, 1.0]


def test_noisy_primary_flips_and_the_control_is_a_fair_coin():
    client = F.Client("add", "Answer:", 40, noisy=True)
    task = {"prompt": "", "answer": 5}
    r = F.client_rewards(client, task, ["The answer is 5."] * 4000, np.random.default_rng(0), CFG.replace(noise=0.3))
    assert 1 - r[:, 0].mean() == pytest.approx(0.3, abs=0.03)
    assert r[:, 3].mean() == pytest.approx(F.CONTROL_RATE, abs=0.03)


def test_fact_pools_are_closed_and_styles_are_what_the_rewards_ask_for():
    add, mul = fact_pool("add"), fact_pool("mul")
    assert len(add) == 300 and len(mul) == 363 and len({p["prompt"] for p in add}) == 300
    assert {(p["a"], p["b"]) for p in add} == {(a, b) for a in range(10) for b in range(10)}
    fact = next(p for p in mul if p["a"] == 12 and p["b"] == 12)
    assert fact["answer"] == 144 and styled(fact, 143, "worked") == "12 * 12 = 143. The answer is 143."
    for task, style in (("add", "concise"), ("mul", "answer_first")):   # each task's style meets both auxiliaries
        client = F.Client(task, F.FORMAT_MARKERS[task], F.LENGTH_BUDGETS[task][0], noisy=False)
        text = styled(fact, 144, style)
        assert F.client_rewards(client, fact, [text], np.random.default_rng(0), CFG)[0, :3].tolist() == [1, 1, 1]


def test_format_warmup_teaches_the_models_own_numbers_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path))
    model, tok, info = warmed_model("random-tiny", ("add",), steps=2)
    assert info["pairs"] == 300 and len(info["losses"]) == 2
    again, _, info2 = warmed_model("random-tiny", ("add",), steps=2)        # read back from the cache
    assert info2 == info
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    base, _ = load_model("random-tiny")
    assert not torch.equal(base.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])


def test_format_warmup_bytes_do_not_depend_on_the_callers_threads(tmp_path, monkeypatch):
    states = []
    for threads, cache in ((2, "a"), (1, "b")):
        monkeypatch.setenv("FEDALIGN_CACHE", str(tmp_path / cache))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            states.append(warmed_model("random-tiny", ("mul",), steps=3)[0].state_dict())
        finally:
            torch.set_num_threads(previous)
        assert torch.get_num_threads() == previous
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_task_and_accuracy_aware_weights_by_hand(monkeypatch):
    cfg = CFG.replace(method="fedmoa")
    clients = F.make_clients(cfg)                       # 2 add, 2 mul
    accs = {0: 0.0, 1: 0.5, 2: 0.25, 3: 0.75}
    monkeypatch.setattr(F, "set_adapter_state", lambda policy, state: policy.__setitem__("cid", int(state["w"].item())))
    monkeypatch.setattr(F, "accuracy", lambda policy, tok, tasks, kind, cfg: accs[policy["cid"]])
    aggregate = F.make_accuracy_aware_aggregate({}, None, clients, cfg)
    # the loop sets client_id from the transport; the client sends no id or task of its own
    updates = [ClientUpdate({f"{c.task}/w": torch.tensor([float(i)])}, n, {}, client_id=i)
               for i, (c, n) in enumerate(zip(clients, [10, 10, 10, 30]))]
    new, state = aggregate({}, updates, {})
    # add: client 0 has accuracy 0 -> all weight on client 1; mul: n*a = 2.5 vs 22.5 -> 0.1 / 0.9
    assert state["agg_weights"][0].tolist() == pytest.approx([0.0, 1.0, 0.1, 0.9])
    assert new["add/w"].item() == pytest.approx(1.0) and new["mul/w"].item() == pytest.approx(0.1 * 2 + 0.9 * 3)
    own = F.make_accuracy_aware_aggregate({}, None, clients, cfg.replace(accuracy_source="client"))
    for u, a in zip(updates, [0.5, 0.5, 1.0, 0.0]):       # the clients' own (possibly noisy) accuracies
        u.metrics["val_acc"] = a
    _, state = own({}, updates, {})
    assert state["agg_weights"][0].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.0])
    fedavg = F.make_fedavg_aggregate(cfg.replace(method="fedavg"))
    new, state = fedavg({}, updates, {})
    assert state["agg_weights"][0].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert new["add/w"].item() == new["mul/w"].item() == pytest.approx((0 + 1 + 2 + 3 * 3) / 6)


@pytest.fixture(scope="module")
def runs():
    return {m: F.run(CFG.replace(method=m), progress=False) for m in ("fedavg", "fedmoa")}


def test_runs_log_weights_saturation_and_aggregation(runs):
    for run in runs.values():
        assert run.server_state["agg_weights"].shape == (CFG.rounds, CFG.num_clients)
        assert {"acc", "personal_acc", "acc/add", "acc/mul"} <= set(run.history[-1])
    assert [x["client_w_primary"] for x in runs["fedavg"].client_log] == pytest.approx([1 / 4] * len(runs["fedavg"].client_log))
    assert all(len(ps["logits"]) == 4 for ps in runs["fedmoa"].personal_states.values())
    # FedAvg's two task models are one average, so its global and personalized accuracies coincide
    assert runs["fedavg"].history[-1]["acc"] == runs["fedavg"].history[-1]["personal_acc"]


def test_each_client_downloads_and_uploads_its_task_adapter_plus_scalars(runs):
    run = runs["fedmoa"]
    per_task = sum(v.numel() * v.element_size() for k, v in run.global_state.items() if k.startswith("add/"))
    scalars = 8 * (1 + 3 * 4)                   # n_i; weight, compliance, all-equal share of 4 objectives
    assert run.history[1]["bytes_up"] == CFG.num_clients * (per_task + scalars)
    assert run.history[1]["bytes_down"] == CFG.num_clients * per_task    # its task's model, not both


@pytest.mark.parametrize("field,value,match", [
    ("method", "fedprox", "method='fedprox' is not allowed"),
    ("num_clients", 5, "num_clients must be even"),
    ("noise", 0.6, "noise must be in"),
    ("group_size", 1, "group_size must be >= 2"),
    ("accuracy_source", "oracle", "accuracy_source='oracle' is not allowed"),
    ("tasks", ("add", "add"), "tasks must be two different task kinds"),
    ("tasks", ("add", "division"), "tasks='division' is not allowed"),
    ("tasks", ("math", "code"), "warmup_steps > 0 needs fact-family tasks"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        F.get_preset("smoke", **{field: value})


@pytest.mark.parametrize("text,value", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", 72),
    ("He earns 1,200 + 50 = <<1200+50=1250>>1,250 dollars.\n#### 1,250", 1250),      # GSM8K, comma-formatted
    ("The total is 3 * 400,000 = 1,200,000.\n#### 1,200,000", 1_200_000),
    ("So the answer is 12,500.", 12500),
    ("The answer is -1,000.", -1000),
    ("I count 3,4,5 and then 6", 6),                     # a list, not a thousands separator
    ("2.5 + 1 = 3.5", 3.5),
    ("no number here", None),
])
def test_answer_parser_reads_markers_and_thousands_separators(text, value):
    assert parse_answer(text) == value


def test_hypergradient_forms_by_hand():
    primary = torch.tensor([3.0, 4.0])                                  # |g_p| = 5
    previous = torch.tensor([[3.0, 4.0], [0.0, 1e-9], [-4.0, 3.0]])     # aligned, vanishing, orthogonal
    scale = previous.norm(dim=1).mean()
    torch.testing.assert_close(F.hypergradient(primary, previous, "raw"), torch.tensor([25.0, 4e-9, 0.0]))
    torch.testing.assert_close(F.hypergradient(primary, previous, "scaled"), torch.tensor([5.0, 0.8e-9, 0.0]) / scale)
    cos = F.hypergradient(primary, previous, "cosine")
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(0.8)   # a vanishing gradient keeps an O(1) cosine
    assert F.hypergradient(primary, previous, "scaled")[1] < 1e-9           # ... the scaled form goes to 0 with it
    with pytest.raises(ValueError, match="form='dot' is not allowed"):
        F.hypergradient(primary, previous, "dot")


def test_advantage_directions_plus_kl_equal_one_grpo_gradient():
    """At ratio 1 the GRPO surrogate is linear in the advantages, so w @ (per-objective advantage directions)
    plus the KL direction added once is exactly the ascent direction of the weighted GRPO loss with its KL."""
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    feats = torch.randn(4, 3, 5)
    logp = torch.log_softmax(feats @ theta, -1)                  # (N=4, T=3) token log-probs with a graph to theta
    ref, mask = logp.detach() + 0.1 * torch.randn(4, 3), torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1.0]])
    adv, w = torch.randn(4, 3), torch.tensor([0.5, 0.3, 0.2])

    def ascent(loss):
        return torch.autograd.grad(-loss, theta, retain_graph=True)[0]

    parts = torch.stack([ascent(grpo_loss(logp, logp.detach(), None, mask, adv[:, m])) for m in range(3)])
    kl = ascent(grpo_loss(logp, logp.detach(), ref, mask, torch.zeros(4), beta_kl=0.04))
    whole = ascent(grpo_loss(logp, logp.detach(), ref, mask, adv @ w, beta_kl=0.04))
    torch.testing.assert_close(w @ parts + kl, whole)


def test_weight_slope_by_hand():
    """w_primary changes by 0.1 x the compliance of the round it changes in, plus 0.02: the slope is 0.1."""
    rng = np.random.default_rng(0)
    compliance = rng.random((5, 3))
    w = np.cumsum(np.vstack([np.full((1, 3), 0.25), 0.1 * compliance[1:] + 0.02]), 0)
    log = [{"status": "ok", "round": r + 1, "client": c, "client_w_primary": w[r, c]} for r in range(5) for c in range(3)]
    assert X.weight_slope_on({"client_log": log}, compliance) == pytest.approx(0.1)
    assert X.weight_slope_on({"client_log": log}, np.full((5, 3), 0.5)) == 0.0     # no spread in x: no slope
    # a trend every client shares (compliance and the change of w both fall with the round) is not a slope
    shared = np.repeat(np.linspace(1, 0, 5)[:, None], 3, 1)
    w = np.cumsum(np.vstack([np.full((1, 3), 0.25), 0.1 * shared[1:]]), 0)
    log = [{"status": "ok", "round": r + 1, "client": c, "client_w_primary": w[r, c]} for r in range(5) for c in range(3)]
    assert X.weight_slope_on({"client_log": log}, shared + 0.01 * rng.random((5, 3))) == pytest.approx(0.0, abs=1e-9)


def test_claims_document_from_smoke_runs(runs):
    """The claims machinery reads every key the runs log (smoke: 1 seed per method, so intervals are undefined)."""
    results = {m: [{**rec, "noisy": [c.noisy for c in F.make_clients(CFG)]}] for m, rec in
               ((m, X.run_record(runs[m if m in runs else "fedavg"])) for m in F.METHODS)}
    doc = X.claims_document(results, CFG, [0], 1.0)
    assert [s["id"] for s in doc["signal"]] == [c.id for c in X.signal_checks(CFG)]
    assert all(c["verdict"] == "no signal" for c in doc["claims"])
    assert set(X.metrics_table(results, CFG)) >= {"acc_fedmoa", "w_control_end", "all_equal_primary", "control_slope"}
