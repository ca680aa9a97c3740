"""The ClientApp: the algorithm's own client update for this SuperNode's partition-id."""
from fedalign_lite.algorithms import federation_from_run_config
from fedalign_lite.federated.flower import make_client_app

app = make_client_app(federation_from_run_config)
