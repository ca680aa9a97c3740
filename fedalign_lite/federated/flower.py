"""The same algorithms on Flower (flwr >= 1.21, Message API): a ClientApp and a ServerApp around a
:class:`~fedalign_lite.federated.Federation`, so a real federation runs the code the notebooks teach.

Only the transport differs from the in-process loop. The ServerApp runs
:func:`~fedalign_lite.federated.run_federated` with :class:`FlowerClients`, which turns each phase
of a round into messages; the ClientApp decodes them, seeds every RNG from (seed, round, client)
exactly as the in-process loop does, and calls the algorithm's own ``client_update`` / ``phase1``::

    server                                        client (SuperNode with partition-id = i)
    query            -> {}                        <- {"who": partition-id, config fingerprint}
    train.phase1     -> global, round             <- phase-1 upload        (FedCMOO-A only)
    train            -> global, round, broadcast  <- upload, num_samples, metrics

Personal state (FedPDPO's heads, FedMOA's weight logits, the DPO reference cache) lives in the
client's ``context.state`` and never leaves it; so the server evaluates the global model only, and
skips algorithms whose evaluation is personalized. Every reply is validated on arrival by the same
checks as in process (keys, shapes, dtypes, finite values, the algorithm's own checks).

Flower is an optional extra: ``pip install -e '.[flower]'``; nothing else in the package imports it.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from logging import INFO
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common.logger import log as flwr_log
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("fedalign_lite.federated.flower needs Flower, an optional extra: pip install -e '.[flower]' "
                      "(or `make env`, which installs it)") from e

from fedalign_lite.errors import ConfigError, FedAlignError, PayloadError
from fedalign_lite.federated.checkpoint import flatten, unflatten
from fedalign_lite.federated.loop import ClientContext, ClientUpdate, Federation, run_federated
from fedalign_lite.seeding import derive_seed, seed_everything

ADAPTER_KEYS = ("run-dir", "output-dir", "round-timeout", "node-timeout")
"""Run-config keys the adapter reads itself; every other key goes to ``build`` (with
:func:`fedalign_lite.algorithms.federation_from_run_config`: ``algorithm``, ``preset`` and config fields)."""

Build = Callable[[dict], Federation]
"""``build(run_config) -> Federation``: how a process makes the run it serves."""

_BUILT: dict = {}


def cached_federation(run_config: dict, build: Build) -> Federation:
    """One Federation per (process, run config): a simulation actor serves many clients and must not
    reload the model for each message. ``build`` sees the run config without :data:`ADAPTER_KEYS`;
    server-only parts are built lazily (:func:`~fedalign_lite.federated.loop.lazy`), so a client
    process never builds them."""
    rc = {k: v for k, v in dict(run_config).items() if k not in ADAPTER_KEYS}
    key = (build, json.dumps(rc, sort_keys=True, default=str))
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build(rc)
    return _BUILT[key]


# ------------------------------------------------------------------------------------ records --

def state_record(state: dict) -> ArrayRecord:
    """``{name: tensor}`` as an ArrayRecord (order, shapes and dtypes kept)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


def record_state(record: ArrayRecord) -> dict:
    """The inverse of :func:`state_record`: writable tensors, in the record's order."""
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in record.items()}


def pack(content: RecordDict, name: str, obj) -> None:
    """Store a nested dict/list of tensors and JSON scalars (a personal state, a broadcast) in
    ``content`` as ``<name>.arrays`` + ``<name>.skeleton`` (the checkpoint's flattening: no pickle)."""
    tensors: dict = {}
    skeleton = flatten(obj, tensors)
    content[f"{name}.arrays"] = state_record(tensors)
    content[f"{name}.skeleton"] = ConfigRecord({"json": json.dumps(skeleton)})


def unpack(content: RecordDict, name: str, default=None):
    """The object :func:`pack` stored under ``name``, or ``default`` if there is none."""
    if f"{name}.skeleton" not in content:
        return default
    return unflatten(json.loads(content[f"{name}.skeleton"]["json"]), record_state(content[f"{name}.arrays"]))


def update_content(update: ClientUpdate) -> RecordDict:
    return RecordDict({"upload": state_record(update.upload),
                       "metrics": MetricRecord({k: float(v) for k, v in update.metrics.items()}),
                       "meta": ConfigRecord({"num_samples": int(update.num_samples)})})


def content_update(content: RecordDict) -> ClientUpdate:
    """A ClientUpdate from a train reply; PayloadError naming the record when one is missing."""
    for name, kind in (("upload", ArrayRecord), ("metrics", MetricRecord), ("meta", ConfigRecord)):
        if not isinstance(content.get(name), kind):
            raise PayloadError(f"train reply must hold a {kind.__name__} {name!r}; it has {sorted(content)}")
    return ClientUpdate(record_state(content["upload"]), content["meta"].get("num_samples"),
                        dict(content["metrics"]), None)


# ------------------------------------------------------------------------------------- server --

