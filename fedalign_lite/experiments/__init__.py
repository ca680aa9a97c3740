"""One module per paper's grid (the runs its notebook measures and its results table), on the shared
grid runner :mod:`fedalign_lite.experiments.grid`."""
