"""The ServerApp: fedalign-lite's round loop with Flower messages as the transport."""
from fedalign_lite.algorithms import federation_from_run_config
from fedalign_lite.federated.flower import make_server_app

app = make_server_app(federation_from_run_config)
