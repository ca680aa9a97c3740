"""The Flower adapter: the same algorithm code through Flower messages gives the numbers of the
in-process loop. Fast tests serve the ClientApp from an in-process grid (:class:`LocalGrid`); the
``slow`` ones run Flower's own simulation runtime (Ray), as the issue asks."""
import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="Flower is the optional extra [flower]: pip install -e '.[flower]' "
                                   "(`make env`, which the README's test command runs, installs it)")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from fedalign_lite.algorithms import federation_from_run_config  # noqa: E402
from fedalign_lite.errors import ConfigError  # noqa: E402
from fedalign_lite.federated import flower  # noqa: E402
from fedalign_lite.federated.loop import FederatedRun  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import toy_algorithm as toy  # noqa: E402


class LocalGrid:
    """Flower's Grid, served in this process: node ``100 + i`` is a ClientApp call with its own
    persistent Context, as a SuperNode has; an exception becomes an error reply, as Flower sends."""

    def __init__(self, client_app, partition_ids, run_config=None):
        self.app = client_app
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, node_config={"partition-id": p},
                                          state=RecordDict(), run_config=dict(run_config or {}))
                         for i, p in enumerate(partition_ids)}
        self.sent = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            self.sent.append(m.metadata.message_type)
            try:
                replies.append(self.app(m, self.contexts[m.metadata.dst_node_id]))
            except Exception as e:  # noqa: BLE001
                replies.append(Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m))
        return replies


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """What Flower's runtime sets in a ServerApp process before ``main`` (messages read it)."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def serve(build, run_config=None, partition_ids=None):
    """(FederatedRun, grid): the ServerApp's main over a LocalGrid."""
    fed = flower.cached_federation(dict(run_config or {}), build)
    grid = LocalGrid(flower.make_client_app(build), partition_ids or range(fed.num_clients), run_config)
    box = []
    flower.make_server_app(build, box.append)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                            run_config=dict(run_config or {})))
    return box[0], grid


