"""fedalign-lite's algorithms as a Flower app (how to run it: examples/flower_app/README.md)."""