class FlowerClients:
    """The transport of :func:`run_federated` over a Flower ``Grid``: one message per sampled client
    and phase, replies mapped back to client ids; an error reply or a missing one fails that client."""

    def __init__(self, grid: Grid, node_of: dict, fingerprint: str, timeout: float | None = None):
        self.grid, self.node_of, self.fingerprint, self.timeout = grid, node_of, fingerprint, timeout
        self.client_of = {n: c for c, n in node_of.items()}

    def _exchange(self, message_type: str, round_: int, sampled: list[int], content) -> list:
        messages = [Message(content(cid), dst_node_id=self.node_of[cid], message_type=message_type,
                            group_id=str(round_)) for cid in sampled]
        got = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            cid = self.client_of.get(reply.metadata.src_node_id)
            if reply.has_error():
                got[cid] = RemoteClientError(f"client {cid} ({message_type}): {reply.error.reason}")
            else:
                got[cid] = reply.content
        return [(cid, got.get(cid, TimeoutError(f"no {message_type} reply from client {cid} within "
                                                f"{self.timeout} s"))) for cid in sampled]

    def _contents(self, round_: int, views: dict, broadcast: dict | None = None):
        """``content(cid)``: one RecordDict per distinct view (all clients share it without ``download``)."""
        built: dict = {}

        def content(cid):
            view = views[cid]
            if id(view) not in built:
                built[id(view)] = RecordDict({"global": state_record(view), "config": ConfigRecord(
                    {"round": round_, "fingerprint": self.fingerprint})})
                if broadcast is not None:
                    pack(built[id(view)], "broadcast", broadcast)
            return built[id(view)]

        return content

    def phase1(self, round_: int, sampled: list[int], views: dict, personal_states: dict) -> list:
        out = self._exchange("train.phase1", round_, sampled, self._contents(round_, views))
        return [(cid, _decoded(_phase1_payload, x)) for cid, x in out]

    def train(self, round_: int, sampled: list[int], views: dict, personal_states: dict, broadcast: dict) -> list:
        out = self._exchange("train", round_, sampled, self._contents(round_, views, broadcast))
        return [(cid, _decoded(content_update, x)) for cid, x in out]


class RemoteClientError(FedAlignError, RuntimeError):
    """A ClientApp raised; Flower sent its error back instead of a reply."""


def _decoded(decode, reply):
    """``decode(reply)``, or the exception that the reply is or that decoding raised (that client's failure)."""
    if isinstance(reply, Exception):
        return reply
    try:
        return decode(reply)
    except Exception as e:  # noqa: BLE001
        return e


def _phase1_payload(content: RecordDict) -> dict:
    if not isinstance(content.get("phase1"), ArrayRecord):
        raise PayloadError(f"phase-1 reply must hold an ArrayRecord 'phase1'; it has {sorted(content)}")
    return record_state(content["phase1"])


def discover_clients(grid: Grid, num_clients: int, fingerprint: str, timeout: float = 120.0) -> dict:
    """``{client id: node id}``: waits for at least ``num_clients`` nodes, asks each its partition-id
    and checks that ids 0..num_clients-1 each appear once and that every node built the same config.
    Nodes with a larger partition-id are left idle (a simulation may start more SuperNodes)."""
    start = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() - start > timeout:
            raise ConfigError(f"the federation needs {num_clients} SuperNodes (num_clients); only {len(nodes)} "
                              f"connected within {timeout} s")
        time.sleep(0.2)
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type="query", group_id="0")
                                     for n in nodes], timeout=timeout)
    node_of = {}
    for reply in replies:
        if reply.has_error():
            raise ConfigError(f"node {reply.metadata.src_node_id} could not build the run: {reply.error.reason}")
        who = reply.content["who"]
        if who["fingerprint"] != fingerprint:
            raise ConfigError(f"node {reply.metadata.src_node_id} built config {who['fingerprint']}, the server "
                              f"{fingerprint}: give every SuperNode the same app and run config")
        cid = int(who["partition_id"])
        if cid in node_of:
            raise ConfigError(f"two SuperNodes have partition-id={cid}; each client id must appear once")
        node_of[cid] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise ConfigError(f"SuperNode partition-ids must cover 0..{num_clients - 1} (num_clients); missing {missing}. "
                          f"Start each with --node-config 'partition-id=<i> num-partitions={num_clients}'")
    if len(node_of) > num_clients:
        warnings.warn(f"{len(node_of) - num_clients} SuperNode(s) with partition-id >= {num_clients} stay idle",
                      stacklevel=2)
    return {c: n for c, n in node_of.items() if c < num_clients}


