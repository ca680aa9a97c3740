"""fedalign-lite's algorithms as a Flower app (see ../README.md)."""