@pytest.fixture
def one_thread():
    """Flower's simulation actors run torch on one thread; the in-process reference must too."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def assert_same_run(flwr_run, ref, *, history=True):
    assert list(flwr_run.global_state) == list(ref.global_state)
    for k, v in ref.global_state.items():
        torch.testing.assert_close(flwr_run.global_state[k], v, rtol=1e-5, atol=1e-6, msg=k)
    if history:
        for a, b in zip(flwr_run.history, ref.history):
            assert a.keys() == b.keys()
            for k in a:
                if k != "seconds":
                    assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def bytes_up(run):
    return [h["bytes_up"] for h in run.history if h["round"] > 0]


# --------------------------------------------------------------------------------------- records --

def test_records_roundtrip_nested_states_without_pickle():
    state = {"adam": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}}, "losses": [0.5, 0.25],
             "logits": np.array([0.1, -0.2]), "step": 7, "name": "x", "grads": (torch.ones(4, dtype=torch.float64),)}
    content = RecordDict()
    flower.pack(content, "personal", state)
    back = flower.unpack(content, "personal")
    assert back["adam"][0]["exp_avg"].equal(state["adam"][0]["exp_avg"]) and back["step"] == 7
    assert back["losses"] == [0.5, 0.25] and back["name"] == "x" and back["grads"][0].dtype == torch.float64
    np.testing.assert_array_equal(back["logits"], state["logits"])
    assert flower.unpack(content, "missing", {"d": 1}) == {"d": 1}
    flat = {"b.w": torch.randn(3, 2), "a.w": torch.arange(4), "c": torch.randn(2, dtype=torch.float64)}
    got = flower.record_state(flower.state_record(flat))
    assert list(got) == list(flat) and all(got[k].equal(flat[k]) and got[k].dtype == flat[k].dtype for k in flat)


# ------------------------------------------------------------------------------- local grid, toy --

def test_toy_through_flower_messages_equals_in_process():
    got, grid = serve(lambda rc: toy.federation(3))
    ref = toy.run(3)
    assert_same_run(got, ref)
    assert got.personal_states == {0: {}, 1: {}, 2: {}}       # personal state stayed on the clients
    assert flower.unpack(grid.contexts[101].state, "personal") == {"steps": 9}
    assert grid.sent == ["query"] * 3 + ["train"] * 9
    assert bytes_up(got) == bytes_up(ref)


def test_a_raising_client_is_left_out_with_its_error():
    with pytest.warns(UserWarning, match="client 1 left out"):
        got, _ = serve(lambda rc: toy.federation(1, fail=(1,)))
    status = {r["client"]: r["status"] for r in got.client_log}
    assert "RemoteClientError" in status[1] and "simulated crash" in status[1] and status[0] == "ok"


def test_a_bad_payload_is_rejected_on_arrival():
    with pytest.warns(UserWarning, match="client 0 left out"):
        got, _ = serve(lambda rc: toy.federation(1, bad_shape=(0,)))
    assert "PayloadError" in {r["client"]: r["status"] for r in got.client_log}[0]


def test_partition_ids_must_be_exactly_the_clients():
    with pytest.raises(ConfigError, match=r"cover 0..2 \(num_clients\); missing \[2\]"):
        serve(lambda rc: toy.federation(1), partition_ids=[0, 1, 5])
    with pytest.warns(UserWarning, match="1 SuperNode"):
        got, grid = serve(lambda rc: toy.federation(1), partition_ids=[0, 1, 2, 3])
    assert grid.sent.count("train") == 3
    with pytest.raises(ConfigError, match="two SuperNodes have partition-id=1"):
        serve(lambda rc: toy.federation(1), partition_ids=[0, 1, 1])


def test_a_client_built_from_another_config_is_refused():
    server_fed = toy.federation(1)
    client_fed = toy.federation(1)
    client_fed.fingerprint = "other"
    grid = LocalGrid(flower.make_client_app(lambda rc: client_fed), range(3))
    with pytest.raises(ConfigError, match="built config other"):
        flower.make_server_app(lambda rc: server_fed)(grid, Context(1, 0, {}, RecordDict(), {}))


@pytest.mark.parametrize("rc, match", [({"algorithm": "fedsgd"}, "algorithm='fedsgd' is not registered"),
                                       ({"algorithm": "firm", "preset": "huge"}, "preset"),
                                       ({"algorithm": "firm", "learning-rate": 1.0}, "unknown config field")])
def test_bad_run_config_names_the_key(rc, match):
    with pytest.raises(ConfigError, match=match):
        federation_from_run_config(rc)


# --------------------------------------------------------------------- local grid, the algorithms --

@pytest.mark.slow
@pytest.mark.parametrize("rc", [{"algorithm": "fedcmoo-a", "rounds": 1},
                                {"algorithm": "fedpdpo", "method": "fedpdpo", "setting": "noniid", "num_clients": 3},
                                {"algorithm": "fedmoa", "accuracy_source": "client"},
                                {"algorithm": "pluralllm", "persistent_optimizer": True}],
                         ids=["fedcmoo-phase1-records", "fedpdpo-personal-state", "fedmoa-client-accuracies",
                              "pluralllm-adam-state"])
def test_algorithm_payloads_travel_as_records(rc, one_thread):
    """FedCMOO-A's per-objective gradients (train.phase1), FedPDPO's personal modules (context.state over
    2 rounds), FedMOA's accuracies and weight logits, and PluralLLM's persistent Adam moments give the
    in-process numbers."""
    rc = {"preset": "smoke", **rc}
    build = federation_from_run_config
    with pytest.warns(UserWarning, match="skips evaluation") if rc["algorithm"] == "fedpdpo" else nullcontext():
        got, grid = serve(build, rc)
    flower._BUILT.clear()
    ref = federation_from_run_config(rc).run(progress=False)
    assert_same_run(got, ref, history=rc["algorithm"] != "fedpdpo")
    assert bytes_up(got) == bytes_up(ref)
    if rc["algorithm"] == "fedcmoo-a":
        assert grid.sent.count("train.phase1") == 3
        np.testing.assert_array_equal(got.server_state["fedcmoo_w"], ref.server_state["fedcmoo_w"])


# ------------------------------------------------------------------- Flower's simulation runtime --

SIMULATE = """
import json, sys
from safetensors.torch import save_file
from fedalign_lite.algorithms import federation_from_run_config
from fedalign_lite.federated import flower
run = flower.simulate(json.loads(sys.argv[1]), federation_from_run_config)
save_file({k: v.contiguous() for k, v in run.global_state.items()}, sys.argv[2] + "/global.safetensors")
open(sys.argv[2] + "/history.json", "w").write(json.dumps(run.history))
"""


@pytest.mark.slow
@pytest.mark.parametrize("rc", [{"algorithm": "fed-dpo", "num_clients": 3, "clients_per_round": 3, "rounds": 2},
                                {"algorithm": "firm", "num_clients": 3, "rounds": 1}], ids=["fedavg-dpo", "firm"])
def test_flower_simulation_equals_in_process_loop(rc, one_thread, tmp_path):
    """Flower's simulation runtime runs in a subprocess: Ray (started by it) must not outlive the run
    inside the test process, where later tests drive Jupyter kernels."""
    rc = {"preset": "smoke", **rc}
    proc = subprocess.run([sys.executable, "-c", SIMULATE, json.dumps(rc), str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = FederatedRun(load_file(tmp_path / "global.safetensors"), {}, {},
                       json.loads((tmp_path / "history.json").read_text()), [])
    ref = federation_from_run_config(rc).run(progress=False)
    assert_same_run(got, ref)