def make_server_app(build: Build, on_result=None) -> ServerApp:
    """A ServerApp running ``build(run_config)`` over the connected SuperNodes.

    Run-config keys: ``run-dir`` (checkpoints; an interrupted run resumes), ``output-dir`` (writes
    ``global_state.safetensors`` and ``history.json``), ``round-timeout`` (s, default none),
    ``node-timeout`` (s to wait for the SuperNodes, default 120). ``on_result(FederatedRun)`` gets
    the finished run (tests use it).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        fed = cached_federation(rc, build)
        node_of = discover_clients(grid, fed.num_clients, fed.fingerprint, float(rc.get("node-timeout", 120)))
        flwr_log(INFO, f"fedalign-lite: {len(node_of)} clients connected, {fed.rounds} rounds, config {fed.fingerprint}")
        timeout = float(rc["round-timeout"]) if "round-timeout" in rc else None
        if fed.evaluate_needs_personal:
            warnings.warn("this algorithm's evaluation reads every client's personal state, which stays on the "
                          "Flower clients: the server skips evaluation", stacklevel=2)
            fed = dataclasses.replace(fed, evaluate=None)
        result = run_federated(fed, transport=FlowerClients(grid, node_of, fed.fingerprint, timeout),
                               run_dir=rc.get("run-dir") or None, progress=True)
        if rc.get("output-dir"):
            out = Path(str(rc["output-dir"]))
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in result.global_state.items()}, out / "global_state.safetensors")
            (out / "history.json").write_text(json.dumps(result.history, indent=1))
        if on_result is not None:
            on_result(result)

    return app


# ------------------------------------------------------------------------------------- client --

def partition_id(context: Context) -> int:
    """This SuperNode's client id: node config ``partition-id`` (simulation sets it; a deployed
    SuperNode gets it from ``--node-config``)."""
    if "partition-id" not in context.node_config:
        raise ConfigError("the SuperNode has no node config 'partition-id'; start it with "
                          "--node-config 'partition-id=<i> num-partitions=<n>'")
    return int(context.node_config["partition-id"])


def make_client_app(build: Build) -> ClientApp:
    """A ClientApp serving ``build(run_config)``'s ``client_update`` (and ``phase1``) for the client
    ``partition-id``; its personal state lives in ``context.state``."""
    app = ClientApp()

    def setup(message: Message, context: Context):
        fed = cached_federation(context.run_config, build)
        config = message.content["config"]
        if config["fingerprint"] != fed.fingerprint:
            raise ConfigError(f"server config {config['fingerprint']} differs from this client's {fed.fingerprint}")
        cid, round_ = partition_id(context), int(config["round"])
        personal = unpack(context.state, "personal", (fed.personal_states or {}).get(cid, {}))
        return fed, cid, round_, record_state(message.content["global"]), personal

    @app.query()
    def who(message: Message, context: Context) -> Message:
        fed = cached_federation(context.run_config, build)
        return Message(RecordDict({"who": ConfigRecord({"partition_id": partition_id(context),
                                                        "fingerprint": fed.fingerprint})}), reply_to=message)

    @app.train("phase1")
    def phase1(message: Message, context: Context) -> Message:
        fed, cid, round_, global_state, personal = setup(message, context)
        seed = derive_seed(fed.seed, round_, cid, 1)
        seed_everything(seed)
        payload = fed.phase1(ClientContext(cid, round_, seed, global_state, personal))
        pack(context.state, "phase1", {"round": round_, "payload": payload})   # kept for this round's train
        return Message(RecordDict({"phase1": state_record(payload)}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed, cid, round_, global_state, personal = setup(message, context)
        own = unpack(context.state, "phase1", {})
        seed = derive_seed(fed.seed, round_, cid)
        seed_everything(seed)
        update = fed.client_update(ClientContext(cid, round_, seed, global_state, personal,
                                                 unpack(message.content, "broadcast", {}),
                                                 own.get("payload", {}) if own.get("round") == round_ else {}))
        if update.personal_state is not None:
            pack(context.state, "personal", update.personal_state)
        return Message(update_content(update), reply_to=message)

    return app


# --------------------------------------------------------------------------------- simulation --

def simulate(run_config: dict, build: Build, *, cpus_per_client: float = 1.0):
    """Run ``build(run_config)`` (e.g. :func:`fedalign_lite.algorithms.federation_from_run_config`) on
    Flower's simulation runtime (one virtual SuperNode per client,
    Ray actors with ``cpus_per_client`` each) and return its :class:`~fedalign_lite.federated.FederatedRun`.

    The Python entry point; ``flwr run`` on ``examples/flower_app`` is the command-line one. The run
    config reaches both apps through ``build`` (Flower's in-process simulation passes them no run
    config of their own). Ray starts inside the calling process: in our test suite a papermill run
    later in the same process hung, so the tests call this in a subprocess, and so should a caller
    that goes on to drive Jupyter kernels.
    """
    rc = dict(run_config)
    bound = _Bound(build, rc)
    box: list = []
    num_clients = cached_federation({}, bound).num_clients
    run_simulation(make_server_app(bound, box.append), make_client_app(bound), num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}})
    if not box:
        raise RuntimeError("the Flower simulation ended without a result; its log above says why")
    return box[0]


class _Bound:
    """``build`` with a fixed run config (picklable, so Ray actors can receive it)."""

    def __init__(self, build, run_config: dict):
        self.build, self.run_config = build, run_config

    def __call__(self, run_config: dict) -> Federation:
        return self.build({**run_config, **self.run_config})
